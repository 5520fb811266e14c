"""Curated clips for fine-tuning: an index of every clip in a run's shards, assigned to size buckets.

The index reads only small columns (clip_id, the caption column, width, height, num_frames) once; a clip's
``clip_mp4`` bytes are read when a batch needs it, one row group at a time, and kept in memory up to
``CACHE_BYTES`` (least recently used row groups go first: a small run is read from disk once, a large one
streams), then decoded with ``vidsift.model.data.decode_clip`` (resize to cover, centre crop, frame stride).

Buckets are (frames, height, width) sizes that the family accepts. Each clip goes to the bucket whose aspect
ratio is nearest its own, among the buckets it is long enough for (after the frame stride). What happens to a
clip that does not fit is the recipe's ``bucket_policy``:

- ``crop``: every clip long enough for some bucket is used; its frame is scaled to cover the bucket and
  centre-cropped to it, whatever its aspect ratio;
- ``drop``: as ``crop``, but a clip whose aspect ratio differs from its bucket's by more than
  ``max_aspect_change`` (relative) is dropped instead of cropped.

Under both, a clip shorter than every bucket is dropped (reason ``too_short``), and a clip without a caption
or clip bytes is dropped (``no_caption``, ``no_clip``). Every drop is counted by reason, printed, and written
to the run's manifest.json.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from vidsift.model.data import DataError, decode_clip, shard_files
from vidsift.pipeline import storage

Bucket = tuple[int, int, int]  # (frames, height, width)
CACHE_BYTES = 512 * 2**20  # clip bytes (and, in latents.py, cached latents) kept in memory per process


class ByteLRU:
    """Values by key, least recently used dropped first once their sizes add up to more than ``budget``
    bytes (the newest value is always kept). Safe to share between the loop and its prefetch thread."""

    def __init__(self, budget: int = CACHE_BYTES) -> None:
        self.budget, self.bytes = budget, 0
        self.items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], tuple[Any, int]]) -> Any:
        """The value of ``key``; ``load()`` gives (value, size in bytes) when it is not held."""
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key][0]
            value, size = load()
            self.items[key] = (value, size)
            self.bytes += size
            while self.bytes > self.budget and len(self.items) > 1:
                self.bytes -= self.items.popitem(last=False)[1][1]
            return value


@dataclass(frozen=True)
class Clip:
    clip_id: str
    caption: str
    ref: tuple[int, int, int]  # (file, row group, row)
    bucket: int
    prompt: str  # caption_short (the caption when the clip has none): sampling prompts


@dataclass
class ClipIndex:
    """The usable clips of a run, each with its bucket, and what was dropped, by reason."""

    files: list[str]
    buckets: list[Bucket]
    stride: int
    clips: list[Clip] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    policy: str = "crop"  # bucket_policy: crop | drop
    max_aspect_change: float = 0.1
    cropped: int = 0  # clips used although their aspect ratio is more than max_aspect_change off (crop)
    cache: ByteLRU = field(default_factory=ByteLRU)  # (file, row group) -> its clip_mp4 values

    def summary(self) -> dict:
        per_bucket = Counter(c.bucket for c in self.clips)
        return {
            "clips": len(self.clips),
            "dropped": dict(sorted(self.dropped.items())),
            "bucket_policy": self.policy,
            "max_aspect_change": self.max_aspect_change,
            "cropped_beyond_max_aspect_change": self.cropped,
            "buckets": [
                {"frames": b[0], "height": b[1], "width": b[2], "clips": per_bucket[i]}
                for i, b in enumerate(self.buckets)
            ],
        }

    def pixels(self, clip: Clip, start: float) -> torch.Tensor:
        """The clip decoded at its bucket's size: [3, F, H, W] in [-1, 1]."""
        f, h, w = self.buckets[clip.bucket]
        data = self.cache.get(clip.ref[:2], lambda: self._read_group(*clip.ref[:2]))[clip.ref[2]]
        try:
            return decode_clip(data, f, h, w, self.stride, start)
        except Exception as e:  # noqa: BLE001 - PyAV raises many types; all mean "bad clip bytes"
            raise DataError(f"clip {clip.clip_id}: unreadable clip_mp4 ({type(e).__name__}: {e})") from e

    def _read_group(self, file: int, group: int) -> tuple[list, int]:
        column = storage.open_parquet(self.files[file]).read_row_group(group, columns=["clip_mp4"]).column(0)
        return column.to_pylist(), column.nbytes


def choose_bucket(
    width: int, height: int, frames: int, buckets: list[Bucket], policy: str, max_aspect_change: float
) -> tuple[int | None, str]:
    """(bucket index, "") for a clip of ``frames`` (after stride) at width x height, (bucket index, "cropped")
    when ``crop`` uses it although its aspect ratio is more than ``max_aspect_change`` off, or (None,
    reason)."""
    fits = [i for i, b in enumerate(buckets) if b[0] <= frames]
    if not fits:
        return None, "too_short"
    aspect = width / height

    def change(i: int) -> float:
        return abs(math.log(aspect / (buckets[i][2] / buckets[i][1])))

    # Nearest aspect first, then the longest bucket the clip fills.
    best = min(fits, key=lambda i: (round(change(i), 6), -buckets[i][0]))
    if policy == "drop" and math.exp(change(best)) - 1 > max_aspect_change:
        return None, "aspect"
    return best, "cropped" if math.exp(change(best)) - 1 > max_aspect_change else ""


def index_clips(
    data: str,
    caption_column: str,
    buckets: list[Bucket],
    stride: int,
    policy: str,
    max_aspect_change: float,
) -> ClipIndex:
    """Every clip of the run's shards with its bucket, in clip_id order (deterministic across runs)."""
    files = shard_files(data)
    index = ClipIndex(files, buckets, stride, policy=policy, max_aspect_change=max_aspect_change)
    clips = []
    for fi in range(len(files)):
        clips += index_file(index, fi, caption_column, policy, max_aspect_change)
    index.clips = sorted(clips, key=lambda c: c.clip_id)
    if not index.clips:
        raise DataError(f"no usable clips in {data}: dropped {dict(index.dropped)}")
    return index


def index_file(
    index: ClipIndex, fi: int, caption_column: str, policy: str, max_aspect_change: float
) -> list[Clip]:
    """The usable clips of ``index.files[fi]`` in row order; drops are counted in ``index.dropped``."""
    path = index.files[fi]
    pf = storage.open_parquet(path)
    names = pf.schema_arrow.names
    if caption_column not in names:
        raise DataError(f"{path} has no column {caption_column!r} (caption_column in the recipe)")
    wanted = ("clip_id", caption_column, "caption_short", "width", "height", "num_frames")
    cols = [c for c in dict.fromkeys(wanted) if c in names]
    clips = []
    for g in range(pf.metadata.num_row_groups):
        t = pf.read_row_group(g, columns=cols).to_pylist()
        for r, row in enumerate(t):
            caption = (row.get(caption_column) or "").strip()
            if not caption:
                index.dropped["no_caption"] += 1
                continue
            w, h, n = (
                int(row.get("width") or 0),
                int(row.get("height") or 0),
                int(row.get("num_frames") or 0),
            )
            if not (w and h and n):
                index.dropped["no_size"] += 1
                continue
            b, reason = choose_bucket(w, h, -(-n // index.stride), index.buckets, policy, max_aspect_change)
            if b is None:
                index.dropped[reason] += 1
                continue
            index.cropped += reason == "cropped"
            prompt = (row.get("caption_short") or "").strip() or caption
            clips.append(Clip(row["clip_id"], caption, (fi, g, r), b, prompt))
    return clips
