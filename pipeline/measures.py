"""Measurements the analysis pass takes for more than one filter, or before any filter is known.

A weight-free filter owns its own per-sample measurement: a ``measure_sample`` hook in its stage file
that ``analyze`` calls on every sample frame inside the one decode pass (``registry.StageSpec``). What
remains here: the optical flow of the every-frame analysis image (``score_motion``) and the difference
hashes of the sample frames (``dedup``).
"""

from __future__ import annotations

import cv2
import numpy as np

# dHash crops: the centre 100%, 80% and 64% of the picture, so a copy cropped by up to about a
# third still meets the original at one of the scales.
HASH_SCALES = (1.0, 0.8, 0.64)


def flow(prev_gray: np.ndarray, gray: np.ndarray) -> tuple[float, float, float]:
    """Dense Farneback optical flow between two small gray frames.

    Returns (mean magnitude, median dx, median dy) in pixels of those frames.
    """
    # two pyramid levels and two iterations: enough at 128 px, a third of the default cost
    f = cv2.calcOpticalFlowFarneback(prev_gray, gray, None, 0.5, 2, 9, 2, 5, 1.1, 0)
    mag = np.sqrt(f[..., 0] ** 2 + f[..., 1] ** 2)
    return float(mag.mean()), float(np.median(f[..., 0])), float(np.median(f[..., 1]))


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
