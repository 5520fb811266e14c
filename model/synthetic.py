"""Synthetic captioned clips: coloured shapes moving in one direction ("a red square moving right").

Used by the tests (tiny shards in the exact pipeline/schema.py contract) and by bench/learning_check.py,
where the caption fully determines colour and motion, so "does the sample follow its caption" is
measurable: colour of the moving shape and the direction its centre of mass travels.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

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


# -- the raw pool of the curation ablation (bench/curation_ablation.py) --------------------------------------
#
# Source videos made of shots of one moving shape each, with the defects curation must catch. Every source
# has a ground-truth caption per shot (its time range), a source-level caption (its first shot's: what a
# title or description tells a naive pipeline), and a record of the defects it was given.

TEXT_WORDS = ("LIVE", "NEWS 24", "SALE", "HD", "WATCH", "BREAKING", "2026", "SUBSCRIBE")


@dataclass(frozen=True, kw_only=True)
class PoolConfig:
    sources: int = 48  # source videos before near-duplicate copies are added
    height: int = 64
    width: int = 64
    fps: float = 12.0
    shot_s: tuple[float, float] = (2.5, 3.5)  # shot length, uniform
    cuts_per_source: float = 1.5  # mean hard cuts per source (Poisson); each changes colour, shape, direction
    max_shots: int = 4
    fade_rate: float = 0.25  # share of shots that end in a fade to black over fade_s
    fade_s: tuple[float, float] = (0.5, 1.0)
    black_rate: float = 0.2  # share of sources with a black stretch (uncaptioned) before one of their shots
    black_s: tuple[float, float] = (1.0, 2.0)
    frozen_rate: float = 0.15  # share of shots that freeze mid-shot for frozen_s (the picture holds)
    frozen_s: tuple[float, float] = (1.5, 2.5)
    static_rate: float = 0.1  # share of shots whose shape stands still ("a red square standing still")
    text_rate: float = 0.2  # share of sources with burned-in text in a band at the bottom
    letterbox_rate: float = 0.2  # share of sources with black bars above and below (letterbox_share each)
    letterbox_share: float = 0.125
    duplicate_rate: float = 0.15  # share of sources that get a near-duplicate copy (brighter, re-encoded)
    background: tuple[int, int] = (28, 56)  # background level range; shapes are saturated, black is ~0
    crf: int = 18
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("fade_rate", "black_rate", "frozen_rate", "static_rate", "text_rate", "letterbox_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"PoolConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.duplicate_rate <= 1 or self.cuts_per_source < 0 or self.max_shots < 1:
            raise ValueError("PoolConfig: need duplicate_rate in [0, 1], cuts_per_source >= 0, max_shots > 0")
        if self.height % 2 or self.width % 2 or min(self.height, self.width) < 16:
            raise ValueError(f"PoolConfig: need even sides >= 16, got {self.width}x{self.height}")
        if self.shot_s[0] <= 0 or self.shot_s[0] > self.shot_s[1]:
            raise ValueError(f"PoolConfig.shot_s must be 0 < lo <= hi, got {self.shot_s}")


def still_caption(color: str, shape: str) -> str:
    return f"a {color} {shape} standing still"


def draw_shot(
    color: str,
    direction: str,
    shape: str,
    frames: int,
    height: int,
    width: int,
    rng: np.random.Generator,
    background: tuple[int, int] = (10, 40),
    static: bool = False,
) -> np.ndarray:
    """[F, H, W, 3] uint8: ``moving_shape`` on a height x width picture; the shape crosses it from the edge it
    moves away from, or (``static``) stands still at a random place."""
    r = min(height, width) // 6
    dy, dx = DIRECTIONS[direction]
    side = height if dy else width
    lo, hi = r + 1, side - r - 1
    speed = 0.0 if static else (hi - lo) / max(1, frames - 1)
    along = rng.uniform(lo, hi) if static else lo
    other = width if dy else height
    cross = rng.uniform(r + 1, other - r - 1)
    y0 = cross if dy == 0 else (along if dy > 0 else height - along)
    x0 = cross if dx == 0 else (along if dx > 0 else width - along)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    bg = smooth_background(height, width, background, rng) + rng.normal(0, 2, size=(height, width, 3))
    out = np.empty((frames, height, width, 3), np.uint8)
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


def smooth_background(
    height: int, width: int, levels: tuple[int, int], rng: np.random.Generator, cells: int = 4
) -> np.ndarray:
    """[H, W, 3] float: a random, smoothly varying dark picture (a cells x cells grid of levels, bilinearly
    interpolated), different for every shot, so frame hashes tell scenes apart as they do on real video."""
    grid = rng.uniform(levels[0], levels[1], size=(cells, cells, 3))
    ys, xs = np.linspace(0, cells - 1, height), np.linspace(0, cells - 1, width)
    rows = np.stack([np.interp(ys, np.arange(cells), grid[:, j, c]) for j in range(cells) for c in range(3)])
    rows = rows.reshape(cells, 3, height)  # [cell column, channel, y]
    return np.stack(
        [np.stack([np.interp(xs, np.arange(cells), rows[:, c, y]) for y in range(height)]) for c in range(3)],
        axis=-1,
    )


def burn_text(frames: np.ndarray, text: str) -> np.ndarray:
    """White text (PIL's built-in bitmap font) in a band at the bottom of every frame, as subtitles or a
    channel's banner are burned in."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = frames.shape[1:3]
    font = ImageFont.load_default(size=max(8, h // 6))
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    box = draw.textbbox((0, 0), text, font=font)
    x = max(1, (w - (box[2] - box[0])) // 2)
    y = h - (box[3] - box[1]) - max(2, h // 16) - box[1]
    draw.text((x, y), text, fill=255, font=font)
    m = np.asarray(mask, np.float32)[None, :, :, None] / 255.0
    return np.clip(frames * (1 - m) + 245 * m, 0, 255).astype(np.uint8)


def make_source(config: PoolConfig, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """One raw source: frames [F, H, W, 3] and its ground truth (shots with time ranges and captions, black
    stretches, the defects it was given)."""
    c = config
    h, w = c.height, c.width
    bar = 0
    letterbox = rng.random() < c.letterbox_rate
    if letterbox:
        bar = max(2, 2 * int(round(h * c.letterbox_share / 2)))
    inner_h = h - 2 * bar
    n_shots = 1 + min(int(rng.poisson(c.cuts_per_source)), c.max_shots - 1)
    black_before = int(rng.integers(n_shots)) if rng.random() < c.black_rate else -1
    combos = [(col, d, s) for col in COLORS for d in DIRECTIONS for s in SHAPES]
    parts: list[np.ndarray] = []
    shots: list[dict] = []
    blacks: list[dict] = []
    frame = 0
    prev: tuple[str, str, str] | None = None
    for k in range(n_shots):
        if k == black_before:
            n = max(1, int(round(rng.uniform(*c.black_s) * c.fps)))
            parts.append(
                np.broadcast_to(rng.integers(0, 3, size=(1, 1, 1, 3)), (n, inner_h, w, 3)).astype(np.uint8)
            )
            blacks.append({"start_s": frame / c.fps, "end_s": (frame + n) / c.fps})
            frame += n
        choices = [x for x in combos if prev is None or all(a != b for a, b in zip(x, prev, strict=True))]
        color, direction, shape = choices[int(rng.integers(len(choices)))]
        prev = (color, direction, shape)
        static = bool(rng.random() < c.static_rate)
        n = max(2, int(round(rng.uniform(*c.shot_s) * c.fps)))
        video = draw_shot(color, direction, shape, n, inner_h, w, rng, c.background, static)
        frozen = (not static) and rng.random() < c.frozen_rate
        frozen_at: list[float] = []
        if frozen:  # the picture holds mid-shot, then the motion goes on
            hold = max(1, int(round(rng.uniform(*c.frozen_s) * c.fps)))
            at = int(rng.integers(1, n - 1))
            video = np.concatenate([video[:at], np.repeat(video[at : at + 1], hold, axis=0), video[at:]])
            frozen_at = [(frame + at) / c.fps, (frame + at + hold) / c.fps]
        fade = rng.random() < c.fade_rate
        fade_at: list[float] = []
        if fade:  # the last fade_s fade to black
            m = min(len(video) - 1, max(2, int(round(rng.uniform(*c.fade_s) * c.fps))))
            gain = np.linspace(1.0, 0.0, m, dtype=np.float32)[:, None, None, None]
            video[-m:] = (video[-m:].astype(np.float32) * gain).astype(np.uint8)
            fade_at = [(frame + len(video) - m) / c.fps, (frame + len(video)) / c.fps]
        n = len(video)
        caption = still_caption(color, shape) if static else caption_of(color, direction, shape)
        shots.append(
            {
                "start_s": frame / c.fps,
                "end_s": (frame + n) / c.fps,
                "caption": caption,
                "color": color,
                "direction": "none" if static else direction,
                "shape": shape,
                "static": static,
                "frozen": bool(frozen),
                "fade": bool(fade),
                "frozen_at": frozen_at,  # [start_s, end_s] of the held picture, or []
                "fade_at": fade_at,  # [start_s, end_s] of the fade to black, or []
            }
        )
        parts.append(video)
        frame += n
    frames = np.concatenate(parts)
    if bar:
        full = np.zeros((len(frames), h, w, 3), np.uint8)
        full[:, bar : bar + inner_h] = frames
        frames = full
    text = ""
    if rng.random() < c.text_rate:
        text = TEXT_WORDS[int(rng.integers(len(TEXT_WORDS)))]
        frames = burn_text(frames, text)
    truth = {
        "frames": len(frames),
        "duration_s": len(frames) / c.fps,
        "shots": shots,
        "black": blacks,
        "text": text,
        "letterbox_px": bar,
        "source_caption": shots[0]["caption"],
    }
    return frames, truth


def write_raw_pool(out_dir: str, config: PoolConfig) -> dict:
    """The raw pool: OUT/sources/src_NNNN.mp4 (near-duplicate copies as src_NNNN_dup.mp4), OUT/sidecar.json
    (ground-truth caption per shot: the caption_from_sidecar format, keyed by file name) and OUT/pool.json
    (the config, every source's ground truth, and the counts of each defect actually drawn)."""
    import dataclasses
    import json

    from vidsift.model.mp4 import encode_mp4

    rng = np.random.default_rng(config.seed)
    src_dir = os.path.join(out_dir, "sources")
    os.makedirs(src_dir, exist_ok=True)
    sources: dict[str, dict] = {}
    for i in range(config.sources):
        frames, truth = make_source(config, rng)
        name = f"src_{i:04d}.mp4"
        with open(os.path.join(src_dir, name), "wb") as f:
            f.write(encode_mp4(frames, config.fps, config.crf))
        sources[name] = {**truth, "duplicate_of": ""}
        if rng.random() < config.duplicate_rate:  # brighter by a few levels, re-encoded harder
            lift = int(rng.integers(4, 10))
            copy = np.clip(frames.astype(np.int16) + lift, 0, 255).astype(np.uint8)
            dup = f"src_{i:04d}_dup.mp4"
            with open(os.path.join(src_dir, dup), "wb") as f:
                f.write(encode_mp4(copy, config.fps, config.crf + 8))
            sources[dup] = {**truth, "duplicate_of": name}
    sidecar = {
        name: [{"start_s": s["start_s"], "end_s": s["end_s"], "caption": s["caption"]} for s in t["shots"]]
        for name, t in sources.items()
    }
    shots = [s for t in sources.values() for s in t["shots"]]
    counts = {
        "sources": len(sources),
        "duplicates": sum(1 for t in sources.values() if t["duplicate_of"]),
        "shots": len(shots),
        "cuts": len(shots) - len(sources),
        "fades": sum(s["fade"] for s in shots),
        "frozen_shots": sum(s["frozen"] for s in shots),
        "static_shots": sum(s["static"] for s in shots),
        "black_stretches": sum(len(t["black"]) for t in sources.values()),
        "text_sources": sum(1 for t in sources.values() if t["text"]),
        "letterbox_sources": sum(1 for t in sources.values() if t["letterbox_px"]),
        "seconds": round(sum(t["duration_s"] for t in sources.values()), 2),
    }
    pool = {"config": dataclasses.asdict(config), "counts": counts, "sources": sources}
    with open(os.path.join(out_dir, "sidecar.json"), "w") as f:
        json.dump(sidecar, f, indent=1)
    with open(os.path.join(out_dir, "pool.json"), "w") as f:
        json.dump(pool, f, indent=1)
    return pool


def defects_in_range(truth: dict, start_s: float, end_s: float, caption: str | None = None) -> dict:
    """Which ground-truth defects the time range [start_s, end_s) of a source holds (``truth``: its entry in
    pool.json), and, given the caption it was trained with, whether that caption is wrong (it is not the
    caption of the shot that covers most of the range). What a training clip teaches, before any model."""

    def overlaps(a: float, b: float) -> bool:
        return min(end_s, b) - max(start_s, a) > 0.5 / 12  # more than half a frame at 12 fps

    shots = [s for s in truth["shots"] if overlaps(s["start_s"], s["end_s"])]
    best = max(shots, key=lambda s: min(end_s, s["end_s"]) - max(start_s, s["start_s"]), default=None)
    return {
        "cut": len(shots) > 1,
        "black": any(overlaps(b["start_s"], b["end_s"]) for b in truth["black"])
        or any(s["fade_at"] and overlaps(*s["fade_at"]) for s in shots),
        "frozen": any(s["frozen_at"] and overlaps(*s["frozen_at"]) for s in shots),
        "static": any(s["static"] for s in shots),
        "text": bool(truth["text"]),
        "duplicate": bool(truth["duplicate_of"]),
        "wrong_caption": caption is not None and (best is None or best["caption"] != caption),
    }


def decode_frames(path: str) -> np.ndarray:
    """Every frame of a video file, [F, H, W, 3] uint8."""
    import av

    with av.open(path) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])])


def write_window_shards(pool_dir: str, out_dir: str, window_s: float = 2.0, rows_per_file: int = 64) -> dict:
    """The uncurated baseline: what a naive pipeline gives. Every source of the pool cut into fixed-length
    windows of ``window_s`` (a shorter tail is dropped, and counted), each captioned with its source-level
    caption, written as OUT/clips/part-*.parquet rows of the clip schema the trainer reads."""
    import json

    import pyarrow.parquet as pq

    from vidsift.model.mp4 import encode_mp4
    from vidsift.pipeline.schema import CLIP_SCHEMA, table_from_rows

    with open(os.path.join(pool_dir, "pool.json")) as f:
        pool = json.load(f)
    fps = float(pool["config"]["fps"])
    n = max(2, int(round(window_s * fps)))
    rows, tails = [], 0
    for name, truth in sorted(pool["sources"].items()):
        frames = decode_frames(os.path.join(pool_dir, "sources", name))
        vid = hashlib.blake2b(f"window/{name}".encode(), digest_size=8).hexdigest()
        tails += len(frames) % n
        for start in range(0, len(frames) - n + 1, n):
            h, w = frames.shape[1:3]
            rows.append(
                {
                    "clip_id": hashlib.blake2b(f"{vid}/{start}/{n}".encode(), digest_size=16).hexdigest(),
                    "video_id": vid,
                    "source_uri": os.path.join(pool_dir, "sources", name),
                    "group": "windows",
                    "start_frame": start,
                    "end_frame": start + n,
                    "start_s": start / fps,
                    "end_s": (start + n) / fps,
                    "width": w,
                    "height": h,
                    "fps": fps,
                    "num_frames": n,
                    "duration_s": n / fps,
                    "clip_mp4": encode_mp4(frames[start : start + n], fps),
                    "caption": truth["source_caption"],
                }
            )
    os.makedirs(os.path.join(out_dir, "clips"), exist_ok=True)
    for k in range(0, len(rows), rows_per_file):
        table = table_from_rows(rows[k : k + rows_per_file], CLIP_SCHEMA)
        pq.write_table(table, os.path.join(out_dir, "clips", f"part-{k // rows_per_file}.parquet"))
    return {"windows": len(rows), "window_frames": n, "tail_frames_dropped": tails}


# -- judges of generated samples (bench/curation_ablation.py) ------------------------------------------------
#
# Each reads a video [3, F, H, W] in [-1, 1] (a torch tensor or numpy array), as sample.generate returns.
# Thresholds are fixed from the generator's levels (background 10-60, shapes saturated with one channel
# >= 210, black < 16, text white), and the tests check each judge on clips with and without the defect.

BLACK_LEVEL = 16.0  # mean luma (0..255) below which a frame is black (as the curation filters count it)
FROZEN_DIFF = 1.0  # mean absolute change (0..255) below which a frame repeats its predecessor
TEXT_LEVEL = 90.0  # every channel above this, and grey: white text, even blurred to 32 px (background < 75)
SQUARE_FILL = 0.89  # share of its bounding box a shape fills: square 1.0, circle pi/4 = 0.785


def _pixels(video) -> np.ndarray:
    """[F, H, W, 3] float in 0..255."""
    return ((np.clip(np.asarray(video, dtype=np.float32), -1, 1) + 1) * 127.5).transpose(1, 2, 3, 0)


def _foreground(frame: np.ndarray) -> np.ndarray:
    """Saturated pixels: bright in one channel, far from grey (the background is dark, text is white)."""
    return (frame.max(axis=-1) > 100) & (frame.max(axis=-1) - frame.min(axis=-1) > 80)


def frame_colour(frame: np.ndarray) -> str:
    fg = _foreground(frame)
    if fg.sum() < 3:
        return "none"
    mean = frame[fg].mean(axis=0)
    return min(COLORS, key=lambda c: float(np.sum((np.array(COLORS[c]) - mean) ** 2)))


def judge_shape(video) -> str:
    """square | circle | none: how much of its bounding box the foreground fills, median over frames."""
    fills = []
    for frame in _pixels(video):
        fg = _foreground(frame)
        if fg.sum() < 6:
            continue
        ys, xs = np.nonzero(fg)
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        fills.append(fg.sum() / box)
    if not fills:
        return "none"
    return "square" if float(np.median(fills)) >= SQUARE_FILL else "circle"


def judge_defects(video) -> dict:
    """What is wrong with a sample: a cut (the foreground's colour changes between frames, or its centre jumps
    more than a third of the picture), black frames, frozen frames (a frame that repeats its predecessor),
    a text-like overlay (light grey pixels over more than 2% of the bottom band of some frame, and three
    times their share above it: shapes are saturated, noise is everywhere)."""
    v = _pixels(video)
    f, h, w = v.shape[:3]
    luma = v @ np.array([0.299, 0.587, 0.114], np.float32)
    black = bool((luma.mean(axis=(1, 2)) < BLACK_LEVEL).any())
    diffs = np.abs(np.diff(v, axis=0)).mean(axis=(1, 2, 3)) if f > 1 else np.array([np.inf])
    frozen = bool((diffs < FROZEN_DIFF).any())
    colours, centres = [], []
    for frame in v:
        colours.append(frame_colour(frame))
        fg = _foreground(frame)
        centres.append(np.argwhere(fg).mean(axis=0) if fg.sum() >= 3 else None)
    seen = [c for c in colours if c != "none"]
    cut = len(set(seen)) > 1
    for a, b in zip(centres, centres[1:], strict=False):
        if a is not None and b is not None and np.hypot(*(b - a)) > max(h, w) / 3:
            cut = True
    grey = (v.min(axis=-1) > TEXT_LEVEL) & (v.max(axis=-1) - v.min(axis=-1) < 50)
    band, rest = grey[:, int(h * 0.65) :].mean(axis=(1, 2)), grey[:, : int(h * 0.6)].mean(axis=(1, 2))
    text = bool(((band > 0.02) & (band > 3 * rest)).any())  # in the bottom band only, where text is burned
    return {"cut": cut, "black": black, "frozen": frozen, "text": text}


def judge_sample(video) -> dict:
    """Everything the ablation reads off one sample: colour and direction (``judge``), shape, defects."""
    colour, direction = judge(video)
    return {"colour": colour, "direction": direction, "shape": judge_shape(video), **judge_defects(video)}


def diversity(videos) -> float:
    """Mean pairwise RMS difference (0..1 of the pixel range) between samples of one prompt: 0 when every seed
    draws the same video."""
    vs = [np.asarray(v, dtype=np.float32) for v in videos]
    pairs = [(i, j) for i in range(len(vs)) for j in range(i + 1, len(vs))]
    if not pairs:
        return 0.0
    return float(np.mean([np.sqrt(np.mean((vs[i] - vs[j]) ** 2)) / 2 for i, j in pairs]))
