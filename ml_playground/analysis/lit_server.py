"""The LIT server process: experiment config -> checkpoint + examples -> LIT on 127.0.0.1.

Runs inside the LIT environment (lit_nlp/.venv), started by `lit_launcher`:
    lit_nlp/.venv/bin/python -P -m ml_playground.analysis.lit_server --config CONFIG --port PORT
Known errors become one line on stderr and the CLI's exit code, as in `ml_playground.cli`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import lit_nlp
from lit_nlp import dev_server

from ml_playground.analysis.examples import build_examples
from ml_playground.analysis.lit_dataset import ExperimentDataset
from ml_playground.analysis.lit_model import GPTLitModel
from ml_playground.config_loader import load_experiment_config, require
from ml_playground.errors import MLPlaygroundError
from ml_playground.runtime import resolve_runtime, seed_everything
from ml_playground.sample import load_model_for_inference, read_prompt

HOST = "127.0.0.1"
MODEL_NAME = "gpt"
DATASET_NAME = "experiment"
# Validation snippets shown next to the prompt: how many, and how many tokens each.
SNIPPETS = 16
SNIPPET_TOKENS = 64

log = logging.getLogger("ml_playground")


def build_server(config_path: Path, port: int) -> dev_server.Server:
    """Load the experiment's best checkpoint and its examples; the returned server is not started."""
    experiment = load_experiment_config(config_path)
    cfg = require(experiment.sample, config_path, "sample")
    runtime = resolve_runtime(cfg.runtime.device, cfg.runtime.dtype)
    seed_everything(cfg.runtime.seed)
    model, tokenizer, checkpoint = load_model_for_inference(cfg.runtime.out_dir, runtime)
    lit_model = GPTLitModel(model, tokenizer, cfg.sample, runtime, seed=cfg.runtime.seed, checkpoint=checkpoint)
    data = experiment.train.data if experiment.train is not None else None
    length = min(SNIPPET_TOKENS, model.config.block_size)
    examples = build_examples(read_prompt(cfg.sample.start), data, tokenizer, SNIPPETS, length)
    dataset = ExperimentDataset(examples, description=f"prompt and validation snippets of {config_path.name}")
    log.info("LIT: %s; %d examples", lit_model.description(), len(examples))
    return dev_server.Server(
        {MODEL_NAME: lit_model},
        {DATASET_NAME: dataset},
        port=port,
        host=HOST,
        client_root=str(Path(lit_nlp.__file__).parent / "client" / "build" / "default"),
        page_title=f"ml-playground: {config_path.stem}",
        warm_start=0.0,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lit_server", description="Serve a trained checkpoint in LIT.")
    parser.add_argument("--config", type=Path, required=True, help="experiment TOML")
    parser.add_argument("--port", type=int, required=True, help=f"port on {HOST}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        server = build_server(args.config.resolve(), args.port)
    except MLPlaygroundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    log.info("LIT: serving on http://%s:%d (Ctrl+C stops)", HOST, args.port)
    try:
        server.serve()
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
