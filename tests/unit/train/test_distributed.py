"""Process-group facts, backend choice, global batch arithmetic and failure translation (one process;
the multi-process behaviour is tested under torchrun in tests/integration/test_ddp_torchrun.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch

from ml_playground.errors import ConfigError, DistributedError
from ml_playground.train.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_mean,
    backend_for,
    barrier,
    dist_info_from_env,
    grad_accum_steps_for,
    process_group,
    translate_peer_failures,
)
from tests.support.tiny_training import tiny_train_table, train_config
from tests.support.torchrun import agent_store


def _data(tmp_path: Path, **data: Any) -> Any:
    table = tiny_train_table(tmp_path / "ds", tmp_path / "out")
    table["data"] = {**table["data"], **data}
    return train_config(table).data


def test_env_defaults_to_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = dist_info_from_env()
    assert (info.rank, info.world_size, info.is_main, info.is_distributed) == (0, 1, True, False)


def test_env_of_a_torchrun_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = dist_info_from_env()
    assert (info.rank, info.local_rank, info.world_size, info.is_main, info.is_distributed) == (3, 1, 4, False, True)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RANK": "2", "WORLD_SIZE": "2"}, "rank must be in [0, world size)"),
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
        ({"LOCAL_RANK": "-1"}, "LOCAL_RANK=-1"),
    ],
)
def test_env_misconfiguration(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(DistributedError, match=message.replace("[", r"\[").replace(")", r"\)")):
        dist_info_from_env()


def test_backend_follows_device() -> None:
    assert backend_for(torch.device("cpu")) == "gloo"
    assert backend_for(torch.device("cuda", 0)) == "nccl"
    with pytest.raises(DistributedError, match=r"train\.runtime\.device: mps has no distributed backend"):
        backend_for(torch.device("mps"))


def test_global_batch_derives_accumulation(tmp_path: Path) -> None:
    data = _data(tmp_path, batch_size=4, global_batch_size=48)
    assert [grad_accum_steps_for(data, world) for world in (1, 2, 3, 4, 6, 12)] == [12, 6, 4, 3, 2, 1]
    plain = _data(tmp_path, batch_size=4, grad_accum_steps=5)
    assert [grad_accum_steps_for(plain, world) for world in (1, 2, 8)] == [5, 5, 5]  # per rank


def test_global_batch_that_does_not_divide_names_key_and_world(tmp_path: Path) -> None:
    data = _data(tmp_path, batch_size=4, global_batch_size=48)
    with pytest.raises(DistributedError) as error:
        grad_accum_steps_for(data, 5)
    assert str(error.value) == ("train.data.global_batch_size: 48 is not divisible by batch_size 4 x world_size 5 = 20")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"global_batch_size": 48, "grad_accum_steps": 2}, "set global_batch_size or grad_accum_steps, not both"),
        ({"global_batch_size": 10, "batch_size": 4}, "global_batch_size (10) is not divisible by batch_size (4)"),
    ],
)
def test_global_batch_config_errors(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        _data(tmp_path, **data)
    assert "train.data" in str(error.value)
    assert message in str(error.value)


def test_single_process_collectives_are_identities() -> None:
    one = DistInfo()
    value = torch.tensor(2.5)
    assert all_reduce_mean(one, value) is value
    assert all_gather_objects(one, {"a": 1}) == [{"a": 1}]
    barrier(one)
    with process_group(one, torch.device("cpu"), 1.0):
        assert not torch.distributed.is_initialized()


def test_world_size_without_torchrun_variables_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with (
        pytest.raises(DistributedError, match="MASTER_ADDR, MASTER_PORT not set: launch with torchrun"),
        process_group(DistInfo(rank=0, world_size=2), torch.device("cpu"), 1.0),
    ):
        pass


def test_missing_peer_fails_within_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    started = time.monotonic()
    two_ranks = DistInfo(rank=0, world_size=2)
    with agent_store() as store:
        for name, value in store.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(DistributedError) as error, process_group(two_ranks, torch.device("cpu"), 2.0):
            pass
    # The configured 2 s, not torch's default of 30 min; generous, so a busy machine cannot fail it.
    assert time.monotonic() - started < 120
    message = str(error.value)
    assert message.startswith("rank 0/2: init_process_group failed, a peer process died or timed out")
    assert "\n" not in message
    assert not torch.distributed.is_initialized()


def test_gloo_timeouts_become_one_line_and_other_runtime_errors_stay_bugs() -> None:
    """gloo reports a timed-out collective as a plain RuntimeError (its message as torch 2.15
    words it); that is a peer failure. Any other RuntimeError is a bug and keeps its traceback."""
    two_ranks = DistInfo(rank=1, world_size=2)
    gloo = "[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 3000ms for recv"
    for message in (gloo, "Application timeout caused pair closure"):
        with pytest.raises(DistributedError) as error, translate_peer_failures(two_ranks, "training"):
            raise RuntimeError(message)
        assert str(error.value).startswith(
            f"rank 1/2: training failed, a peer process died or timed out (RuntimeError: {message}"
        )
    with pytest.raises(RuntimeError) as bug, translate_peer_failures(two_ranks, "training"):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    assert str(bug.value) == "mat1 and mat2 shapes cannot be multiplied"
