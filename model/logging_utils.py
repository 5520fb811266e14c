"""Training progress for people and for TensorBoard: the one progress display of vidsift's long commands
(pipeline/progress.py, the rich bar curate shows) with steps as its unit, plain log lines, and optional
TensorBoard scalars.

    bar = StepBar("train", total_steps=cfg.steps, start_step=step, quiet=quiet)
    bar.update(step, loss=..., lr=...)  # every optimizer step: the bar's counter, loss, lr, steps/s, ETA
    bar.close()

The bar goes to stderr (stdout keeps the log lines and results); on a terminal it redraws in place and log
lines printed meanwhile appear above it; elsewhere (a file, a pipe, a batch job's log) it is printed once,
in its final state, when it closes. ``quiet`` shows no bar; the log lines (every ``log_every`` steps) stay.
Only rank 0 of a torchrun launch shows one. ``log = "tensorboard"`` also writes the scalars to ``RUN/tb``
(``tensorboard --logdir RUN/tb``) through ``torch.utils.tensorboard``; ``log = "csv"`` (the default)
leaves that out. The trainer writes ``RUN/log.csv`` in both cases.
"""

from __future__ import annotations

import math
import os
import time

LOG_KINDS = ("csv", "tensorboard")

# TensorBoard tag of each logged value; None values (no MFU on CPU, no validation this step) are skipped.
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


class StepBar:
    """The shared progress bar over optimizer steps, with loss, lr, steps/s and ETA as its fields. Steps/s
    and the ETA count this session's steps only (a resumed run starts its clock again)."""

    def __init__(self, name: str, total_steps: int, start_step: int = 0, quiet: bool = False) -> None:
        from vidsift.pipeline.progress import progress_bar

        self.total = total_steps
        self.start_step = start_step
        self.step = start_step
        self.t0 = time.time()
        fields = "loss {task.fields[loss]} lr {task.fields[lr]} {task.fields[rate]} steps/s"
        fields += " eta {task.fields[eta]}"
        self.bar = progress_bar(name, "steps", fields, quiet=quiet)
        self.task = self.bar.add_task(
            name, total=total_steps, completed=start_step, loss="-", lr="-", rate="-", eta="?"
        )
        self.bar.start()

    def rate(self) -> float:
        """Optimizer steps per second in this session."""
        elapsed = time.time() - self.t0
        return (self.step - self.start_step) / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float:
        rate = self.rate()
        return (self.total - self.step) / rate if rate > 0 else math.inf

    def update(self, step: int, loss: float | None = None, lr: float | None = None) -> None:
        self.step = step
        fields = {"rate": f"{self.rate():.2f}", "eta": format_duration(self.eta())}
        if loss is not None:
            fields["loss"] = f"{loss:.4f}"
        if lr is not None:
            fields["lr"] = f"{lr:.2e}"
        self.bar.update(self.task, completed=step, **fields)

    def close(self) -> None:
        self.bar.stop()


CSV_COLUMNS = ["step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "val_loss", "elapsed_s"]


class TrainLog:
    """What the DiT training loop reports: ``RUN/log.csv`` (appended to on resume), the progress bar, a log
    line every ``log_every`` steps (and at validation and the last step) on stdout, TensorBoard scalars when
    ``log = "tensorboard"``. Rank 0 only."""

    def __init__(self, cfg, step: int, quiet: bool = False) -> None:
        import csv

        if cfg.log not in LOG_KINDS:
            raise ValueError(f"log must be one of {', '.join(LOG_KINDS)}, got {cfg.log!r}")
        self.cfg = cfg
        self.writer = None
        if cfg.log == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # torch raises ImportError when the tensorboard package is missing
                raise ValueError('log = "tensorboard" needs `pip install tensorboard`') from e
            self.writer = SummaryWriter(os.path.join(cfg.out, "tb"), flush_secs=10)
        self.file = open(os.path.join(cfg.out, "log.csv"), "a" if step > 0 else "w", newline="")  # noqa: SIM115
        self.csv = csv.writer(self.file)
        self.t0 = time.time()
        if step == 0:
            self.csv.writerow(CSV_COLUMNS)
        self.bar = StepBar("train", cfg.steps, step, quiet)

    def initial(self, val_loss: float) -> None:
        """The untrained model's validation loss: what every later value beats."""
        self.csv.writerow([0, "", "", "", "", "", f"{val_loss:.6f}", "0.0"])
        print(f"step 0 val {val_loss:.4f}")

    def step(self, step: int, last: bool, *, loss: float, lr: float, grad_norm: float, tokens_per_s: float,
             mfu: float | None, val_loss: float | None) -> None:  # fmt: skip
        self.bar.update(step, loss=loss, lr=lr)
        values = dict(loss=loss, lr=lr, tokens_per_s=tokens_per_s, grad_norm=grad_norm, mfu=mfu)
        values["val_loss"] = val_loss
        if self.writer is not None:
            for key, value in values.items():
                if value is not None:
                    self.writer.add_scalar(TAGS[key], float(value), step)
        if not (step % self.cfg.log_every == 0 or last or val_loss is not None):
            return
        msg = f"step {step}/{self.cfg.steps} loss {loss:.4f} lr {lr:.2e} grad {grad_norm:.3f}"
        msg += f" tok/s {tokens_per_s:,.0f}"
        msg += f" mfu {mfu:.1%}" if mfu is not None else ""
        msg += f" val {val_loss:.4f}" if val_loss is not None else ""
        print(f"{msg} eta {format_duration(self.bar.eta())}", flush=True)
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
        self.bar.close()
        self.file.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
