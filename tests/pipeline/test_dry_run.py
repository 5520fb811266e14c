"""``vidsift curate --dry-run``: a run's plan (inputs, groups, stages, resources, placement); nothing runs."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow  # starts Ray / loads models in subprocesses

RECIPE = str(REPO / "recipes" / "curate" / "default.toml")


def test_dry_run_lists_the_plan_and_writes_nothing(videos, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("realshort.mp4", "in.mp4", "flipping_a_pancake.mkv"):
        shutil.copy(videos / "quality" / name, src / name)
    listing = tmp_path / "list.jsonl"
    rows = [{"uri": f"src/{n.name}", "licence": "CC0-1.0"} for n in sorted(src.iterdir())]
    rows.append({"uri": "http://127.0.0.1:9/never-fetched.mp4", "licence": "CC-BY-4.0", "title": "t"})
    listing.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    r = run_cli("curate", RECIPE, "--input", str(listing), "--output", str(out), "--dry-run",
                "--set", "run.group_size=2")  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "4 inputs" in r.stdout and "1 URLs fetched when run" in r.stdout
    assert "2 groups of 2, 2 to run" in r.stdout and f"output {out}: new" in r.stdout
    assert "licence (4)" in r.stdout and "title (1)" in r.stdout  # the list's columns, as source_meta
    assert all(s in r.stdout for s in ("probe", "analyze", "split_scenes", "transcode", "write_shards"))
    assert "placement: fits on 1 Ray node(s)" in r.stdout
    assert not out.exists()  # nothing written: no run folder, no lock, no fetch


def test_dry_run_refuses_a_recipe_that_cannot_be_placed(videos, tmp_path):
    recipe = tmp_path / "gpu.toml"
    text = (REPO / "recipes" / "curate" / "default.toml").read_text()
    recipe.write_text(
        text.replace('name = "transcode"\n', 'name = "transcode"\nresources = { num_gpus = 1 }\n')
    )
    out = tmp_path / "out"
    video = str(videos / "quality" / "realshort.mp4")
    r = run_cli("curate", str(recipe), "--input", video, "--output", str(out), "--dry-run")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "placement: does not fit" in r.stdout and "GPU=1" in r.stdout  # the plan is still shown
    assert "no Ray node has that" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
