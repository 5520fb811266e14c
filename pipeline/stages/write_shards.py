"""write_shards: publish one finished input group as Parquet files, then mark it done.

Reads: the clip, rejected and video rows of one group. Writes ``OUT/clips/<group>.parquet``,
``OUT/rejected/<group>.parquet``, ``OUT/videos/<group>.parquet`` (zstd, row groups of
``row_group_rows``) and then the empty marker ``OUT/_done/<group>``. Every file is written
under a temporary name and renamed into place, and the marker comes last, so a run killed at
any point leaves either a complete group or one that the next run redoes from scratch.
Rows are sorted (videos by ``source_uri``, clips by source and start frame) so a group's files
are byte-for-byte the same whichever worker finished first.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.schema import CLIP_SCHEMA, REJECTED_SCHEMA, VIDEO_SCHEMA, table_from_rows

# Written in this order: when a finished group is rewritten (dedup, select) and the writer dies
# between two files, a moved row is in both tables rather than in neither; the rewrite that
# follows merges it by clip_id.
TABLES = {"rejected": REJECTED_SCHEMA, "videos": VIDEO_SCHEMA, "clips": CLIP_SCHEMA}


@dataclass(frozen=True, kw_only=True)
class WriteShardsConfig:
    row_group_rows: int = 64  # rows per Parquet row group: clips carry MP4 bytes, so keep groups small
    compression: str = "zstd"

    def __post_init__(self) -> None:
        if self.row_group_rows < 1:
            raise ValueError(f"write_shards.row_group_rows must be >= 1, got {self.row_group_rows}")
        if self.compression not in ("zstd", "snappy", "gzip", "none"):
            raise ValueError(
                f"write_shards.compression must be zstd, snappy, gzip or none; got {self.compression!r}"
            )


def _tmp_name(path: Path) -> Path:
    # hidden and not ending in .parquet: no reader (glob or pyarrow dataset) picks up a partial file
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove_partial_files(out: Path) -> int:
    """Delete temporary files a killed run left behind; returns how many."""
    stale = [p for p in out.glob("**/.*.tmp-*") if p.is_file()]
    for p in stale:
        p.unlink()
    return len(stale)


def _atomic_write_table(table: pa.Table, path: Path, config: WriteShardsConfig) -> None:
    tmp = _tmp_name(path)
    pq.write_table(table, tmp, compression=config.compression, row_group_size=config.row_group_rows)
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = _tmp_name(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def write_group(
    out: Path,
    group: str,
    clips: list[dict],
    rejected: list[dict],
    videos: list[dict],
    config: WriteShardsConfig,
) -> None:
    clip_key = lambda r: (r["source_uri"], r["start_frame"] or 0, r["clip_id"])  # noqa: E731
    rows = {
        "clips": sorted(clips, key=clip_key),
        "rejected": sorted(rejected, key=clip_key),
        "videos": sorted(videos, key=lambda r: r["source_uri"]),
    }
    for name, schema in TABLES.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        _atomic_write_table(table_from_rows(rows[name], schema), out / name / f"{group}.parquet", config)
    (out / "_done").mkdir(exist_ok=True)
    (out / "_done" / group).touch()


def done_groups(out: Path) -> set[str]:
    d = out / "_done"
    return {p.name for p in d.iterdir()} if d.is_dir() else set()


def write_manifest(out: Path, manifest: dict) -> None:
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=False) + "\n")
