"""Smoke run on shards produced by the real curation quick start (recipes/curate/quickstart.toml)."""

import os
import shutil
import subprocess
import sys

import pytest

from model.train import load_recipe, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VIDEOS = os.path.join(ROOT, "..", "shared", "videos", "quality")
SMALL = ["Big_Buck_Bunny_180_10s.webm", "flipping_a_pancake.mkv", "in.mp4", "realshort.mp4"]


@pytest.mark.slow
def test_training_on_curated_quickstart_shards_lowers_validation_loss(tmp_path):
    if not os.path.exists(os.path.join(ROOT, "recipes", "curate", "quickstart.toml")):
        pytest.skip("the curation quick start recipe is not in this checkout")
    src = tmp_path / "videos"
    src.mkdir()
    for name in SMALL:
        shutil.copy(os.path.join(VIDEOS, name), src / name)
    out = tmp_path / "curated"
    cmd = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "curate",
        os.path.join(ROOT, "recipes", "curate", "quickstart.toml"),
        "--input",
        str(src),
        "--output",
        str(out),
        "--quiet",
    ]
    # the quick start's caption stages read the tiny models the README command builds first
    from tests.make_tiny_models import build_all

    build_all(tmp_path / "out" / "tiny-models")
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = load_recipe(
        os.path.join(ROOT, "recipes", "train", "tiny.toml"),
        [
            "steps=40",
            "lr=2e-3",
            "warmup=5",
            "batch_size=4",
            "frames=8",
            "height=16",
            "width=16",
            "val_clips=1",
            "eval_every=0",
            "log_every=10",
            "model_args={depth = 2, patch = [1, 4, 4]}",
        ],
    )
    cfg.data, cfg.out = str(out), str(tmp_path / "run")
    m = train(cfg)  # real clips: H.264 at their own sizes, captions still null (trained unconditional)
    assert m["val_loss"] < 0.8 * m["val_loss_init"], m
