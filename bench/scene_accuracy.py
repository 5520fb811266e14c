"""Shot-boundary accuracy: vidsift's detector against PySceneDetect's defaults, in the same run.

Reads the clips of ``../shared/videos`` that carry cut ground truth (catalog.json), runs

- (a) vidsift: exactly what ``vidsift scenes --json`` reports (probe, the one analysis pass, split_scenes),
- (b) PySceneDetect ``ContentDetector()`` defaults and (c) ``AdaptiveDetector()`` defaults, through
  scenedetect's own PyAV backend (cut frames = scene start frames except 0),

scores all three with the logic of ``../shared/tools/eval_cuts.py`` and prints per-file rows and a
final F1 / precision / recall / hard-negative table.

usage: python bench/scene_accuracy.py [--videos DIR] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vidsift.pipeline.cli import _default_recipe, scenes_report  # noqa: E402


def _load_scorer(videos: Path):
    path = videos.parent / "tools" / "eval_cuts.py"
    spec = importlib.util.spec_from_file_location("eval_cuts", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"scorer not found: {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def vidsift_cuts(path: Path) -> list[int]:
    """Cut frames as ``vidsift scenes --json`` reports them: probe + the one analysis pass + split_scenes."""
    return scenes_report(str(path), _default_recipe([]))["cuts"]


def scenedetect_cuts(path: Path, detector_name: str) -> list[int]:
    from scenedetect import AdaptiveDetector, ContentDetector, SceneManager, open_video

    detector = {"content": ContentDetector, "adaptive": AdaptiveDetector}[detector_name]()
    video = open_video(str(path), backend="pyav")
    manager = SceneManager()
    manager.add_detector(detector)
    manager.detect_scenes(video)
    return [start.frame_num for start, _ in manager.get_scene_list() if start.frame_num != 0]


METHODS = {
    "vidsift": vidsift_cuts,
    "ContentDetector": lambda p: scenedetect_cuts(p, "content"),
    "AdaptiveDetector": lambda p: scenedetect_cuts(p, "adaptive"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=Path, default=REPO.parent / "shared" / "videos")
    parser.add_argument("--only", nargs="*", help="catalog names to run (default: all with cut ground truth)")
    parser.add_argument("--tol", type=int, default=2)
    args = parser.parse_args()
    scorer = _load_scorer(args.videos)
    catalog = json.loads((args.videos / "catalog.json").read_text())["files"]
    truth = {
        name: entry["ground_truth"]
        for name, entry in sorted(catalog.items())
        if "cuts" in (entry.get("ground_truth") or {}) and (not args.only or name in args.only)
    }
    totals = {m: {"tp": 0, "fp": 0, "fn": 0, "hardneg": 0, "s": 0.0} for m in METHODS}
    for name, gt in truth.items():
        for method, find in METHODS.items():
            t0 = time.perf_counter()
            pred = find(args.videos / name)
            elapsed = time.perf_counter() - t0
            s = scorer.score(gt, pred, args.tol)
            for k in ("tp", "fp", "fn", "hardneg"):
                totals[method][k] += s[k]
            totals[method]["s"] += elapsed
            print(
                f"{name:40s} {method:17s} tp {s['tp']:2d} fp {s['fp']:2d} fn {s['fn']:2d} "
                f"hardneg {s['hardneg']}  {elapsed:5.1f}s  {pred}"
            )
    print(f"\n{'method':17s} {'F1':>6s} {'P':>6s} {'R':>6s} {'hardneg':>8s} {'wall_s':>7s}")
    for method, t in totals.items():
        p = t["tp"] / max(1, t["tp"] + t["fp"])
        r = t["tp"] / max(1, t["tp"] + t["fn"])
        f1 = 2 * p * r / max(1e-9, p + r)
        print(f"{method:17s} {f1:6.3f} {p:6.3f} {r:6.3f} {t['hardneg']:8d} {t['s']:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
