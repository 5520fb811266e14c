"""Streams training clips from curated shards (``OUT/clips/*.parquet``, see pipeline/schema.py), in a
local folder or under an ``s3://`` prefix (read through ``pipeline/storage.py``: footers and the row groups
a reader asks for, never whole files).

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

Packing (``pack = true`` in a recipe): clips keep their native aspect ratio and duration (``NativeSize``:
the recipe's height x width becomes a pixel *area*, its frames a *maximum*), images join as one-frame clips
(``image_ratio``: single frames of shard clips, or files of ``image_dir``), and ``PackedStream`` packs them
first-fit-decreasing into ``rows`` rows of exactly ``budget`` tokens (``pack``). The shapes the model sees
are fixed by (rows, budget, max_clips, text tokens), so torch.compile compiles one graph.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import random
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from vidsift.pipeline import storage

Ref = tuple[int, int, int]  # (file index, row group, row within the group)


class DataError(Exception):
    """Bad training input (missing folder, no clips, undecodable clip); the CLI prints it on one line."""


@dataclass
class Sample:
    clip_id: str
    x: torch.Tensor  # pixels [3, F, H, W] in [-1, 1], or a latent [C, T, H, W]
    caption: str  # "" when the shard has none (trained as the null caption)
    text_emb: torch.Tensor | None = None  # cached [tokens, dim] from `vidsift encode`, if used
    is_latent: bool = False  # x is already a VAE latent (cached), not pixels


def shard_files(data_dir: str) -> list[str]:
    """The clip shards of a run folder: local paths, or ``s3://`` URIs for a run in a bucket."""
    if not storage.is_remote(data_dir) and not os.path.isdir(data_dir):
        raise DataError(f"data folder not found: {data_dir}")
    try:
        files = storage.parquet_files(storage.join(data_dir, "clips"))
    except OSError as e:  # S3: no credentials, endpoint down, access denied
        raise DataError(f"cannot list the shards in {data_dir}: {e}") from None
    if not files:
        raise DataError(f"no clip shards in {storage.join(data_dir, 'clips')} (expected *.parquet)")
    return files


class ShardIndex:
    """Row-group layout and clip ids of every shard: metadata and one small column, no clip bytes."""

    def __init__(self, data_dir: str) -> None:
        self.files = shard_files(data_dir)
        self.groups: list[tuple[int, int, list[str]]] = []  # (file, row group, clip ids)
        self.num_cached_latents = 0
        self.num_cached_text = 0
        self.fps: list[float | None] = []  # each clip's frame rate (the fps column), in row order
        for fi, path in enumerate(self.files):
            try:
                pf = storage.open_parquet(path)
            except Exception as e:  # noqa: BLE001 - any unreadable file is a data error, said in one line
                raise DataError(f"unreadable shard {path}: {e}") from e
            names = set(pf.schema_arrow.names)
            if "clip_id" not in names:
                raise DataError(f"{path} has no clip_id column: not a vidsift clips shard")
            for rg in range(pf.num_row_groups):
                cols = [c for c in ("clip_id", "latent_shape", "text_emb_shape", "fps") if c in names]
                t = pf.read_row_group(rg, columns=cols)
                self.groups.append((fi, rg, t.column("clip_id").to_pylist()))
                if "fps" in names:
                    self.fps.extend(t.column("fps").to_pylist())
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
            pf = storage.open_parquet(self.index.files[key[0]])
            cols = [c for c in self.columns if c in pf.schema_arrow.names]
            t = pf.read_row_group(key[1], columns=cols)
            self.cache[key] = {c: t.column(c).to_pylist() for c in cols}
            while len(self.cache) > self.cache_groups:
                self.cache.popitem(last=False)
        self.cache.move_to_end(key)
        return {c: v[ref[2]] for c, v in self.cache[key].items()}


def cover_crop(frame, height: int, width: int, reformatter=None) -> np.ndarray:
    """A decoded frame resized to cover height x width and centre-cropped: [height, width, 3] uint8 RGB.

    ``reformatter`` (an ``av.video.reformatter.VideoReformatter``) is reused across the frames of one
    video: ``frame.reformat`` builds a new scaling context for every frame, several times the cost of the
    scaling itself at training sizes; the pixels are the same.
    """
    scale = max(width / frame.width, height / frame.height)
    w, h = max(width, round(frame.width * scale)), max(height, round(frame.height * scale))
    if reformatter is not None:
        img = reformatter.reformat(frame, width=w, height=h, format="rgb24").to_ndarray()
    else:
        img = frame.reformat(width=w, height=h, format="rgb24").to_ndarray()
    top, left = (h - height) // 2, (w - width) // 2
    return img[top : top + height, left : left + width]


def read_video(
    src: bytes | str,
    height: int | None = None,
    width: int | None = None,
    frames: int | None = None,
    stride: float = 1,
    start: float = 0.5,
) -> tuple[torch.Tensor, float | None]:
    """The one video reader of training, sampling and editing: (frames [3, F, H, W] float in [-1, 1], fps).

    ``src`` is encoded bytes (a shard's clip_mp4) or a file path. With ``height`` and ``width`` every frame is
    resized to cover that size and centre-cropped; without them frames keep their decoded size. ``frames``
    takes that many frames, every ``stride``-th (a fraction when sampling at a frame rate: frame i is the
    frame on show at that time, so a 30 fps clip at 12 fps takes 0, 2, 5, 7, 10, ...), from a
    window placed by ``start`` in [0, 1]; when the window runs past the end of a short clip its last
    existing frame repeats. ``frames=None`` reads every frame.
    PyAV errors propagate; callers turn them into their own one-line errors."""
    import av
    from av.video.reformatter import VideoReformatter

    sized = height is not None and width is not None
    reformatter = VideoReformatter() if sized else None
    with av.open(io.BytesIO(src) if isinstance(src, bytes) else src) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else None
        wanted: list[int] | None = None  # decode indices of the frames to return, in order
        if frames is not None:
            n_hint = stream.frames or 0
            span = (frames - 1) * stride + 1
            first = int(round(start * max(0, n_hint - span))) if n_hint else 0
            wanted = [first + int(i * stride + 1e-9) for i in range(frames)]  # the frame on show at i/fps
        keep = set(wanted) if wanted is not None else None
        out: dict[int, np.ndarray] = {}
        for i, frame in enumerate(container.decode(stream)):
            if keep is None or i in keep or not out:
                if sized:
                    out[i] = cover_crop(frame, height, width, reformatter)
                else:
                    out[i] = frame.to_ndarray(format="rgb24")
            if wanted is not None and i >= wanted[-1]:
                break
    if not out:
        raise ValueError("no frames decoded")
    if wanted is None:
        picked = [out[k] for k in sorted(out)]
    else:  # past the end of a short clip its last existing frame repeats
        last = out[min(out)]
        picked = []
        for k in wanted:
            last = out.get(k, last)
            picked.append(last)
    video = torch.from_numpy(np.stack(picked)).permute(3, 0, 1, 2).float()
    return video / 127.5 - 1.0, fps


def decode_clip(
    data: bytes, frames: int, height: int, width: int, stride: float = 1, start: float = 0.5
) -> torch.Tensor:
    """``frames`` frames, every ``stride``-th, of an encoded clip at height x width (``read_video``)."""
    return read_video(data, height, width, frames, stride, start)[0]


def latent_from_row(row: dict) -> torch.Tensor:
    shape = [int(s) for s in row["latent_shape"]]
    return torch.from_numpy(np.frombuffer(row["latent"], dtype=np.float16).reshape(shape).astype(np.float32))


def text_from_row(row: dict) -> torch.Tensor:
    shape = [int(s) for s in row["text_emb_shape"]]
    return torch.from_numpy(
        np.frombuffer(row["text_emb"], dtype=np.float16).reshape(shape).astype(np.float32)
    )


@dataclass
class NativeSize:
    """Each clip's training size from its own width, height and length (Sora-style native training): the
    aspect ratio is kept, the frame is scaled to about ``area`` pixels (never up), both sides rounded to
    ``multiple`` (patch x VAE factor); the duration is kept up to ``max_frames`` (after the frame stride),
    shortened to the longest count ``frames_ok`` accepts (the VAE's 1 + 4k, whole temporal patches)."""

    area: int  # pixels per frame, e.g. 256 * 256
    max_frames: int
    stride: float = 1
    multiple: int = 1
    frame_multiple: int = 1  # model-input frames must divide into temporal patches of this size
    vae_time: int = 1  # the causal VAE's time factor (1 + vae_time * k frames); 1 in pixel space

    def frames_ok(self, f: int) -> bool:
        latent = 1 + (f - 1) // self.vae_time if self.vae_time > 1 else f
        return (self.vae_time == 1 or (f - 1) % self.vae_time == 0) and latent % self.frame_multiple == 0

    def frame_size(self, width: int, height: int) -> tuple[int, int]:
        scale = min(1.0, (self.area / (width * height)) ** 0.5)
        m = self.multiple
        # Round down, so no clip exceeds the area (and the token budget sized for it).
        return max(m, int(height * scale) // m * m), max(m, int(width * scale) // m * m)

    def video(
        self, width: int, height: int, num_frames: int, stride: float | None = None
    ) -> tuple[int, int, int]:
        """(frames, height, width) for a clip of num_frames source frames at width x height, taking every
        ``stride``-th frame (default: the configured stride)."""
        f = max(1, min(self.max_frames, math.ceil(int(num_frames) / (stride or self.stride))))
        while f > 1 and not self.frames_ok(f):
            f -= 1
        return (f, *self.frame_size(width, height))

    def image(self, width: int, height: int) -> tuple[int, int, int]:
        return (1, *self.frame_size(width, height))


@dataclass
class ClipSource:
    """How a row becomes a training sample: decoded pixels or cached latents, and cached text or not."""

    frames: int
    height: int
    width: int
    stride: int = 1
    use_latents: bool = False
    use_text_emb: bool = False
    native: NativeSize | None = None  # packing: each clip at its own size (frames/height/width unused)
    fps: float = 0.0  # > 0: frames at this rate from each clip's own (fps column), instead of every stride-th

    def stride_of(self, row: dict) -> float:
        """Source frames per training frame: time-true from the clip's rate when ``fps`` is set (a clip
        slower than it repeats frames), else the fixed stride."""
        if self.fps > 0 and row.get("fps"):
            return float(row["fps"]) / self.fps
        return self.stride

    @property
    def columns(self) -> list[str]:
        cols = ["clip_id", "caption"]
        cols += ["latent", "latent_shape"] if self.use_latents else ["clip_mp4"]
        cols += ["text_emb", "text_emb_shape"] if self.use_text_emb else []
        cols += ["width", "height", "num_frames"] if self.native else []
        cols += ["fps"] if self.fps > 0 else []
        return cols

    def size(self, row: dict, image: bool) -> tuple[int, int, int]:
        if self.native is None:
            return (1 if image else self.frames), self.height, self.width
        w, h = int(row.get("width") or self.width), int(row.get("height") or self.height)
        if image:
            return self.native.image(w, h)
        stride = self.stride_of(row)
        n = int(row.get("num_frames") or self.native.max_frames * stride)
        return self.native.video(w, h, n, stride)

    def sample(self, row: dict, start: float, image: bool = False) -> Sample:
        """The clip (``image``: one frame of it, at ``start`` within the clip) as a training sample."""
        cid = row["clip_id"]
        if self.use_latents:
            if row.get("latent") is None:
                raise DataError(f"clip {cid} has no cached latent: run `vidsift encode` on every shard")
            x = latent_from_row(row)
            # A causal VAE encodes the first frame alone: latent frame 0 *is* that frame's image latent.
            x = x[:, :1] if image else x
        else:
            if not row.get("clip_mp4"):
                raise DataError(f"clip {cid} has no clip_mp4 bytes")
            f, h, w = self.size(row, image)
            try:
                x = decode_clip(row["clip_mp4"], f, h, w, self.stride_of(row), start)
            except Exception as e:  # noqa: BLE001 - PyAV raises many types; all mean "bad clip bytes"
                raise DataError(f"clip {cid}: unreadable clip_mp4 ({type(e).__name__}: {e})") from e
        emb = text_from_row(row) if self.use_text_emb and row.get("text_emb") is not None else None
        return Sample(cid, x, (row.get("caption") or "").strip(), emb, self.use_latents)


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def load_image(path: str, height: int, width: int) -> torch.Tensor:
    """An image file resized to cover height x width and centre-cropped: [3, 1, H, W] in [-1, 1]."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = max(width / im.width, height / im.height)
        w, h = max(width, round(im.width * scale)), max(height, round(im.height * scale))
        im = im.resize((w, h), Image.BICUBIC)
        left, top = (w - width) // 2, (h - height) // 2
        img = np.asarray(im.crop((left, top, left + width, top + height)))
    return torch.from_numpy(img.copy()).permute(2, 0, 1)[:, None].float() / 127.5 - 1.0


class ImageFolder:
    """Images for joint image-video training: every image file under a folder (sorted), each captioned by a
    ``.txt`` file of the same name when there is one (else the null caption), at its native aspect ratio."""

    def __init__(self, folder: str, native: NativeSize) -> None:
        if not os.path.isdir(folder):
            raise DataError(f"image folder not found: {folder}")
        self.files = sorted(
            os.path.join(d, f)
            for d, _, names in os.walk(folder)
            for f in names
            if f.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not self.files:
            raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
        self.native = native

    def sample(self, i: int) -> Sample:
        from PIL import Image

        path = self.files[i % len(self.files)]
        try:
            with Image.open(path) as im:
                _, h, w = self.native.image(im.width, im.height)
            x = load_image(path, h, w)
        except Exception as e:  # noqa: BLE001 - PIL raises many types; all mean "bad image file"
            raise DataError(f"unreadable image {path} ({type(e).__name__}: {e})") from e
        txt = os.path.splitext(path)[0] + ".txt"
        caption = open(txt).read().strip() if os.path.isfile(txt) else ""
        return Sample(f"image:{os.path.basename(path)}", x, caption)


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


# ---------------------------------------------------------------------------------------------------------
# packing: clips of different sizes in rows of a fixed token budget


def first_fit_decreasing(
    sizes: list[int], budget: int, max_items: int, bins: int | None = None, first: int = 0
) -> tuple[list[list[int]], list[int]]:
    """Pack item sizes into bins of ``budget`` (at most ``max_items`` items each): items in decreasing size,
    each into the first bin with room. ``bins``: a fixed number of bins (items that fit nowhere are returned
    as left over), else as many as needed. The first ``first`` items are placed before all others (left
    overs of the previous batch: no item waits more than one batch). Returns (bins of item indices, left
    over indices)."""
    order = sorted(range(len(sizes)), key=lambda i: (i >= first, -sizes[i], i))
    packed: list[list[int]] = [[] for _ in range(bins or 0)]
    room: list[int] = [budget] * (bins or 0)
    left: list[int] = []
    for i in order:
        if sizes[i] > budget:
            raise DataError(f"a clip of {sizes[i]} tokens does not fit the packing budget of {budget} tokens")
        b = next((b for b in range(len(packed)) if room[b] >= sizes[i] and len(packed[b]) < max_items), None)
        if b is None and bins is None:
            packed.append([])
            room.append(budget)
            b = len(packed) - 1
        if b is None:
            left.append(i)
        else:
            packed[b].append(i)
            room[b] -= sizes[i]
    return packed, sorted(left)


@dataclass
class Packed:
    """Clips laid end to end in rows of ``budget`` tokens; what ``DiT.forward_packed`` takes.

    tokens [R, N, P] patchified clips then zero padding; seq_id [R, N] the token's clip slot in its row
    (-1: padding); pos [R, N, 3] its (t, h, w) patch position within its clip. ``slots[r][k]`` is the index
    (into the packed list) of the clip in slot k of row r; ``spans`` gives each clip's (row, slot, start,
    grid, shape) in list order. Per-clip tensors are [R, K] with K = max_clips fixed, so shapes are static."""

    tokens: torch.Tensor
    seq_id: torch.Tensor
    pos: torch.Tensor
    slots: list[list[int]]
    spans: list[tuple[int, int, int, tuple[int, int, int], tuple[int, ...]]]
    max_clips: int

    @property
    def real(self) -> torch.Tensor:
        return self.seq_id >= 0

    def to(self, device) -> Packed:
        return Packed(
            self.tokens.to(device), self.seq_id.to(device), self.pos.to(device), self.slots, self.spans,
            self.max_clips,
        )  # fmt: skip

    def per_clip(self, values: torch.Tensor, fill=0) -> torch.Tensor:
        """values [clips, ...] in list order -> [R, K, ...] by slot (empty slots: ``fill``)."""
        out = torch.full((len(self.slots), self.max_clips, *values.shape[1:]), fill, dtype=values.dtype)
        out = out.to(values.device)
        for i, (r, k, *_) in enumerate(self.spans):
            out[r, k] = values[i]
        return out

    def unpack(self, tokens: torch.Tensor, patch: tuple[int, int, int]) -> list[torch.Tensor]:
        """Model outputs [R, N, P] back to one [C, T, H, W] tensor per clip, in list order."""
        from vidsift.model.dit import unpatchify

        out = []
        for r, _, start, grid, shape in self.spans:
            n = grid[0] * grid[1] * grid[2]
            out.append(unpatchify(tokens[r : r + 1, start : start + n], grid, patch, shape[0])[0])
        return out


def clip_tokens(shape: tuple[int, ...], patch: tuple[int, int, int]) -> int:
    """Tokens of a [C, T, H, W] clip in (pt, ph, pw) patches."""
    return (shape[-3] // patch[0]) * (shape[-2] // patch[1]) * (shape[-1] // patch[2])


def pack(
    clips: list[torch.Tensor],
    patch: tuple[int, int, int],
    budget: int,
    max_clips: int = 16,
    rows: int | None = None,
    bins: list[list[int]] | None = None,
) -> Packed:
    """Pack clips [C, T, H, W] (any T, H, W the patch divides; images have T = 1) into rows of ``budget``
    tokens, first-fit decreasing, or by the given ``bins`` (lists of clip indices per row). ``rows``: pad to
    this many rows (a static shape). Every clip must be placed: use ``first_fit_decreasing`` with a fixed
    bin count to choose which clips join a batch. The packed tensors are on the clips' device."""
    from vidsift.model.dit import grid_positions, patchify

    sizes = [clip_tokens(c.shape, patch) for c in clips]
    if bins is None:
        bins, _ = first_fit_decreasing(sizes, budget, max_clips)
    n_rows = max(rows or 0, len(bins))
    dim = clips[0].shape[0] * patch[0] * patch[1] * patch[2]
    # on the clips' device: a trainer on a GPU packs clips it has moved (and encoded) there
    device = clips[0].device
    tokens = torch.zeros(n_rows, budget, dim, dtype=clips[0].dtype, device=device)
    seq_id = torch.full((n_rows, budget), -1, dtype=torch.long, device=device)
    pos = torch.zeros(n_rows, budget, 3, dtype=torch.long, device=device)
    spans: list = [None] * len(clips)
    slots = [list(b) for b in bins] + [[] for _ in range(n_rows - len(bins))]
    for r, members in enumerate(bins):
        start = 0
        for k, i in enumerate(members):
            c = clips[i]
            grid = (c.shape[-3] // patch[0], c.shape[-2] // patch[1], c.shape[-1] // patch[2])
            n = sizes[i]
            tokens[r, start : start + n] = patchify(c[None], patch)[0]
            seq_id[r, start : start + n] = k
            pos[r, start : start + n] = grid_positions(grid, device)  # time-major, as patchify
            spans[i] = (r, k, start, grid, tuple(c.shape))
            start += n
    return Packed(tokens, seq_id, pos, slots, spans, max_clips)


class PackedStream:
    """One reader's stream of packed batches: clips (and images) at their native sizes from a ClipStream,
    packed first-fit-decreasing into ``rows`` rows of ``budget`` tokens.

    Each batch takes the previous batch's left-over clips first, then new ones until the pool holds
    ``overfill`` times the batch's capacity (enough spread for first-fit to fill the rows) and, packed into
    exactly ``rows`` rows, leaves at most ``max_padding`` of them empty (or the pool holds 3x the capacity);
    what did not fit waits for the next batch, where it is placed first, except that a row with room left
    takes the first frames of a left-over video that fit it (the rest of that clip is dropped).
    Whether the next item is an image
    is a deterministic draw of (seed, reader, item number). The state (stream position, item count, left
    overs as references) resumes exactly; left overs are decoded again on resume."""

    def __init__(
        self,
        stream: ClipStream,
        patch: tuple[int, int, int],
        rows: int,
        budget: int,
        max_clips: int = 16,
        image_ratio: float = 0.0,
        images: ImageFolder | None = None,
        overfill: float = 1.25,
        tokens_of=None,
        max_padding: float = 0.02,
    ) -> None:
        self.stream, self.patch, self.rows, self.budget = stream, patch, rows, budget
        self.max_clips, self.image_ratio, self.images, self.overfill = (
            max_clips,
            image_ratio,
            images,
            overfill,
        )
        self.max_padding = max_padding
        # Model-input shape of a sample (the VAE's latent shape when it encodes on the fly).
        self.tokens_of = tokens_of or (lambda s: clip_tokens(s.x.shape, patch))
        self.reader = stream.reader
        self.items = 0  # items drawn so far (the image/video draw is a function of this count)
        self.images_taken = 0
        self.pending: list[tuple[tuple, Sample]] = []  # (how to reload it, the sample)

    def _draw(self) -> tuple:
        k = self.items
        self.items += 1
        is_image = random.Random(f"{self.stream.seed}/{self.reader}/image/{k}").random() < self.image_ratio
        if is_image and self.images is not None:
            self.images_taken += 1
            return ("image", self.images_taken - 1)
        ref, epoch = self.stream.next_ref()
        return ("frame" if is_image else "clip", ref, epoch)

    def _load(self, key: tuple) -> Sample:
        if key[0] == "image":
            order = list(range(len(self.images.files)))
            n = len(order)
            random.Random(f"{self.stream.seed}/{self.reader}/images/{key[1] // n}").shuffle(order)
            return self.images.sample(order[key[1] % n])
        _, ref, epoch = key
        start = zlib.crc32(f"{self.stream.seed}/{epoch}/{ref}".encode()) / 2**32
        return self.stream.source.sample(self.stream.rows.row(ref), start, image=key[0] == "frame")

    def next_batch(self) -> tuple[list[Sample], list[list[int]]]:
        """The samples of one batch and their rows (lists of sample indices), ready for ``pack``."""
        pool = self.pending
        first = len(pool)
        capacity = self.rows * self.budget
        sizes = [self.tokens_of(s) for _, s in pool]
        while True:
            if sum(sizes) >= self.overfill * capacity:
                bins, left = first_fit_decreasing(sizes, self.budget, self.max_clips, self.rows, first)
                padding = 1 - sum(sizes[i] for b in bins for i in b) / capacity
                # Rows still too empty: draw more (small clips and images fill the gaps), within limits.
                if padding <= self.max_padding or sum(sizes) >= 3 * capacity:
                    break
            key = self._draw()
            sample = self._load(key)
            pool.append((key, sample))
            sizes.append(self.tokens_of(sample))
        # Rows with room left take a left-over video shortened to fit (its first frames): a row then ends
        # in a shorter clip instead of padding. The rest of that clip is not carried over.
        room = [self.budget - sum(sizes[i] for i in b) for b in bins]
        for r in sorted(range(len(bins)), key=lambda r: -room[r]):
            for i in left:
                if len(bins[r]) >= self.max_clips or pool[i][1].x.shape[1] < 2 or room[r] <= 0:
                    continue
                short = self._shorten(pool[i][1], room[r])
                if short is not None:
                    pool[i] = (pool[i][0], short)
                    sizes[i] = self.tokens_of(short)
                    bins[r].append(i)
                    room[r] -= sizes[i]
                    left.remove(i)
                    break
        used = [i for b in bins for i in b]
        index = {i: j for j, i in enumerate(used)}
        self.pending = [pool[i] for i in left]
        return [pool[i][1] for i in used], [[index[i] for i in b] for b in bins]

    def _shorten(self, sample: Sample, room: int) -> Sample | None:
        """The sample's longest prefix of frames (a valid count) that fits ``room`` tokens, or None."""
        native = self.stream.source.native
        for f in range(sample.x.shape[1] - 1, 0, -1):
            if not sample.is_latent and native is not None and not native.frames_ok(f):
                continue
            short = dataclasses.replace(sample, x=sample.x[:, :f])
            if self.tokens_of(short) <= room:
                return short
        return None

    def state_dict(self) -> dict:
        return {
            **self.stream.state_dict(),
            "items": self.items,
            "images_taken": self.images_taken,
            "pending": [key for key, _ in self.pending],
        }

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict({k: state[k] for k in ("reader", "epoch", "pos")})
        self.items, self.images_taken = state["items"], state["images_taken"]
        self.pending = [(tuple(k), self._load(tuple(k))) for k in state["pending"]]


def collate(samples: list[Sample]) -> tuple[torch.Tensor, list[str], list[torch.Tensor | None]]:
    shapes = {tuple(s.x.shape) for s in samples}
    if len(shapes) > 1:
        raise DataError(
            f"samples of different shapes in one batch: {sorted(shapes)} (re-run `vidsift encode`)"
        )
    return torch.stack([s.x for s in samples]), [s.caption for s in samples], [s.text_emb for s in samples]
