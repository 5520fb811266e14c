"""Smoke run on shards produced by the real curation quick start (recipes/curate/quickstart.toml)."""

import os

import pytest

from vidsift.model.train import load_recipe, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_training_on_curated_quickstart_shards_lowers_validation_loss(quickstart_run, tmp_path):
    out, _ = quickstart_run  # the quick start's curation run on four sample videos (tests/conftest.py)
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
    m = train(cfg)  # real clips: H.264 at their own sizes, real (random-weight model) captions
    assert m["val_loss"] < 0.8 * m["val_loss_init"], m
