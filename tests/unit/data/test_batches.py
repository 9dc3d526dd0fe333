from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ml_playground.data.batches import BatchSource, SamplerMode
from ml_playground.errors import DataError

N_TRAIN = 200
N_VAL = 60


def _files(tmp_path: Path) -> tuple[Path, Path]:
    # Token i has id i % 1000, so a window's first id tells where it starts.
    train, val = tmp_path / "train.bin", tmp_path / "val.bin"
    np.arange(N_TRAIN, dtype="<u2").tofile(train)
    np.arange(N_VAL, dtype="<u2").tofile(val)
    return train, val


def _source(
    tmp_path: Path, mode: SamplerMode = "random", rank: int = 0, world_size: int = 1, train: list[Path] | None = None
) -> BatchSource:
    """A source over `_files` (or over `train`, holding the same train tokens)."""
    one_file, val = _files(tmp_path)
    return BatchSource(
        train_files=train or [one_file],
        val_files=[val],
        token_dtype=np.dtype("<u2"),
        batch_size=4,
        block_size=10,
        device=torch.device("cpu"),
        mode=mode,
        seed=3,
        rank=rank,
        world_size=world_size,
    )


def test_targets_are_inputs_shifted_by_one(tmp_path: Path) -> None:
    x, y = _source(tmp_path).get_batch("train")
    assert x.shape == y.shape == (4, 10)
    assert x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y[:, -1], x[:, -1] + 1)


def test_sequential_walks_windows_in_order_and_wraps(tmp_path: Path) -> None:
    source = _source(tmp_path, "sequential")
    starts = [int(v) for _ in range(6) for v in source.get_batch("train")[0][:, 0]]
    # (200 - 1) // 10 = 19 windows per epoch, then the order starts again.
    assert starts == [10 * i for i in range(19)] + [0, 10, 20, 30, 40]


def test_shuffled_sees_each_window_once_per_epoch(tmp_path: Path) -> None:
    source = _source(tmp_path, "shuffled")
    starts = [int(v) for _ in range(10) for v in source.get_batch("train")[0][:, 0]]
    first_epoch, second_epoch = starts[:19], starts[19:38]
    assert sorted(first_epoch) == [10 * i for i in range(19)]
    assert sorted(second_epoch) == [10 * i for i in range(19)]
    assert first_epoch != second_epoch


@pytest.mark.parametrize("mode", ["shuffled", "sequential"])
def test_ranks_draw_disjoint_windows(tmp_path: Path, mode: SamplerMode) -> None:
    seen: list[set[int]] = []
    for rank in range(2):
        source = _source(tmp_path, mode, rank=rank, world_size=2)
        seen.append({int(v) for _ in range(2) for v in source.get_batch("train")[0][:, 0]})
    assert len(seen[0]) == len(seen[1]) == 8
    assert not seen[0] & seen[1]


def test_random_ranks_draw_different_streams(tmp_path: Path) -> None:
    a = _source(tmp_path, "random", rank=0, world_size=2).get_batch("train")[0]
    b = _source(tmp_path, "random", rank=1, world_size=2).get_batch("train")[0]
    assert not torch.equal(a, b)


@pytest.mark.parametrize("mode", ["random", "shuffled", "sequential"])
def test_state_round_trip_continues_the_same_stream(tmp_path: Path, mode: SamplerMode) -> None:
    source = _source(tmp_path, mode)
    for _ in range(7):
        source.get_batch("train")
    state = source.state_dict()
    expected = [source.get_batch("train")[0] for _ in range(8)]
    restored = _source(tmp_path, mode)
    restored.load_state_dict(state)
    assert all(torch.equal(a, restored.get_batch("train")[0]) for a in expected)


@pytest.mark.parametrize("mode", ["random", "shuffled", "sequential"])
def test_prefetch_keeps_the_stream_and_the_saved_position(tmp_path: Path, mode: SamplerMode) -> None:
    """Prefetching returns the batches a plain source returns, in the same order; a state saved
    while a batch waits is the position before it, so a restored source draws that batch again."""
    plain = _source(tmp_path, mode)
    expected = [plain.get_batch("train")[0] for _ in range(12)]
    source = _source(tmp_path, mode)
    got = [source.get_batch("train")[0] for _ in range(4)]
    source.prefetch("train")
    source.prefetch("train")  # one ahead at most: a second call draws nothing
    state = source.state_dict()
    list(source.eval_batches("train", 2))  # evaluation between prefetch and use changes nothing
    got += [source.get_batch("train")[0] for _ in range(4)]
    restored = _source(tmp_path, mode)
    restored.load_state_dict(state)
    resumed = got[:4] + [restored.get_batch("train")[0] for _ in range(8)]
    for _ in range(4):
        source.prefetch("train")
        got.append(source.get_batch("train")[0])
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(resumed, expected, strict=True))
    saved, after_four = state["streams"]["train"], _state_after(tmp_path, mode, 4)["streams"]["train"]
    assert (saved["epoch"], saved["cursor"]) == (after_four["epoch"], after_four["cursor"])
    assert torch.equal(saved["generator"], after_four["generator"])


def _state_after(tmp_path: Path, mode: SamplerMode, batches: int) -> dict[str, Any]:
    source = _source(tmp_path, mode)
    for _ in range(batches):
        source.get_batch("train")
    return source.state_dict()


def test_loading_a_state_drops_a_prefetched_batch(tmp_path: Path) -> None:
    source = _source(tmp_path)
    start = source.state_dict()
    first = source.get_batch("train")[0]
    source.prefetch("train")
    source.load_state_dict(start)
    assert torch.equal(source.get_batch("train")[0], first)


def test_eval_batches_are_fixed_and_leave_training_stream_alone(tmp_path: Path) -> None:
    source = _source(tmp_path)
    reference = _source(tmp_path)
    first = [x for x, _ in source.eval_batches("val", 3)]
    second = [x for x, _ in source.eval_batches("val", 3)]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert torch.equal(source.get_batch("train")[0], reference.get_batch("train")[0])


def test_missing_and_too_short_files_are_data_errors(tmp_path: Path) -> None:
    train, val = _files(tmp_path)
    with pytest.raises(DataError, match=r"nope\.bin: token file not found"):
        BatchSource(
            train_files=[tmp_path / "nope.bin"],
            val_files=[val],
            token_dtype=np.dtype("<u2"),
            batch_size=1,
            block_size=4,
            device=torch.device("cpu"),
        )
    with pytest.raises(DataError, match=r"val\.bin: 60 tokens, need more than block_size 64"):
        BatchSource(
            train_files=[train],
            val_files=[val],
            token_dtype=np.dtype("<u2"),
            batch_size=1,
            block_size=64,
            device=torch.device("cpu"),
        )


def test_changed_mode_is_an_error(tmp_path: Path) -> None:
    state = _source(tmp_path, "random").state_dict()
    with pytest.raises(DataError, match="saved with sampler 'random'"):
        _source(tmp_path, "sequential").load_state_dict(state)


def _sharded(tmp_path: Path, mode: SamplerMode, cuts: list[int], rank: int = 0, world_size: int = 1) -> BatchSource:
    """The same tokens as `_files`, the train split cut into shards at `cuts` (an empty shard included)."""
    tokens = np.arange(N_TRAIN, dtype="<u2")
    bounds = [0, *cuts, N_TRAIN]
    shards = [tmp_path / f"train-{i}.bin" for i in range(len(bounds) - 1)]
    for shard, start, end in zip(shards, bounds[:-1], bounds[1:], strict=True):
        tokens[start:end].tofile(shard)
    return _source(tmp_path, mode, rank=rank, world_size=world_size, train=shards)


@pytest.mark.parametrize("mode", ["random", "shuffled", "sequential"])
@pytest.mark.parametrize("rank", [0, 1])
def test_shards_give_the_batches_and_resume_of_one_file(tmp_path: Path, mode: SamplerMode, rank: int) -> None:
    one = _source(tmp_path, mode, rank=rank, world_size=2)
    sharded = _sharded(tmp_path, mode, cuts=[37, 37, 120, 121], rank=rank, world_size=2)
    for _ in range(12):  # past an epoch; windows that span shard boundaries included
        assert all(torch.equal(a, b) for a, b in zip(one.get_batch("train"), sharded.get_batch("train"), strict=True))
    sharded.prefetch("train")
    resumed = _sharded(tmp_path, mode, cuts=[37, 37, 120, 121], rank=rank, world_size=2)
    resumed.load_state_dict(sharded.state_dict())
    assert torch.equal(resumed.get_batch("train")[0], one.get_batch("train")[0])
    evals = zip(one.eval_batches("train", 2), sharded.eval_batches("train", 2), strict=True)
    assert all(torch.equal(a[0], b[0]) for a, b in evals)
