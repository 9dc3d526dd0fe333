"""`make eval`: the checkpoint the sampler would pick (best, then last) through lm-evaluation-harness
on [eval]'s tasks and text; results to out_dir/eval/<step>.json, stdout and TensorBoard."""

from __future__ import annotations

import logging
from typing import Any

from ml_playground.config import EvalConfig
from ml_playground.evaluation import harness
from ml_playground.evaluation.lm import PlaygroundLM
from ml_playground.evaluation.results import provenance, write_results
from ml_playground.runtime import resolve_runtime
from ml_playground.sample import model_from_checkpoint
from ml_playground.train.checkpoint import find_checkpoint
from ml_playground.train.metrics import MetricsSink

log = logging.getLogger(__name__)


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate, print the table, save the record and log its scalars; returns the record."""
    runtime = resolve_runtime(cfg.device, cfg.dtype)
    path = find_checkpoint(cfg.out_dir)
    plan = harness.plan(cfg, "eval")  # a bad task fails before the model loads
    model, tokenizer, checkpoint = model_from_checkpoint(path, runtime, purpose="evaluating")
    lm = PlaygroundLM(model, tokenizer, runtime, cfg.batch_size)
    record = harness.evaluate(lm, plan, cfg, "eval")
    record["ml_playground"] = provenance(checkpoint.iter_num, checkpoint.config, path)
    saved = write_results(cfg.out_dir, checkpoint.iter_num, record)
    print(harness.table(record), end="", flush=True)
    sink = MetricsSink(cfg.out_dir)
    try:
        sink.log_scalars(checkpoint.iter_num, harness.scalars(record))
    finally:
        sink.close()
    log.info("saved %s; TensorBoard: %s", saved, sink.logdir)
    return record
