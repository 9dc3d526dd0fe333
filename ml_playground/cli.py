"""Command line: parse -> load config -> dispatch. Known errors become one line on stderr.

Exit codes: 0 ok, 1 other user error, 2 config, 3 unknown experiment, 4 data, 5 checkpoint,
6 device, 7 export, 8 missing optional dependency, 9 distributed, 10 out_dir in use by another run,
11 training diverged (non-finite loss); a training run stopped by SIGHUP/SIGINT/SIGTERM saves
ckpt_last.pt and exits 129/130/143; 130 also for an interrupt outside training.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ml_playground import registry
from ml_playground.config import ExperimentConfig, TrainConfig
from ml_playground.config_loader import load_experiment_config, require
from ml_playground.errors import MLPlaygroundError

if TYPE_CHECKING:
    from ml_playground.train.modes import Mode


def _config_path(args: argparse.Namespace) -> Path:
    explicit: Path | None = args.exp_config
    if explicit is not None:
        return explicit.resolve()
    return registry.get(args.experiment).default_config


def _load(args: argparse.Namespace) -> tuple[ExperimentConfig, Path]:
    registry.get(args.experiment)  # unknown names fail here, listing the known ones
    path = _config_path(args)
    return load_experiment_config(path), path


def cmd_prepare(args: argparse.Namespace) -> None:
    cfg, path = _load(args)
    registry.get(args.experiment).preparer(require(cfg.prepare, path, "prepare"))


def cmd_train(args: argparse.Namespace) -> None:
    cfg, path = _load(args)
    train_cfg = require(cfg.train, path, "train")
    from ml_playground.train.loop import train

    train(train_cfg, training_mode(train_cfg))


def training_mode(cfg: TrainConfig) -> Mode:
    """[train.peft]: LoRA on the init_from base; init_from alone: every weight of the source; else
    [train.model] from scratch."""
    if cfg.peft is not None:
        from ml_playground.finetune.lora import LoRA

        return LoRA(cfg)
    if cfg.model.init_from != "scratch":
        from ml_playground.finetune.pretrained import Pretrained

        return Pretrained()
    from ml_playground.train.modes import Mode

    return Mode()


def cmd_sample(args: argparse.Namespace) -> None:
    cfg, path = _load(args)
    sample_cfg = require(cfg.sample, path, "sample")
    if sample_cfg.runtime.init_from != "resume":
        from ml_playground.interop.source import sample_source

        sample_source(sample_cfg)
    else:
        from ml_playground.sample import run_sampling

        run_sampling(sample_cfg)


def cmd_loop(args: argparse.Namespace) -> None:
    cmd_prepare(args)
    cmd_train(args)
    cmd_sample(args)


def cmd_export(args: argparse.Namespace) -> None:
    cfg, path = _load(args)
    from ml_playground.interop.export import run_export

    run_export(require(cfg.export, path, "export.ollama"), cfg, path)


def cmd_eval(args: argparse.Namespace) -> None:
    cfg, path = _load(args)
    eval_cfg = require(cfg.eval, path, "eval")
    from ml_playground.evaluation.run import run_eval

    run_eval(eval_cfg)


def cmd_lit(args: argparse.Namespace) -> None:
    cfg, path = _load(args)
    from ml_playground.analysis.lit_launcher import run_lit

    run_lit(require(cfg.sample, path, "sample"), path, port=args.port)


def cmd_tensorboard(args: argparse.Namespace) -> None:
    from ml_playground.train.tensorboard import serve_tensorboard

    serve_tensorboard(args.logdir, port=args.port)


def cmd_verify(_args: argparse.Namespace) -> None:
    from ml_playground.runtime import environment_report

    print(environment_report())


def _add_experiment_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", help="experiment name (a folder under ml_playground/experiments)")
    parser.add_argument(
        "--exp-config",
        type=Path,
        default=None,
        help="TOML config (default: the experiment's own config.toml)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ml-playground",
        description="Prepare data, train, sample, finetune and export GPT models from TOML configs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    experiment_commands = {
        "prepare": (cmd_prepare, "tokenize the experiment's corpus into train.bin/val.bin/meta.json"),
        "train": (cmd_train, "train (from scratch, from init_from, or LoRA) from [train]; resumes from ckpt_last.pt"),
        "sample": (cmd_sample, "generate text from the best checkpoint (or [sample.runtime] init_from) with [sample]"),
        "loop": (cmd_loop, "prepare, then train, then sample"),
        "export": (cmd_export, "export to Hugging Face / GGUF / Ollama from [export.ollama]"),
        "eval": (cmd_eval, "evaluate the best checkpoint with lm-evaluation-harness on [eval]'s tasks and text"),
    }
    for name, (func, help_text) in experiment_commands.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        _add_experiment_args(command)
        command.set_defaults(func=func)

    lit = sub.add_parser("lit", help="serve the trained model in LIT on 127.0.0.1", description="Serve in LIT.")
    _add_experiment_args(lit)
    lit.add_argument("--port", type=int, default=5432, help="port on 127.0.0.1 (default 5432)")
    lit.set_defaults(func=cmd_lit)

    tb = sub.add_parser("tensorboard", help="serve TensorBoard on 127.0.0.1", description="Serve TensorBoard.")
    tb.add_argument(
        "--logdir", type=Path, required=True, help="one run's out/<run>/logs/tb, or a parent such as out (one run each)"
    )
    tb.add_argument("--port", type=int, default=6006, help="port on 127.0.0.1 (default 6006)")
    tb.set_defaults(func=cmd_tensorboard)

    verify = sub.add_parser("verify", help="print versions and usable devices", description="Check the environment.")
    verify.set_defaults(func=cmd_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MLPlaygroundError as exc:
        print(f"{exc.label}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
