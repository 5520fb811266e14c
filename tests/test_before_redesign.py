"""A run folder and a checkpoint written by the code from before the one-package redesign (commit BEFORE,
when the modules were the top-level ``pipeline`` and ``model``) are read, resumed and sampled by today's code.

The old code is taken from git history (``git archive``) and run in its own processes with PYTHONPATH set
to it, so these fixtures are made by exactly that code, not by a re-creation of it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from vidsift.pipeline.cli import main as vidsift

REPO = Path(__file__).resolve().parents[1]
BEFORE = "664cc18242c6c00a403dfea2a06b13c1bde7b88f"  # the last commit with top-level pipeline/ and model/
INPUTS = ("realshort.mp4", "in.mp4", "Big_Buck_Bunny_180_10s.webm")
RECIPE = """
[run]
group_size = 1

[[stage]]
name = "probe"

[[stage]]
name = "analyze"

[[stage]]
name = "split_scenes"
min_scene_s = 1.0

[[stage]]
name = "score_brightness"

[[stage]]
name = "transcode"
max_short_side = 96

[[stage]]
name = "write_shards"
"""
TRAIN = [
    "--set=model_args={depth = 2, patch = [1, 4, 4]}",
    "--set=frames=8",
    "--set=height=16",
    "--set=width=16",
    "--set=batch_size=2",
    "--set=val_clips=1",
    "--set=eval_every=0",
    "--set=save_every=2",
    "--set=log_every=1",
]


@pytest.fixture(scope="module")
def old_code(tmp_path_factory) -> Path:
    """The repository as it was at BEFORE, extracted from git history."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.fail("this test needs the git history of the checkout (a clone, not an export)")
    known = subprocess.run(["git", "cat-file", "-e", f"{BEFORE}^{{commit}}"], cwd=REPO, capture_output=True)
    if known.returncode != 0:
        pytest.fail(f"commit {BEFORE} is not in this clone's history (a shallow clone?)")
    dest = tmp_path_factory.mktemp("before")
    archive = subprocess.run(
        ["git", "archive", BEFORE, "pipeline", "model", "recipes"], cwd=REPO, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def run_old(old: Path, module: str, *args: str, timeout: int = 600) -> None:
    """``python -m <module> ARGS`` with the old code first on the path (its own top-level packages)."""
    env = {**os.environ, "PYTHONPATH": str(old), "OMP_NUM_THREADS": "2", "RAY_DEDUP_LOGS": "0"}
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=old,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"old {module} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def clip_ids(out: Path) -> list[str]:
    return sorted(pq.read_table(out / "clips", columns=["clip_id"]).column("clip_id").to_pylist())


@pytest.fixture(scope="module")
def old_run(old_code, videos, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(input folder, an old complete run, an old run cut short: its last group unfinished)."""
    base = tmp_path_factory.mktemp("old-run")
    inputs = base / "inputs"
    inputs.mkdir()
    for name in INPUTS:
        (inputs / name).symlink_to(videos / "quality" / name)
    recipe = base / "recipe.toml"
    recipe.write_text(RECIPE)
    full = base / "full"
    run_old(old_code, "pipeline.cli", "curate", str(recipe), "--input", str(inputs), "--output", str(full),
            "--quiet")  # fmt: skip
    cut = base / "cut"
    shutil.copytree(full, cut)
    last = sorted(p.name for p in (cut / "_done").iterdir())[-1]
    (cut / "_done" / last).unlink()  # as if the run died before it finished this group
    for table in ("clips", "rejected", "videos"):
        for f in (cut / table).glob(f"{last}*"):
            f.unlink()
    (cut / "manifest.json").unlink(missing_ok=True)
    return inputs, full, cut


def test_an_old_run_folder_resumes_to_the_same_rows(old_run, tmp_path):
    inputs, full, cut = old_run
    assert (full / "manifest.json").exists() and clip_ids(full)
    before = clip_ids(cut)
    # The run's own resolved recipe pins every value the old code used (defaults tuned since then
    # included); keys added since then take their defaults, which keep the old behaviour.
    pinned = tmp_path / "resolved.toml"
    shutil.copy(cut / "recipe.resolved.toml", pinned)
    rc = vidsift(["curate", str(pinned), "--input", str(inputs), "--output", str(cut), "--quiet"])
    assert rc == 0
    assert clip_ids(cut) == clip_ids(full) and len(clip_ids(cut)) > len(before)
    old, new = (
        json.loads((full / "manifest.json").read_text()),
        json.loads((cut / "manifest.json").read_text()),
    )
    assert new["schema_version"] == old["schema_version"]
    # the counts the old manifest has are the same; keys added since then count what the old rows lack
    assert {k: new["counts"][k] for k in old["counts"]} == old["counts"]
    detectors = new["counts"]["videos_by_scene_detector"]
    assert "not recorded" in detectors and sum(detectors.values()) == old["counts"]["videos_analysed"]
    # every column of the old run is one of today's, with its type (issues since then only added columns)
    old_schema = pq.read_schema(next((full / "clips").glob("*.parquet")))
    new_schema = pq.read_schema(next((cut / "clips").glob("*.parquet")))
    for f in old_schema:
        assert new_schema.field(f.name).type == f.type, f.name


def test_an_old_checkpoint_resumes_training_and_samples(old_code, old_run, tmp_path):
    _, full, _ = old_run
    ckpt = tmp_path / "train"
    tiny = str(old_code / "recipes" / "train" / "tiny.toml")
    run_old(old_code, "model.train", tiny, "--data", str(full), "--out", str(ckpt), "--set=steps=2", *TRAIN)
    video = tmp_path / "s.mp4"
    rc = vidsift(["sample", str(ckpt), "--prompt", "a red square", "--frames", "8", "--steps", "2",
                  "--out", str(video)])  # fmt: skip
    assert rc == 0 and video.stat().st_size > 0  # the old checkpoint samples
    resume = ["--resume", "--set=steps=4", *TRAIN]
    rc = vidsift(["train", "tiny", "--data", str(full), "--out", str(ckpt), *resume])
    assert rc == 0
    log = (ckpt / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]][-2:] == ["3", "4"]  # continued from the old step 2
