"""Streams training clips from curated shards (``OUT/clips/*.parquet``, see pipeline/schema.py).

The unit of work is a *reader*: one stream of micro-batches. A run has world_size x grad_accum readers
(process ``rank`` owns readers rank*A .. rank*A + A - 1, one per accumulation micro-step), and readers
own disjoint row groups. Because a reader's stream depends only on (seed, reader, epoch), a global batch
is the same whether it is computed by 2 processes or by 1 process accumulating 2 micro-batches.

Each reader visits its row groups in a shuffled order and passes row references through a shuffle buffer
(locality: a row group is read once and its rows leave the buffer soon after). Only *references* are
shuffled, so the position is two integers (epoch, rows taken) and resuming replays the references without
touching the data. Rows are then read through a small row-group cache and decoded: ``clip_mp4`` with PyAV
to the training size (resize to cover, centre crop, frame stride), or the cached ``latent`` column.

The first ``val_clips`` clips by clip_id form a fixed held-out set that no reader trains on.
"""

from __future__ import annotations

import glob
import io
import os
import random
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import torch

Ref = tuple[int, int, int]  # (file index, row group, row within the group)


class DataError(Exception):
    """Bad training input (missing folder, no clips, undecodable clip); the CLI prints it on one line."""


@dataclass
class Sample:
    clip_id: str
    x: torch.Tensor  # pixels [3, F, H, W] in [-1, 1], or a latent [C, T, H, W]
    caption: str  # "" when the shard has none (trained as the null caption)
    text_emb: torch.Tensor | None = None  # cached [tokens, dim] from `vidsift encode`, if used


def shard_files(data_dir: str) -> list[str]:
    if not os.path.isdir(data_dir):
        raise DataError(f"data folder not found: {data_dir}")
    files = sorted(glob.glob(os.path.join(data_dir, "clips", "*.parquet")))
    if not files:
        raise DataError(f"no clip shards in {os.path.join(data_dir, 'clips')} (expected *.parquet)")
    return files


class ShardIndex:
    """Row-group layout and clip ids of every shard: metadata and one small column, no clip bytes."""

    def __init__(self, data_dir: str) -> None:
        self.files = shard_files(data_dir)
        self.groups: list[tuple[int, int, list[str]]] = []  # (file, row group, clip ids)
        self.num_cached_latents = 0
        self.num_cached_text = 0
        for fi, path in enumerate(self.files):
            try:
                pf = pq.ParquetFile(path)
            except Exception as e:  # noqa: BLE001 - any unreadable file is a data error, said in one line
                raise DataError(f"unreadable shard {path}: {e}") from e
            names = set(pf.schema_arrow.names)
            if "clip_id" not in names:
                raise DataError(f"{path} has no clip_id column: not a vidsift clips shard")
            for rg in range(pf.num_row_groups):
                cols = [c for c in ("clip_id", "latent_shape", "text_emb_shape") if c in names]
                t = pf.read_row_group(rg, columns=cols)
                self.groups.append((fi, rg, t.column("clip_id").to_pylist()))
                if "latent_shape" in names:
                    self.num_cached_latents += t.num_rows - t.column("latent_shape").null_count
                if "text_emb_shape" in names:
                    self.num_cached_text += t.num_rows - t.column("text_emb_shape").null_count
        self.num_rows = sum(len(ids) for _, _, ids in self.groups)
        if self.num_rows == 0:
            raise DataError(f"the shards in {data_dir} hold no clips")

    def split(self, val_clips: int) -> tuple[set[str], list[Ref]]:
        """Held-out clip ids (the first ``val_clips`` by id) and their references, in id order."""
        ids = sorted(c for _, _, group in self.groups for c in group)
        if val_clips >= len(ids):
            raise DataError(f"{len(ids)} clips are too few to hold out {val_clips} for validation")
        val = set(ids[:val_clips])
        refs = {c: (f, g, r) for f, g, group in self.groups for r, c in enumerate(group) if c in val}
        return val, [refs[c] for c in ids[:val_clips]]


class RowReader:
    """Reads single rows through an LRU cache of decoded-to-Python row groups."""

    def __init__(self, index: ShardIndex, columns: list[str], cache_groups: int = 16) -> None:
        self.index = index
        self.columns = columns
        self.cache: OrderedDict[tuple[int, int], dict[str, list]] = OrderedDict()
        self.cache_groups = cache_groups

    def row(self, ref: Ref) -> dict:
        key = ref[:2]
        if key not in self.cache:
            pf = pq.ParquetFile(self.index.files[key[0]])
            cols = [c for c in self.columns if c in pf.schema_arrow.names]
            t = pf.read_row_group(key[1], columns=cols)
            self.cache[key] = {c: t.column(c).to_pylist() for c in cols}
            while len(self.cache) > self.cache_groups:
                self.cache.popitem(last=False)
        self.cache.move_to_end(key)
        return {c: v[ref[2]] for c, v in self.cache[key].items()}


def decode_clip(
    data: bytes, frames: int, height: int, width: int, stride: int = 1, start: float = 0.5
) -> torch.Tensor:
    """``frames`` frames, every ``stride``-th, from an encoded clip, resized to cover height x width and
    centre-cropped; [3, F, H, W] float in [-1, 1]. ``start`` in [0, 1] places the window within the clip.
    When the window runs past the end of a short clip, its last existing frame repeats."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        n_hint = stream.frames or 0
        span = (frames - 1) * stride + 1
        first = int(round(start * max(0, n_hint - span))) if n_hint else 0
        wanted = {first + i * stride for i in range(frames)}
        last = max(wanted)
        out: dict[int, np.ndarray] = {}
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted or not out:
                scale = max(width / frame.width, height / frame.height)
                w, h = max(width, round(frame.width * scale)), max(height, round(frame.height * scale))
                img = frame.reformat(width=w, height=h, format="rgb24").to_ndarray()
                top, left = (h - height) // 2, (w - width) // 2
                out[i] = img[top : top + height, left : left + width]
            if i >= last:
                break
    if not out:
        raise ValueError("no frames decoded")
    have = sorted(k for k in out if k in wanted) or [min(out)]
    picked = [out[k] for k in have] + [out[have[-1]]] * (frames - len(have))
    video = torch.from_numpy(np.stack(picked)).permute(3, 0, 1, 2).float()
    return video / 127.5 - 1.0


def latent_from_row(row: dict) -> torch.Tensor:
    shape = [int(s) for s in row["latent_shape"]]
    return torch.from_numpy(np.frombuffer(row["latent"], dtype=np.float16).reshape(shape).astype(np.float32))


def text_from_row(row: dict) -> torch.Tensor:
    shape = [int(s) for s in row["text_emb_shape"]]
    return torch.from_numpy(
        np.frombuffer(row["text_emb"], dtype=np.float16).reshape(shape).astype(np.float32)
    )


@dataclass
class ClipSource:
    """How a row becomes a training sample: decoded pixels or cached latents, and cached text or not."""

    frames: int
    height: int
    width: int
    stride: int = 1
    use_latents: bool = False
    use_text_emb: bool = False

    @property
    def columns(self) -> list[str]:
        cols = ["clip_id", "caption"]
        cols += ["latent", "latent_shape"] if self.use_latents else ["clip_mp4"]
        cols += ["text_emb", "text_emb_shape"] if self.use_text_emb else []
        return cols

    def sample(self, row: dict, start: float) -> Sample:
        cid = row["clip_id"]
        if self.use_latents:
            if row.get("latent") is None:
                raise DataError(f"clip {cid} has no cached latent: run `vidsift encode` on every shard")
            x = latent_from_row(row)
        else:
            if not row.get("clip_mp4"):
                raise DataError(f"clip {cid} has no clip_mp4 bytes")
            try:
                x = decode_clip(row["clip_mp4"], self.frames, self.height, self.width, self.stride, start)
            except Exception as e:  # noqa: BLE001 - PyAV raises many types; all mean "bad clip bytes"
                raise DataError(f"clip {cid}: unreadable clip_mp4 ({type(e).__name__}: {e})") from e
        emb = text_from_row(row) if self.use_text_emb and row.get("text_emb") is not None else None
        return Sample(cid, x, (row.get("caption") or "").strip(), emb)


class ClipStream:
    """One reader's endless, deterministic, resumable stream of training samples."""

    def __init__(
        self,
        index: ShardIndex,
        source: ClipSource,
        reader: int,
        num_readers: int,
        seed: int = 0,
        shuffle_buffer: int = 64,
        exclude: set[str] = frozenset(),
    ) -> None:
        self.source, self.reader, self.seed, self.buffer = source, reader, seed, max(1, shuffle_buffer)
        self.rows = RowReader(index, source.columns)
        groups = [(f, g, [r for r, c in enumerate(ids) if c not in exclude]) for f, g, ids in index.groups]
        groups = [(f, g, rows) for f, g, rows in groups if rows]
        if len(groups) >= num_readers:
            # Disjoint row groups per reader: each reader reads only its own parts of the files.
            self.units = groups[reader::num_readers]
        else:
            # Fewer row groups than readers: split every group's rows instead (small datasets).
            flat = [(f, g, r) for f, g, rows in groups for r in rows][reader::num_readers]
            self.units = [(f, g, [r for ff, gg, r in flat if (ff, gg) == (f, g)]) for f, g, _ in groups]
            self.units = [u for u in self.units if u[2]]
        if not self.units:
            raise DataError(f"reader {reader} of {num_readers} has no clips: fewer clips than readers")
        self.epoch, self.pos = 0, 0
        self._refs: Iterator[Ref] | None = None

    def epoch_refs(self, epoch: int) -> Iterator[Ref]:
        rng = random.Random(f"{self.seed}/{self.reader}/{epoch}")
        order = list(self.units)
        rng.shuffle(order)
        buf: list[Ref] = []
        for f, g, rows in order:
            for r in rows:
                buf.append((f, g, r))
                if len(buf) >= self.buffer:
                    i = rng.randrange(len(buf))
                    buf[i], buf[-1] = buf[-1], buf[i]
                    yield buf.pop()
        rng.shuffle(buf)
        yield from buf

    def next_ref(self) -> tuple[Ref, int]:
        while True:
            if self._refs is None:
                self._refs = self.epoch_refs(self.epoch)
                for _ in range(self.pos):  # resume: replay references, no data is read
                    next(self._refs)
            ref = next(self._refs, None)
            if ref is not None:
                self.pos += 1
                return ref, self.epoch
            self.epoch, self.pos, self._refs = self.epoch + 1, 0, None

    def next_batch(self, batch_size: int) -> list[Sample]:
        out = []
        for _ in range(batch_size):
            ref, epoch = self.next_ref()
            # The clip window is random per (seed, epoch, row) but independent of decoding order.
            start = zlib.crc32(f"{self.seed}/{epoch}/{ref}".encode()) / 2**32
            out.append(self.source.sample(self.rows.row(ref), start))
        return out

    def state_dict(self) -> dict:
        return {"reader": self.reader, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        if state["reader"] != self.reader:
            raise ValueError(f"state of reader {state['reader']} given to reader {self.reader}")
        self.epoch, self.pos, self._refs = state["epoch"], state["pos"], None


def load_samples(index: ShardIndex, source: ClipSource, refs: list[Ref]) -> list[Sample]:
    """Fixed samples (the validation set): the middle window of each clip."""
    rows = RowReader(index, source.columns)
    return [source.sample(rows.row(ref), 0.5) for ref in refs]


def collate(samples: list[Sample]) -> tuple[torch.Tensor, list[str], list[torch.Tensor | None]]:
    shapes = {tuple(s.x.shape) for s in samples}
    if len(shapes) > 1:
        raise DataError(
            f"samples of different shapes in one batch: {sorted(shapes)} (re-run `vidsift encode`)"
        )
    return torch.stack([s.x for s in samples]), [s.caption for s in samples], [s.text_emb for s in samples]
