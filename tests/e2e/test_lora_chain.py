"""The whole interop chain through the CLI, offline: train a tiny shakespeare-like GPT -> export
HF -> LoRA finetune -> merge -> GGUF f16 and q8_0 -> llama.cpp reproduces logits and greedy text.
Sampling the LoRA run's own folder (adapter only) is one error line naming merged/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ml_playground.interop.hf import import_hf_weights
from ml_playground.model import GPT
from ml_playground.tokenizers import TiktokenTokenizer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PLAY = (
    "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\n"
    "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\nDeny thy father and refuse thy name.\n\n"
)
COMEDY = (
    "PUCK:\nIf we shadows have offended, think but this, and all is mended.\n\n"
    "BOTTOM:\nI have had a most rare vision. I have had a dream.\n\n"
)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ml_playground.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def cli(*args: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-2000:]


def run_tables(out_dir: Path, data: Path, iters: int, sample_dir: Path | None = None) -> str:
    return f"""
[train.data]
dataset_dir = "{data}"
batch_size = 8
block_size = 32

[train.runtime]
out_dir = "{out_dir}"
max_iters = {iters}
eval_interval = {iters}
eval_iters = 2
log_interval = 10

[train.optim]
learning_rate = 1e-2

[train.schedule]
warmup_iters = 0
lr_decay_iters = {iters}
min_lr = 1e-3

[sample.runtime]
out_dir = "{sample_dir or out_dir}"

[sample.sample]
start = "ROMEO:\\n"
max_new_tokens = 20
temperature = 0
"""


@pytest.mark.timeout(1200)  # a chain of CLI processes and a llama.cpp load
def test_train_export_finetune_merge_gguf_llama_cpp(tmp_path: Path) -> None:
    (tmp_path / "play.txt").write_text(PLAY * 30)
    (tmp_path / "comedy.txt").write_text(COMEDY * 30)
    base_cfg = tmp_path / "base.toml"
    base_cfg.write_text(
        f'[prepare]\ndataset_dir = "{tmp_path / "base_data"}"\nsource = "{tmp_path / "play.txt"}"\n'
        'tokenizer = "tiktoken"\nencoding = "gpt2"\n\n'
        "[train.model]\nn_layer = 2\nn_head = 2\nn_embd = 32\nblock_size = 64\n"
        + run_tables(tmp_path / "base_run", tmp_path / "base_data", 60)
        + f'\n[export.ollama]\nenabled = true\nexport_dir = "{tmp_path / "base_export"}"\nmodel_name = "base"\n'
    )
    cli("prepare", "shakespeare", "--exp-config", str(base_cfg))
    cli("train", "shakespeare", "--exp-config", str(base_cfg))
    cli("export", "shakespeare", "--exp-config", str(base_cfg))
    assert (tmp_path / "base_export" / "hf" / "model.safetensors").is_file()

    lora_cfg = tmp_path / "lora.toml"
    lora_text = (
        f'[prepare]\ndataset_dir = "{tmp_path / "lora_data"}"\nsource = "{tmp_path / "comedy.txt"}"\n'
        'tokenizer = "tiktoken"\nencoding = "gpt2"\n\n'
        f'[train.model]\ninit_from = "{tmp_path / "base_export" / "hf"}"\n\n'
        "[train.peft]\nr = 4\nlora_alpha = 8\nmerge_on_save = true\n"
        + run_tables(tmp_path / "lora_run", tmp_path / "lora_data", 30, tmp_path / "lora_run" / "merged")
        + f'\n[export.ollama]\nenabled = true\nexport_dir = "{tmp_path / "lora_export"}"\nmodel_name = "lora"\n'
    )
    lora_cfg.write_text(lora_text + 'quant = "f16"\n')
    cli("prepare", "shakespeare_lora", "--exp-config", str(lora_cfg))
    cli("train", "shakespeare_lora", "--exp-config", str(lora_cfg))
    assert (tmp_path / "lora_run" / "adapter" / "adapter_model.safetensors").is_file()
    # Pointed at the run's own folder (adapter only), the sampler says in one line where the model is.
    adapter_only = tmp_path / "adapter_only.toml"
    adapter_only.write_text(run_tables(tmp_path / "lora_run", tmp_path / "lora_data", 30))
    refused = run_cli("sample", "shakespeare_lora", "--exp-config", str(adapter_only))
    assert refused.returncode == 5  # CheckpointError
    assert "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'lora_run' / 'ckpt_best.pt'}: holds a LoRA adapter, not a whole model; sample or "
        f"export its merged model in {tmp_path / 'lora_run' / 'merged'} (written when "
        "train.peft.merge_on_save is true)"
    )
    cli("sample", "shakespeare_lora", "--exp-config", str(lora_cfg))
    cli("export", "shakespeare_lora", "--exp-config", str(lora_cfg))

    # The exported (merged) model in our format, with the weights an f16 GGUF holds.
    state_dict, config = import_hf_weights(tmp_path / "lora_export" / "hf")
    model = GPT(config).eval()
    model.load_state_dict({k: v.half().float() if v.ndim == 2 else v for k, v in state_dict.items()})
    tokenizer = TiktokenTokenizer("gpt2")
    ids = tokenizer.encode(COMEDY)[:64]
    prompt = tokenizer.encode("PUCK:\n")

    from llama_cpp import Llama

    def check(gguf: Path, bound: float, same_text: bool) -> None:
        llm = Llama(str(gguf), n_ctx=64, logits_all=True, verbose=False, type_k=0, type_v=0)
        assert llm.tokenize(COMEDY.encode(), add_bos=False, special=False)[:64] == ids
        llm.eval(ids)
        with torch.no_grad():
            ours = model(torch.tensor([ids])).logits[0].numpy()
        assert float(np.abs(np.array(llm.scores[: len(ids)]) - ours).max()) <= bound
        llm.reset()  # type: ignore[no-untyped-call]  # llama-cpp-python leaves reset() unannotated
        llm.eval(prompt)
        text = list(prompt)
        expected = list(prompt)
        for _ in range(50 - len(prompt) - 1):
            text.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([text[-1]])
            with torch.no_grad():
                expected.append(int(model(torch.tensor([expected])).logits[0, -1].argmax()))
        if same_text:
            assert tokenizer.decode(text) == tokenizer.decode(expected)
        llm.close()

    # f16 files: llama.cpp also rounds activations to f16 in its matmuls and uses a tanh GELU from a
    # float16 table; measured ~3e-3 on these logits (|logit| ~4), hence 5e-3 (f32 files meet 1e-3,
    # see tests/integration/test_gguf_llama_cpp.py).
    check(tmp_path / "lora_export" / "model.gguf", 5e-3, same_text=True)
    lora_cfg.write_text(lora_text + 'quant = "q8_0"\n')
    cli("export", "shakespeare_lora", "--exp-config", str(lora_cfg))
    check(tmp_path / "lora_export" / "model.gguf", 0.1, same_text=False)
