"""Cached family latents and caption embeddings for ``vidsift finetune``, written by
``vidsift encode RUN --vae diffusers:NAME``.

Layout: ``RUN/latents/<model key>/<group>.parquet``, one file per clip shard (``clips/<group>.parquet``), one
row per clip, keyed by ``clip_id``. A folder per model is the "column per model" of the cache: several
families (or checkpoints) share a run, and each is added or deleted on its own. It lives beside the clip
shards rather than in them because the clip table's columns, types and SCHEMA_VERSION are fixed, and
because adding a model must not rewrite shards that hold every clip's MP4 bytes.

A row holds what the loop needs instead of decoding and encoding the clip:

- the VAE posterior of the clip's window at its bucket size (the middle window, start 0.5, as evaluation
  uses): ``latent_mean`` and ``latent_std``, raw (before the family's normalisation), so the loop still
  draws a fresh posterior sample per step exactly as on the fly;
- the caption's text embedding as the family's pipeline computes it (trailing all-zero token rows trimmed;
  Wan zeroes its padding) and the tokenizer's attention mask, at ``text_tokens`` tokens;
- what it was encoded at, checked per clip by the loop: bucket (frames, height, width), frame stride, the
  caption's sha1, the model id and a fingerprint of the VAE and the text encoder (config and weights).

A clip whose row does not match the run (another bucket, stride, caption column or caption, text length or
model weights) is encoded on the fly; the loop counts and logs both kinds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from vidsift.model.data import DataError
from vidsift.model.finetune.families import Components, Family, Text
from vidsift.model.finetune.shards import Bucket, ByteLRU, Clip, ClipIndex, index_file
from vidsift.pipeline import storage
from vidsift.pipeline.schema import LATENTS_DIR, LATENTS_SETTINGS_KEY

WINDOW = 0.5  # where in a clip longer than its bucket the cached window starts (0 first frames, 1 last)
DTYPES = {"float16": torch.float16, "float32": torch.float32}
SETTINGS_KEY = LATENTS_SETTINGS_KEY
LOAD_KEYS = {"torch_dtype", "dtype", "transformers_version"}  # how a model was loaded, not what it is

SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("frames", pa.int32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("frame_stride", pa.int32()),
        ("window", pa.float32()),
        ("latent_mean", pa.binary()),
        ("latent_std", pa.binary()),
        ("latent_shape", pa.list_(pa.int32())),
        ("dtype", pa.string()),
        ("caption_sha", pa.string()),
        ("text_emb", pa.binary()),
        ("text_emb_shape", pa.list_(pa.int32())),
        ("text_mask", pa.binary()),
        ("text_tokens", pa.int32()),
        ("model", pa.string()),
        ("family", pa.string()),
        ("vae_sha", pa.string()),
        ("text_sha", pa.string()),
    ]
)
SMALL = ["clip_id", "frames", "height", "width", "frame_stride", "window", "caption_sha", "text_tokens",
         "vae_sha", "text_sha"]  # fmt: skip
VALUES = ["latent_mean", "latent_std", "latent_shape", "dtype", "text_emb", "text_emb_shape", "text_mask"]


def model_key(model: str) -> str:
    """The cache folder name of a model: readable, safe on any file system, and distinct per model id (a
    local folder is identified by its real path)."""
    local = os.path.isdir(model)
    ident = os.path.realpath(model) if local else model
    readable = os.path.basename(ident.rstrip("/")) if local else ident
    readable = re.sub(r"[^A-Za-z0-9._-]+", "--", readable).strip("-.")[:80] or "model"
    return f"{readable}-{hashlib.sha1(ident.encode()).hexdigest()[:8]}"


def cache_folder(data: str, model: str) -> str:
    return storage.join(data, LATENTS_DIR, model_key(model))


def fingerprint(module: torch.nn.Module) -> str:
    """sha1 of a model's config (without ``_``-keys such as the path it came from) and of its first and last
    weight tensors in bf16 (the same whether the model was loaded in fp32 or bf16): a changed config or
    re-initialised weights under the same name give another value."""
    h = hashlib.sha1()
    raw = module.config.to_dict() if hasattr(module.config, "to_dict") else dict(module.config)
    config = {k: v for k, v in raw.items() if not k.startswith("_") and k not in LOAD_KEYS}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    params = list(module.parameters())
    for p in (params[0], params[-1]) if params else ():
        h.update(p.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def caption_sha(caption: str) -> str:
    return hashlib.sha1(caption.encode()).hexdigest()


def _bytes(t: torch.Tensor, dtype: torch.dtype) -> bytes:
    return np.ascontiguousarray(t.detach().to("cpu", dtype).numpy()).tobytes()


def _tensor(data: bytes, shape: list[int], dtype: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape).copy())


@torch.no_grad()
def encode_group(
    path: str,
    out_path: str,
    family: Family,
    c: Components,
    settings: dict,
) -> dict:
    """Encode the usable clips of one clip shard and write their cache file (atomically); returns counts.

    ``settings`` (``group_settings``: model, buckets, frame_stride, text_tokens, caption_column, dtype) are
    stored in the file's metadata, so a rerun skips a group written with the same settings."""
    buckets = [tuple(b) for b in settings["buckets"]]
    index = ClipIndex([path], buckets, settings["frame_stride"])
    # crop: every clip long enough for a bucket is cached; a `drop` run only uses fewer of them.
    clips = sorted(index_file(index, 0, settings["caption_column"], "crop", 0.0), key=lambda x: x.clip_id)
    dtype = DTYPES[settings["dtype"]]
    vae_sha, text_sha = fingerprint(c.vae), fingerprint(c.text_encoder)
    rows = []
    for clip in clips:
        try:
            pixels = index.pixels(clip, WINDOW)[None]
        except DataError:
            index.dropped["unreadable"] += 1  # training reports it by clip id when it draws it
            continue
        mean, std = family.encode_posterior(c, pixels)
        text = family.encode_text(c, [clip.caption], settings["text_tokens"])
        emb, mask = text.emb[0], text.mask[0]
        nonzero = (emb != 0).any(dim=-1).nonzero()
        emb = emb[: int(nonzero[-1]) + 1 if len(nonzero) else 0]  # trailing zero rows (Wan's padding)
        f, h, w = buckets[clip.bucket]
        rows.append(
            {
                "clip_id": clip.clip_id, "frames": f, "height": h, "width": w,
                "frame_stride": settings["frame_stride"], "window": WINDOW,
                "latent_mean": _bytes(mean[0], dtype), "latent_std": _bytes(std[0], dtype),
                "latent_shape": list(mean.shape[1:]), "dtype": settings["dtype"],
                "caption_sha": caption_sha(clip.caption),
                "text_emb": _bytes(emb, dtype), "text_emb_shape": list(emb.shape),
                "text_mask": _bytes(mask, torch.uint8), "text_tokens": int(mask.shape[0]),
                "model": settings["model"], "family": family.name, "vae_sha": vae_sha, "text_sha": text_sha,
            }
        )  # fmt: skip
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    table = table.replace_schema_metadata({SETTINGS_KEY: json.dumps(settings, sort_keys=True).encode()})
    storage.makedirs(out_path.rpartition("/")[0])
    # Small row groups: the loop reads one row group of these large values at a time.
    storage.write_table_atomic(table, out_path, compression="zstd", row_group_size=4)
    return {"rows": len(rows), "dropped": dict(index.dropped)}


def group_settings(
    model: str, buckets: list[Bucket], stride: int, text_tokens: int, caption_column: str, dtype: str
) -> dict:
    return {
        "model": model,
        "buckets": [list(b) for b in buckets],
        "frame_stride": stride,
        "text_tokens": text_tokens,
        "caption_column": caption_column,
        "dtype": dtype,
    }


def written_settings(path: str) -> dict | None:
    """The settings a cache file was written with; None when there is no (readable) file."""
    try:
        meta = storage.read_parquet_metadata(path).metadata or {}
        return json.loads(meta[SETTINGS_KEY])
    except (OSError, KeyError, ValueError):
        return None


@dataclass
class Entry:
    mean: torch.Tensor  # raw posterior mean [C, T, h, w]
    std: torch.Tensor
    text: torch.Tensor  # [text_tokens, D], zero rows restored
    mask: torch.Tensor  # [text_tokens], int64


@dataclass
class LatentCache:
    """The cache rows of one model that match a run's clips; values read one row group at a time, turned
    into tensors once and kept up to ``shards.CACHE_BYTES`` (least recently used row groups go first)."""

    folder: str
    files: list[str]
    refs: dict[str, tuple[int, int, int]]  # clip_id -> (file, row group, row)
    report: dict
    loaded: ByteLRU = field(default_factory=ByteLRU)  # (file, row group) -> its rows as Entry values

    def get(self, clip: Clip) -> Entry | None:
        """The clip's entry (its tensors are shared between calls: read them, never write to them)."""
        ref = self.refs.get(clip.clip_id)
        if ref is None:
            return None
        return self.loaded.get(ref[:2], lambda: self._read_group(*ref[:2]))[ref[2]]

    def _read_group(self, file: int, group: int) -> tuple[list[Entry], int]:
        rows = storage.open_parquet(self.files[file]).read_row_group(group, columns=VALUES).to_pylist()
        entries = [_entry(row) for row in rows]
        size = sum(t.nbytes for e in entries for t in (e.mean, e.std, e.text, e.mask))
        return entries, size


def _entry(row: dict) -> Entry:
    shape = [int(s) for s in row["latent_shape"]]
    mask = torch.from_numpy(np.frombuffer(row["text_mask"], dtype=np.uint8).astype(np.int64))
    emb = _tensor(row["text_emb"], [int(s) for s in row["text_emb_shape"]], row["dtype"]).float()
    text = torch.zeros(mask.shape[0], emb.shape[1])
    text[: emb.shape[0]] = emb
    return Entry(
        _tensor(row["latent_mean"], shape, row["dtype"]),
        _tensor(row["latent_std"], shape, row["dtype"]),
        text,
        mask,
    )


def open_cache(
    data: str, model: str, index: ClipIndex, c: Components, tokens: int
) -> tuple[LatentCache | None, dict]:
    """The cache of ``model`` in run ``data``, restricted to rows that fit this run's clips exactly;
    (None, report) when there is none. The report counts the clips found and, by reason, those that are not
    usable (``missing``, ``size``, ``caption``, ``text_tokens``, ``weights``)."""
    folder = cache_folder(data, model)
    files = storage.parquet_files(folder) if storage.is_remote(folder) or os.path.isdir(folder) else []
    report: dict = {"folder": folder, "clips": 0, "not_used": {}}
    if not files:
        return None, report
    by_id = {clip.clip_id: clip for clip in index.clips}
    vae_sha, text_sha = fingerprint(c.vae), fingerprint(c.text_encoder)
    refs: dict[str, tuple[int, int, int]] = {}
    reasons: Counter = Counter()
    for fi, path in enumerate(files):
        pf = storage.open_parquet(path)
        for g in range(pf.metadata.num_row_groups):
            for r, row in enumerate(pf.read_row_group(g, columns=SMALL).to_pylist()):
                clip = by_id.get(row["clip_id"])
                if clip is None:
                    continue  # a clip this run does not use (dropped, or not in the run any more)
                reason = _mismatch(row, clip, index, tokens, vae_sha, text_sha)
                if reason:
                    reasons[reason] += 1
                else:
                    refs[clip.clip_id] = (fi, g, r)
    reasons["missing"] = len(by_id) - len(refs) - sum(reasons.values())
    report.update(clips=len(refs), not_used={k: v for k, v in sorted(reasons.items()) if v})
    return (LatentCache(folder, files, refs, report) if refs else None), report


def _mismatch(row: dict, clip: Clip, index: ClipIndex, tokens: int, vae_sha: str, text_sha: str) -> str:
    if (row["frames"], row["height"], row["width"]) != index.buckets[clip.bucket]:
        return "size"
    if row["frame_stride"] != index.stride or row["window"] != WINDOW:
        return "size"
    if row["caption_sha"] != caption_sha(clip.caption):
        return "caption"
    if row["text_tokens"] != tokens:
        return "text_tokens"
    if row["vae_sha"] != vae_sha or row["text_sha"] != text_sha:
        return "weights"
    return ""


def describe(report: dict) -> str:
    """One log line about the cache a run uses."""
    if not report["clips"]:
        extra = f" ({report['not_used']} do not fit this run)" if report["not_used"] else ""
        return f"cached latents: none usable in {report['folder']}{extra}; encoding every clip on the fly"
    extra = f"; encoded on the fly: {report['not_used']}" if report["not_used"] else ""
    return f"cached latents: {report['clips']} clips from {report['folder']}{extra}"


def text_batch(entries: list[Entry]) -> Text:
    return Text(torch.stack([e.text for e in entries]), torch.stack([e.mask for e in entries]))
