import csv
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from vidsift.model.train import RecipeError, TrainConfig, load_recipe, lr_at, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "recipes", "train", "tiny.toml")
# Small and fast: 2 blocks, 8 frames of 16x16 in 4x4 patches (32 tokens per clip).
FAST = [
    "model_args={depth = 2, patch = [1, 4, 4]}",
    "frames=8",
    "height=16",
    "width=16",
    "batch_size=4",
    "warmup=2",
    "log_every=1",
    "eval_every=0",
    "save_every=0",
    "ema_decay=0.9",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(shards: str, out, *extra: str) -> TrainConfig:
    cfg = load_recipe(TINY, FAST + list(extra))
    cfg.data, cfg.out = shards, str(out)
    return cfg


def weights(run) -> dict[str, torch.Tensor]:
    return {
        **load_file(os.path.join(run, "model.safetensors")),
        **{f"ema.{k}": v for k, v in load_file(os.path.join(run, "ema.safetensors")).items()},
    }


def test_recipe_overrides_and_errors(tmp_path):
    cfg = load_recipe(
        TINY, ["steps=7", "lr=0.01", "model_args={depth = 2}", "text_model=foo", "compile=true"]
    )
    assert (cfg.steps, cfg.lr, cfg.model_args, cfg.text_model, cfg.compile) == (
        7,
        0.01,
        {"depth": 2},
        "foo",
        True,
    )
    assert load_recipe(TINY, ["lr=1"]).lr == 1.0
    with pytest.raises(RecipeError, match="unknown key 'stepz'"):
        load_recipe(TINY, ["stepz=3"])
    with pytest.raises(RecipeError, match="steps in --set must be int"):
        load_recipe(TINY, ["steps=many"])
    bad = tmp_path / "bad.toml"
    bad.write_text("colour = 'red'\n")
    with pytest.raises(RecipeError, match="unknown key 'colour' in .*bad.toml"):
        load_recipe(str(bad))
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(str(tmp_path / "missing.toml"))
    with pytest.raises(RecipeError, match="parallel must be ddp or fsdp, got 'zero3'"):
        train(load_recipe(TINY, ["parallel=zero3", f"data={tmp_path}", f"out={tmp_path / 'run'}"]))


def test_lr_schedule():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup=10, steps=110)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)


def test_resume_after_n_steps_equals_uninterrupted_2n_bitwise(shards, tmp_path):
    full = train(config(shards, tmp_path / "full", "steps=6"))
    half = train(config(shards, tmp_path / "split", "steps=3"))
    assert half["step"] == 3
    resumed = train(config(shards, tmp_path / "split", "steps=6"), resume=True)
    assert resumed["step"] == full["step"] == 6
    a, b = weights(tmp_path / "full"), weights(tmp_path / "split")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    sa = torch.load(tmp_path / "full" / "state.pt", weights_only=False)
    sb = torch.load(tmp_path / "split" / "state.pt", weights_only=False)
    assert sa["readers"] == sb["readers"] and sa["step"] == sb["step"] == 6
    # The resumed log continues the first one.
    rows = list(csv.DictReader(open(tmp_path / "split" / "log.csv")))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3, 4, 5, 6]


def test_smoke_run_validation_loss_falls_and_writes_a_run_folder(shards, tmp_path):
    out = tmp_path / "run"
    m = train(
        config(shards, out, "steps=40", "lr=2e-3", "eval_every=20", "sample_every=40", "sample_steps=4")
    )
    assert m["val_loss"] < 0.8 * m["val_loss_init"], m
    rows = list(csv.DictReader(open(out / "log.csv")))
    vals = [float(r["val_loss"]) for r in rows if r["val_loss"]]
    assert len(vals) == 3 and vals[-1] < vals[0]
    assert all(float(r["tokens_per_s"]) > 0 for r in rows[1:])
    assert (out / "samples" / "step_000040.png").exists()
    assert "steps = 40" in (out / "recipe.toml").read_text()


def torchrun(shards: str, out, *sets: str, procs: int = 2) -> subprocess.CompletedProcess:
    """``torchrun -m vidsift.model train`` with 2 CPU processes (gloo), the FAST settings plus ``sets``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={procs}",
        f"--master-port={free_port()}",
        "-m",
        "vidsift.model",
        "train",
        TINY,
        "--data",
        shards,
        "--out",
        str(out),
        *[f"--set={s}" for s in FAST + ["val_clips=2"]],
        *(a if a == "--resume" else f"--set={a}" for a in sets),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def assert_same_weights(a_run, b_run) -> None:
    a, b = weights(a_run), weights(b_run)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_two_process_ddp_and_fsdp_agree_with_one_process_accumulating(shards, tmp_path):
    """torchrun, 2 CPU processes (gloo), 1 micro-batch each == 1 process, 2 accumulated micro-batches: with
    DDP for 3 steps, then FSDP resuming that DDP checkpoint for 3 more (the optimizer state moves from
    indices to sharded parameters by name), then one process resuming the FSDP checkpoint (names back to a
    plain optimizer) for a seventh step."""
    torchrun(shards, tmp_path / "ddp", "steps=3")
    one = config(shards, tmp_path / "one", "steps=3", "val_clips=2", "grad_accum=2")
    train(one)
    moved = load_file(os.path.join(tmp_path, "one", "model.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in moved.items() if k.startswith("out."))  # it did train
    assert_same_weights(tmp_path / "ddp", tmp_path / "one")
    sa = torch.load(tmp_path / "ddp" / "state.pt", weights_only=False)
    assert [r["reader"] for r in sa["readers"]] == [0, 1]

    shutil.copytree(tmp_path / "ddp", tmp_path / "fsdp")
    torchrun(shards, tmp_path / "fsdp", "steps=6", "parallel=fsdp", "--resume")
    train(config(shards, tmp_path / "one", "steps=6", "val_clips=2", "grad_accum=2"), resume=True)
    assert_same_weights(tmp_path / "fsdp", tmp_path / "one")
    state = torch.load(tmp_path / "fsdp" / "state.pt", weights_only=False)
    assert state["step"] == 6 and state["optimizer_format"] == "names"
    assert "blocks.0.attn.q.weight" in state["optimizer"]["state"]  # full (gathered), keyed by name

    shutil.copytree(tmp_path / "fsdp", tmp_path / "back")
    for run in ("back", "one"):
        train(config(shards, tmp_path / run, "steps=7", "val_clips=2", "grad_accum=2"), resume=True)
    assert_same_weights(tmp_path / "back", tmp_path / "one")


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_training_matches_eager(shards, tmp_path):
    """compile = true (what the GPU recipe uses) through the custom autograd nodes of model/dit.py: inductor
    on CPU, 2 steps, the same weights as eager up to float rounding. One block: the blocks are identical,
    one holds every custom node, and inductor's C++ build (most of the test's time) grows with the graph."""
    one_block = "model_args={depth = 1, patch = [1, 4, 4]}"
    train(config(shards, tmp_path / "eager", "steps=2", one_block))
    train(config(shards, tmp_path / "compiled", "steps=2", "compile=true", one_block))
    a, b = weights(tmp_path / "eager"), weights(tmp_path / "compiled")
    assert "blocks.0.attn.q.weight" in a and not any(k.startswith("blocks.1.") for k in a)
    assert any(v.abs().sum() > 0 for k, v in a.items() if k.startswith("out."))  # it did train
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_fsdp_with_packing_and_accumulation_trains_and_samples(shards, tmp_path):
    """FSDP's other paths: the packed forward (forward_packed registered with FSDP), gradient sync only on
    the last of 2 micro-steps, sample grids and validation computed on every rank, a checkpoint that
    samples."""
    out = tmp_path / "packed"
    proc = torchrun(shards, out, "steps=2", "pack=true", "grad_accum=2", "batch_size=2", "parallel=fsdp",
                    "sample_every=2", "sample_steps=2")  # fmt: skip
    assert len(re.findall(r"^train .* 2/2 steps loss ", proc.stderr, re.M)) == 1  # one bar: rank 0's
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["step"]) for r in rows] == [0, 1, 2] and rows[-1]["val_loss"]
    assert (out / "samples" / "step_000002.png").exists()
    moved = load_file(os.path.join(out, "model.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in moved.items() if k.startswith("out."))
    state = torch.load(out / "state.pt", weights_only=False)
    assert len(state["readers"]) == 4 and state["optimizer_format"] == "names"
    from vidsift.model.sample import generate

    videos, _ = generate(str(out), ["a red square moving right"], 8, 16, 16, 2, 2.0, 0)
    assert videos.shape == (1, 3, 8, 16, 16) and torch.isfinite(videos).all()


def test_time_true_training_records_its_frame_rate(shards, tmp_path):
    """fps = 6 on the 12 fps synthetic clips: every 2nd frame, and the checkpoint says 6 fps (what sampling
    writes), not the 24 / frame_stride a fixed stride assumes."""
    import json

    from safetensors import safe_open

    train(config(shards, tmp_path / "run", "steps=2", "fps=6.0", "frame_stride=5"))
    with safe_open(str(tmp_path / "run" / "ema.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["fps"]) == 6.0
    with pytest.raises(RecipeError, match="fps must be >= 0"):
        train(config(shards, tmp_path / "bad", "steps=1", "fps=-1"))
