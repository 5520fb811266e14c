"""A learned check of shot-boundary candidates (``split_scenes.learned_check``, off by default;
docs/scenes.md, Session 25).

``fused`` and ``fast`` decide each candidate boundary with hand-set rules. With ``learned_check`` on, a
small gradient-boosted tree ensemble, trained by ``bench/scene_fusion_cv.py --export`` on the labelled
evaluation set, has the last word where it is sure, from the same measurements (``FEATURES``):

- after ``fused`` (arm ``learned``): the candidates are the boundaries of ``fused`` and of ``fast``, the
  network's peaks (runs of its single-frame probability above 0.05) and its long all-frames runs (above
  0.5 for 3 frames or more), no two within 2 frames; ``fused``'s own stay unless the trees give them
  under ``KEEP_FROM``, the others come in from ``ADD_FROM`` on (``decide``);
- after ``fast`` (arm ``learned-fast``): the candidates are ``fast``'s own boundaries, read through the
  measurements that need no network (``FAST_FEATURES``); the check drops those under ``KEEP_FROM`` and
  adds none.

The trees are plain JSON (``boundary_check_<arm>.json`` beside this file) evaluated here with numpy:
nothing is learned or downloaded at run time.
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path

import numpy as np

FEATURES = (
    "p_single", "p_many", "log_p_single", "net_ran", "in_fused", "in_fast",
    "fast_cut", "fast_fade", "fast_dissolve", "fused_cut", "fused_fade", "fused_dissolve",
    "log_content", "log_content_rel", "apart", "apart_missing", "step", "luma", "dluma", "lit",
    "flash", "returns", "fused_x_p", "fast_x_p", "apart_x_p", "shifted", "shifted_of_step",
    "shifted_q75", "density",
)  # fmt: skip
# The weight-free arm reads none of these (a run without the network has no probabilities).
NETWORK_FEATURES = {
    "p_single", "p_many", "log_p_single", "net_ran", "in_fused", "fused_cut", "fused_fade",
    "fused_dissolve", "fused_x_p", "fast_x_p", "apart_x_p",
}  # fmt: skip
FAST_FEATURES = tuple(f for f in FEATURES if f not in NETWORK_FEATURES)
ARMS = {"learned": FEATURES, "learned-fast": FAST_FEATURES}
# A network peak or all-frames run counts as a candidate from these probabilities on.
_PEAK, _RUN, _RUN_FRAMES = 0.05, 0.5, 3
# Candidates closer than this (frames) are one; the earlier source (fused, fast, peak, run) names it.
_MERGE = 2
# A candidate the rules reported stays a boundary unless the trees give it under KEEP_FROM; one they did
# not report (a network peak or run) becomes one only from ADD_FROM on. At 0.5 / 0.5 the trees alone
# decide; these margins keep the rules' answer where the trees are unsure, which loses less on the
# composed clips and the sample clips (docs/scenes.md, Session 25).
KEEP_FROM, ADD_FROM = 0.2, 0.8


def shifted_distance(a: np.ndarray, b: np.ndarray, floor: float, keep: float = 1.0) -> float:
    """Smallest contrast-normalised distance between thumbnail ``b`` and ``a`` moved up/down or
    left/right by up to half the picture in quarter-pixel steps (linear interpolation): small where
    the picture slid (a pan, a tilt, a page scrolled) rather than changed. ``keep`` < 1 averages only
    that share of the smallest pixel differences (a fixed header or caption may not slide along)."""
    return shifted_distances(a, b, floor, (keep,))[0]


def shifted_distances(a: np.ndarray, b: np.ndarray, floor: float, keeps: tuple[float, ...]) -> list[float]:
    """``shifted_distance`` for each share of ``keeps``, from one pass over the shifts."""
    con = max(0.5 * (np.abs(a - a.mean()).mean() + np.abs(b - b.mean()).mean()), floor)
    best = [np.inf] * len(keeps)
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
            ordered = np.sort(d) if any(k < 1 for k in keeps) else d
            for i, keep in enumerate(keeps):
                part = d if keep >= 1 else ordered[: max(1, int(len(d) * keep))]
                best[i] = min(best[i], float(part.mean()) / con)
    return best


def _nearest_kind(at: dict, frames: np.ndarray, f: int) -> tuple[bool, str]:
    """(is a boundary of ``at`` within _MERGE frames of ``f``, the kind of the earliest such one);
    ``frames``: ``at``'s frames, sorted."""
    i = int(np.searchsorted(frames, f - _MERGE))
    if i < len(frames) and frames[i] <= f + _MERGE:
        return True, at[int(frames[i])]
    return False, ""


def _probabilities(signals) -> tuple[np.ndarray, np.ndarray]:
    probs = signals.shot_probabilities()
    if probs is None:  # fast: no network ran; the weight-free arm reads no probability
        zero = np.zeros(signals.num_frames, np.float32)
        return zero, zero
    return probs


def measure(signals, fps: float, config, kept: list[int], fused_at: dict, fast_at: dict) -> list[dict]:
    """The measurements of ``FEATURES`` at each candidate frame of ``kept`` (sorted, each >= 1);
    ``fused_at`` / ``fast_at``: frame -> kind of the boundaries those detectors reported."""
    from vidsift.pipeline.stages import split_scenes as ss

    n = signals.num_frames
    thumbs = ss._Thumbs(signals.thumbs)
    picture = ss._PictureSignals(signals, thumbs.picture_fraction) if thumbs.picture_fraction < 1 else signals
    single, many = _probabilities(signals)
    ahead = max(2, round(config.lookahead_s * fps))
    content = picture.content
    frames = np.array(kept)
    sec = math.floor(fps)  # candidates within fps frames (a whole number of frames apart)
    fused_frames, fast_frames = np.array(sorted(fused_at), int), np.array(sorted(fast_at), int)
    rows = []
    for f in kept:
        near_fused, fk = _nearest_kind(fused_at, fused_frames, f)
        near_fast, ak = _nearest_kind(fast_at, fast_frames, f)
        pair = thumbs.t[f - 1 : f + 1].reshape((2, *thumbs.shape)).astype(np.float32)
        local = float(np.median(content[max(0, f - ahead) : min(n, f + ahead)]))
        apart = ss._apart_across(thumbs, f, f - 1, 0, fps, config)
        ps = float(single[max(0, f - 3) : f + 1].max(initial=0.0))
        step = float(thumbs.dist(f - 1, f))
        moved, moved_q75 = shifted_distances(pair[0], pair[1], thumbs.floor, (1.0, 0.75))
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
            "shifted_q75": moved_q75,
            "density": float(np.searchsorted(frames, f + sec, "right") - np.searchsorted(frames, f - sec)),
        })  # fmt: skip
    return rows


def candidates(
    signals, fps: float, config, fused: list | None, fast: list, arms: tuple[str, ...] = tuple(ARMS)
) -> dict[str, tuple[list, list[dict]]]:
    """{arm: (candidate transitions, their measurements)} for each of ``arms``; ``fused`` / ``fast``: the
    transitions those detectors reported (``fused`` None: only the weight-free arm, for a run without
    the network)."""
    from vidsift.pipeline.stages.split_scenes import Transition, _runs

    n = signals.num_frames
    single, many = _probabilities(signals)
    found: dict[int, tuple[int, Transition]] = {}  # frame -> (source rank, transition)
    for rank, source in ((0, fused or []), (1, fast)):
        for t in source:
            if t.frame < n:
                found.setdefault(t.frame, (rank, t))
    if fused is not None:
        for s, e in _runs(single > _PEAK):
            peak = s + int(np.argmax(single[s : e + 1]))
            kind = ("cut", peak + 1, peak) if e - s < 2 else ("dissolve", s, e)
            found.setdefault(
                peak + 1, (2, Transition(frame=peak + 1, first=kind[1], last=kind[2], kind=kind[0]))
            )
        for s, e in _runs(many > _RUN):
            if e - s + 1 >= _RUN_FRAMES:
                f = s + int(np.argmax(many[s : e + 1])) + 1
                found.setdefault(f, (3, Transition(frame=f, first=s, last=e, kind="dissolve")))
    edge = max(1, round(config.edge_s * fps))  # split_scenes reports nothing nearer the ends
    kept: list[int] = []
    for f, _ in sorted(found.items(), key=lambda kv: (kv[1][0], kv[0])):
        if edge <= f < n - edge and all(abs(f - g) > _MERGE for g in kept):
            kept.append(f)
    kept.sort()
    fused_at = {t.frame: t.kind for t in fused or [] if t.frame < n}
    fast_at = {t.frame: t.kind for t in fast if t.frame < n}
    own = {t.frame: t for t in fast if 1 <= t.frame < n}
    frames = sorted(own)
    out = {}
    if "learned-fast" in arms:
        out["learned-fast"] = ([own[f] for f in frames], measure(signals, fps, config, frames, {}, fast_at))
    if fused is not None and "learned" in arms:
        out["learned"] = ([found[f][1] for f in kept], measure(signals, fps, config, kept, fused_at, fast_at))
    return out


class Trees:
    """A binary classifier of gradient-boosted regression trees, as ``bench/scene_fusion_cv.py`` exports
    it: ``{"arm", "features", "baseline", "trees": [[[feature, threshold, left, right, value], ...]]}``
    (a node with ``left == -1`` is a leaf holding ``value``; ``x <= threshold`` goes left)."""

    def __init__(self, data: dict) -> None:
        self.arm = data["arm"]
        self.features = tuple(data["features"])
        if self.features != ARMS.get(self.arm):
            raise ValueError(f"trees for arm {self.arm!r} read features this version does not measure")
        self.baseline = float(data["baseline"])
        self.trees = [np.array(t, dtype=np.float64).reshape(-1, 5) for t in data["trees"]]

    @staticmethod
    @cache
    def load(arm: str) -> Trees:
        path = Path(__file__).with_name(f"boundary_check_{arm}.json")
        return Trees(json.loads(path.read_text()))

    def probability(self, x: np.ndarray) -> np.ndarray:
        """P(boundary) for each row of ``x`` (columns in ``self.features`` order)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, len(self.features))
        raw = np.full(len(x), self.baseline)
        rows = np.arange(len(x))
        for t in self.trees:
            node = np.zeros(len(x), dtype=np.int64)
            while True:
                left = t[node, 2].astype(np.int64)
                inner = left >= 0
                if not inner.any():
                    break
                feat = t[node, 0].astype(np.int64)
                go_left = x[rows, np.where(inner, feat, 0)] <= t[node, 1]
                node = np.where(inner, np.where(go_left, left, t[node, 3].astype(np.int64)), node)
            raw += t[node, 4]
        return 1.0 / (1.0 + np.exp(-raw))


def decide(
    rows: list[dict], p: np.ndarray, arm: str, keep: float = KEEP_FROM, add: float = ADD_FROM
) -> list[bool]:
    """Which candidates are boundaries: those the rules reported (``fused``'s after ``fused``; all of
    them after ``fast``) from probability ``keep`` on, the others from ``add`` on."""
    own = [arm == "learned-fast" or r["in_fused"] > 0 for r in rows]
    return [bool(q >= (keep if o else add)) for q, o in zip(p, own, strict=True)]


def check(signals, fps: float, config, fused: list | None, fast: list) -> list:
    """The transitions the trees keep: among fused's candidates after ``fused``, among ``fast``'s own
    boundaries after ``fast`` (``fused`` None). Boundaries at the last frame (a fade-out to the end)
    are kept as they are."""
    arm = "learned" if fused is not None else "learned-fast"
    trans, rows = candidates(signals, fps, config, fused, fast, (arm,))[arm]
    trees = Trees.load(arm)
    end = [t for t in (fast if fused is None else fused) if t.frame >= signals.num_frames]
    if not rows:
        return end
    p = trees.probability(np.array([[r[k] for k in trees.features] for r in rows]))
    return [t for t, ok in zip(trans, decide(rows, p, arm), strict=True) if ok] + end


def export(model, arm: str) -> dict:
    """A fitted scikit-learn ``HistGradientBoostingClassifier`` as ``Trees`` reads it (bench only)."""
    trees = []
    for (predictor,) in model._predictors:
        nodes = predictor.nodes
        trees.append([
            [int(nd["feature_idx"]), float(nd["num_threshold"]),
             -1 if nd["is_leaf"] else int(nd["left"]), -1 if nd["is_leaf"] else int(nd["right"]),
             float(nd["value"])]
            for nd in nodes
        ])  # fmt: skip
    baseline = float(np.asarray(model._baseline_prediction).ravel()[0])
    if not math.isfinite(baseline):
        raise ValueError("the model's baseline is not finite")
    return {"arm": arm, "features": list(ARMS[arm]), "baseline": baseline, "trees": trees}
