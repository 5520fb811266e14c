"""score_bars: letterbox and pillarbox bars, and the crop box that removes them.

Reads: the row and column profiles (mean, standard deviation; ``line_profiles`` below) of the
analysis sample frames, display orientation. A bar is a run of rows (or columns) from an edge that
is dark and flat in nearly every sample of the clip, with a clearly brighter picture next to it; bars come in
pairs of similar size (top/bottom, left/right), which keeps dark scenes from being cropped.
Writes ``bars_score`` (share of the picture the bars cover) and ``crop_x``, ``crop_y``,
``crop_w``, ``crop_h`` (the picture without bars, display pixels, even; null when there are no
bars). ``transcode`` applies the crop. Rejects ``mostly_bars``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vidsift.pipeline.media import even
from vidsift.pipeline.rows import reject, sample_indices


def line_profiles(gray: np.ndarray) -> np.ndarray:
    """Mean and standard deviation of every row and column: ``[row_mean, row_std, col_mean, col_std]``.

    Letterbox and pillarbox bars are rows/columns that are dark and flat in every frame of a clip.
    """
    g = gray.astype(np.float32)
    return np.concatenate([g.mean(axis=1), g.std(axis=1), g.mean(axis=0), g.std(axis=0)]).astype(np.float16)


def measure_sample(frame) -> dict:
    """The analysis pass calls this on every sample frame (``analyze.SampleFrame``), in the one decode."""
    return {"lines": line_profiles(frame.gray)}


@dataclass(frozen=True, kw_only=True)
class ScoreBarsConfig:
    dark_level: float = 24.0  # mean luma (0..255) below which a row/column may be a bar
    flat_level: float = 6.0  # its luma standard deviation must be below this too
    min_share: float = 0.9  # share of the clip's samples in which a bar row/column must be dark
    min_bar: float = 0.02  # bars thinner than this share of the side are ignored
    max_asymmetry: float = 0.03  # the two bars of a pair may differ by this share of the side
    min_step: float = 12.0  # the picture next to a bar must be this much brighter (luma)
    max_bars: float = 0.5  # reject when bars cover more than this share of the picture

    def __post_init__(self) -> None:
        for name in ("min_share", "min_bar", "max_asymmetry", "max_bars"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"score_bars.{name} must be in [0, 1], got {getattr(self, name)}")


def _edge_runs(dark: np.ndarray) -> tuple[int, int]:
    """Length of the dark run at the start and at the end of a boolean profile."""
    if dark.all():
        return len(dark), len(dark)
    return int(np.argmin(dark)), int(np.argmin(dark[::-1]))


def _bars(means: np.ndarray, stds: np.ndarray, config: ScoreBarsConfig) -> tuple[int, int]:
    """Bar sizes (start, end) along one axis; ``means``/``stds`` are samples x lines."""
    n = means.shape[1]
    dark = ((means < config.dark_level) & (stds < config.flat_level)).mean(axis=0) >= config.min_share
    a, b = _edge_runs(dark)
    if a == n or min(a, b) < config.min_bar * n or abs(a - b) > config.max_asymmetry * n + 1:
        return 0, 0
    bar = np.median(np.concatenate([means[:, :a], means[:, n - b :]], axis=1))
    inner = np.median(np.concatenate([means[:, a : a + 3], means[:, n - b - 3 : n - b]], axis=1))
    if inner - bar < config.min_step:
        return 0, 0
    return a, b


def _box(lines: np.ndarray, h: int, w: int, config: ScoreBarsConfig) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) bar sizes from samples x ``line_profiles`` of h x w frames; None without."""
    top, bottom = _bars(lines[:, :h], lines[:, h : 2 * h], config)
    left, right = _bars(lines[:, 2 * h : 2 * h + w], lines[:, 2 * h + w :], config)
    return (top, bottom, left, right) if top or bottom or left or right else None


def frame_bars(gray: np.ndarray, config: ScoreBarsConfig | None = None) -> tuple[int, int, int, int] | None:
    """The clip rule on one gray frame (``dedup`` hashes the picture inside its bars): (top, bottom, left,
    right) in pixels of that frame, or None. Pairs of similar size and a clearly brighter picture next to
    them are still required, so a dark sky alone is not a bar. Bars come in pairs, so the line profiles are
    measured only when both ends of an axis are dark (rarely)."""
    config = config or ScoreBarsConfig()
    dark = config.dark_level
    if not (
        (gray[0].mean() < dark and gray[-1].mean() < dark)
        or (gray[:, 0].mean() < dark and gray[:, -1].mean() < dark)
    ):
        return None
    h, w = gray.shape
    return _box(line_profiles(gray).astype(np.float32)[None], h, w, config)


def crop_box(
    analysis, row: dict, display: tuple[int, int], config: ScoreBarsConfig
) -> tuple[int, ...] | None:
    """(x, y, w, h) of the picture inside the bars, display pixels, or None when there are no bars."""
    idx = [i for i in sample_indices(analysis, row)]
    if not idx:
        return None
    s0 = analysis.samples[idx[0]]
    samples = [analysis.samples[i] for i in idx if analysis.samples[i].lines.shape == s0.lines.shape]
    lines = np.stack([s.lines.astype(np.float32) for s in samples])
    h, w = s0.height, s0.width
    bars = _box(lines, h, w, config)
    if bars is None:
        return None
    top, bottom, left, right = bars
    dw, dh = display
    sx, sy = dw / w, dh / h
    x0, y0 = even(left * sx) if left else 0, even(top * sy) if top else 0
    x1, y1 = dw - (even(right * sx) if right else 0), dh - (even(bottom * sy) if bottom else 0)
    return x0, y0, max(2, x1 - x0 - (x1 - x0) % 2), max(2, y1 - y0 - (y1 - y0) % 2)


def score_bars(config: ScoreBarsConfig, video: dict, analysis, clips: list[dict]) -> list[dict]:
    display = (video["display_width"], video["display_height"])
    out = []
    for clip in clips:
        row = dict(clip)
        box = crop_box(analysis, row, display, config)
        if box is None:
            row["bars_score"] = 0.0
            row.update(crop_x=None, crop_y=None, crop_w=None, crop_h=None)
        else:
            x, y, w, h = box
            row.update(crop_x=x, crop_y=y, crop_w=w, crop_h=h)
            row["bars_score"] = bars = 1.0 - (w * h) / float(display[0] * display[1])
            if bars > config.max_bars:
                reject(row, "score_bars", "mostly_bars", f"bars cover {bars:.0%} > {config.max_bars:.0%}")
        out.append(row)
    return out
