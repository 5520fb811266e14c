"""dedup: near-duplicate clips across the whole run (re-encodes, crops, speed changes, reversals).

Two halves. In the per-video task, ``hash_clips`` stores ``dedup_hashes`` for every candidate:
64-bit difference hashes of each analysis sample frame inside the clip at three centred crops
(100%, 80%, 64%; a frame with letterbox or pillarbox bars hashes the picture inside them in place of
the 64% crop), skipping flat frames (black, white) whose hash is noise. After the last group,
``find_duplicates`` compares the accepted clips: clip A duplicates clip B when at least
``min_match`` of the samples of the one with fewer samples have a hash, at any pair of crop
scales, within ``max_hamming`` bits of a hash of the other, and their histories in time
(``dedup_curve``: brightness and frame difference at 32 points each) correlate, forwards or
backwards (the brightness curves in their levels and in their steps, ``min_step_corr``: smooth curves of
unrelated clips often correlate in level by chance, rarely in their steps); frames that match only near
the limit (``edge_margin``) also need frame-difference curves that agree (``edge_diff_corr``): unrelated
steady shots meet there by chance, more often the larger the run. Matching sets of frames
ignores their order and spacing, so time-reversed and sped-up copies match; the crop scales let a centre
crop of up to about a third meet its original. Candidate pairs come from a Hamming-space LSH index
(``pipeline/dedup_index.py``:
``index_tables`` tables keyed on random bit positions, every bucket searched, big ones split, never
skipped), so the run is not compared pair by pair; it runs as Ray tasks past ``distribute_above``
clips. In each group of duplicates the clip with the most pixels, then the longest, then the smallest
``clip_id`` is kept; the others are rejected (``near_duplicate``) with ``dup_of`` set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vidsift.pipeline.measures import dhashes
from vidsift.pipeline.rows import sample_indices
from vidsift.pipeline.stages.score_bars import ScoreBarsConfig, frame_bars

FLAT_PROFILE_STD = 2.0  # row means varying less than this: a flat frame, its hash is noise
CURVE_POINTS = 32  # points per over-time signature (duration-free: speed changes still match)
FLAT_LUMA_STD = 1.0  # brightness curve this steady (luma levels) carries no timing information
FLAT_DIFF_STD = 0.2  # nor does a frame-difference curve this steady
BARS = ScoreBarsConfig()  # a sample frame's own bars, by score_bars' default rule (its hash crops)


def measure_sample(frame) -> dict:
    """The analysis pass calls this on every sample frame (``analyze.SampleFrame``): the hashes compared
    (with the picture inside this frame's letterbox or pillarbox bars, found by ``score_bars``' rule on this
    frame alone, in place of the 64% crop), and how much its row means vary (``FLAT_PROFILE_STD``: a
    flat frame's hash is noise). Measured here, not borrowed from ``score_bars``' hook, so a recipe
    without ``score_bars`` hashes too; the value is the one those profiles gave (row means of the gray
    frame, stored as float16)."""
    row_means = frame.gray.astype(np.float32).mean(axis=1).astype(np.float16)
    return {
        "hashes": dhashes(frame.gray, frame_bars(frame.gray, BARS)),
        "row_mean_std": float(np.std(row_means.astype(np.float32))),
    }


@dataclass(frozen=True, kw_only=True)
class DedupConfig:
    max_hamming: int = 10  # of 64 bits: re-encodes differ by a few bits, different scenes by ~32
    min_match: float = 0.6  # share of the shorter clip's samples that must find a match
    # Frames alone confuse two moments of one static shot (a traffic camera, a talk at a table) with
    # a copy; a copy also has the same brightness history, forwards or backwards.
    min_curve_corr: float = 0.9
    # ... and the same changes from point to point: the brightness curves' steps (first differences), in the
    # direction whose levels agree, correlate at least this much. Smooth curves (drifts, random walks)
    # correlate >= 0.9 in level by chance for ~1-2% of unrelated pairs; their steps do not (docs/filters.md).
    # -1 turns the step test off: the rule of runs deduplicated before it existed.
    min_step_corr: float = 0.7
    # Frames that match only near the limit (their matched samples on average more than max_hamming -
    # edge_margin bits apart) are weak evidence: unrelated steady shots meet there by chance, more often
    # the larger the run (2 false pairs in 3M clips, docs/benchmarks.md). Such a pair must also have
    # frame-difference curves that correlate at least edge_diff_corr in the direction its brightness agrees
    # (where both vary). -1 turns it off.
    edge_margin: int = 2
    edge_diff_corr: float = 0.8
    # The run-wide index (docs/filters.md: its measured recall). A copy collides in a table when one of
    # its many sample hashes agrees with one of the original's on all of that table's key bits.
    index_tables: int = 20  # hash tables; more find farther copies (reversed, sped up), each costs one sort
    index_bits: int = 0  # key bits per table; 0 = log2(hashes) + 2, so a bucket holds ~1/4 entry on average
    index_seed: int = 0  # which bit positions key each table (fixed: the same run gives the same result)
    max_bucket: int = 4096  # a bucket with more entries is split by more key bits (counted, never skipped)
    distribute_above: int = 200_000  # clips: run the index as Ray tasks above this (0 = always)

    def __post_init__(self) -> None:
        if not 1 <= self.index_tables <= 256:
            raise ValueError(f"dedup.index_tables must be in [1, 256], got {self.index_tables}")
        if self.index_bits and not 8 <= self.index_bits <= 40:
            raise ValueError(f"dedup.index_bits must be 0 (auto) or in [8, 40], got {self.index_bits}")
        if self.max_bucket < 2:
            raise ValueError(f"dedup.max_bucket must be >= 2, got {self.max_bucket}")
        if self.distribute_above < 0:
            raise ValueError(f"dedup.distribute_above must be >= 0, got {self.distribute_above}")
        if not 0 <= self.max_hamming <= 32:
            raise ValueError(f"dedup.max_hamming must be in [0, 32], got {self.max_hamming}")
        if not -1 <= self.min_curve_corr <= 1:
            raise ValueError(f"dedup.min_curve_corr must be in [-1, 1], got {self.min_curve_corr}")
        if not 0 <= self.edge_margin <= self.max_hamming:
            raise ValueError(f"dedup.edge_margin must be in [0, max_hamming], got {self.edge_margin}")
        if not -1 <= self.edge_diff_corr <= 1:
            raise ValueError(f"dedup.edge_diff_corr must be in [-1, 1], got {self.edge_diff_corr}")
        if not -1 <= self.min_step_corr <= 1:
            raise ValueError(f"dedup.min_step_corr must be in [-1, 1], got {self.min_step_corr}")
        if not 0 < self.min_match <= 1:
            raise ValueError(f"dedup.min_match must be in (0, 1], got {self.min_match}")


def _resample(values: np.ndarray) -> list[float]:
    if len(values) == 0:
        return [0.0] * CURVE_POINTS
    x = np.linspace(0, len(values) - 1, CURVE_POINTS)
    return np.interp(x, np.arange(len(values)), values).astype(np.float32).tolist()


def _step_corr(x: np.ndarray, y: np.ndarray) -> float:
    """Correlation of the steps (first differences) of two curves; 1 when either has constant steps (a
    linear ramp: nothing to compare beyond its level)."""
    dx, dy = np.diff(x), np.diff(y)
    if dx.std() < 1e-9 or dy.std() < 1e-9:
        return 1.0
    return float(np.corrcoef(dx, dy)[0, 1])


def time_curves(analysis, start: int, end: int) -> list[float]:
    """Brightness and frame-difference over the clip, each resampled to ``CURVE_POINTS`` points."""
    return _resample(analysis.luma_mean[start:end]) + _resample(analysis.frame_diff[start + 1 : end])


def _curves_agree(a: list[float], b: list[float], config: DedupConfig) -> bool:
    """Same history in time, forwards or backwards (time-reversed copies)?

    Brightness is compared when it varies in both clips (its levels, ``min_curve_corr``, and its steps,
    ``min_step_corr``, in the same direction), else the frame-to-frame change (cars passing a static
    camera; its levels only); two clips steady in both are judged by their frames alone.
    """
    if len(a) != 2 * CURVE_POINTS or len(b) != 2 * CURVE_POINTS:
        return True  # no curve to compare: the frames alone decide
    for channel, flat in (
        (slice(0, CURVE_POINTS), FLAT_LUMA_STD),
        (slice(CURVE_POINTS, None), FLAT_DIFF_STD),
    ):
        x, y = np.asarray(a[channel], np.float64), np.asarray(b[channel], np.float64)
        if x.std() >= flat and y.std() >= flat:
            for z in (y, y[::-1]):  # forwards, or backwards (time-reversed copies)
                steps = channel.start != 0 or config.min_step_corr <= -1  # no step test: passed
                if float(np.corrcoef(x, z)[0, 1]) >= config.min_curve_corr and (
                    steps or _step_corr(x, z) >= config.min_step_corr
                ):
                    return True
            return False
        if (x.std() >= flat) != (y.std() >= flat):
            return False  # one changes over time, the other does not: not copies
    return True


def curves_agree_many(a: np.ndarray, b: np.ndarray, config: DedupConfig) -> np.ndarray:
    """``_curves_agree`` for many pairs at once: ``a``, ``b`` are ``n x 2*CURVE_POINTS`` curves (a row of
    NaN: no curve, the frames alone decide); returns a bool per pair."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    missing = np.isnan(a).any(axis=1) | np.isnan(b).any(axis=1)
    decided = np.zeros(len(a), bool)
    result = np.ones(len(a), bool)
    for channel, flat in (
        (slice(0, CURVE_POINTS), FLAT_LUMA_STD),
        (slice(CURVE_POINTS, None), FLAT_DIFF_STD),
    ):
        x, y = a[:, channel], b[:, channel]
        (zx, sx), (zy, sy) = _zscore(x), _zscore(y)
        vx, vy = sx >= flat, sy >= flat
        forwards, backwards = _agree_ways(x, y, zx, zy, config, steps=channel.start == 0)  # brightness: steps
        both = ~decided & vx & vy
        result[both] = (forwards | backwards)[both]
        one = ~decided & (vx != vy)
        result[one] = False
        decided |= both | one
    result[missing] = True
    return result


def _zscore(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row of ``x`` less its mean, over its standard deviation (a constant row: over 1); and the
    standard deviations."""
    sx = x.std(axis=1)
    return (x - x.mean(axis=1, keepdims=True)) / np.where(sx > 0, sx, 1)[:, None], sx


def _agree_ways(
    x: np.ndarray, y: np.ndarray, zx: np.ndarray, zy: np.ndarray, config: DedupConfig, steps: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, forwards and backwards (``y`` reversed: time-reversed copies): do the levels of ``x`` and
    ``y`` (``zx``, ``zy``: their ``_zscore``) correlate at least ``min_curve_corr`` and, with ``steps``
    (brightness), their steps at least ``min_step_corr`` (unless -1)?"""
    ways = []
    for z, zz in ((y, zy), (y[:, ::-1], zy[:, ::-1])):
        ok = (zx * zz).mean(axis=1) >= config.min_curve_corr
        if steps and config.min_step_corr > -1:
            ok &= _step_corr_many(x, z) >= config.min_step_corr
        ways.append(ok)
    return ways[0], ways[1]


def edge_evidence_many(a: np.ndarray, b: np.ndarray, config: DedupConfig) -> np.ndarray:
    """Per pair (rows of ``n x 2*CURVE_POINTS`` curves, NaN: none): may frames that match only near the limit
    count (``edge_margin``)? Where both brightness and both frame-difference curves vary, the frame
    differences must correlate at least ``edge_diff_corr`` in a direction (forwards, backwards) in which the
    brightness agrees as ``curves_agree_many`` decides it (levels and steps); elsewhere nothing more is
    asked (flat brightness is judged by the frame differences already; a flat frame-difference curve has no
    more to say)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    result = np.ones(len(a), bool)
    if config.edge_diff_corr <= -1 or not len(a):
        return result
    lum, diff = slice(0, CURVE_POINTS), slice(CURVE_POINTS, None)
    x, y, dx, dy = a[:, lum], b[:, lum], a[:, diff], b[:, diff]
    with np.errstate(invalid="ignore"):
        (zx, sx), (zy, sy), (zdx, sdx), (zdy, sdy) = _zscore(x), _zscore(y), _zscore(dx), _zscore(dy)
        both = (sx >= FLAT_LUMA_STD) & (sy >= FLAT_LUMA_STD) & (sdx >= FLAT_DIFF_STD) & (sdy >= FLAT_DIFF_STD)
    both &= ~(np.isnan(a).any(axis=1) | np.isnan(b).any(axis=1))
    lum_forwards, lum_backwards = _agree_ways(x, y, zx, zy, config, steps=True)
    diff_forwards = (zdx * zdy).mean(axis=1) >= config.edge_diff_corr
    diff_backwards = (zdx * zdy[:, ::-1]).mean(axis=1) >= config.edge_diff_corr
    ok = (lum_forwards & diff_forwards) | (lum_backwards & diff_backwards)
    result[both] = ok[both]
    return result


def _step_corr_many(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``_step_corr`` for each row of ``x``, ``y`` (``n x CURVE_POINTS``)."""
    dx, dy = np.diff(x, axis=1), np.diff(y, axis=1)
    sx, sy = dx.std(axis=1), dy.std(axis=1)
    flat = (sx < 1e-9) | (sy < 1e-9)
    zx = (dx - dx.mean(axis=1, keepdims=True)) / np.where(flat, 1, sx)[:, None]
    zy = (dy - dy.mean(axis=1, keepdims=True)) / np.where(flat, 1, sy)[:, None]
    return np.where(flat, 1.0, (zx * zy).mean(axis=1))


def hash_clips(config: DedupConfig, video: dict, analysis, clips: list[dict]) -> list[dict]:
    out = []
    for clip in clips:
        row = dict(clip)
        row["dedup_curve"] = time_curves(analysis, row["start_frame"], row["end_frame"])
        hashes: list[int] = []
        for i in sample_indices(analysis, row):
            s = analysis.samples[i]
            if s.row_mean_std >= FLAT_PROFILE_STD:
                hashes.extend(s.hashes)
        row["dedup_hashes"] = hashes
        row["dup_of"] = None
        out.append(row)
    return out


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x.view(np.uint64))


def frame_match(a: np.ndarray, b: np.ndarray, config: DedupConfig) -> tuple[bool, bool]:
    """a, b: samples x scales hash arrays. Does the shorter one find itself in the other, and do its matched
    samples lie near the limit (on average more than ``max_hamming - edge_margin`` bits from their match)?"""
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    # distance of every (short sample, short scale) to its nearest (long sample, long scale)
    d = _popcount(short[:, :, None, None] ^ long_[None, None, :, :]).reshape(len(short), -1).min(axis=1)
    matched = d <= config.max_hamming
    found = bool(matched.mean() >= config.min_match)
    return found, found and float(d[matched].mean()) > config.max_hamming - config.edge_margin


def _matches(a: np.ndarray, b: np.ndarray, config: DedupConfig) -> bool:
    """a, b: samples x scales hash arrays. Does the shorter one find itself in the other?"""
    return frame_match(a, b, config)[0]


def find_duplicates(rows: list[dict], config: DedupConfig) -> dict[str, str]:
    """``{clip_id: representative clip_id}`` for every clip that duplicates a kept one.

    ``rows`` need ``clip_id``, ``dedup_hashes``, ``dedup_curve``, ``width``, ``height`` and ``duration_s``.
    A convenience over a list of rows (a video's clips, tests); whole runs go through
    ``pipeline/dedup_run.py: dedup_run``, which reads the shards straight into the index.
    """
    import pyarrow as pa

    from vidsift.pipeline.dedup_index import COLUMNS, find_near_duplicates, table_from_arrow
    from vidsift.pipeline.schema import CLIP_SCHEMA

    schema = pa.schema([CLIP_SCHEMA.field(c) for c in COLUMNS])
    table = pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema=schema)
    hashed = table_from_arrow(table)
    duplicates, _ = find_near_duplicates(hashed, config)
    ids = hashed.clip_id.to_pylist()
    return {ids[d]: ids[k] for d, k in duplicates.items()}
