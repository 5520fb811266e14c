"""What training shows and logs: the shared progress bar (pipeline/progress.py) on stderr, log lines on
stdout, log.csv and TensorBoard scalars; ``--quiet`` silences the bar only."""

import csv
import glob
import os
import re

import pytest

from vidsift.model.cli import main as model_cli
from vidsift.model.logging_utils import format_duration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "recipes", "train", "tiny.toml")
SMALL = [
    "model_args={depth = 1, patch = [1, 4, 4]}", "frames=4", "height=16", "width=16", "batch_size=2",
    "steps=4", "warmup=1", "log_every=2", "eval_every=2", "save_every=0", "val_clips=2",
]  # fmt: skip
BAR = re.compile(r"^train .* 4/4 steps loss \d+\.\d{4} lr \d\.\d\de-\d\d [\d.]+ steps/s eta \S+", re.M)


def train_cli(shards: str, out, *extra: str) -> int:
    args = ["train", TINY, "--data", shards, "--out", str(out)]
    for s in SMALL:
        args += ["--set", s]
    return model_cli(args + list(extra))


def test_a_tiny_run_shows_the_shared_bar_logs_lines_and_writes_tensorboard_scalars(shards, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert train_cli(shards, run, "--set", 'log="tensorboard"') == 0
    out, err = capsys.readouterr()
    # stderr is no terminal here: the bar is printed once, in its final state, with its fields.
    assert len(BAR.findall(err)) == 1, err
    # stdout: the log lines, one per log step (and validation), each with an ETA; no redraws anywhere.
    lines = [line for line in out.splitlines() if line.startswith("step ") and "/4 " in line]
    assert [line.split()[1] for line in lines] == ["2/4", "4/4"]
    assert all(" eta " in line and " loss " in line and " tok/s " in line for line in lines)
    assert "\r" not in out and "step 2/4" not in err

    with open(run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["0", "2", "4"] and all(r["val_loss"] for r in rows)
    assert glob.glob(str(run / "tb" / "events.out.tfevents.*"))
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/tokens_per_s", "train/grad_norm", "val/loss"} <= tags
    assert "train/mfu" not in tags  # no MFU on CPU: None values are not written
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("val/loss")] == [2, 4]
    logged = [float(r["val_loss"]) for r in rows[1:]]
    assert [e.value for e in acc.Scalars("val/loss")] == pytest.approx(logged, rel=1e-5)


def test_quiet_silences_the_bar_and_keeps_the_log_lines(shards, tmp_path, capsys):
    assert train_cli(shards, tmp_path / "run", "--quiet") == 0
    out, err = capsys.readouterr()
    assert "steps/s" not in err and "4/4" not in err, err
    assert [line.split()[1] for line in out.splitlines() if line.startswith("step ") and "/4 " in line] == [
        "2/4",
        "4/4",
    ]


def test_train_vae_shows_the_same_bar_and_quiet_silences_it(shards, tmp_path, capsys):
    args = ["train-vae", "vae_tiny", "--data", shards]
    for s in ("steps=2", "frames=5", "height=16", "width=16", "batch_size=2", "val_clips=2", "log_every=1"):
        args += ["--set", s]
    assert model_cli([*args, "--out", str(tmp_path / "a")]) == 0
    out, err = capsys.readouterr()
    assert re.search(r"^train-vae .* 2/2 steps loss \d+\.\d{4} lr ", err, re.M), err
    assert "step 2/2 l1 " in out
    assert model_cli([*args, "--out", str(tmp_path / "b"), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "2/2 steps" not in err and "step 2/2 l1 " in out


def test_a_bad_log_kind_is_one_line(shards, tmp_path, capsys):
    assert train_cli(shards, tmp_path / "run", "--set", 'log="wandb"') == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: log must be one of csv, tensorboard, got 'wandb'"


def test_format_duration():
    assert format_duration(42.4) == "42s"
    assert format_duration(185) == "3m05s"
    assert format_duration(3720) == "1h02m"
    assert format_duration(float("inf")) == "?"
