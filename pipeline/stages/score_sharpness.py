"""score_sharpness: focus and blur of each candidate clip.

Reads: the sharpness measured on the analysis sample frames (variance of the Laplacian over the
squared contrast, at short side 256, so resolution- and exposure-normalised; see
``sharpness`` below). Writes ``sharpness_score`` (median over the clip's samples).
Rejects ``blurry``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vidsift.pipeline.rows import reject, sample_mean


def sharpness(gray: np.ndarray) -> float:
    """Variance of the Laplacian over the squared contrast: detail per unit of contrast.

    Dividing by the variance of the picture makes a dim sharp shot and a bright sharp shot
    comparable; measured on the sample frame (short side 256) so it is resolution-normalised.
    """
    lap_std = cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_32F))[1][0, 0]
    contrast = cv2.meanStdDev(gray)[1][0, 0]
    return float(lap_std**2 / max(contrast, 4.0) ** 2)


def measure_sample(frame) -> dict:
    """The analysis pass calls this on every sample frame (``analyze.SampleFrame``), in the one decode."""
    return {"sharpness": sharpness(frame.gray)}


@dataclass(frozen=True, kw_only=True)
class ScoreSharpnessConfig:
    min_sharpness: float = 0.01  # below: defocused or heavily motion-blurred throughout

    def __post_init__(self) -> None:
        if self.min_sharpness < 0:
            raise ValueError(f"score_sharpness.min_sharpness must be >= 0, got {self.min_sharpness}")


def score_sharpness(config: ScoreSharpnessConfig, video: dict, analysis, clips: list[dict]) -> list[dict]:
    out = []
    for clip in clips:
        row = dict(clip)
        s = sample_mean(analysis, row, "sharpness", reduce=np.median)
        row["sharpness_score"] = s
        if s is not None and s < config.min_sharpness:
            reject(row, "score_sharpness", "blurry", f"sharpness {s:.4f} < {config.min_sharpness}")
        out.append(row)
    return out
