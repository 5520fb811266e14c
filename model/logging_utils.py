"""Training progress for people and for TensorBoard: a live progress line on a terminal, plain log lines
otherwise, and optional TensorBoard scalars.

    progress = TrainProgress(total_steps=cfg.steps, start_step=step, out_dir=cfg.out, log=cfg.log)
    progress.update(step, loss=..., lr=..., tokens_per_s=..., val_loss=...)  # every optimizer step
    progress.write("step 20/600 loss ...")  # a permanent log line (ETA added)
    progress.close()

On a terminal the last line is redrawn in place (``\\r``, at most ~10 times a second) with step, a bar,
loss, lr, tokens/s and ETA; permanent log lines are printed above it. When stdout is not a terminal (a
file, a pipe, a batch job's log) nothing is redrawn: only the permanent lines are printed, each ending in
the ETA. ``log = "tensorboard"`` also writes the scalars to ``RUN/tb`` (``tensorboard --logdir RUN/tb``)
through ``torch.utils.tensorboard``; ``log = "csv"`` (the default) leaves that out. The trainer writes
``RUN/log.csv`` in both cases.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import TextIO

LOG_KINDS = ("csv", "tensorboard")

# TensorBoard tag of each update() keyword; None values (no MFU on CPU, no validation this step) are skipped.
TAGS = {
    "loss": "train/loss",
    "lr": "train/lr",
    "tokens_per_s": "train/tokens_per_s",
    "grad_norm": "train/grad_norm",
    "mfu": "train/mfu",
    "val_loss": "val/loss",
}


def format_duration(seconds: float) -> str:
    """1h02m, 3m05s, 42s."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(max(0.0, seconds)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class TrainProgress:
    def __init__(
        self,
        total_steps: int,
        start_step: int = 0,
        out_dir: str = "",
        log: str = "csv",
        stream: TextIO | None = None,
        live: bool | None = None,
    ) -> None:
        if log not in LOG_KINDS:
            raise ValueError(f"log must be one of {', '.join(LOG_KINDS)}, got {log!r}")
        self.total = total_steps
        self.start_step = start_step
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.t0 = time.time()
        self.last_draw = 0.0
        self.drawn = False  # a live line is on screen and must be cleared before a permanent line
        self.step = start_step
        self.values: dict[str, float] = {}
        self.writer = None
        if log == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # torch raises ImportError when the tensorboard package is missing
                raise ValueError('log = "tensorboard" needs `pip install tensorboard`') from e
            self.writer = SummaryWriter(os.path.join(out_dir, "tb"), flush_secs=10)

    def eta(self) -> float:
        done = self.step - self.start_step
        if done <= 0:
            return math.inf
        return (time.time() - self.t0) / done * (self.total - self.step)

    def update(self, step: int, **values: float | None) -> None:
        """Record one optimizer step's values (keys of TAGS), redraw the live line, write TensorBoard."""
        self.step = step
        self.values.update({k: v for k, v in values.items() if v is not None})
        if self.writer is not None:
            for key, value in values.items():
                if value is not None:
                    self.writer.add_scalar(TAGS.get(key, f"train/{key}"), float(value), step)
        now = time.time()
        if self.live and (now - self.last_draw >= 0.1 or step == self.total):
            self.last_draw = now
            self._draw()

    def line(self) -> str:
        """The live line: step, bar, loss, lr, tokens/s, ETA."""
        frac = min(1.0, self.step / max(1, self.total))
        width = 20
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        parts = [f"step {self.step}/{self.total} [{bar}] {frac:4.0%}"]
        v = self.values
        if "loss" in v:
            parts.append(f"loss {v['loss']:.4f}")
        if "lr" in v:
            parts.append(f"lr {v['lr']:.2e}")
        if "tokens_per_s" in v:
            parts.append(f"tok/s {v['tokens_per_s']:,.0f}")
        parts.append(f"eta {format_duration(self.eta())}")
        return " ".join(parts)

    def _draw(self) -> None:
        self.stream.write("\r\x1b[2K" + self.line())
        self.stream.flush()
        self.drawn = True

    def write(self, message: str) -> None:
        """A permanent log line (with the ETA appended), printed above the live line."""
        if self.drawn:
            self.stream.write("\r\x1b[2K")
        self.stream.write(f"{message} eta {format_duration(self.eta())}\n")
        if self.live:
            self._draw()
        self.stream.flush()

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False
        if self.writer is not None:
            self.writer.close()
            self.writer = None


CSV_COLUMNS = ["step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "val_loss", "elapsed_s"]


class TrainLog:
    """What the training loop reports: ``RUN/log.csv`` (appended to on resume), the progress display and
    the log lines above it, TensorBoard scalars when ``log = "tensorboard"``."""

    def __init__(self, cfg, step: int) -> None:
        import csv

        self.cfg = cfg
        self.progress = TrainProgress(cfg.steps, step, cfg.out, cfg.log)
        self.file = open(os.path.join(cfg.out, "log.csv"), "a" if step > 0 else "w", newline="")  # noqa: SIM115
        self.csv = csv.writer(self.file)
        self.t0 = time.time()
        if step == 0:
            self.csv.writerow(CSV_COLUMNS)

    def initial(self, val_loss: float) -> None:
        """The untrained model's validation loss: what every later value beats."""
        self.csv.writerow([0, "", "", "", "", "", f"{val_loss:.6f}", "0.0"])
        print(f"step 0 val {val_loss:.4f}")

    def step(self, step: int, last: bool, *, loss: float, lr: float, grad_norm: float, tokens_per_s: float,
             mfu: float | None, val_loss: float | None) -> None:  # fmt: skip
        self.progress.update(
            step, loss=loss, lr=lr, tokens_per_s=tokens_per_s, grad_norm=grad_norm, mfu=mfu, val_loss=val_loss
        )
        if not (step % self.cfg.log_every == 0 or last or val_loss is not None):
            return
        msg = f"step {step}/{self.cfg.steps} loss {loss:.4f} lr {lr:.2e} grad {grad_norm:.3f}"
        msg += f" tok/s {tokens_per_s:,.0f}"
        msg += f" mfu {mfu:.1%}" if mfu is not None else ""
        msg += f" val {val_loss:.4f}" if val_loss is not None else ""
        self.progress.write(msg)
        self.csv.writerow(
            [
                step,
                f"{loss:.6f}",
                f"{lr:.6g}",
                f"{grad_norm:.4f}",
                f"{tokens_per_s:.1f}",
                "" if mfu is None else f"{mfu:.4f}",
                "" if val_loss is None else f"{val_loss:.6f}",
                f"{time.time() - self.t0:.1f}",
            ]
        )
        self.file.flush()

    def close(self) -> None:
        self.file.close()
        self.progress.close()
