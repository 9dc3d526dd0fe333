"""Training metrics: FLOPs/MFU, throughput windows, bits per byte, the console line per
log_interval, TensorBoard scalars.

Bits per byte: a loss in nats per token over the text's UTF-8 bytes, in bits (as nanochat reports
it): sum(loss over targets) / ln 2 / sum(token_bytes[targets]), where `token_bytes` gives each id
the bytes of text it stands for (0 for special tokens). It does not depend on the tokenizer, so
char, GPT-2 BPE and trained-BPE models on the same text compare directly.

MFU = achieved model FLOP/s / peak FLOP/s. Model FLOPs per token follow the PaLM paper's
appendix B: 6·N + 12·L·H·Q·T (N parameters without position embeddings, L layers, H heads, Q
head size, T context). The peak is `train.runtime.peak_flops` when set, otherwise measured once
per machine by timing square matmuls in the dtype the run computes in on its device (so MFU is
relative to what this machine actually achieves, not a datasheet number), and kept in the
user's cache folder for the next run (`peak_flops`).

Throughput is measured over windows, not single steps (`ThroughputClock`): a device queues work
ahead of the host, so one step timed on the host measures when it was queued, not how long the
device took. A window runs from one log step to the next with the device synchronised at both
ends; time spent evaluating and saving checkpoints is paused out. A log line reports its window:
"ms" is the mean wall-clock time per optimizer step over the window, "tok/s" the window's tokens
(every micro-step of every rank) over its seconds, MFU follows from that tokens/s. Over a run,
the windows tile the training time, so logged tokens/s x window seconds adds up to the tokens
trained.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from pydantic import TypeAdapter
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter  # pyright: ignore[reportPrivateImportUsage]

from ml_playground.atomic import write_bytes_atomic
from ml_playground.errors import MLPlaygroundError, os_reason
from ml_playground.model import GPT
from ml_playground.tokenizers import Tokenizer

log = logging.getLogger(__name__)

TB_SUBDIR = Path("logs") / "tb"


def flops_per_token(model: GPT, context: int) -> float:
    """Forward + backward FLOPs per trained token (PaLM appendix B) of `model` at `context` tokens."""
    arch = model.config
    return 6.0 * model.num_params() + 12.0 * arch.n_layer * arch.n_head * arch.head_dim * context


def bits_per_byte(nats_per_token: float, bytes_per_token: float) -> float:
    """A mean loss in nats per target token as bits per UTF-8 byte (NaN when the targets hold no bytes)."""
    return nats_per_token / math.log(2) / bytes_per_token if bytes_per_token > 0 else math.nan


def token_bytes_of(tokenizer: Tokenizer, device: torch.device) -> Tensor:
    """(vocab,) UTF-8 bytes per id, on `device`, for indexing with target batches."""
    return torch.from_numpy(tokenizer.token_bytes()).to(device)


@torch.no_grad()
def text_bits_per_byte(model: GPT, tokenizer: Tokenizer, text: str, *, device: torch.device) -> float:
    """The model's loss on `text` in bits per byte: the text's ids in windows of the model's
    block_size (each window predicted from its own start; the first id of the text is context
    only), summed nats over every predicted id / ln 2 / those ids' bytes."""
    ids = torch.from_numpy(tokenizer.encode_array(text).astype("int64")).to(device)
    token_bytes = token_bytes_of(tokenizer, device)
    was_training = model.training
    model.train(False)
    nats, nbytes = 0.0, 0
    block = model.config.block_size
    for start in range(0, max(ids.numel() - 1, 0), block):
        x, y = ids[start : start + block], ids[start + 1 : start + block + 1]
        x = x[: y.numel()]
        logits = model(x.unsqueeze(0)).logits.float()  # (1, T, vocab)
        nats += F.cross_entropy(logits[0], y, reduction="sum").item()
        nbytes += int(token_bytes[y].sum().item())
    model.train(was_training)
    return bits_per_byte(nats, nbytes)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _matmul_seconds(device: torch.device, dtype: torch.dtype, size: int) -> float:
    # Constant operands: matmul speed does not depend on values, and the probe must not draw from
    # the global RNG (exact resume depends on its state).
    a = torch.full((size, size), 0.5, device=device, dtype=dtype)
    b = torch.full((size, size), 0.25, device=device, dtype=dtype)
    _sync(device)
    start = time.perf_counter()
    torch.mm(a, b)
    _sync(device)
    return time.perf_counter() - start


def measure_peak_flops(device: torch.device, dtype: torch.dtype, repeats: int = 3) -> float:
    """Best FLOP/s over square matmuls of 256, 512, ... up to the first size that takes >= 20 ms
    (max 4096). Every size counts: on CPUs the largest ones outgrow the caches and run slower
    than the mid-sized matmuls a small model does, which would put its MFU above 100%."""
    _matmul_seconds(device, dtype, 256)  # warm up kernels and caches
    best, size = 0.0, 256
    while True:
        seconds = min(_matmul_seconds(device, dtype, size) for _ in range(repeats))
        best = max(best, 2.0 * size**3 / max(seconds, 1e-9))
        if seconds >= 0.02 or size >= 4096:
            return best
        size *= 2


def peak_cache_file() -> Path:
    """Where measured peaks are kept: peak_flops.json in $ML_PLAYGROUND_CACHE, by default in
    ml-playground/ of the user's cache folder ($XDG_CACHE_HOME, else ~/.cache)."""
    own = os.environ.get("ML_PLAYGROUND_CACHE")
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return (Path(own) if own else user / "ml-playground") / "peak_flops.json"


def machine_key(device: torch.device, dtype: torch.dtype) -> str:
    """What a measured peak depends on: the host, the device's model (a CPU's architecture, vector
    instructions and torch's thread count), the torch build and the dtype."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        name = f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()} x{torch.get_num_threads()}"
    else:
        name = device.type
    return f"{platform.node()}: {device.type} {name}, torch {torch.__version__}, {dtype}"


_PEAKS: TypeAdapter[dict[str, float]] = TypeAdapter(dict[str, float])


def peak_flops(device: torch.device, dtype: torch.dtype, cache: Path, *, again: bool = False) -> float:
    """The peak `measure_peak_flops` finds for this machine (`machine_key`), read from `cache` once
    measured: the probe costs a run's start-up about as much as a few training steps. `again`
    (the last probe ran on a busy machine) measures anyway; the cache keeps the larger peak. A
    cache that cannot be read is measured again, one that cannot be written is logged and skipped."""
    key = machine_key(device, dtype)
    try:
        known = _PEAKS.validate_json(cache.read_bytes())
    except (OSError, ValueError):  # none yet, or not a cache of ours: measured again and rewritten
        known = {}
    if key in known and not again:
        return known[key]
    peak = max(measure_peak_flops(device, dtype), known.get(key, 0.0))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(cache, _PEAKS.dump_json({**known, key: peak}, indent=1))
    except OSError as exc:
        log.warning("%s: cannot keep the measured peak (%s); the next run measures it again", cache, os_reason(exc))
    return peak


@dataclass(frozen=True, slots=True, kw_only=True)
class PrecisionProbe:
    """Seconds of the same forward+backward in float32 and under bfloat16 autocast (`probe_bfloat16`)."""

    float32_seconds: float
    bfloat16_seconds: float

    @property
    def bfloat16_slower(self) -> bool:
        return self.bfloat16_seconds > self.float32_seconds


def _mlp_seconds(device: torch.device, dtype: torch.dtype | None, *, tokens: int, width: int) -> float:
    """One forward+backward of a GPT MLP (linear, GELU, linear) over `tokens` rows of `width`,
    under autocast to `dtype` (None: float32), as a training step runs it: the autocast casts of
    weights and activations, both matmul layouts of the backward pass."""
    # Constant operands: speed does not depend on values, and the global RNG must not move.
    x = torch.full((tokens, width), 0.5, device=device, requires_grad=True)
    w1 = torch.full((4 * width, width), 0.01, device=device, requires_grad=True)
    w2 = torch.full((width, 4 * width), 0.01, device=device, requires_grad=True)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    _sync(device)
    start = time.perf_counter()
    with autocast:
        out = F.linear(F.gelu(F.linear(x, w1)), w2)  # (tokens, width) -> (tokens, 4 width) -> (tokens, width)
    torch.autograd.backward(out.float().sum())
    _sync(device)
    return time.perf_counter() - start


def probe_bfloat16(
    device: torch.device,
    *,
    tokens: int = 256,
    width: int = 128,
    min_rounds: int = 5,
    max_rounds: int = 50,
    budget_s: float = 0.2,
) -> PrecisionProbe:
    """Best time of a small MLP forward+backward in float32 and under bfloat16 autocast (a few ms
    each where bfloat16 has hardware support). A square-matmul probe is not enough: a bfloat16
    `mm` can beat float32 on a CPU where a bfloat16 training step, with its autocast casts and
    backward layouts, is slower. The two alternate, round after round, for at least `min_rounds`
    and then until `budget_s` has passed (at most `max_rounds`): on a busy shared machine single
    calls vary 100x, and the best of many alternating calls finds the quiet moments of both."""
    dtypes: tuple[torch.dtype | None, ...] = (None, torch.bfloat16)
    best = dict.fromkeys(dtypes, math.inf)
    for dtype in dtypes:
        _mlp_seconds(device, dtype, tokens=tokens, width=width)  # warm up kernels and caches
    started = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or (rounds < max_rounds and time.perf_counter() - started < budget_s):
        for dtype in dtypes:
            best[dtype] = min(best[dtype], _mlp_seconds(device, dtype, tokens=tokens, width=width))
        rounds += 1
    return PrecisionProbe(float32_seconds=best[None], bfloat16_seconds=best[torch.bfloat16])


def warn_if_bfloat16_slower(probe: PrecisionProbe, device: torch.device) -> bool:
    """Warn when bfloat16 autocast trains slower than float32 here; returns whether it warned.
    The config decides the dtype: this never switches it."""
    if not probe.bfloat16_slower:
        return False
    log.warning(
        "bfloat16 autocast trains slower than float32 on this %s (%.2f ms vs %.2f ms for a probe MLP "
        'forward+backward; no AMX/AVX512-BF16): set train.runtime.dtype = "float32" for speed',
        device.type,
        probe.bfloat16_seconds * 1000,
        probe.float32_seconds * 1000,
    )
    return True


def check_cpu_bfloat16(device: torch.device) -> bool:
    """Probe bfloat16 against float32 on this CPU and warn when bfloat16 is slower."""
    return warn_if_bfloat16_slower(probe_bfloat16(device), device)


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """The optimizer steps trained between two log steps: their tokens (every micro-step of every
    rank) and their wall-clock seconds, evaluation and checkpoint time left out."""

    steps: int
    tokens: int
    seconds: float

    @property
    def step_seconds(self) -> float:
        """Mean seconds per optimizer step over the window."""
        return self.seconds / max(self.steps, 1)

    @property
    def tokens_per_sec(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


class ThroughputClock:
    """Training time in windows from one log step to the next, the device synchronised at each mark.

    It starts paused: `start` (before every step; a no-op while running) synchronises and opens
    the clock, so set-up, the peak probe and evaluations before the first step never count, and
    a resumed run's first window starts at its first step. `pause` (before an evaluation or a
    save) adds the time up to the end of the device's queued work and stops; `lap` (at a log
    step) returns the window since the previous lap and opens the next at the same instant, so
    windows tile the training time. `count` adds one finished step.

    `sync` waits for the device (`for_device`); `timer` is injectable for tests."""

    def __init__(self, sync: Callable[[], None], timer: Callable[[], float] = time.perf_counter) -> None:
        self._sync = sync
        self._timer = timer
        self._since: float | None = None  # None: paused
        self._seconds = 0.0  # time of the window's segments before the last pause
        self._steps = 0
        self._tokens = 0

    @classmethod
    def for_device(cls, device: torch.device) -> ThroughputClock:
        return cls(lambda: _sync(device))

    def start(self) -> None:
        if self._since is None:
            self._sync()  # work queued before (an evaluation) finishes outside the window
            self._since = self._timer()

    def count(self, tokens: int) -> None:
        self._steps += 1
        self._tokens += tokens

    def pause(self) -> None:
        if self._since is not None:
            self._sync()
            self._seconds += self._timer() - self._since
            self._since = None

    def lap(self) -> Window:
        self._sync()
        now = self._timer()
        seconds = self._seconds + (now - self._since if self._since is not None else 0.0)
        window = Window(steps=self._steps, tokens=self._tokens, seconds=seconds)
        self._seconds, self._steps, self._tokens = 0.0, 0, 0
        if self._since is not None:
            self._since = now
        return window


@dataclass(frozen=True, slots=True, kw_only=True)
class StepStats:
    """What a log step reports: its step's loss and learning rate, and the throughput of the
    window that ends with it."""

    iter_num: int
    loss: float
    lr: float
    window: Window
    flops_per_token: float
    peak_flops: float

    @property
    def step_seconds(self) -> float:
        return self.window.step_seconds

    @property
    def tokens_per_sec(self) -> float:
        return self.window.tokens_per_sec

    @property
    def mfu(self) -> float:
        return self.flops_per_token * self.tokens_per_sec / self.peak_flops

    @property
    def mfu_known(self) -> bool:
        """False when the achieved FLOP/s exceed the peak: the peak probe ran slow (a busy machine),
        and no MFU is reported rather than one above 100%."""
        return self.mfu <= 1.0


class MetricsSink:
    """Console lines and TensorBoard scalars (out_dir/logs/tb); the writer flushes at every save.
    A log folder that cannot be written (unwritable, a file, a full disk) is one line naming it."""

    def __init__(self, out_dir: Path, *, purge_step: int | None = None):
        self.logdir = out_dir / TB_SUBDIR
        with self._writing():
            self.logdir.mkdir(parents=True, exist_ok=True)
            # The writer writes in a thread of its own, where a failure would also print a traceback:
            # a folder that cannot take one byte fails here instead, before the writer starts.
            probe = self.logdir / f".write-probe-{os.getpid()}"
            try:
                probe.write_bytes(b"\0")
            finally:
                with contextlib.suppress(OSError):
                    probe.unlink()
            started = set(threading.enumerate())
            # purge_step drops events a killed run logged after its last checkpoint.
            self.writer = SummaryWriter(log_dir=str(self.logdir), purge_step=purge_step)
        self._writer_threads = set(threading.enumerate()) - started
        self._next_hook = threading.excepthook
        threading.excepthook = self._quiet_writer_failure

    def _quiet_writer_failure(self, args: threading.ExceptHookArgs) -> None:
        # A write that fails later (the disk fills during the run) is kept by the writer's thread and
        # raised again at the sink's next call, as one line (`_writing`): no traceback from the thread.
        if args.thread in self._writer_threads and issubclass(args.exc_type, OSError):
            return
        self._next_hook(args)

    @contextlib.contextmanager
    def _writing(self) -> Generator[None]:
        try:
            yield
        except OSError as exc:
            raise MLPlaygroundError(f"{self.logdir}: cannot write TensorBoard logs ({os_reason(exc)})") from None

    def log_step(self, stats: StepStats) -> None:
        log.info(
            "iter %d: loss %.4f, lr %.3e, %.0f tok/s, %.1f ms, mfu %s",
            stats.iter_num,
            stats.loss,
            stats.lr,
            stats.tokens_per_sec,
            stats.step_seconds * 1000,
            f"{stats.mfu * 100:.2f}%" if stats.mfu_known else "n/a (the peak probe measured less than this)",
        )
        step = stats.iter_num
        with self._writing():
            self.writer.add_scalar("train/loss", stats.loss, step)
            self.writer.add_scalar("train/lr", stats.lr, step)
            self.writer.add_scalar("train/tokens_per_sec", stats.tokens_per_sec, step)
            self.writer.add_scalar("train/step_time_ms", stats.step_seconds * 1000, step)
            if stats.mfu_known:
                self.writer.add_scalar("train/mfu", stats.mfu, step)

    def log_eval(self, iter_num: int, losses: dict[str, float]) -> None:
        """`losses`: "train" and "val" mean losses, and "train_bpb" / "val_bpb" where the tokenizer is known."""
        bpb = f" (bpb: train {losses['train_bpb']:.4f}, val {losses['val_bpb']:.4f})" if "val_bpb" in losses else ""
        log.info("eval at iter %d: train loss %.4f, val loss %.4f%s", iter_num, losses["train"], losses["val"], bpb)
        with self._writing():
            self.writer.add_scalar("val/loss", losses["val"], iter_num)
            self.writer.add_scalar("eval/train_loss", losses["train"], iter_num)
            if "val_bpb" in losses:
                self.writer.add_scalar("val/bpb", losses["val_bpb"], iter_num)
                self.writer.add_scalar("eval/train_bpb", losses["train_bpb"], iter_num)

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        """Scalars under their own tags (an evaluation's `eval/<task>/<metric>`)."""
        with self._writing():
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        with self._writing():
            self.writer.flush()

    def close(self) -> None:
        try:
            with self._writing():
                self.writer.close()
        finally:
            if threading.excepthook == self._quiet_writer_failure:
                threading.excepthook = self._next_hook


def read_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in a TensorBoard log dir as (step, value) pairs (purged steps dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir))
    events.Reload()
    tags = cast("list[str]", events.Tags()["scalars"])
    series: dict[str, list[tuple[int, float]]] = {}
    for tag in tags:
        scalars = cast("list[Any]", events.Scalars(tag))
        series[tag] = [(int(event.step), float(event.value)) for event in scalars]
    return series
