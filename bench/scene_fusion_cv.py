"""A learned check of boundary candidates, measured against ``fused`` split by split (an experiment).

``fused`` decides each candidate boundary with hand-set rules (docs/scenes.md). This script asks whether
a classifier trained on the labelled set decides better from the same measurements. For every labelled
clip (the files ``bench/scene_accuracy.py`` reads, through its ``--analysis-cache`` of gated signals)
it lists candidates: the boundaries of ``fused`` and of ``fast``, the network's peaks (runs of its
single-frame probability above 0.05) and its long all-frames runs (above 0.5 for 3 frames or more),
merged so that no two lie within 2 frames. Each candidate gets the measurements of ``FEATURES`` and a
label: 1 where it lies within ``--tol`` frames of a labelled cut or inside a labelled gradual
transition (+-tol), else 0. The classifier is scikit-learn's ``HistGradientBoostingClassifier``
(``MODEL``, fixed seed); a candidate is a boundary where its probability reaches 0.5 (``learned``), or
with margins (``-margins KEEP/ADD``: the rules' own candidates from KEEP on, the others from ADD on;
by default the package's ``boundary_check.KEEP_FROM`` / ``ADD_FROM``, as ``split_scenes.learned_check``
runs it; ``--margins`` names others). A second,
weight-free arm (``learned-fast``) is trained the same way on ``fast``'s own boundaries only, with the
measurements that need no network (``FAST_FEATURES``), and is compared with ``fast``.

- default: leave one split out. For each split, train on every other split, predict that split's
  candidates, and score both arms with ``../shared/tools/eval_cuts.py`` beside ``fused`` and ``fast``
  on the same files; then the pooled figures over all splits and over the blind natural splits
  (check7 onward).
- ``--hold SPLIT ...``: train once on every split but those, score those once (how a new blind split
  is scored: docs/scenes.md, Session 25).
- ``--export DIR``: train both arms on every split (but ``--hold``'s) and write the trees as
  ``pipeline/stages/boundary_check.py`` reads them (``boundary_check_<arm>.json``), after checking that
  the package's evaluation of them gives scikit-learn's probabilities on every candidate.
- ``--cost``: only the CPU time of the decision after the analysis pass (``detect_transitions`` on the
  stored signals), each detector with the check off and on.

usage: python bench/scene_fusion_cv.py --analysis-cache DIR [--eval-media DIR] [--hold SPLIT ...]
       [--margins KEEP/ADD ...] [--export DIR] [--cost]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import scene_accuracy as sa  # noqa: E402

from vidsift.pipeline.cli import _default_recipe  # noqa: E402
from vidsift.pipeline.stages import boundary_check as bc  # noqa: E402
from vidsift.pipeline.stages import split_scenes as ss  # noqa: E402

MODEL = dict(max_depth=3, max_iter=150, learning_rate=0.05, l2_regularization=1.0, random_state=0)
FEATURES, FAST_FEATURES = bc.FEATURES, bc.FAST_FEATURES
shifted_distance = bc.shifted_distance


def candidates(signals, fps: float, config) -> tuple[dict[str, list[dict]], list[int], list[int]]:
    """({arm: candidate rows with their measurements}, fused's frames, fast's frames) of one clip: the
    package's own candidates and measurements (``boundary_check.candidates``), after ``fused`` and
    ``fast`` as ``vidsift scenes`` runs them."""
    n = signals.num_frames
    rules = dataclasses.replace(config, learned_check=False)  # the detectors' own rules, checked here
    fused = ss.detect_transitions(signals, fps, dataclasses.replace(rules, detector="fused"))
    fast = ss.detect_transitions(signals, fps, dataclasses.replace(rules, detector="fast"))
    arms = bc.candidates(signals, fps, config, fused, fast)
    rows = {arm: arms[arm][1] for arm in ("learned", "learned-fast")}
    return rows, sorted(t.frame for t in fused if t.frame < n), sorted(t.frame for t in fast if t.frame < n)


def label(frame: int, truth: dict, tol: int) -> int:
    if any(abs(frame - c) <= tol for c in truth["cuts"]):
        return 1
    return int(any(a - tol <= frame <= b + tol for a, b in truth.get("gradual", [])))


def _rows(clip: dict, arm: str) -> list[dict]:
    return clip["rows"][arm]


def _matrix(clips: dict, names: list[str], arm: str) -> tuple[np.ndarray, np.ndarray]:
    feats = FEATURES if arm == "learned" else FAST_FEATURES
    rows = [r for n in names for r in _rows(clips[n], arm)]
    x = np.array([[r[k] for k in feats] for r in rows], dtype=np.float64).reshape(-1, len(feats))
    return x, np.array([r["y"] for r in rows], dtype=int)


def _probabilities(model, clip: dict, arm: str) -> np.ndarray:
    rows = _rows(clip, arm)
    if not rows:
        return np.zeros(0)
    x, _ = _matrix({"clip": {"rows": {arm: rows}}}, ["clip"], arm)
    return model.predict_proba(x)[:, 1]


def _predict(clip: dict, arm: str, p: np.ndarray, keep: float = 0.5, add: float = 0.5) -> list[int]:
    """The frames ``decide`` keeps among the clip's candidates, given their probabilities ``p``."""
    rows = _rows(clip, arm)
    return [r["frame"] for r, yes in zip(rows, bc.decide(rows, p, arm, keep, add), strict=True) if yes]


def _f1(v: np.ndarray) -> str:
    tp, fp, fn, hn = (int(x) for x in v)
    return f"{2 * tp / max(1, 2 * tp + fp + fn):.3f} (tp {tp} fp {fp} fn {fn} hn {hn})"


def _cost(args: argparse.Namespace) -> int:
    """CPU time of ``detect_transitions`` over every labelled clip's stored signals, each detector with
    the check off and on (what the check adds to a run after the one decode pass and the network)."""
    recipe = _default_recipe(["split_scenes.detector=fused", "split_scenes.fused_gate=true"])
    config = recipe.stage("split_scenes")
    spent: dict = defaultdict(float)
    frames = 0
    for path, *_ in sa._labelled(args).values():
        signals, fps = sa._analysis(path, recipe, args.analysis_cache, "analysis-gated")
        frames += signals.num_frames
        for detector in ("fast", "fused"):
            for on in (False, True):
                run = dataclasses.replace(config, detector=detector, learned_check=on)
                start = time.process_time()
                ss.detect_transitions(signals, fps, run)
                spent[detector, on] += time.process_time() - start
    for detector in ("fast", "fused"):
        off, on = spent[detector, False], spent[detector, True]
        print(
            f"{detector}: rules {1000 * off / frames:.3f} ms/frame, with the check {1000 * on / frames:.3f} "
            f"ms/frame (x{on / max(off, 1e-9):.1f}; {frames} frames)"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=Path, default=REPO.parent / "shared" / "videos")
    parser.add_argument("--eval-media", type=Path, default=Path("/work/scene_eval_media/set"))
    parser.add_argument(
        "--analysis-cache", type=Path, help="vidsift's analysis signals (scene_accuracy.py's)"
    )
    parser.add_argument("--hold", nargs="*", help="splits to score once with a model trained on all others")
    parser.add_argument("--tol", type=int, default=2)
    parser.add_argument(
        "--export",
        type=Path,
        help="train both arms on every split but --hold's and write boundary_check_<arm>.json here",
    )
    parser.add_argument(
        "--margins",
        nargs="+",
        default=[f"{bc.KEEP_FROM}/{bc.ADD_FROM}"],
        metavar="KEEP/ADD",
        help="thresholds of the margin rows: keep a rules boundary from KEEP, add another from ADD "
        "(default: the package's KEEP_FROM/ADD_FROM; ADD over 1 adds none); after fast only KEEP applies",
    )
    parser.add_argument(
        "--cost",
        action="store_true",
        help="only time the decision after the analysis pass, with and without the check (CPU s per frame)",
    )
    args = parser.parse_args()
    args.only = None
    if args.cost:
        return _cost(args)
    try:
        margins = [tuple(float(x) for x in m.split("/")) for m in args.margins]
    except ValueError:
        raise SystemExit(f"--margins takes KEEP/ADD pairs such as 0.2/0.8, not {args.margins}") from None
    if any(len(m) != 2 or not 0 <= m[0] <= 1 or m[1] < 0 for m in margins):  # ADD over 1: never add
        raise SystemExit(
            f"--margins takes KEEP/ADD pairs of probabilities such as 0.2/0.8, not {args.margins}"
        )
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
    except ImportError:
        raise SystemExit("scene_fusion_cv.py needs scikit-learn: pip install scikit-learn") from None
    scorer = sa._load_scorer(args.videos)
    recipe = _default_recipe(["split_scenes.detector=fused", "split_scenes.fused_gate=true"])
    config = recipe.stage("split_scenes")
    clips = {}
    files = sa._labelled(args)
    for i, (name, (path, truth, split, _)) in enumerate(files.items(), 1):
        signals, fps = sa._analysis(path, recipe, args.analysis_cache, "analysis-gated")
        rows, fused, fast = candidates(signals, fps, config)
        for r in (r for arm_rows in rows.values() for r in arm_rows):
            r["y"] = label(r["frame"], truth, args.tol)
        clips[name] = {"split": split, "truth": truth, "rows": rows, "fused": fused, "fast": fast}
        if i % 25 == 0 or i == len(files):
            print(f"measured {i}/{len(files)} clips", file=sys.stderr)

    def score(names: list[str], preds: dict) -> np.ndarray:
        v = np.zeros(4, int)
        for n in names:
            s = scorer.score(clips[n]["truth"], preds[n], args.tol)
            v += (s["tp"], s["fp"], s["fn"], s["hardneg"])
        return v

    splits = defaultdict(list)
    for n, c in clips.items():
        splits[c["split"]].append(n)
    held = [s for s in splits if s in set(args.hold or [])] if args.hold is not None else None
    if held is not None and not held:
        raise SystemExit(f"none of {args.hold} is a split of the labelled set ({sorted(splits)})")
    if args.export:
        args.export.mkdir(parents=True, exist_ok=True)
        train = [n for n, c in clips.items() if c["split"] not in set(held or [])]
        for arm in bc.ARMS:
            model = HistGradientBoostingClassifier(**MODEL).fit(*_matrix(clips, train, arm))
            exported = bc.export(model, arm)
            x, _ = _matrix(clips, list(clips), arm)
            # the package's evaluation of the exported trees gives scikit-learn's probabilities
            gap = np.abs(bc.Trees(exported).probability(x) - model.predict_proba(x)[:, 1]).max(initial=0.0)
            if gap > 1e-9:
                raise SystemExit(f"exported trees of {arm} differ from the model by {gap}")
            out = args.export / f"boundary_check_{arm}.json"
            out.write_text(json.dumps(exported, separators=(",", ":")) + "\n")
            print(f"wrote {out} ({len(exported['trees'])} trees, trained on {len(train)} clips)")
        return 0
    rounds = [held] if held is not None else [[s] for s in sorted(splits, key=sa._split_rank)]
    pooled = defaultdict(lambda: np.zeros(4, int))
    for test in rounds:
        train = [n for n, c in clips.items() if c["split"] not in test]
        models = {
            arm: HistGradientBoostingClassifier(**MODEL).fit(*_matrix(clips, train, arm))
            for arm in ("learned", "learned-fast")
        }
        if held is not None:  # is this the model the package ships? (then --hold scores what it runs)
            for arm, model in models.items():
                x, _ = _matrix(clips, list(clips), arm)
                gap = np.abs(bc.Trees.load(arm).probability(x) - model.predict_proba(x)[:, 1]).max(
                    initial=0.0
                )
                print(f"{arm}: the shipped trees {'are' if gap < 1e-9 else 'are NOT'} this model ({gap:.2g})")
        for split in test:
            names = splits[split]
            # each clip's probabilities once per arm; every threshold below reads them
            p = {arm: {n: _probabilities(models[arm], clips[n], arm) for n in names} for arm in models}

            def rows_kept(arm: str, keep: float = 0.5, add: float = 0.5, names=names, p=p) -> np.ndarray:
                return score(names, {n: _predict(clips[n], arm, p[arm][n], keep, add) for n in names})

            res = {"learned": rows_kept("learned")}
            for keep, add in margins:
                res[f"learned-margins {keep:g}/{add:g}"] = rows_kept("learned", keep, add)
            res["fused"] = score(names, {n: clips[n]["fused"] for n in names})
            res["learned-fast"] = rows_kept("learned-fast")
            for keep in dict.fromkeys(keep for keep, _ in margins):  # after fast every candidate is fast's
                res[f"learned-fast-margins {keep:g}"] = rows_kept("learned-fast", keep)
            res["fast"] = score(names, {n: clips[n]["fast"] for n in names})
            blind = held is not None or (split[5:].isdigit() and int(split[5:]) >= 7)
            for k, v in res.items():
                pooled[k] += v
                if blind:
                    pooled[f"{k} (blind splits)"] += v
            print(f"{split:8s} " + "  ".join(f"{k} {_f1(v)}" for k, v in res.items()))
    for k, v in pooled.items():
        print(f"pooled {k}: {_f1(v)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
