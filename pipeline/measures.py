"""Measurements the analysis pass takes for more than one filter, or before any filter is known.

A weight-free filter owns its own per-sample measurement: a ``measure_sample`` hook in its stage file
that ``analyze`` calls on every sample frame inside the one decode pass (``registry.StageSpec``). What
remains here: the optical flow of the every-frame analysis image (``score_motion``) and the difference
hashes of the sample frames (``dedup``).
"""

from __future__ import annotations

import cv2
import numpy as np

# dHash crops: the centre 100%, 80% and 64% of the frame, so a copy cropped by up to about a third still
# meets the original at one of the scales. A frame with letterbox or pillarbox bars hashes the picture
# inside them in place of its 64% crop (``dhashes``), so a copy boxed into other bars, or with its bars cut
# away, meets it too.
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

    ``picture``: ``(top, bottom, left, right)`` bar sizes in pixels of ``gray``, or None. With bars, the last
    crop is the picture inside them instead of the centre 64%; the 100% and 80% crops stay those of the
    whole frame, so a boxed frame meets its re-encodes and centre crops there as it did before bars were
    looked at (and clips hashed then).
    """
    h, w = gray.shape
    out = []
    for s in HASH_SCALES:
        if picture and s == HASH_SCALES[-1]:
            top, bottom, left, right = picture
            y0, x0, ch, cw = top, left, h - top - bottom, w - left - right
        else:
            ch, cw = max(9, int(h * s)), max(9, int(w * s))
            y0, x0 = (h - ch) // 2, (w - cw) // 2
        small = cv2.resize(gray[y0 : y0 + ch, x0 : x0 + cw], (9, 8), interpolation=cv2.INTER_AREA)
        bits = (small[:, 1:] > small[:, :-1]).flatten()
        value = int(np.packbits(bits).view(">u8")[0])
        out.append(value - (1 << 64) if value >= 1 << 63 else value)
    return out
