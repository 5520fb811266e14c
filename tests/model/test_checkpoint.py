"""Checkpoints are written as one step: a crash at any point leaves model, EMA and state of one step."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from vidsift.model import checkpoint
from vidsift.model.checkpoint import CheckpointError, load_checkpoint, recover, write_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_step(out: str, step: int) -> None:
    w = {"w": torch.full((2, 2), float(step))}
    write_checkpoint(out, w, w, {"step": step}, {"step": step, "rng": torch.get_rng_state()})


def test_a_written_checkpoint_loads_with_weights_only(tmp_path):
    write_step(str(tmp_path), 3)
    model, ema, state = load_checkpoint(str(tmp_path), torch.device("cpu"))
    assert state["step"] == 3 and model["w"][0, 0] == 3 and ema["w"][0, 0] == 3
    assert not (tmp_path / checkpoint.JOURNAL).exists()


def test_an_unfinished_write_is_discarded(tmp_path):
    out = str(tmp_path)
    write_step(out, 3)
    write_step(str(tmp_path / "next"), 4)  # a journal without its "complete" marker: died while writing
    os.rename(tmp_path / "next", tmp_path / checkpoint.JOURNAL)
    assert "discarded" in recover(out)
    assert load_checkpoint(out, torch.device("cpu"))[2]["step"] == 3


def test_a_complete_write_cut_while_moving_is_rolled_forward(tmp_path):
    out = str(tmp_path)
    write_step(out, 3)
    journal = tmp_path / checkpoint.JOURNAL
    journal.mkdir()
    w = {"w": torch.full((2, 2), 4.0)}
    checkpoint.save_weights(w, str(journal / "model.safetensors"), {"step": 4})
    checkpoint.save_weights(w, str(journal / "ema.safetensors"), {"step": 4})
    torch.save({"step": 4}, journal / "state.pt")
    (journal / "complete").touch()
    os.replace(journal / "model.safetensors", tmp_path / "model.safetensors")  # died after the first move
    with pytest.raises(CheckpointError, match="mixes steps"):
        load_checkpoint(out, torch.device("cpu"))
    assert "finished" in recover(out)
    model, ema, state = load_checkpoint(out, torch.device("cpu"))
    assert state["step"] == 4 and ema["w"][0, 0] == 4


def test_sigkill_while_saving_then_resume_continues_from_a_consistent_step(shards, tmp_path):
    """A real training process killed (SIGKILL) while a checkpoint is being written, then resumed."""
    out = tmp_path / "run"
    sets = ["--set=model_args={depth = 2, patch = [1, 4, 4]}", "--set=frames=8", "--set=height=16",
            "--set=width=16", "--set=batch_size=2", "--set=eval_every=0", "--set=save_every=1"]  # fmt: skip
    cmd = [sys.executable, "-m", "vidsift.model", "train", "tiny", "--data", shards, "--out", str(out), *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*cmd, "--set=steps=400"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if (out / "state.pt").exists() and (out / checkpoint.JOURNAL).exists():
                break  # a save of a later step is under way: kill it now
            time.sleep(0.002)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    steps = [torch.load(out / "state.pt", weights_only=True)["step"]]
    pending = out / checkpoint.JOURNAL / "state.pt"  # not yet moved into place (state moves last)
    if (out / checkpoint.JOURNAL / "complete").exists() and pending.exists():
        steps = [torch.load(pending, weights_only=True)["step"]]  # fully written: the new step must win
    target = steps[0] + 2
    resumed = subprocess.run(
        [*cmd, "--resume", f"--set=steps={target}"], env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"at step {steps[0]}" in resumed.stdout
    model, ema, state = load_checkpoint(str(out), torch.device("cpu"))
    assert state["step"] == target and not (out / checkpoint.JOURNAL).exists()
