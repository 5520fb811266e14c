"""Per-frame measurements taken during the analysis pass, for the quality filters.

Pure functions on numpy images. ``analyze`` calls them on the frames it already holds (the
every-frame analysis image, and the sparse mid-resolution samples), so no filter decodes the
source again; the ``score_*`` stages reduce the stored measurements over each clip.
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np

# dHash crops: the centre 100%, 80% and 64% of the picture, so a copy cropped by up to about a
# third still meets the original at one of the scales.
HASH_SCALES = (1.0, 0.8, 0.64)
BLOCK = 8  # codec macroblock/transform grid that blockiness looks for
EDGE_STEP = 16  # luma steps this large are picture edges, not compression blocks


def flow(prev_gray: np.ndarray, gray: np.ndarray) -> tuple[float, float, float]:
    """Dense Farneback optical flow between two small gray frames.

    Returns (mean magnitude, median dx, median dy) in pixels of those frames.
    """
    # two pyramid levels and two iterations: enough at 128 px, a third of the default cost
    f = cv2.calcOpticalFlowFarneback(prev_gray, gray, None, 0.5, 2, 9, 2, 5, 1.1, 0)
    mag = np.sqrt(f[..., 0] ** 2 + f[..., 1] ** 2)
    return float(mag.mean()), float(np.median(f[..., 0])), float(np.median(f[..., 1]))


def sharpness(gray: np.ndarray) -> float:
    """Variance of the Laplacian over the squared contrast: detail per unit of contrast.

    Dividing by the variance of the picture makes a dim sharp shot and a bright sharp shot
    comparable; measured on the sample frame (short side 256) so it is resolution-normalised.
    """
    lap_std = cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_32F))[1][0, 0]
    contrast = cv2.meanStdDev(gray)[1][0, 0]
    return float(lap_std**2 / max(contrast, 4.0) ** 2)


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


def line_profiles(gray: np.ndarray) -> np.ndarray:
    """Mean and standard deviation of every row and column: ``[row_mean, row_std, col_mean, col_std]``.

    Letterbox and pillarbox bars are rows/columns that are dark and flat in every frame of a clip.
    """
    g = gray.astype(np.float32)
    return np.concatenate([g.mean(axis=1), g.std(axis=1), g.mean(axis=0), g.std(axis=0)]).astype(np.float16)


def dhashes(gray: np.ndarray) -> list[int]:
    """64-bit difference hashes of centred crops at ``HASH_SCALES``, as signed int64 (Parquet-friendly)."""
    h, w = gray.shape
    out = []
    for s in HASH_SCALES:
        ch, cw = max(9, int(h * s)), max(9, int(w * s))
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        small = cv2.resize(gray[y0 : y0 + ch, x0 : x0 + cw], (9, 8), interpolation=cv2.INTER_AREA)
        bits = (small[:, 1:] > small[:, :-1]).flatten()
        value = int(np.packbits(bits).view(">u8")[0])
        out.append(value - (1 << 64) if value >= 1 << 63 else value)
    return out


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
