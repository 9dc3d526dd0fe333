"""Runs of different options written under one parent directory are separate TensorBoard runs.

`make tensorboard LOGDIR=out` serves such a parent; TensorBoard's own multiplexer (what its server
reads) finds each run's `out_dir/logs/tb` as a run of its own, named by its path under the parent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from ml_playground.train.loop import train
from tests.support.tiny_training import tiny_train_table, train_config, write_char_dataset


def test_two_runs_under_one_parent_are_two_runs_with_their_val_loss(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.util import tensor_util

    dataset = tmp_path / "data"
    write_char_dataset(dataset)
    parent = tmp_path / "out"
    for name, position in (("learned", "learned"), ("rope", "rope")):
        table = tiny_train_table(dataset, parent / name)
        table["model"]["position"] = position
        train(train_config(table))
    runs = EventMultiplexer().AddRunsFromDirectory(str(parent))
    runs.Reload()
    assert sorted(cast("dict[str, Any]", runs.Runs())) == ["learned/logs/tb", "rope/logs/tb"]
    # What the scalars dashboard lists: each run with its own val/loss.
    scalars = cast("dict[str, dict[str, Any]]", runs.PluginRunToTagToContent("scalars"))
    assert {run for run, tags in scalars.items() if "val/loss" in tags} == {"learned/logs/tb", "rope/logs/tb"}
    curves = {
        run: [
            (int(e.step), float(cast("Any", tensor_util.make_ndarray(e.tensor_proto))))
            for e in cast("list[Any]", runs.Tensors(run, "val/loss"))
        ]
        for run in ("learned/logs/tb", "rope/logs/tb")
    }
    assert [step for step, _ in curves["learned/logs/tb"]] == [3, 6]
    assert [step for step, _ in curves["rope/logs/tb"]] == [3, 6]
    assert curves["learned/logs/tb"] != curves["rope/logs/tb"]  # each run's own events, not one merged run
