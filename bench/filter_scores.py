"""Print every quality score of every candidate clip of some sample clips (the table in docs/filters.md).

usage: python bench/filter_scores.py [GLOB] [--set stage.key=value ...]
       (default GLOB: ../shared/videos/quality/*, recipe: recipes/curate/default.toml)
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vidsift.pipeline.process import process_video  # noqa: E402
from vidsift.pipeline.recipe import load_recipe  # noqa: E402

COLUMNS = [
    "duration_score",
    "brightness_score",
    "black_frame_score",
    "sharpness_score",
    "motion_score",
    "static_score",
    "frozen_score",
    "shake_score",
    "text_score",
    "blockiness_score",
    "bars_score",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pattern", nargs="?", default=str(REPO.parent / "shared/videos/quality/*"))
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    recipe = load_recipe(REPO / "recipes/curate/default.toml", args.set)
    print("| clip | frames | " + " | ".join(c.removesuffix("_score") for c in COLUMNS) + " | reject reason |")
    print("|---" * (len(COLUMNS) + 3) + "|")
    for path in sorted(glob.glob(args.pattern)):
        video, clips = process_video(path, "g", recipe)
        name = Path(path).name
        if not clips:
            print(f"| {name} | | " + " | " * len(COLUMNS) + f"video: {video['reason']} |")
        for c in clips:
            vals = " | ".join("" if c.get(k) is None else f"{c[k]:.3f}" for k in COLUMNS)
            print(
                f"| {name} | {c['start_frame']}-{c['end_frame']} | {vals} | {c.get('reject_reason') or ''} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
