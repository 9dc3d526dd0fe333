"""[train.eval]: the evaluation of `make eval` every `every` steps of a training run, on the live
model. Rank 0 evaluates while the others wait at a barrier (under torchrun the evaluation must
finish within train.runtime.dist_timeout_s); the time is paused out of the throughput windows; the
RNG states are restored afterwards, so training continues as it would have without it. A task that
fails is logged in one line and stops nothing.

lm-eval is imported only when an evaluation is due: a run without [train.eval] never needs it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Protocol

from pydantic import TypeAdapter

from ml_playground.config import TrainConfig
from ml_playground.data.meta import DatasetMeta
from ml_playground.errors import summary
from ml_playground.model import GPT
from ml_playground.runtime import Runtime, rng_state, set_rng_state
from ml_playground.tokenizers import tokenizer_from_meta
from ml_playground.train.distributed import DistInfo, barrier
from ml_playground.train.metrics import MetricsSink

log = logging.getLogger(__name__)

_CONFIG: TypeAdapter[TrainConfig] = TypeAdapter(TrainConfig)  # the run's config as its checkpoints store it


class Run(Protocol):
    """What the evaluation reads of the training loop's context."""

    @property
    def cfg(self) -> TrainConfig: ...
    @property
    def model(self) -> GPT: ...
    @property
    def runtime(self) -> Runtime: ...
    @property
    def dist(self) -> DistInfo: ...
    @property
    def sink(self) -> MetricsSink | None: ...
    @property
    def dataset_meta(self) -> dict[str, Any] | None: ...


class Pausable(Protocol):
    def pause(self) -> None: ...


def evaluate_tasks(run: Run, clock: Pausable, step: int) -> None:
    """At every `every`-th step: evaluate on rank 0, the others waiting."""
    settings = run.cfg.eval
    if settings is None or step % settings.every != 0:
        return
    clock.pause()
    if run.dist.is_main:
        rng = rng_state()
        run.model.train(False)
        try:
            _evaluate(run, step)
        finally:
            run.model.train(True)
            set_rng_state(rng)
    barrier(run.dist)


def _evaluate(run: Run, step: int) -> None:
    from ml_playground.evaluation import harness
    from ml_playground.evaluation.lm import PlaygroundLM
    from ml_playground.evaluation.results import provenance, write_results

    settings = run.cfg.eval
    if settings is None:
        return
    record_parts: list[dict[str, Any]] = []
    try:
        meta = DatasetMeta.from_dict(run.dataset_meta, where="the run's dataset metadata")
        lm = PlaygroundLM(run.model, tokenizer_from_meta(meta), run.runtime, settings.batch_size)
    except Exception as exc:  # a failed evaluation stops no training
        log.warning("eval at iter %d failed: %s", step, summary(exc))
        return
    for spec in settings.tasks:
        try:
            plan = harness.plan(dataclasses.replace(settings, tasks=(spec,), text=None), "train.eval")
            record_parts.append(harness.evaluate_task(lm, plan, plan.tasks[0], settings))
        except Exception as exc:  # a failed task stops no training
            log.warning("eval task %s at iter %d failed: %s", spec, step, summary(exc))
    record = harness.merge(record_parts)
    if settings.text is not None:
        try:
            record["bits_per_byte"] = harness.measure_text(lm, settings.text, "train.eval")
        except Exception as exc:  # a failed measurement stops no training
            log.warning("eval of %s at iter %d failed: %s", settings.text, step, summary(exc))
    if not record_parts and "bits_per_byte" not in record:
        return
    record["ml_playground"] = provenance(step, _CONFIG.dump_python(run.cfg, mode="json"), None)
    try:
        write_results(run.cfg.runtime.out_dir, step, record)
    except Exception as exc:  # the scalars below still reach TensorBoard
        log.warning("eval at iter %d: %s", step, summary(exc))
    print(harness.table(record), end="", flush=True)
    if run.sink is not None:
        run.sink.log_scalars(step, harness.scalars(record))
