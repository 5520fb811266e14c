"""Measurements the analysis pass takes for more than one filter, or before any filter is known.

A weight-free filter owns its own per-sample measurement: a ``measure_sample`` hook in its stage file
that ``analyze`` calls on every sample frame inside the one decode pass (``registry.StageSpec``). What
remains here: the optical flow of the every-frame analysis image (``score_motion``) and the difference
hashes of the sample frames (``dedup``).
"""

from __future__ import annotations

import cv2
import numpy as np

# dHash crops: the whole frame, then the centre 80% and 64% of the picture inside the frame's letterbox or
# pillarbox bars (the whole frame when it has none), so a copy cropped by up to about a third, or one
# boxed into bars of another shape, still meets the original at one of the scales.
HASH_SCALES = (1.0, 0.8, 0.64)


def flow(prev_gray: np.ndarray, gray: np.ndarray) -> tuple[float, float, float]:
    """Dense Farneback optical flow between two small gray frames.

    Returns (mean magnitude, median dx, median dy) in pixels of those frames.
    """
    # two pyramid levels and two iterations: enough at 128 px, a third of the default cost
    f = cv2.calcOpticalFlowFarneback(prev_gray, gray, None, 0.5, 2, 9, 2, 5, 1.1, 0)
    mag = np.sqrt(f[..., 0] ** 2 + f[..., 1] ** 2)
    return float(mag.mean()), float(np.median(f[..., 0])), float(np.median(f[..., 1]))


def dhashes(gray: np.ndarray, picture: tuple[int, int, int, int] | None = None) -> list[int]:
    """64-bit difference hashes of the crops at ``HASH_SCALES``, as signed int64 (Parquet-friendly).

    ``picture``: ``(top, bottom, left, right)`` bar sizes in pixels of ``gray``; the crops below 100% are
    centred in the picture inside them. The 100% crop is always the whole frame, so a frame with bars
    hashes there as it did before bars were looked at (runs hashed then still meet re-encodes at 100%).
    """
    h, w = gray.shape
    top, bottom, left, right = picture or (0, 0, 0, 0)
    out = []
    for s in HASH_SCALES:
        if s == 1.0:
            y0, x0, ch, cw = 0, 0, h, w
        else:
            ph, pw = h - top - bottom, w - left - right
            ch, cw = max(9, int(ph * s)), max(9, int(pw * s))
            y0, x0 = top + (ph - ch) // 2, left + (pw - cw) // 2
        small = cv2.resize(gray[y0 : y0 + ch, x0 : x0 + cw], (9, 8), interpolation=cv2.INTER_AREA)
        bits = (small[:, 1:] > small[:, :-1]).flatten()
        value = int(np.packbits(bits).view(">u8")[0])
        out.append(value - (1 << 64) if value >= 1 << 63 else value)
    return out
