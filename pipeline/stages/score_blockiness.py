"""score_blockiness: visible compression artefacts (8x8 blocking).

Reads: the blockiness measured on the full-resolution luma of each analysis sample frame
(``blockiness`` below: how much stronger luma steps are on the 8-px grid than off
it). Writes ``blockiness_score`` (mean over the clip's samples; 0 = none). Rejects ``blocky``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from vidsift.pipeline.rows import reject, sample_mean

BLOCK = 8  # codec macroblock/transform grid that blockiness looks for
EDGE_STEP = 16  # luma steps this large are picture edges, not compression blocks


def blockiness(y: np.ndarray) -> float:
    """How much stronger luma steps are on the 8-px codec grid than off it (0: no blocking).

    Measured on a centred 256x256 window of the full-resolution luma plane, where the grid is.
    """
    h, w = y.shape
    size = min(256, h - h % BLOCK, w - w % BLOCK)
    if size < 4 * BLOCK:
        return 0.0
    y0, x0 = ((h - size) // 2) // BLOCK * BLOCK, ((w - size) // 2) // BLOCK * BLOCK
    win = y[y0 : y0 + size, x0 : x0 + size].astype(np.float32)
    # Blocks show as small steps in smooth areas; big steps are edges of the picture itself, and
    # synthetic patterns (test cards) put those on the grid too, so they are left out.
    sx, sy = np.abs(np.diff(win, axis=1)), np.abs(np.diff(win, axis=0))
    sx, sy = np.where(sx < EDGE_STEP, sx, np.nan), np.where(sy < EDGE_STEP, sy, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column of only edges has no mean step
        dx = np.nan_to_num(np.nanmean(sx, axis=0))  # step between column i and i+1
        dy = np.nan_to_num(np.nanmean(sy, axis=1))
    on = np.concatenate([dx[BLOCK - 1 :: BLOCK], dy[BLOCK - 1 :: BLOCK]])
    off = np.concatenate([np.delete(dx, np.s_[BLOCK - 1 :: BLOCK]), np.delete(dy, np.s_[BLOCK - 1 :: BLOCK])])
    return float(max(0.0, on.mean() / max(off.mean(), 0.5) - 1.0))


def measure_sample(frame) -> dict:
    """The analysis pass calls this on every sample frame (``analyze.SampleFrame``), in the one decode."""
    return {"blockiness": blockiness(frame.luma)}


@dataclass(frozen=True, kw_only=True)
class ScoreBlockinessConfig:
    max_blockiness: float = 0.5  # small steps on the grid 1.5x those off it: visible blocks in smooth areas

    def __post_init__(self) -> None:
        if self.max_blockiness < 0:
            raise ValueError(f"score_blockiness.max_blockiness must be >= 0, got {self.max_blockiness}")


def score_blockiness(config: ScoreBlockinessConfig, video: dict, analysis, clips: list[dict]) -> list[dict]:
    out = []
    for clip in clips:
        row = dict(clip)
        b = sample_mean(analysis, row, "blockiness")
        row["blockiness_score"] = b
        if b is not None and b > config.max_blockiness:
            reject(row, "score_blockiness", "blocky", f"blockiness {b:.2f} > {config.max_blockiness}")
        out.append(row)
    return out
