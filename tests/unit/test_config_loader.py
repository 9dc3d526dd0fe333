from __future__ import annotations

from pathlib import Path

import pytest

from ml_playground.config import PROJECT_ROOT, project_path
from ml_playground.config_loader import load_experiment_config, require
from ml_playground.errors import ConfigError

VALID = """
[prepare]
dataset_dir = "out/ds"

[train.model]
n_layer = 2
n_head = 2
n_embd = 32
block_size = 16

[train.data]
dataset_dir = "out/ds"
batch_size = 4
block_size = 16

[train.optim]
learning_rate = 1
"""

TRAIN_TAIL = """
[train.runtime]
out_dir = "out/run"
max_iters = 10
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_experiment_config(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "cfg.toml") in message
    return message


def test_valid_config_loads_and_resolves_paths(tmp_path: Path) -> None:
    cfg = load_experiment_config(write(tmp_path, VALID + TRAIN_TAIL))
    assert cfg.train is not None
    assert cfg.train.optim.learning_rate == 1.0  # an int is fine where a float is expected
    assert isinstance(cfg.train.optim.learning_rate, float)
    assert cfg.train.runtime.out_dir == PROJECT_ROOT / "out/run"
    assert cfg.train.data.train_path == PROJECT_ROOT / "out/ds/train.bin"
    assert cfg.sample is None


def test_unknown_key_is_named(tmp_path: Path) -> None:
    message = load_error(tmp_path, VALID + TRAIN_TAIL + "\n[train.schedule]\nwarmup = 3\n")
    assert "train.schedule.warmup: unknown key" in message


def test_unknown_table_is_named(tmp_path: Path) -> None:
    message = load_error(tmp_path, VALID + TRAIN_TAIL + "\n[trian]\nx = 1\n")
    assert "trian: unknown key" in message


def test_wrong_type_is_not_coerced(tmp_path: Path) -> None:
    message = load_error(tmp_path, VALID.replace("learning_rate = 1", 'learning_rate = "3e-4x"') + TRAIN_TAIL)
    assert "train.optim.learning_rate" in message
    assert "3e-4x" in message
    message = load_error(tmp_path, VALID.replace("n_layer = 2", 'n_layer = "2"') + TRAIN_TAIL)
    assert "train.model.n_layer" in message


def test_all_problems_reported_together(tmp_path: Path) -> None:
    text = VALID.replace("n_layer = 2", "n_layer = 0").replace("batch_size = 4", "batch_size = -1") + TRAIN_TAIL
    message = load_error(tmp_path, text.replace('out_dir = "out/run"', 'out_dir = "out/run"\ndevice = "tpu"'))
    assert "train.model.n_layer" in message
    assert "train.data.batch_size" in message
    assert "train.runtime.device" in message


def test_cross_field_rules(tmp_path: Path) -> None:
    message = load_error(tmp_path, VALID.replace("n_head = 2", "n_head = 3") + TRAIN_TAIL)
    assert "train.model" in message
    assert "divisible by n_head" in message
    message = load_error(
        tmp_path, VALID.replace("block_size = 16\n\n[train.optim]", "block_size = 32\n\n[train.optim]") + TRAIN_TAIL
    )
    assert "data.block_size (32) exceeds model.block_size (16)" in message


def test_fallback_source_needs_file_sources(tmp_path: Path) -> None:
    with_source = VALID.replace('"out/ds"\n', '"out/ds"\nsource = "a.txt"\n', 1) + TRAIN_TAIL
    assert load_experiment_config(write(tmp_path, with_source.replace("a.txt", 'a.txt"\nfallback_source = "b.txt')))
    message = load_error(tmp_path, with_source.replace('"a.txt"', '"https://x/a.txt"\nfallback_source = "bundled"'))
    assert "prepare:" in message
    assert "fallback_source is only read for a file source, not 'https://x/a.txt'" in message
    assert "fallback_source must be a file path, not 'bundled'" in message


def test_architecture_options_are_checked_together(tmp_path: Path) -> None:
    text = VALID.replace("n_embd = 32", 'n_embd = 6\nn_kv_head = 3\nposition = "rope"')
    message = load_error(tmp_path, text + TRAIN_TAIL)
    assert "train.model" in message
    assert "n_head (2) must be divisible by n_kv_head (3)" in message
    assert "position = 'rope' needs an even head size, but n_embd / n_head = 3" in message
    message = load_error(tmp_path, VALID.replace("n_head = 2", 'n_head = 2\nmlp = "geglu"') + TRAIN_TAIL)
    assert "train.model.mlp" in message
    assert "geglu" in message


def test_real_vocab_size_is_the_datasets_not_a_key(tmp_path: Path) -> None:
    text = VALID.replace("block_size = 16\n\n[train.data]", "block_size = 16\nreal_vocab_size = 40\n\n[train.data]")
    message = load_error(tmp_path, text + TRAIN_TAIL)
    assert "train.model.real_vocab_size: not a [train.model] key" in message


def test_a_key_that_fails_is_named_alone(tmp_path: Path) -> None:
    """Sizes that follow a failing key (n_kv_head follows n_head) add no message of their own."""
    message = load_error(tmp_path, VALID.replace("n_head = 2", "n_head = 0") + TRAIN_TAIL)
    assert message == f"{tmp_path / 'cfg.toml'}: train.model.n_head: Input should be greater than 0 (got int 0)"


def test_keys_after_a_skipped_size_are_still_named(tmp_path: Path) -> None:
    """A size skipped after its failing key does not end the list: later keys are still named."""
    text = VALID.replace("n_head = 2", "n_head = 0").replace("learning_rate = 1", 'learning_rate = "x"')
    message = load_error(tmp_path, text + TRAIN_TAIL)
    assert "train.model.n_head" in message
    assert "train.optim.learning_rate" in message


@pytest.mark.parametrize(
    ("length", "shown"),
    [(58, "'" + "a" * 58 + "'"), (59, "'" + "a" * 56 + "...")],
)
def test_a_long_bad_value_is_cut_to_sixty_characters(tmp_path: Path, length: int, shown: str) -> None:
    """A value whose repr is up to 60 characters is shown whole; a longer one as its first 57 and '...'."""
    message = load_error(tmp_path, VALID.replace("n_layer = 2", f'n_layer = "{"a" * length}"') + TRAIN_TAIL)
    assert message.endswith(f"train.model.n_layer: Input should be a valid integer (got str {shown})")


def test_init_from_leaves_the_shape_rules_to_the_source(tmp_path: Path) -> None:
    """Keys set beside init_from are checked against the source's architecture, not against the
    defaults of the keys left out (n_head 2 here, which 3 key/value heads would not divide)."""
    text = VALID.replace("n_layer = 2", 'init_from = "gpt2"\nn_kv_head = 3')
    cfg = load_experiment_config(write(tmp_path, text + TRAIN_TAIL))
    assert cfg.train is not None
    assert cfg.train.model.n_kv_head == 3
    assert "n_head (2) must be divisible by n_kv_head (3)" in load_error(
        tmp_path, VALID.replace("n_layer = 2", "n_kv_head = 3") + TRAIN_TAIL
    )


def test_swiglu_width_defaults_to_eight_thirds_rounded_up(tmp_path: Path) -> None:
    from ml_playground.config import ModelConfig

    assert ModelConfig(n_embd=384, mlp="swiglu").mlp_hidden == 1024
    assert ModelConfig(n_embd=128, n_head=4, mlp="swiglu", mlp_multiple=32).mlp_hidden == 352
    assert ModelConfig(n_embd=128, n_head=4, mlp="swiglu", mlp_hidden=300).mlp_hidden == 300
    assert ModelConfig(n_embd=128, n_head=4, mlp="relu2").mlp_hidden == 512


def test_missing_required_key(tmp_path: Path) -> None:
    message = load_error(tmp_path, VALID + "\n[train.runtime]\nmax_iters = 3\n")
    assert "train.runtime.out_dir: required key is missing" in message


def test_toml_syntax_error_names_line(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[train\nx = 1\n")
    assert "TOML syntax error" in message
    assert "line 1" in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_experiment_config(tmp_path / "nope.toml")


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_experiment_config(tmp_path)  # a folder: reading it is an OSError other than "not found"


def test_a_command_requires_its_table(tmp_path: Path) -> None:
    path = write(tmp_path, VALID + TRAIN_TAIL)
    cfg = load_experiment_config(path)
    assert require(cfg.train, path, "train") is cfg.train
    with pytest.raises(ConfigError, match=r"cfg\.toml: sample: table \[sample\] is required for this command"):
        require(cfg.sample, path, "sample")


def test_paths_resolve_against_the_project_root_with_home_expanded(tmp_path: Path) -> None:
    cfg = load_experiment_config(write(tmp_path, (VALID + TRAIN_TAIL).replace('"out/run"', '"~/run"')))
    assert cfg.train is not None
    assert cfg.train.runtime.out_dir == Path.home() / "run"
    assert project_path("out/run") == PROJECT_ROOT / "out" / "run"
    assert project_path(tmp_path) == tmp_path


def test_a_byte_order_mark_is_not_part_of_the_toml(tmp_path: Path) -> None:
    path = tmp_path / "cfg.toml"
    path.write_bytes(b"\xef\xbb\xbf" + (VALID + TRAIN_TAIL).encode("utf-8"))
    cfg = load_experiment_config(path)
    assert cfg.train is not None
    assert cfg.train.runtime.out_dir == PROJECT_ROOT / "out/run"


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('out_dir = "out/run"', 'out_dir = ""', "train.runtime.out_dir"),
        ('out_dir = "out/run"', 'out_dir = "  "', "train.runtime.out_dir"),
        ('[prepare]\ndataset_dir = "out/ds"', '[prepare]\ndataset_dir = ""', "prepare.dataset_dir"),
    ],
)
def test_an_empty_path_is_an_error_naming_the_key(tmp_path: Path, old: str, new: str, key: str) -> None:
    """Not the project root, where a run's checkpoints, lock and logs would land among the sources."""
    message = load_error(tmp_path, (VALID + TRAIN_TAIL).replace(old, new))
    reason = "empty path; name a file or folder (a relative path is taken from the project root)"
    assert message == f"{tmp_path / 'cfg.toml'}: {key}: {reason}"


def test_a_folder_key_naming_a_file_is_an_error_naming_the_key(tmp_path: Path) -> None:
    existing = tmp_path / "run.txt"
    existing.write_text("a file\n", encoding="utf-8")
    message = load_error(tmp_path, (VALID + TRAIN_TAIL).replace('"out/run"', f'"{existing}"'))
    assert message == (
        f"{tmp_path / 'cfg.toml'}: train.runtime.out_dir: {existing} is a file, not a folder; "
        "name a folder (or move the file)"
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("dropout", "1.0"),
        ("dropout", "-0.1"),
        ("bias", '"yes"'),
        ("vocab_multiple", "0"),
        ("vocab_multiple", "-64"),
        ("vocab_multiple", '"64"'),
        ("vocab_multiple", "6.4"),
    ],
)
def test_model_ranges(tmp_path: Path, key: str, value: str) -> None:
    text = VALID.replace("block_size = 16\n\n[train.data]", f"block_size = 16\n{key} = {value}\n\n[train.data]")
    message = load_error(tmp_path, text + TRAIN_TAIL)
    assert f"train.model.{key}" in message


def test_vocab_multiple_defaults_to_64_and_may_be_one(tmp_path: Path) -> None:
    cfg = load_experiment_config(write(tmp_path, VALID + TRAIN_TAIL))
    assert cfg.train is not None
    assert cfg.train.model.vocab_multiple == 64
    text = VALID.replace("block_size = 16\n\n[train.data]", "block_size = 16\nvocab_multiple = 1\n\n[train.data]")
    cfg = load_experiment_config(write(tmp_path, text + TRAIN_TAIL))
    assert cfg.train is not None
    assert cfg.train.model.vocab_multiple == 1


def test_muon_keys_and_refusals(tmp_path: Path) -> None:
    muon = VALID.replace("learning_rate = 1", 'learning_rate = 1\noptimizer = "muon"\nmuon_learning_rate = 0.05')
    cfg = load_experiment_config(write(tmp_path, muon + TRAIN_TAIL))
    assert cfg.train is not None
    assert cfg.train.optim.optimizer == "muon"
    assert cfg.train.optim.muon_learning_rate == 0.05
    message = load_error(tmp_path, muon.replace("muon_learning_rate = 0.05", "muon_momentum = 1.5") + TRAIN_TAIL)
    assert "train.optim.muon_momentum" in message
    message = load_error(tmp_path, muon + TRAIN_TAIL + 'parallel = "fsdp"\n')
    assert 'optim.optimizer: "muon" needs whole matrices; use runtime.parallel = "ddp"' in message
