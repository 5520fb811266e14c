"""dedup: near-duplicate clips across the whole run (re-encodes, crops, speed changes, reversals).

Two halves. In the per-video task, ``hash_clips`` stores ``dedup_hashes`` for every candidate:
64-bit difference hashes of each analysis sample frame inside the clip at three centred crops
(100%, 80%, 64%), skipping flat frames (black, white) whose hash is noise. After the last group,
``find_duplicates`` compares the accepted clips: clip A duplicates clip B when at least
``min_match`` of the samples of the one with fewer samples have a hash, at any pair of crop
scales, within ``max_hamming`` bits of a hash of the other, and their histories in time
(``dedup_curve``: brightness and frame difference at 32 points each) correlate, forwards or
backwards. Matching sets of frames ignores their order and spacing, so time-reversed and
sped-up copies match; the crop scales let a centre crop of up to about a third meet its
original. Candidate pairs come from exact matches of
8-bit bands of the hashes (multi-index hashing), so the run is not compared pair by pair.
In each group of duplicates the clip with the most pixels, then the longest, then the smallest
``clip_id`` is kept; the others are rejected (``near_duplicate``) with ``dup_of`` set.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from vidsift.pipeline.measures import HASH_SCALES
from vidsift.pipeline.rows import sample_indices

FLAT_PROFILE_STD = 2.0  # row means varying less than this: a flat frame, its hash is noise
CURVE_POINTS = 32  # points per over-time signature (duration-free: speed changes still match)
FLAT_LUMA_STD = 1.0  # brightness curve this steady (luma levels) carries no timing information
FLAT_DIFF_STD = 0.2  # nor does a frame-difference curve this steady
BANDS = 8  # 64-bit hash -> 8 bands of 8 bits; two hashes within 7 bits share a band exactly


@dataclass(frozen=True, kw_only=True)
class DedupConfig:
    max_hamming: int = 10  # of 64 bits: re-encodes differ by a few bits, different scenes by ~32
    min_match: float = 0.6  # share of the shorter clip's samples that must find a match
    # Frames alone confuse two moments of one static shot (a traffic camera, a talk at a table) with
    # a copy; a copy also has the same brightness history, forwards or backwards.
    min_curve_corr: float = 0.9

    def __post_init__(self) -> None:
        if not 0 <= self.max_hamming <= 32:
            raise ValueError(f"dedup.max_hamming must be in [0, 32], got {self.max_hamming}")
        if not -1 <= self.min_curve_corr <= 1:
            raise ValueError(f"dedup.min_curve_corr must be in [-1, 1], got {self.min_curve_corr}")
        if not 0 < self.min_match <= 1:
            raise ValueError(f"dedup.min_match must be in (0, 1], got {self.min_match}")


def _resample(values: np.ndarray) -> list[float]:
    if len(values) == 0:
        return [0.0] * CURVE_POINTS
    x = np.linspace(0, len(values) - 1, CURVE_POINTS)
    return np.interp(x, np.arange(len(values)), values).astype(np.float32).tolist()


def time_curves(analysis, start: int, end: int) -> list[float]:
    """Brightness and frame-difference over the clip, each resampled to ``CURVE_POINTS`` points."""
    return _resample(analysis.luma_mean[start:end]) + _resample(analysis.frame_diff[start + 1 : end])


def _curves_agree(a: list[float], b: list[float], config: DedupConfig) -> bool:
    """Same history in time, forwards or backwards (time-reversed copies)?

    Brightness is compared when it varies in both clips, else the frame-to-frame change (cars
    passing a static camera); two clips steady in both are judged by their frames alone.
    """
    if len(a) != 2 * CURVE_POINTS or len(b) != 2 * CURVE_POINTS:
        return True  # no curve to compare: the frames alone decide
    for channel, flat in (
        (slice(0, CURVE_POINTS), FLAT_LUMA_STD),
        (slice(CURVE_POINTS, None), FLAT_DIFF_STD),
    ):
        x, y = np.asarray(a[channel], np.float64), np.asarray(b[channel], np.float64)
        if x.std() >= flat and y.std() >= flat:
            corr = max(float(np.corrcoef(x, y)[0, 1]), float(np.corrcoef(x, y[::-1])[0, 1]))
            return corr >= config.min_curve_corr
        if (x.std() >= flat) != (y.std() >= flat):
            return False  # one changes over time, the other does not: not copies
    return True


def hash_clips(config: DedupConfig, video: dict, analysis, clips: list[dict]) -> list[dict]:
    out = []
    for clip in clips:
        row = dict(clip)
        row["dedup_curve"] = time_curves(analysis, row["start_frame"], row["end_frame"])
        hashes: list[int] = []
        for i in sample_indices(analysis, row):
            s = analysis.samples[i]
            if float(np.std(s.lines[: s.height].astype(np.float32))) >= FLAT_PROFILE_STD:
                hashes.extend(s.hashes)
        row["dedup_hashes"] = hashes
        row["dup_of"] = None
        out.append(row)
    return out


def _popcount(x: np.ndarray) -> np.ndarray:
    x = x.view(np.uint64)
    bits = np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1)
    return bits.sum(axis=-1)


def _matches(a: np.ndarray, b: np.ndarray, config: DedupConfig) -> bool:
    """a, b: samples x scales hash arrays. Does the shorter one find itself in the other?"""
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    # distance of every (short sample, short scale) to every (long sample, long scale)
    d = _popcount(short[:, :, None, None] ^ long_[None, None, :, :])
    matched = (d <= config.max_hamming).any(axis=(1, 2, 3))
    return bool(matched.mean() >= config.min_match)


def find_duplicates(rows: list[dict], config: DedupConfig) -> dict[str, str]:
    """``{clip_id: representative clip_id}`` for every clip that duplicates a kept one.

    ``rows`` need ``clip_id``, ``dedup_hashes``, ``dedup_curve``, ``width``, ``height`` and ``duration_s``.
    """
    scales = len(HASH_SCALES)
    hashed = {}
    for r in rows:
        h = r.get("dedup_hashes") or []
        if len(h) >= scales:
            hashed[r["clip_id"]] = np.asarray(h[: len(h) // scales * scales], dtype=np.int64).reshape(
                -1, scales
            )
    index: dict[tuple[int, int], set[str]] = defaultdict(set)
    for cid, h in hashed.items():
        for value in np.unique(h):
            for band in range(BANDS):
                index[(band, (int(value) >> (8 * band)) & 0xFF)].add(cid)
    pairs: set[tuple[str, str]] = set()
    for ids in index.values():
        if 1 < len(ids) <= 1000:  # a band value shared by a huge crowd carries no information
            ordered = sorted(ids)
            pairs.update((a, b) for i, a in enumerate(ordered) for b in ordered[i + 1 :])
    parent = {cid: cid for cid in hashed}
    curves = {r["clip_id"]: r.get("dedup_curve") or [] for r in rows}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in sorted(pairs):
        if root(a) == root(b):
            continue
        if _matches(hashed[a], hashed[b], config) and _curves_agree(curves[a], curves[b], config):
            parent[root(a)] = root(b)
    groups: dict[str, list[dict]] = defaultdict(list)
    by_id = {r["clip_id"]: r for r in rows}
    for cid in hashed:
        groups[root(cid)].append(by_id[cid])
    duplicates = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        keep = min(
            members,
            key=lambda r: (-(r["width"] or 0) * (r["height"] or 0), -(r["duration_s"] or 0), r["clip_id"]),
        )
        for r in members:
            if r["clip_id"] != keep["clip_id"]:
                duplicates[r["clip_id"]] = keep["clip_id"]
    return duplicates
