"""Synthetic captioned clips: coloured shapes moving in one direction ("a red square moving right").

Used by the tests (tiny shards in the exact pipeline/schema.py contract) and by bench/learning_check.py,
where the caption fully determines colour and motion, so "does the sample follow its caption" is
measurable: colour of the moving shape and the direction its centre of mass travels.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

COLORS = {"red": (230, 40, 40), "green": (40, 210, 60), "blue": (50, 80, 240)}
DIRECTIONS = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}
SHAPES = ("square", "circle")


def moving_shape(
    color: str,
    direction: str,
    shape: str,
    frames: int,
    size: int,
    rng: np.random.Generator,
    speed: float | None = None,
):
    """[F, size, size, 3] uint8: a shape crossing a dark, slightly noisy background at constant speed.

    By default it crosses the whole frame, starting at the side it moves away from. ``speed`` (pixels per
    frame) makes it travel only ``speed * (frames - 1)`` pixels from a random start instead, so where the
    shape is says nothing about the caption, only how it moves does (bench/learning_check.py)."""
    r = size // 6
    dy, dx = DIRECTIONS[direction]
    lo, hi = r + 1, size - r - 1  # centres that keep the shape inside the frame
    # Random offset across the motion.
    cross = rng.uniform(lo, hi)
    if speed is None:  # start on the side the shape moves away from
        speed = (hi - lo) / max(1, frames - 1)
        along = lo
    else:
        travel = speed * (frames - 1)
        if travel > hi - lo:
            raise ValueError(f"{frames} frames at {speed} px per frame leave a {size}-pixel frame")
        along = rng.uniform(lo, hi - travel)
    y0 = cross if dy == 0 else (along if dy > 0 else size - along)
    x0 = cross if dx == 0 else (along if dx > 0 else size - along)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    bg = rng.integers(10, 40, size=(1, 1, 3)) + rng.normal(0, 2, size=(size, size, 3))
    out = np.empty((frames, size, size, 3), np.uint8)
    for i in range(frames):
        cy, cx = y0 + dy * speed * i, x0 + dx * speed * i
        if shape == "square":
            inside = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
        else:
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img = bg.copy()
        img[inside] = COLORS[color]
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def judge(video) -> tuple[str, str]:
    """(colour, direction) read off a video [3, F, H, W] in [-1, 1] (a torch tensor or numpy array): the mean
    colour of the bright foreground, nearest of COLORS, and the direction its centre of mass travels."""
    v = (np.clip(np.asarray(video, dtype=np.float32), -1, 1) + 1) * 127.5  # [3, F, H, W]
    fg = v.max(axis=0) > 100  # the background is dark (< 60), shapes are saturated
    pixels = v.transpose(1, 2, 3, 0)[fg]
    if len(pixels) == 0:
        return "none", "none"
    mean = pixels.mean(axis=0)
    colour = min(COLORS, key=lambda c: float(np.sum((np.array(COLORS[c]) - mean) ** 2)))
    ys, xs = np.mgrid[0 : v.shape[2], 0 : v.shape[3]]
    centres = []
    for f in range(v.shape[1]):
        m = fg[f]
        if m.sum():
            centres.append((ys[m].mean(), xs[m].mean()))
    if len(centres) < 2:
        return colour, "none"
    dy, dx = np.subtract(centres[-1], centres[0])
    direction = max(DIRECTIONS, key=lambda d: DIRECTIONS[d][0] * dy + DIRECTIONS[d][1] * dx)
    return colour, direction


def caption_of(color: str, direction: str, shape: str) -> str:
    return f"a {color} {shape} moving {direction}"


def synthetic_rows(
    n: int,
    frames: int = 24,
    size: int = 64,
    fps: float = 12.0,
    seed: int = 0,
    captions: bool = True,
    speed: float | None = None,
) -> list[dict]:
    """Rows of the clips table (pipeline/schema.py CLIP_SCHEMA) for n synthetic clips (``speed``: see
    ``moving_shape``)."""
    from vidsift.model.mp4 import encode_mp4

    rng = np.random.default_rng(seed)
    rows = []
    combos = [(c, d, s) for c in COLORS for d in DIRECTIONS for s in SHAPES]
    for i in range(n):
        color, direction, shape = combos[i % len(combos)]
        video = moving_shape(color, direction, shape, frames, size, rng, speed)
        mp4 = encode_mp4(video, fps)
        vid = hashlib.blake2b(f"synthetic/{seed}/{i}".encode(), digest_size=8).hexdigest()
        rows.append(
            {
                "clip_id": hashlib.blake2b(f"{vid}/0/{frames}".encode(), digest_size=16).hexdigest(),
                "video_id": vid,
                "source_uri": f"synthetic://{seed}/{i}",
                "group": "synthetic",
                "start_frame": 0,
                "end_frame": frames,
                "width": size,
                "height": size,
                "fps": fps,
                "num_frames": frames,
                "duration_s": frames / fps,
                "clip_mp4": mp4,
                "caption": caption_of(color, direction, shape) if captions else None,
            }
        )
    return rows


def write_synthetic_shards(out_dir: str, n: int, files: int = 1, rows_per_group: int = 4, **kw) -> list[str]:
    """Write n synthetic clips as OUT/clips/part-*.parquet (zstd), as the curation pipeline would."""
    import pyarrow.parquet as pq

    from vidsift.pipeline.schema import CLIP_SCHEMA, table_from_rows

    rows = synthetic_rows(n, **kw)
    os.makedirs(os.path.join(out_dir, "clips"), exist_ok=True)
    paths = []
    for k in range(files):
        path = os.path.join(out_dir, "clips", f"part-{k}.parquet")
        table = table_from_rows(rows[k::files], CLIP_SCHEMA)
        pq.write_table(table, path, compression="zstd", row_group_size=rows_per_group)
        paths.append(path)
    return paths
