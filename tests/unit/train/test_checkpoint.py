from __future__ import annotations

import dataclasses
import math
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from ml_playground.config import GPTConfig
from ml_playground.errors import CheckpointError
from ml_playground.model import GPT
from ml_playground.train.checkpoint import (
    Checkpoint,
    copy_checkpoint,
    find_checkpoint,
    load_checkpoint,
    load_model_checkpoint,
    model_args_of,
    save_checkpoint,
    strip_compile_prefix,
    weights_mismatch,
)

TINY = GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=16)


def _checkpoint(model: GPT, **overrides: Any) -> Checkpoint:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)).loss
    assert loss is not None
    loss.backward()
    optimizer.step()
    fields: dict[str, Any] = {
        "schema_version": 1,
        "model": model.state_dict(),
        "arch": model.config,
        "optimizer": optimizer.state_dict(),
        "iter_num": 7,
        "best_val_loss": 1.25,
        "config": {"runtime": {"out_dir": "/x"}},
        "rng": {"torch": torch.get_rng_state()},
        "data_state": {"train": {"cursor": 3}},
        "dataset_meta": {"kind": "char", "vocab_size": 11},
    }
    fields.update(overrides)
    return Checkpoint(**fields)


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GPT(TINY)
    saved = _checkpoint(model)
    path = tmp_path / "ckpt_last.pt"
    save_checkpoint(path, saved)
    loaded = load_checkpoint(path)
    assert loaded.schema_version == 1
    assert not loaded.is_legacy
    assert loaded.arch == TINY
    # On disk the architecture is whole, and nanoGPT's model_args dict (so nanoGPT's sample.py reads our files).
    raw = torch.load(path, weights_only=True)
    assert raw["gpt_config"] == TINY.model_dump()
    assert raw["model_args"] == model_args_of(TINY)
    assert loaded.iter_num == 7
    assert loaded.best_val_loss == 1.25
    assert loaded.config == {"runtime": {"out_dir": "/x"}}
    assert loaded.data_state == {"train": {"cursor": 3}}
    assert loaded.dataset_meta == {"kind": "char", "vocab_size": 11}
    assert loaded.rng is not None
    assert torch.equal(loaded.rng["torch"], saved.rng["torch"])  # type: ignore[index]  # rng set above
    assert loaded.model.keys() == saved.model.keys()
    assert all(torch.equal(loaded.model[k], v) for k, v in saved.model.items())
    assert loaded.optimizer is not None
    fresh = torch.optim.AdamW(GPT(TINY).parameters(), lr=1e-3)
    fresh.load_state_dict(loaded.optimizer)  # loadable as an optimizer state
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt_last.pt"]  # no temp files left


def test_find_checkpoint_prefers_best_then_last_then_legacy(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no checkpoint found.*ckpt_best.pt, ckpt_last.pt, ckpt.pt"):
        find_checkpoint(tmp_path)
    for name in ("ckpt.pt", "ckpt_last.pt", "ckpt_best.pt"):
        (tmp_path / name).write_bytes(b"x")
        assert find_checkpoint(tmp_path) == tmp_path / name


def test_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ckpt_last.pt"
    save_checkpoint(path, _checkpoint(GPT(TINY)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"ckpt_last.pt: checkpoint is truncated or corrupted"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"not a checkpoint at all", "a text file"),
        # Two-byte characters, one of them cut in two by the bytes read: still text.
        (("a" + "é" * 40).encode(), "a text file"),
        (("é" * 40).encode(), "a text file"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 9\n", "a Git LFS pointer: fetch the file"),
        (b"", "an empty file"),
        (bytes(range(200, 256)), "an unknown binary format"),
    ],
)
def test_a_file_that_is_no_checkpoint_is_named_as_what_it_is(tmp_path: Path, content: bytes, what: str) -> None:
    garbage = tmp_path / "ckpt_best.pt"
    garbage.write_bytes(content)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(garbage)
    assert str(error.value).startswith(f"{garbage}: not a PyTorch checkpoint ({what}")
    assert "weights_only" not in str(error.value)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"missing.pt: checkpoint file not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_checkpoint_we_may_not_read_is_not_called_corrupt(tmp_path: Path) -> None:
    """Permission denied is not a corrupt file: no advice to delete it. Root reads any file, so the
    load runs in a process without the capabilities that override file permissions."""
    path = tmp_path / "ckpt_last.pt"
    save_checkpoint(path, _checkpoint(GPT(TINY)))
    path.chmod(0o000)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from ml_playground.errors import CheckpointError\n"
        "from ml_playground.train.checkpoint import load_checkpoint\n"
        "try:\n"
        "    load_checkpoint(Path(sys.argv[1]))\n"
        "except CheckpointError as exc:\n"
        "    print(exc)\n"
    )
    without_override = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    command = [*without_override, sys.executable, "-c", code, str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == f"{path}: cannot read the checkpoint (Permission denied); it was left as it is"


class _Payload:
    """Not on torch's weights_only allow-list: loading it would need to run code."""


def test_objects_outside_weights_only_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Payload()}, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(error.value).startswith(f"{path}: refused: it holds Python objects (")
    assert f"objects ({__name__}._Payload) that a safe load" in str(error.value)
    assert "weights_only=False" not in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_key_and_unknown_schema_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    raw = _checkpoint(GPT(TINY)).to_dict()
    del raw["iter_num"]
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=r"c.pt: checkpoint key 'iter_num' is missing"):
        load_checkpoint(path)
    raw = _checkpoint(GPT(TINY)).to_dict()
    raw["schema_version"] = 99
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="schema_version 99 is not supported"):
        load_checkpoint(path)
    raw["schema_version"] = 0  # a number, not a legacy file (those have no schema_version)
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="schema_version 0 is not supported"):
        load_checkpoint(path)


def _saved(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "ckpt_last.pt"
    torch.save(raw, path)
    return path


MALFORMED: list[tuple[str, object, str]] = [
    ("rank_states", {"rng": {}}, "'rank_states' is not a list of per-rank dicts"),
    ("rank_states", [{"rng": {}}, 3], "'rank_states' is not a list of per-rank dicts"),
    ("model", {"wte.weight": "not a tensor"}, "'model' is not a state dict of tensors"),
    ("model", {3: torch.zeros(1)}, "'model' is not a state dict of tensors"),
    ("extra", [1], "'extra' has type list"),
]


@pytest.mark.parametrize(("key", "value", "message"), MALFORMED)
def test_malformed_parts_are_named(tmp_path: Path, key: str, value: object, message: str) -> None:
    raw = _checkpoint(GPT(TINY)).to_dict() | {key: value}
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(_saved(tmp_path, raw))


def test_rank_states_round_trip(tmp_path: Path) -> None:
    states = [{"rng": {"seed": 1}, "data_state": {"cursor": 2}}, {"rng": {"seed": 3}, "data_state": {"cursor": 4}}]
    path = tmp_path / "ckpt_last.pt"
    save_checkpoint(path, _checkpoint(GPT(TINY), rank_states=states))
    assert load_checkpoint(path).rank_states == states


def test_the_whole_architecture_is_read_strictly(tmp_path: Path) -> None:
    """gpt_config is ours, written exactly: a number stored as text is a damaged file, not coerced."""
    raw = _checkpoint(GPT(TINY)).to_dict()
    raw["gpt_config"] = raw["gpt_config"] | {"n_layer": "1"}
    with pytest.raises(CheckpointError, match="gpt_config: n_layer: Input should be a valid integer"):
        load_checkpoint(_saved(tmp_path, raw))


def test_the_checkpoint_is_frozen_keyword_only_and_slotted() -> None:
    checkpoint = _checkpoint(GPT(TINY))
    with pytest.raises(dataclasses.FrozenInstanceError):
        checkpoint.iter_num = 8  # type: ignore[misc]  # the point: assignment is refused
    assert not hasattr(checkpoint, "__dict__")
    with pytest.raises(TypeError):
        Checkpoint(1, {}, TINY, 0, 0.0, {})  # type: ignore[call-arg]  # the point: positional arguments are refused


def test_a_refused_write_or_copy_is_one_line_naming_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x", encoding="utf-8")
    target = blocker / "ckpt_last.pt"  # inside a file: the OS refuses
    with pytest.raises(CheckpointError, match=re.escape(f"{target}: cannot write checkpoint ({blocker} is a file")):
        save_checkpoint(target, _checkpoint(GPT(TINY)))
    best = tmp_path / "ckpt_best.pt"
    absent = re.escape(f"{best}: cannot write checkpoint (No such file or directory)")
    with pytest.raises(CheckpointError, match=absent):
        copy_checkpoint(tmp_path / "absent.pt", best)


def test_a_model_checkpoint_comes_with_its_tokenizer(tmp_path: Path) -> None:
    chars = list("abcdefghijk")
    meta = {"version": 1, "kind": "char", "vocab_size": 11, "dtype": "uint16", "encoding": None, "itos": chars}
    meta |= {"train_tokens": 5, "val_tokens": 2, "source_sha256": None}
    path = tmp_path / "ckpt_best.pt"
    save_checkpoint(path, _checkpoint(GPT(TINY), dataset_meta=meta))
    checkpoint, dataset_meta = load_model_checkpoint(path)
    assert not checkpoint.is_adapter
    assert dataset_meta.itos == chars
    save_checkpoint(path, _checkpoint(GPT(TINY), dataset_meta=None))
    with pytest.raises(CheckpointError, match="'dataset_meta' is missing; cannot decode tokens"):
        load_model_checkpoint(path)


@pytest.mark.parametrize("extra", [{"kind": "lora"}, {"kind": "lora", "r": 4}])
def test_an_adapter_is_not_a_model(tmp_path: Path, extra: dict[str, Any]) -> None:
    path = tmp_path / "ckpt_best.pt"
    save_checkpoint(path, _checkpoint(GPT(TINY), extra=extra))
    assert load_checkpoint(path).is_adapter
    with pytest.raises(CheckpointError, match=re.escape(f"sample or export its merged model in {tmp_path / 'merged'}")):
        load_model_checkpoint(path)


@pytest.mark.parametrize("extra", [None, {}, {"kind": "full"}, {"kind": "lorb"}, {"kind": "lor"}])
def test_only_a_lora_kind_is_an_adapter(extra: dict[str, Any] | None) -> None:
    assert not _checkpoint(GPT(TINY), extra=extra).is_adapter


def test_weights_mismatch_names_the_first_of_each_kind() -> None:
    expected = {name: torch.zeros(2) for name in ("a", "b", "c", "d", "e")} | {"f": torch.zeros(3), "g": torch.zeros(3)}
    saved = {"c": torch.zeros(2), "d": torch.zeros(2), "e": torch.zeros(2), "x": torch.zeros(1), "y": torch.zeros(1)}
    saved |= {"f": torch.zeros(4), "g": torch.zeros(1)}
    assert weights_mismatch(saved, expected) == (
        "2 tensor(s) missing, e.g. a; 2 unexpected tensor(s), e.g. x; 2 shape(s) differ, e.g. f (4,) vs (3,) here"
    )
    assert weights_mismatch(expected, expected) == ""
    assert weights_mismatch({"a": torch.zeros(2)}, {"a": torch.zeros(2), "b": torch.zeros(1)}) == (
        "1 tensor(s) missing, e.g. b"
    )
    assert weights_mismatch({"a": torch.zeros(2), "z": torch.zeros(1)}, {"a": torch.zeros(2)}) == (
        "1 unexpected tensor(s), e.g. z"
    )


def test_strip_compile_prefix() -> None:
    tensor = torch.zeros(1)
    assert strip_compile_prefix({"_orig_mod.lm_head.weight": tensor, "x": tensor}).keys() == {"lm_head.weight", "x"}


def test_legacy_nanogpt_checkpoint_migrates(tmp_path: Path) -> None:
    """A checkpoint in nanoGPT's train.py format (compiled-model prefixes, tensor best loss)."""
    torch.manual_seed(0)
    config = GPTConfig(block_size=8, vocab_size=50257, n_layer=1, n_head=2, n_embd=16, bias=True)
    model = GPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # nanoGPT on torch < 2.0 also saved each layer's causal mask buffer as `attn.bias`.
    mask = torch.tril(torch.ones(8, 8)).view(1, 1, 8, 8)
    nanogpt = {
        "model": {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
        | {"_orig_mod.transformer.h.0.attn.bias": mask},
        "optimizer": optimizer.state_dict(),
        "model_args": {
            "n_layer": 1,
            "n_head": 2,
            "n_embd": 16,
            "block_size": 8,
            "bias": True,
            "vocab_size": 50257,
            "dropout": 0.0,
        },
        "iter_num": 250,
        "best_val_loss": torch.tensor(1.4697),
        "config": {"dataset": "openwebtext", "batch_size": 12, "compile": True},
    }
    path = tmp_path / "ckpt.pt"
    torch.save(nanogpt, path)
    assert find_checkpoint(tmp_path) == path

    loaded = load_checkpoint(path)
    assert loaded.is_legacy
    assert loaded.iter_num == 250
    assert math.isclose(loaded.best_val_loss, 1.4697, rel_tol=1e-6)
    assert loaded.config["dataset"] == "openwebtext"
    assert loaded.rng is None
    assert loaded.data_state is None
    # nanoGPT's rule without a meta.pkl: GPT-2 BPE.
    assert loaded.dataset_meta is not None
    assert loaded.dataset_meta == {
        "version": 1,
        "kind": "tiktoken",
        "vocab_size": 50257,
        "dtype": "uint16",
        "encoding": "gpt2",
        "itos": None,
        "train_tokens": 0,
        "val_tokens": 0,
        "source_sha256": None,
    }
    assert loaded.schema_version == 0

    restored = GPT(loaded.arch)
    restored.load_state_dict(loaded.model)  # strict: every key matches without prefixes
    idx = torch.tensor([[464, 2068, 7586]])
    model.eval()
    restored.eval()
    assert torch.equal(restored(idx).logits, model(idx).logits)


def test_a_legacy_checkpoint_without_a_step_starts_at_zero(tmp_path: Path) -> None:
    config = TINY.replace(vocab_size=50257, real_vocab_size=50257)
    path = _saved(tmp_path, {"model": GPT(config).state_dict(), "model_args": model_args_of(config)})
    loaded = load_checkpoint(path)
    assert (loaded.iter_num, loaded.best_val_loss, loaded.config) == (0, math.inf, {})


def test_a_legacy_padded_gpt2_checkpoint_without_meta_is_gpt2_bpe(tmp_path: Path) -> None:
    """nanoGPT pads GPT-2's 50257 ids to 50304 rows: any vocabulary of at least 50257 is GPT-2 BPE."""
    config = TINY.replace(vocab_size=50304, real_vocab_size=50304)
    path = _saved(tmp_path, {"model": GPT(config).state_dict(), "model_args": model_args_of(config)})
    loaded = load_checkpoint(path)
    assert loaded.dataset_meta is not None
    assert (loaded.dataset_meta["encoding"], loaded.arch.real_vocab_size) == ("gpt2", 50257)


def test_legacy_small_vocab_without_meta_is_an_error(tmp_path: Path) -> None:
    model = GPT(TINY)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_args": model_args_of(TINY), "iter_num": 1}, path)
    with pytest.raises(CheckpointError, match=r"vocab_size 11 needs its meta.pkl beside it"):
        load_checkpoint(path)


def test_legacy_char_checkpoint_takes_meta_pkl_beside_it(tmp_path: Path) -> None:
    chars = sorted(set("hello world"))
    config = GPTConfig(block_size=8, vocab_size=len(chars), n_layer=1, n_head=2, n_embd=16)
    model = GPT(config)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_args": model_args_of(config), "iter_num": 5}, path)
    meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": {c: i for i, c in enumerate(chars)}}
    (tmp_path / "meta.pkl").write_bytes(pickle.dumps(meta))
    loaded = load_checkpoint(path)
    assert loaded.dataset_meta is not None
    assert loaded.dataset_meta["kind"] == "char"
    assert loaded.dataset_meta["itos"] == chars


LLAMA_LIKE = GPTConfig(
    block_size=8,
    vocab_size=11,
    n_layer=1,
    n_head=4,
    n_embd=16,
    position="rope",
    rope_theta=500000.0,
    norm="rmsnorm",
    norm_eps=1e-6,
    mlp="swiglu",
    mlp_hidden=40,
    qk_norm=True,
    n_kv_head=2,
    tie_embeddings=False,
    logit_softcap=15.0,
)


def test_every_option_round_trips_and_only_non_gpt2_options_join_model_args(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "ckpt_last.pt"
    save_checkpoint(path, _checkpoint(GPT(LLAMA_LIKE)))
    assert load_checkpoint(path).arch == LLAMA_LIKE
    model_args = torch.load(path, weights_only=True)["model_args"]
    assert (model_args["mlp"], model_args["n_kv_head"], model_args["qk_norm"]) == ("swiglu", 2, True)
    # GPT-2 keeps exactly nanoGPT's keys; one option away from it adds that key alone, so nanoGPT's
    # GPTConfig(**model_args) refuses the file instead of running it as GPT-2.
    assert set(model_args_of(TINY)) == {"n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout"}
    relu2 = GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=16, mlp="relu2")
    assert set(model_args_of(relu2)) - set(model_args_of(TINY)) == {"mlp"}


def test_a_checkpoint_from_before_the_options_loads_as_gpt2(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "ckpt_last.pt"
    save_checkpoint(path, _checkpoint(GPT(TINY)))
    raw = torch.load(path, weights_only=True)
    del raw["gpt_config"]
    raw["model_args"] = {
        k: raw["model_args"][k] for k in ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")
    }
    torch.save(raw, path)
    loaded = load_checkpoint(path)
    assert loaded.arch == TINY
    assert (loaded.arch.position, loaded.arch.norm, loaded.arch.mlp, loaded.arch.tie_embeddings) == (
        "learned",
        "layernorm",
        "gelu",
        True,
    )
    GPT(loaded.arch).load_state_dict(loaded.model)


@pytest.mark.parametrize("layout", ["gpt_config", "model_args"])
def test_unknown_option_value_is_a_checkpoint_error(tmp_path: Path, layout: str) -> None:
    torch.manual_seed(0)
    path = tmp_path / "ckpt_last.pt"
    save_checkpoint(path, _checkpoint(GPT(TINY)))
    raw = torch.load(path, weights_only=True)
    if layout == "model_args":  # a file from before the architecture was stored whole
        del raw["gpt_config"]
    raw[layout]["mlp"] = "geglu"
    torch.save(raw, path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert f"{path}: {layout}: mlp: Input should be 'gelu', 'swiglu' or 'relu2'" in message
    assert "\n" not in message


def _model_args_only(config: GPTConfig, model_args: dict[str, Any], tokens: int) -> dict[str, Any]:
    """A checkpoint as versions before the whole architecture was stored wrote it, built by hand."""
    torch.manual_seed(0)
    return {
        "schema_version": 1,
        "model": GPT(config).state_dict(),
        "model_args": model_args,
        "iter_num": 3,
        "best_val_loss": 2.5,
        "config": {},
        "dataset_meta": {"kind": "char", "vocab_size": tokens},
    }


@pytest.mark.parametrize("sizes", ["None", "absent"])
def test_model_args_without_sizes_load_as_the_sizes_they_meant(tmp_path: Path, sizes: str) -> None:
    """Earlier versions wrote n_kv_head and mlp_hidden as None (or left them out) for their defaults:
    n_head, and 4 x n_embd even for swiglu (whose default width is now 8/3 x n_embd); the tokens were
    the dataset metadata's vocabulary."""
    config = GPTConfig(
        block_size=8, vocab_size=16, n_layer=1, n_head=4, n_embd=16, position="rope", mlp="swiglu", mlp_hidden=64
    ).replace(real_vocab_size=9)
    model_args: dict[str, Any] = {
        "n_layer": 1,
        "n_head": 4,
        "n_embd": 16,
        "block_size": 8,
        "bias": False,
        "vocab_size": 16,
        "dropout": 0.0,
        "position": "rope",
        "mlp": "swiglu",
    }
    if sizes == "None":
        model_args |= {"mlp_hidden": None, "n_kv_head": None}
    raw = _model_args_only(config, model_args, tokens=9)
    path = tmp_path / "ckpt_last.pt"
    torch.save(raw, path)
    loaded = load_checkpoint(path)
    assert (loaded.arch.mlp_hidden, loaded.arch.n_kv_head, loaded.arch.real_vocab_size) == (64, 4, 9)
    assert loaded.arch == config
    GPT(loaded.arch).load_state_dict(loaded.model)  # strict: every shape is the one it was saved with


@pytest.mark.parametrize(("tokens", "real"), [(-1, 16), (0, 16), (1, 1), (9, 9), (16, 16), (17, 16)])
def test_model_args_take_the_tokens_that_fit_the_rows(tmp_path: Path, tokens: int, real: int) -> None:
    """The dataset's vocabulary becomes real_vocab_size when it is a count of 1..vocab_size."""
    config = TINY.replace(vocab_size=16, real_vocab_size=16)
    path = _saved(tmp_path, _model_args_only(config, model_args_of(config), tokens=tokens))
    assert load_checkpoint(path).arch.real_vocab_size == real


def test_model_args_take_numbers_as_older_writers_stored_them(tmp_path: Path) -> None:
    args = model_args_of(TINY) | {"n_embd": 16.0, "block_size": 8.0}  # floats from a JSON-like config
    assert load_checkpoint(_saved(tmp_path, _model_args_only(TINY, args, tokens=11))).arch == TINY


def test_model_args_with_every_option_load_whole(tmp_path: Path) -> None:
    """An earlier file of a non-GPT-2 architecture: its options were in model_args, sizes as numbers."""
    raw = _model_args_only(LLAMA_LIKE, model_args_of(LLAMA_LIKE), tokens=11)
    path = tmp_path / "ckpt_last.pt"
    torch.save(raw, path)
    assert load_checkpoint(path).arch == LLAMA_LIKE


def test_model_args_keys_we_do_not_know_are_refused(tmp_path: Path) -> None:
    raw = _model_args_only(TINY, model_args_of(TINY) | {"sliding_window": 4}, tokens=11)
    path = tmp_path / "ckpt_last.pt"
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=r"model_args: sliding_window: unknown key"):
        load_checkpoint(path)
