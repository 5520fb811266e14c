"""A learned check of boundary candidates, measured against ``fused`` split by split (an experiment).

``fused`` decides each candidate boundary with hand-set rules (docs/scenes.md). This script asks whether
a classifier trained on the labelled set decides better from the same measurements. For every labelled
clip (the files ``bench/scene_accuracy.py`` reads, through its ``--analysis-cache`` of gated signals)
it lists candidates: the boundaries of ``fused`` and of ``fast``, the network's peaks (runs of its
single-frame probability above 0.05) and its long all-frames runs (above 0.5 for 3 frames or more),
merged so that no two lie within 2 frames. Each candidate gets the measurements of ``FEATURES`` and a
label: 1 where it lies within ``--tol`` frames of a labelled cut or inside a labelled gradual
transition (+-tol), else 0. The classifier is scikit-learn's ``HistGradientBoostingClassifier``
(``MODEL``, fixed seed); a candidate is a boundary where its probability reaches 0.5. A second,
weight-free arm (``learned-fast``) is trained the same way on ``fast``'s own boundaries only, with the
measurements that need no network (``FAST_FEATURES``), and is compared with ``fast``.

- default: leave one split out. For each split, train on every other split, predict that split's
  candidates, and score both arms with ``../shared/tools/eval_cuts.py`` beside ``fused`` and ``fast``
  on the same files; then the pooled figures over all splits and over the blind natural splits check7 onward.
- ``--hold SPLIT ...``: train once on every split but those, score those once (how a new blind split
  is scored: docs/scenes.md, Session 25).

usage: python bench/scene_fusion_cv.py --analysis-cache DIR [--eval-media DIR] [--hold SPLIT ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import scene_accuracy as sa  # noqa: E402

from vidsift.pipeline.cli import _default_recipe  # noqa: E402
from vidsift.pipeline.stages import split_scenes as ss  # noqa: E402

MODEL = dict(max_depth=3, max_iter=150, learning_rate=0.05, l2_regularization=1.0, random_state=0)
FEATURES = (
    "p_single", "p_many", "log_p_single", "net_ran", "in_fused", "in_fast",
    "fast_cut", "fast_fade", "fast_dissolve", "fused_cut", "fused_fade", "fused_dissolve",
    "log_content", "log_content_rel", "apart", "apart_missing", "step", "luma", "dluma", "lit",
    "flash", "returns", "fused_x_p", "fast_x_p", "apart_x_p", "shifted", "shifted_of_step",
    "shifted_q75", "density",
)  # fmt: skip
# The weight-free arm (``learned-fast``): only the boundaries ``fast`` reports are candidates, and only the
# measurements that need no network are read, so it can drop ``fast``'s false cuts but add nothing.
NETWORK_FEATURES = {
    "p_single", "p_many", "log_p_single", "net_ran", "in_fused", "fused_cut", "fused_fade",
    "fused_dissolve", "fused_x_p", "fast_x_p", "apart_x_p",
}  # fmt: skip
FAST_FEATURES = tuple(f for f in FEATURES if f not in NETWORK_FEATURES)


def shifted_distance(a: np.ndarray, b: np.ndarray, floor: float, keep: float = 1.0) -> float:
    """Smallest contrast-normalised distance between thumbnail ``b`` and ``a`` moved up/down or
    left/right by up to half the picture in quarter-pixel steps (linear interpolation): small where
    the picture slid (a pan, a tilt, a page scrolled) rather than changed. ``keep`` < 1 averages only
    that share of the smallest pixel differences (a fixed header or caption may not slide along)."""
    con = max(0.5 * (np.abs(a - a.mean()).mean() + np.abs(b - b.mean()).mean()), floor)
    best = np.inf
    for axis in (0, 1):
        size = a.shape[axis]
        for q in range(-size * 2, size * 2 + 1):
            s = q / 4
            lo, hi = int(np.ceil(max(0.0, s))), int(np.floor(min(size - 1, size - 1 + s)))
            if hi - lo + 1 < size * 0.4:
                continue
            xs = np.arange(lo, hi + 1)
            src = xs - s
            i0 = np.floor(src).astype(int)
            i1 = np.minimum(i0 + 1, size - 1)
            w = (src - i0).astype(np.float32)
            if axis == 0:
                moved = a[i0] * (1 - w)[:, None, None] + a[i1] * w[:, None, None]
                d = np.abs(moved - b[xs]).mean(axis=-1).ravel()
            else:
                moved = a[:, i0] * (1 - w)[None, :, None] + a[:, i1] * w[None, :, None]
                d = np.abs(moved - b[:, xs]).mean(axis=-1).ravel()
            if keep < 1:
                d = np.sort(d)[: max(1, int(len(d) * keep))]
            best = min(best, float(d.mean()) / con)
    return best


def candidates(signals, fps: float, config) -> tuple[dict[str, list[dict]], list[int], list[int]]:
    """({arm: candidate rows with their measurements}, fused's frames, fast's frames) of one clip.

    ``learned``: fused's and fast's boundaries, the network's peaks and long runs, no two within 2
    frames. ``learned-fast``: fast's boundaries alone, measured as a run without the network sees them
    (their network measurements are never read)."""
    n = signals.num_frames
    single, many = signals.shot_probabilities()
    fused = [t for t in ss.detect_transitions(signals, fps, dataclasses.replace(config, detector="fused"))]
    fast = [t for t in ss.detect_transitions(signals, fps, dataclasses.replace(config, detector="fast"))]
    found: dict[int, int] = {}  # frame -> source priority (fused, fast, network peak, network run)
    for rank, source in ((0, fused), (1, fast)):
        for t in source:
            if t.frame < n:
                found.setdefault(t.frame, rank)
    for s, e in ss._runs(single > 0.05):
        found.setdefault(s + int(np.argmax(single[s : e + 1])) + 1, 2)
    for s, e in ss._runs(many > 0.5):
        if e - s + 1 >= 3:
            found.setdefault(s + int(np.argmax(many[s : e + 1])) + 1, 3)
    kept: list[int] = []
    for f, _ in sorted(found.items(), key=lambda kv: (kv[1], kv[0])):
        if 1 <= f < n and all(abs(f - g) > 2 for g in kept):
            kept.append(f)
    fused_at = {t.frame: t.kind for t in fused if t.frame < n}
    fast_at = {t.frame: t.kind for t in fast if t.frame < n}
    rows = {
        "learned": measure(signals, fps, config, sorted(kept), fused_at, fast_at),
        "learned-fast": measure(signals, fps, config, [f for f in sorted(fast_at) if f >= 1], {}, fast_at),
    }
    return rows, sorted(fused_at), sorted(fast_at)


def measure(signals, fps: float, config, kept: list[int], fused_at: dict, fast_at: dict) -> list[dict]:
    """The measurements of ``FEATURES`` at each candidate frame of ``kept`` (sorted, >= 1)."""
    n = signals.num_frames
    thumbs = ss._Thumbs(signals.thumbs)
    picture = ss._PictureSignals(signals, thumbs.picture_fraction) if thumbs.picture_fraction < 1 else signals
    single, many = signals.shot_probabilities()
    ahead = max(2, round(config.lookahead_s * fps))
    content = picture.content
    pics = thumbs.t.reshape((-1, *thumbs.shape)).astype(np.float32)
    frames = np.array(kept)
    rows = []
    for f in kept:
        near_fused = [g for g in fused_at if abs(g - f) <= 2]
        near_fast = [g for g in fast_at if abs(g - f) <= 2]
        fk = fused_at[near_fused[0]] if near_fused else ""
        ak = fast_at[near_fast[0]] if near_fast else ""
        local = float(np.median(content[max(0, f - ahead) : min(n, f + ahead)]))
        apart = ss._apart_across(thumbs, f, f - 1, 0, fps, config)
        ps = float(single[max(0, f - 3) : f + 1].max(initial=0.0))
        step = float(thumbs.dist(f - 1, f))
        moved = shifted_distance(pics[f - 1], pics[f], thumbs.floor)
        apart_v = -1.0 if apart is None else float(apart)
        near = range(max(1, f - 2), f + 1)
        rows.append({
            "frame": f,
            "p_single": ps,
            "p_many": float(many[max(0, f - 3) : f + 2].max(initial=0.0)),
            "log_p_single": float(np.log(ps + 1e-3)),
            "net_ran": float(single[max(0, f - 8) : f + 8].max() > 0),
            "in_fused": float(bool(near_fused)), "in_fast": float(bool(near_fast)),
            "fast_cut": float(ak == "cut"), "fast_fade": float(ak == "fade"),
            "fast_dissolve": float(ak == "dissolve"),
            "fused_cut": float(fk == "cut"), "fused_fade": float(fk == "fade"),
            "fused_dissolve": float(fk == "dissolve"),
            "log_content": float(np.log1p(content[f])),
            "log_content_rel": float(np.log1p(content[f] / (local + 1.0))),
            "apart": apart_v, "apart_missing": float(apart is None), "step": step,
            "luma": float(picture.luma[f]) / 255,
            "dluma": float(abs(picture.luma[f] - picture.luma[f - 1])) / 255,
            "lit": float(picture.lit_fraction[f]),
            "flash": float(any(ss._flash(thumbs, picture.luma, k, None, ahead) for k in near)),
            "returns": float(ss._returns(thumbs, f, f, 0, fps, config)),
            "fused_x_p": float(bool(near_fused)) * ps, "fast_x_p": float(bool(near_fast)) * ps,
            "apart_x_p": apart_v * ps,
            "shifted": moved, "shifted_of_step": moved / max(step, 1e-3),
            "shifted_q75": shifted_distance(pics[f - 1], pics[f], thumbs.floor, keep=0.75),
            "density": float((np.abs(frames - f) <= fps).sum()),
        })  # fmt: skip
    return rows


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


def _predict(model, clip: dict, arm: str) -> list[int]:
    rows = _rows(clip, arm)
    if not rows:
        return []
    x, _ = _matrix({"clip": {"rows": {arm: rows}}}, ["clip"], arm)
    return [r["frame"] for r, p in zip(rows, model.predict_proba(x)[:, 1], strict=True) if p >= 0.5]


def _f1(v: np.ndarray) -> str:
    tp, fp, fn, hn = (int(x) for x in v)
    return f"{2 * tp / max(1, 2 * tp + fp + fn):.3f} (tp {tp} fp {fp} fn {fn} hn {hn})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=Path, default=REPO.parent / "shared" / "videos")
    parser.add_argument("--eval-media", type=Path, default=Path("/work/scene_eval_media/set"))
    parser.add_argument(
        "--analysis-cache", type=Path, help="vidsift's analysis signals (scene_accuracy.py's)"
    )
    parser.add_argument("--hold", nargs="*", help="splits to score once with a model trained on all others")
    parser.add_argument("--tol", type=int, default=2)
    args = parser.parse_args()
    args.only = None
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
    rounds = [held] if held is not None else [[s] for s in sorted(splits, key=sa._split_rank)]
    pooled = defaultdict(lambda: np.zeros(4, int))
    for test in rounds:
        train = [n for n, c in clips.items() if c["split"] not in test]
        models = {
            arm: HistGradientBoostingClassifier(**MODEL).fit(*_matrix(clips, train, arm))
            for arm in ("learned", "learned-fast")
        }
        for split in test:
            names = splits[split]
            res = {
                "learned": score(names, {n: _predict(models["learned"], clips[n], "learned") for n in names}),
                "fused": score(names, {n: clips[n]["fused"] for n in names}),
                "learned-fast": score(
                    names, {n: _predict(models["learned-fast"], clips[n], "learned-fast") for n in names}
                ),
                "fast": score(names, {n: clips[n]["fast"] for n in names}),
            }
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
