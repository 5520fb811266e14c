"""Set-up shared by several pipeline test modules, made once per session and handed out read-only.

A test that changes a shared run folder must copy it first; rows from ``processed`` are fresh copies,
so a test may change them.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

DEFAULT_RECIPE = REPO / "recipes/curate/default.toml"
BUNNY = "quality/Big_Buck_Bunny_180_10s.webm"
HOSTILE_NAMES = [
    "with space.mp4",
    'quote\'s "double".mp4',
    "$(touch PWNED).mp4",
    "-leading-dash.mp4",
    "ünïcødé 视频.mp4",
    "semi;colon`tick`.ivf",
]


@pytest.fixture(scope="session")
def sample_run(videos: Path, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The production default recipe through the CLI on the first four clips of quality/ (long scenes
    only), shared by test_curate (what a default run writes) and test_filters (select on its scores):
    (run folder, the finished ``vidsift curate`` process). Read-only."""
    out = tmp_path_factory.mktemp("sample_run") / "run"
    result = run_cli(
        "curate", str(DEFAULT_RECIPE), "--input", str(videos / "quality"), "--output", str(out),
        "--limit", "4", "--set", "run.group_size=2", "--set", "split_scenes.min_scene_s=1.0",
    )  # fmt: skip
    return out, result


@pytest.fixture(scope="session")
def bad_run(videos: Path, tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """The whole bad/ folder plus copies of realshort.mp4 and av1.ivf under hostile file names, curated once
    by the CLI with the default recipe (fast detector, min_scene_s 0.5), shared by test_curate (every input
    accounted for), test_stats (the statistics of a real run) and test_report (its report in Chromium):
    (input folder, run folder, the finished ``vidsift curate`` process). Read-only."""
    src = tmp_path_factory.mktemp("inputs")
    for f in (videos / "bad").iterdir():
        shutil.copy(f, src / f.name)
    for i, name in enumerate(HOSTILE_NAMES):
        shutil.copy(videos / ("bad/av1.ivf" if i % 2 else "quality/realshort.mp4"), src / name)
    out = tmp_path_factory.mktemp("run") / "out"
    result = run_cli(
        "curate", str(DEFAULT_RECIPE), "--input", str(src), "--output", str(out),
        "--set", "split_scenes.min_scene_s=0.5",
        "--set", "split_scenes.detector=fast",  # accounting, not shot accuracy: no TransNetV2 on the CPU here
        cwd=src,
    )  # fmt: skip
    return src, out, result


@pytest.fixture(scope="session")
def processed() -> Callable[[Path], tuple[dict, list[dict]]]:
    """``process_video(path, "g", <the default recipe>)``, each path decoded once per session: the filter
    and dedup tests read the same sample clips. Every call returns a fresh deep copy."""
    from vidsift.pipeline.process import process_video
    from vidsift.pipeline.recipe import load_recipe

    recipe = load_recipe(DEFAULT_RECIPE)
    done: dict[str, tuple[dict, list[dict]]] = {}

    def run(path: Path) -> tuple[dict, list[dict]]:
        key = str(path)
        if key not in done:
            done[key] = process_video(key, "g", recipe)
        return copy.deepcopy(done[key])

    return run


@pytest.fixture(scope="session")
def bunny_copies(videos: Path, ffmpeg: str, tmp_path_factory) -> dict[str, Path]:
    """The Big Buck Bunny sample re-encoded, cropped and rescaled, and played backwards (H.264, no audio):
    near-duplicates of it for the filter and dedup tests."""
    tmp = tmp_path_factory.mktemp("bunny_copies")
    src = videos / BUNNY

    def encode(name: str, *vf: str) -> Path:
        dst = tmp / name
        cmd = [ffmpeg, "-v", "error", "-y", "-i", str(src)] + (["-vf", ",".join(vf)] if vf else [])
        subprocess.run(cmd + ["-an", "-c:v", "libx264", "-crf", "30", str(dst)], check=True)
        return dst

    return {
        "reencoded": encode("reencoded.mp4"),
        "cropped": encode("cropped.mp4", "crop=iw*0.8:ih*0.8", "scale=320:180"),
        "reversed": encode("reversed.mp4", "reverse"),
    }
