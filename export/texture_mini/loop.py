"""What the training phases share: learning-rate schedule, EMA, atomic checkpoints, a progress bar, turning
SIGTERM into a checkpoint-and-stop (so ``kill`` then ``--resume`` loses nothing), and the run folder's config
and timings bookkeeping."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5 % of the peak. A pure function of the step, so resuming
    needs no scheduler state."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))


class Ema:
    """Exponential moving average of parameters (the weights that ship). The decay ramps up from 0 so
    the average is not dominated by the random initialisation in short runs."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float) -> None:
        self.params = params
        self.decay = decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for shadow, p in zip(self.shadow, self.params):
            shadow.lerp_(p.detach(), 1.0 - decay)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for shadow, p in zip(self.shadow, self.params):
            p.copy_(shadow)

    def state_dict(self) -> list[torch.Tensor]:
        return self.shadow

    def load_state_dict(self, shadow: list[torch.Tensor]) -> None:
        self.shadow = [s.to(p.device) for s, p in zip(shadow, self.params)]


def save_atomic(obj, path: Path) -> None:
    """Write, then rename: a kill during the save leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=False)


class Stop(Exception):
    """SIGTERM or Ctrl-C arrived: the phase checkpointed at a step boundary; ``--resume`` continues."""


class StopFlag:
    """Set by SIGTERM / SIGINT; the training loop checks it between steps, so a checkpoint never holds a
    half-applied optimizer step."""

    def __init__(self) -> None:
        self.signal: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None


class Checkpointer:
    """After each step: save every ``every_s`` seconds, and at once (then raise Stop) when a stop was asked
    for, so a killed run loses at most ``every_s`` and an interrupted one nothing."""

    def __init__(self, phase: str, save, every_s: float, stop: StopFlag, progress: Progress) -> None:
        self.phase, self.save, self.every_s, self.stop, self.progress = phase, save, every_s, stop, progress
        self.last = time.perf_counter()

    def after_step(self, done: int) -> None:
        if self.stop.requested:
            self.save(done)
            self.progress.close()
            raise Stop(f"{self.phase}: stopped by {self.stop.signal} after step {done}; rerun with --resume")
        if time.perf_counter() - self.last > self.every_s:
            self.save(done)
            self.last = time.perf_counter()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    flag = StopFlag()

    def handler(signum, _frame):
        flag.signal = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class Progress:
    """A tqdm bar (ETA from the measured rate) with the running loss; quiet mode for tests."""

    def __init__(self, desc: str, total: int, initial: int, quiet: bool) -> None:
        self.desc = desc
        self.quiet = quiet
        self.bar = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                            smoothing=0.05, file=sys.stderr)
        self.loss: float | None = None
        self.started = time.perf_counter()
        self.steps = 0

    def update(self, loss: float | None = None) -> None:
        if loss is not None:
            self.loss = loss if self.loss is None else 0.98 * self.loss + 0.02 * loss
        self.steps += 1
        if self.bar is not None:
            self.bar.update(1)
            if self.loss is not None and self.steps % 10 == 0:
                self.bar.set_postfix(loss=f"{self.loss:.4f}")

    @property
    def seconds_per_step(self) -> float:
        return (time.perf_counter() - self.started) / max(1, self.steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_config(out: Path, wanted, resume: bool, overwrite: bool, explicit: bool, cls):
    """The run's config: the saved one on ``resume`` (a different explicit one is refused), else ``wanted``
    saved into a fresh ``out``. Both training commands use it."""
    saved_path = out / "config.json"
    if saved_path.is_file():
        if not resume and not overwrite:
            raise SystemExit(f"{out} holds a run: pass --resume to continue it or --overwrite to restart")
        if resume:
            saved = cls.from_json(saved_path.read_text(encoding="utf-8"))
            if explicit and saved != wanted:
                diff = {k: (getattr(saved, k), getattr(wanted, k)) for k in dataclasses.asdict(saved)
                        if getattr(saved, k) != getattr(wanted, k)}
                raise SystemExit(f"--resume with different settings than the run in {out}: {diff}")
            return saved
        shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()) and not overwrite:
        raise SystemExit(f"{out} exists and is not a texture-mini run; choose an empty folder")
    elif overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    wanted.save(saved_path)
    return wanted


def append_timings(out: Path, timings: dict[str, float], totals: dict[str, float]) -> None:
    """Every session's phase times, plus the training phases' totals over all sessions (``timings.json``)."""
    path = out / "timings.json"
    history = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    history.append({"when": time.strftime("%Y-%m-%d %H:%M:%S"), "pid": os.getpid(),
                    **{k: round(v, 1) for k, v in timings.items()},
                    "training_s_all_sessions": {k: round(v, 1) for k, v in totals.items()}})
    path.write_text(json.dumps(history, indent=2) + "\n", encoding="utf-8")


def exit_code(run) -> int:
    """A training command's exit status: 0 when ``run()`` finishes, 130 (after saying how to resume) when a
    signal stopped it at a checkpoint."""
    try:
        run()
    except Stop as stop:
        print(f"\n{stop}", file=sys.stderr)
        return 130
    return 0
