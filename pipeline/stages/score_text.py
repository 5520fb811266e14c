"""score_text: burned-in text, subtitles and watermarks, as the share of the picture they cover.

Reads: the text-line area measured on the analysis sample frames. Without a model this is the
weight-free estimate of ``text_area`` below (stroke-dense, line-shaped regions; it
also counts text that is part of the scene, such as signs or printed shirts). Writes
``text_score`` (mean area fraction over the clip's samples). Rejects ``text_overlay``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vidsift.pipeline.rows import reject, sample_mean


def _text_lines(gray: np.ndarray, mask: np.ndarray, scale: int) -> None:
    """Mark the text-line boxes found in ``gray`` on ``mask`` (which is ``scale`` times larger)."""
    h, w = gray.shape
    grad = cv2.morphologyEx(gray, cv2.MORPH_GRADIENT, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    _, binary = cv2.threshold(grad, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    if binary.mean() > 0.5 * 255:  # texture everywhere (foliage, noise): no line structure to find
        return
    closed = cv2.morphologyEx(
        binary, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (max(3, w // 40), 1))
    )
    n, _, stats, _ = cv2.connectedComponentsWithStats(closed, connectivity=8)
    # lines smaller than 1/30 of the height are body text of documents or distant signs, which
    # neither subtitles nor overlays are; an OCR detector at this resolution misses them too
    min_h, max_h = max(6, h // 30), max(8, h // 4)
    for x, y, bw, bh, count in stats[1:n]:
        if not (min_h <= bh <= max_h and bw >= 2 * bh and bw >= w // 30):
            continue
        fill = count / float(bw * bh)
        strokes = binary[y : y + bh, x : x + bw].mean() / 255.0
        if 0.45 <= fill and 0.2 <= strokes <= 0.85:
            # prominence: lines a tenth of the picture high or more count fully, smaller ones in
            # proportion, so a page of small print weighs less than a big caption of equal area
            weight = min(1.0, bh / (0.1 * h))
            box = mask[y * scale : (y + bh) * scale, x * scale : (x + bw) * scale]
            np.maximum(box, weight, out=box)


def text_area(gray: np.ndarray) -> float:
    """Weight-free estimate of the fraction of the picture covered by text-like lines.

    Characters are dense, high-contrast strokes of similar height laid out along a line: a
    morphological gradient, an Otsu threshold and a horizontal closing turn a line of text into
    one wide, short, fairly filled component. Components with text-line shape are marked, at full
    and at half size (large letters only look like strokes when shrunk), and the union of their
    boxes is the text area, each line weighted by its prominence (height up to a tenth of the
    picture). This is an estimate (no OCR model), documented in docs/filters.md.
    """
    mask = np.zeros(gray.shape, np.float32)
    _text_lines(gray, mask, 1)
    _text_lines(
        cv2.resize(gray, (gray.shape[1] // 2, gray.shape[0] // 2), interpolation=cv2.INTER_AREA), mask, 2
    )
    return float(mask.mean())


def measure_sample(frame) -> dict:
    """The analysis pass calls this on every sample frame (``analyze.SampleFrame``), in the one decode."""
    return {"text_area": text_area(frame.gray)}


@dataclass(frozen=True, kw_only=True)
class ScoreTextConfig:
    max_text_area: float = 0.15  # share of the picture; subtitles cover ~2-8%, full-screen titles far more

    def __post_init__(self) -> None:
        if not 0 <= self.max_text_area <= 1:
            raise ValueError(f"score_text.max_text_area must be in [0, 1], got {self.max_text_area}")


def score_text(config: ScoreTextConfig, video: dict, analysis, clips: list[dict]) -> list[dict]:
    out = []
    for clip in clips:
        row = dict(clip)
        area = sample_mean(analysis, row, "text_area")
        row["text_score"] = area
        if area is not None and area > config.max_text_area:
            reject(row, "score_text", "text_overlay", f"text covers {area:.1%} > {config.max_text_area:.0%}")
        out.append(row)
    return out
