"""What the weight-free quality filters add to the analysis pass, in the same run.

For each sample clip, times ``scan_video`` + the per-video stages up to transcode
(``pipeline.process``) with the default recipe's filters removed (the analysis pass alone:
decode, scene signals, statistics) and with all of them (the extra measurements inside the
same decode pass, plus every ``score_*`` stage and the dedup hashes). Goal: <= 1.2x.

usage: python bench/filter_overhead.py [--videos DIR] [--repeat 3] [--set split_scenes.detector=fast]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vidsift.pipeline.process import scan_video  # noqa: E402
from vidsift.pipeline.recipe import build_recipe, load_recipe  # noqa: E402
from vidsift.pipeline.registry import STAGES  # noqa: E402

FILES = [
    "quality/Big_Buck_Bunny_180_10s.webm", "quality/flipping_a_pancake.mkv", "quality/in.mp4",
    "quality/test_video_30s.mp4", "quality/tests_data_test.mp4", "quality/traffic_camera.mp4",
    "quality/video2.mp4", "quality/video3.mp4", "quality/video4.mp4", "quality/video_for_blend_modes.mp4",
]  # fmt: skip


def run(path: Path, recipe) -> None:
    from vidsift.pipeline.stages.core import make_clips

    work = scan_video(str(path), recipe)
    if work.analysis is None:
        return
    work.video.update(source_uri=str(path), group="g")
    make_clips(work, recipe.stage("split_scenes"), 4)
    for entry in recipe.stages_of_kind("video_filter"):
        work.clips = STAGES[entry.name].impl(entry.config, work.video, work.analysis, work.clips)


def best(repeat: int, fn) -> float:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=Path, default=REPO.parent / "shared" / "videos")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--set", action="append", default=[], metavar="STAGE.KEY=VALUE",
        help="override a value of recipes/curate/default.toml, e.g. split_scenes.detector=fast",
    )  # fmt: skip
    args = parser.parse_args()
    full = load_recipe(REPO / "recipes/curate/default.toml", args.set)
    data = full.to_dict()
    data["stage"] = [s for s in data["stage"] if STAGES[s["name"]].kind != "video_filter"]
    bare = build_recipe(data)
    total_bare = total_full = 0.0
    print(f"{'file':38s} {'analysis':>9s} {'+filters':>9s} {'ratio':>6s}")
    for name in FILES:
        path = args.videos / name
        b = best(args.repeat, lambda p=path: run(p, bare))
        f = best(args.repeat, lambda p=path: run(p, full))
        total_bare, total_full = total_bare + b, total_full + f
        print(f"{name:38s} {b:8.2f}s {f:8.2f}s {f / b:6.2f}")
    print(f"{'TOTAL':38s} {total_bare:8.2f}s {total_full:8.2f}s {total_full / total_bare:6.2f}")
    print(f"filters add {100 * (total_full / total_bare - 1):.0f}% to the analysis pass (goal <= 20%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
