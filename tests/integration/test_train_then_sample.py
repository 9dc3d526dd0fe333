"""Train -> sample through the Python APIs: the sampler continues what the trainer learned."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_playground.config import SampleConfig, SampleRuntimeConfig, SampleSettings
from ml_playground.sample import run_sampling
from ml_playground.train.loop import train
from tests.support.tiny_training import tiny_train_table, train_config, write_char_dataset

CYCLE = "the cat sat on a mat. "


@pytest.mark.slow
def test_sampler_continues_a_learned_cycle_past_block_size(tmp_path: Path) -> None:
    write_char_dataset(tmp_path / "data", CYCLE * 200)
    table = tiny_train_table(tmp_path / "data", tmp_path / "out")
    table["model"] = {**table["model"], "n_embd": 32, "n_head": 2}
    table["schedule"] = {"warmup_iters": 10, "lr_decay_iters": 200, "min_lr": 1e-3}
    table["runtime"] = {**table["runtime"], "max_iters": 200, "eval_interval": 100, "log_interval": 50}
    train(train_config(table))

    settings = SampleSettings(start="the cat", max_new_tokens=60, temperature=0.0, num_samples=1)
    (text,) = run_sampling(SampleConfig(runtime=SampleRuntimeConfig(out_dir=tmp_path / "out"), sample=settings))
    # 67 characters: more than four blocks of 16, so the window slides the whole time.
    assert text == (CYCLE * 4)[: len("the cat") + 60]
    assert (tmp_path / "out" / "ckpt_best.pt").is_file()
    assert len(list((tmp_path / "out" / "samples").glob("*.txt"))) == 1
