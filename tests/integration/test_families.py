"""The small pretrained families people finetune (SmolLM2, Llama 3.2, Qwen2.5, Qwen3), each as a
tiny random transformers model with exactly that family's structural features (head width against
model width, grouped-query attention, rope base and scaling, bias pattern, tied head) saved as
sharded bfloat16 safetensors: it imports through init_from (a local directory or a hub id) with
transformers' logits, samples transformers' greedy text, finetunes (val loss falls), exports back
to the same Hugging Face class (transformers agrees) and to GGUF (llama.cpp agrees), and LoRA
finetunes with PEFT agreeing on the adapter."""

from __future__ import annotations

import shutil
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ml_playground.config import RopeScaling, SampleConfig, SampleRuntimeConfig, SampleSettings
from ml_playground.data.meta import DatasetMeta
from ml_playground.finetune.pretrained import Pretrained
from ml_playground.interop import hf
from ml_playground.interop.gguf import write_gguf
from ml_playground.interop.source import load_source, sample_source
from ml_playground.model import GPT
from ml_playground.tokenizers import CharTokenizer
from ml_playground.train.checkpoint import BEST_NAME, load_checkpoint
from ml_playground.train.loop import train
from tests.integration.test_gguf_llama_cpp import F32_BOUND, LlamaRun, our_logits
from tests.integration.tiny_gpt import greedy
from tests.support.tiny_hub import tiny_hub
from tests.support.tiny_lora import LLAMA_TARGETS, finetune, lora_train_table, peft_compat, torch_threads
from tests.support.tiny_training import TEXT, read_scalars, tiny_train_table, train_config, write_char_dataset

pytestmark = pytest.mark.slow

KEY = "train.model.init_from"
BLOCK = 64
LAYERS = 2


@dataclass(frozen=True, slots=True)
class Family:
    """A family's transformers config (scaled down) and what our importer must make of it."""

    model_type: str  # transformers' (llama, qwen2, qwen3)
    hf_class: str
    config: dict[str, Any]
    ours: dict[str, Any]  # GPTConfig options the import must give


# Ratios of the real models: SmolLM2-135M 9 heads of 64 in 576, 3 KV heads, rope_theta 1e5;
# Llama-3.2-1B 32 heads of 64 in 2048, 8 KV heads, rope_theta 5e5 with Llama 3 scaling (factor 32,
# 1, 4, 8192: the original context scaled down so that every band of frequencies is hit); Qwen2.5-0.5B
# 14 heads of 64 in 896, 2 KV heads, q/k/v biases, rope_theta 1e6; Qwen3-0.6B 16 heads of 128 in
# 1024 (attention twice the model's width), 8 KV heads, QK-norm, rope_theta 1e6. All tie the head.
FAMILIES: dict[str, Family] = {
    "smollm2": Family(
        "llama",
        "LlamaForCausalLM",
        {
            "hidden_size": 48,
            "num_attention_heads": 3,
            "num_key_value_heads": 1,
            "intermediate_size": 128,
            "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
            "rms_norm_eps": 1e-5,
        },
        {"head_dim": 16, "n_kv_head": 1, "rope_theta": 100000.0},
    ),
    "llama3.2": Family(
        "llama",
        "LlamaForCausalLM",
        {
            "hidden_size": 64,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "intermediate_size": 128,
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            "rms_norm_eps": 1e-5,
        },
        {
            "head_dim": 16,
            "n_kv_head": 2,
            "rope_theta": 500000.0,
            "rope_scaling": RopeScaling(original_max_position_embeddings=64),
        },
    ),
    "qwen2.5": Family(
        "qwen2",
        "Qwen2ForCausalLM",
        {
            "hidden_size": 64,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "intermediate_size": 96,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
            "use_sliding_window": False,
            "max_window_layers": LAYERS,
        },
        {"head_dim": 16, "n_kv_head": 1, "qkv_bias": True, "rope_theta": 1000000.0},
    ),
    "qwen3": Family(
        "qwen3",
        "Qwen3ForCausalLM",
        {
            "hidden_size": 32,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "intermediate_size": 96,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
            "attention_bias": False,
            "use_sliding_window": False,
        },
        {"head_dim": 16, "n_kv_head": 2, "qk_norm": True, "rope_theta": 1000000.0},
    ),
}


def char_meta() -> DatasetMeta:
    chars = sorted(set(TEXT))
    return DatasetMeta(kind="char", vocab_size=len(chars), dtype="uint16", itos=chars)


def build(family: Family, vocab: int) -> Any:
    """The transformers model of `family`, every weight random (biases and norms too, so that a
    misplaced one shows), in float32."""
    import transformers
    from transformers import AutoConfig

    config = AutoConfig.for_model(
        family.model_type,
        vocab_size=vocab,
        num_hidden_layers=LAYERS,
        max_position_embeddings=BLOCK,
        tie_word_embeddings=True,
        **family.config,
    )
    torch.manual_seed(0)
    model: Any = getattr(transformers, family.hf_class)(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, 0.3 if param.ndim == 1 else 0.25)
    return model.eval()


@dataclass(frozen=True, slots=True)
class Saved:
    folder: Path
    family: Family
    theirs: Any  # transformers' model read back from the bf16 files, in float32


@pytest.fixture(scope="module", params=list(FAMILIES))
def saved(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Saved:
    """The family's model saved by transformers as bf16 shards with our char tokenizer beside it."""
    from transformers import AutoModelForCausalLM

    family = FAMILIES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    model = build(family, char_meta().vocab_size)
    model.to(torch.bfloat16).save_pretrained(folder, max_shard_size="20KB")
    hf.write_tokenizer(folder, char_meta(), BLOCK)
    theirs: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return Saved(folder, family, theirs.eval())


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub is reached only where a test serves one


@pytest.fixture(autouse=True)
def one_thread() -> Generator[None]:
    with torch_threads(1):  # the CPU is shared; spinning thread pools slow tiny models down
        yield


def ids(seed: int) -> torch.Tensor:
    return torch.randint(char_meta().vocab_size, (2, BLOCK), generator=torch.Generator().manual_seed(seed))


def logits_diff(ours: GPT, theirs: Any, tokens: torch.Tensor) -> float:
    with torch.no_grad():
        return float((theirs(input_ids=tokens).logits - ours(tokens).logits).abs().max())


def imported(init_from: str) -> GPT:
    source = load_source(init_from, KEY)
    model = GPT(source.config)
    source.load_into(model)
    return model.eval()


def test_the_files_are_sharded_bfloat16(saved: Saved) -> None:
    shards = sorted(saved.folder.glob("model-*.safetensors"))
    assert len(shards) > 1
    assert (saved.folder / hf.WEIGHTS_INDEX_FILE).is_file()
    weights = hf.SafetensorsWeights(shards)
    assert all(weights[name].dtype == torch.bfloat16 for name in weights)


def test_init_from_a_directory_gives_transformers_logits(saved: Saved) -> None:
    ours = imported(str(saved.folder))
    wanted = saved.family.ours | {"tie_embeddings": True}
    assert {key: getattr(ours.config, key) for key in wanted} == wanted
    assert logits_diff(ours, saved.theirs, ids(1)) <= 1e-4


def test_init_from_a_hub_id_downloads_the_same_model(
    saved: Saved, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "tiny" / saved.folder.name
    shutil.copytree(saved.folder, repo)
    with tiny_hub(tmp_path / "hub", tmp_path / "hub.log") as endpoint:
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
        ours = imported(f"tiny/{saved.folder.name}")
    local = imported(str(saved.folder))
    assert ours.config == local.config
    assert all(torch.equal(ours.state_dict()[name], t) for name, t in local.state_dict().items())
    fetched = (tmp_path / "hub.log").read_text(encoding="utf-8")
    assert f"GET /tiny/{saved.folder.name}/resolve/" in fetched
    assert hf.WEIGHTS_INDEX_FILE in fetched


def test_greedy_samples_equal_transformers_generate(saved: Saved, tmp_path: Path) -> None:
    prompt = "First Citizen:"
    cfg = SampleConfig(
        runtime=SampleRuntimeConfig(out_dir=tmp_path / "samples", init_from=str(saved.folder)),
        sample=SampleSettings(start=prompt, max_new_tokens=40, temperature=0.0),
    )
    (text,) = sample_source(cfg)
    tokenizer = CharTokenizer(char_meta().itos or [])
    start = torch.tensor([tokenizer.encode(prompt)])
    saved.theirs.generation_config.eos_token_id = None
    with torch.no_grad():
        tokens = saved.theirs.generate(start, attention_mask=torch.ones_like(start), max_new_tokens=40, do_sample=False)
    assert text == tokenizer.decode(tokens[0].tolist())


def test_finetune_exports_to_transformers_and_llama_cpp(saved: Saved, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    meta = write_char_dataset(tmp_path / "data")
    out = tmp_path / "out"
    table = tiny_train_table(tmp_path / "data", out)
    table["model"] = {"init_from": str(saved.folder)}
    table["data"]["block_size"] = 32
    table["optim"]["learning_rate"] = 3e-3
    table["runtime"] |= {"max_iters": 12, "eval_interval": 6}
    train(train_config(table), Pretrained())
    losses = [value for _, value in read_scalars(out / "logs" / "tb")["val/loss"]]
    assert losses[-1] < losses[0]

    best = load_checkpoint(out / BEST_NAME)
    model = GPT(best.arch).eval()
    model.load_state_dict(best.model)
    hf.export_hf(best.model, best.arch, meta, tmp_path / "export")
    theirs: Any = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert type(theirs).__name__ == saved.family.hf_class
    assert logits_diff(model, theirs.eval(), ids(2)) <= 1e-4
    assert hf.import_hf_weights(tmp_path / "export")[1] == best.arch.replace(real_vocab_size=best.arch.vocab_size)

    write_gguf(tmp_path / "model.gguf", best.model, best.arch, meta, ftype="f32", name="tiny")
    llama_cpp = LlamaRun(tmp_path / "model.gguf", best.arch.block_size)
    window = [int(token) for token in ids(3)[0]]
    assert float(np.abs(llama_cpp.logits(window) - our_logits(model, window)).max()) <= F32_BOUND
    prompt = window[:8]
    assert llama_cpp.greedy(prompt, 40) == greedy(model, prompt, 40)
    llama_cpp.close()


def test_lora_finetunes_and_peft_agrees(saved: Saved, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    write_char_dataset(tmp_path / "data")
    table = lora_train_table(tmp_path / "data", saved.folder, tmp_path / "run", max_iters=20)
    table["peft"] = {**table["peft"], "target_modules": list(LLAMA_TARGETS)}
    result = finetune(train_config(table))
    base = imported(str(saved.folder))
    val = torch.tensor(np.fromfile(tmp_path / "data" / "val.bin", dtype="<u2")[:33].astype(np.int64))[None]
    with torch.no_grad():
        base_loss = base(val[:, :-1], val[:, 1:]).loss
    assert base_loss is not None
    assert result.best_val_loss < float(base_loss)

    merged = load_checkpoint(tmp_path / "run" / "merged" / BEST_NAME)
    ours = GPT(merged.arch).eval()
    ours.load_state_dict(merged.model)
    with peft_compat():
        hf_base: Any = AutoModelForCausalLM.from_pretrained(saved.folder, dtype=torch.float32)
        adapted: Any = PeftModel.from_pretrained(hf_base, str(tmp_path / "run" / "adapter"))
    assert logits_diff(ours, adapted.eval(), ids(4)) <= 1e-4
