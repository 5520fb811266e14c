"""write_shards: publish one finished input group as Parquet files, then mark it done.

Reads: the clip, rejected and video rows of one group. ``OUT`` is a local path or an
``s3://`` URI (``pipeline/storage.py``). Writes ``OUT/clips/<group>.parquet``,
``OUT/rejected/<group>.parquet``, ``OUT/videos/<group>.parquet`` (zstd, snappy for column chunks under
``small_column_kib``; a row group ends at
``row_group_rows`` rows or about ``row_group_mib`` MiB, ``storage.row_group_sizes``) and then the
empty marker ``OUT/_done/<group>``. Every file is written
under a temporary name and moved into place (a rename locally; on object storage a server-side
copy, so the final key appears whole), and the marker comes last, so a run killed at
any point leaves either a complete group or one that the next run redoes from scratch.
Rows are sorted (videos by ``source_uri``, clips by source and start frame) so a group's files
are byte-for-byte the same whichever worker finished first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa

from vidsift.pipeline import storage
from vidsift.pipeline.schema import CLIP_SCHEMA, REJECTED_SCHEMA, VIDEO_SCHEMA, table_from_rows
from vidsift.pipeline.storage import Location

# Written in this order: when a finished group is rewritten (dedup, select) and the writer dies
# between two files, a moved row is in both tables rather than in neither; the rewrite that
# follows merges it by clip_id.
TABLES = {"rejected": REJECTED_SCHEMA, "videos": VIDEO_SCHEMA, "clips": CLIP_SCHEMA}


CODECS = ("zstd", "snappy", "gzip", "none")


@dataclass(frozen=True, kw_only=True)
class WriteShardsConfig:
    # A Parquet row group ends at row_group_rows rows or at about row_group_mib MiB of data (uncompressed),
    # whichever comes first: clips carry MP4 bytes, so the size bounds what a streaming reader holds
    # (about 64 clips of 2 MB), while rows without media share few row groups (each row group costs
    # a footer entry and a page per column).
    row_group_rows: int = 65536
    row_group_mib: float = 128.0  # 0: row_group_rows rows a group, whatever their size
    compression: str = "zstd"
    # A column chunk of less data than this (KiB, uncompressed) is written with small_column_compression
    # instead: Arrow sets up zstd afresh for every column chunk it writes or reads, which costs more than
    # the few KiB of a small group file's columns are worth (storage.column_codecs). 0: one codec.
    small_column_kib: float = 16.0
    small_column_compression: str = "snappy"

    def __post_init__(self) -> None:
        if self.row_group_rows < 1:
            raise ValueError(f"write_shards.row_group_rows must be >= 1, got {self.row_group_rows}")
        if self.row_group_mib < 0:
            raise ValueError(f"write_shards.row_group_mib must be >= 0, got {self.row_group_mib}")
        if self.compression not in CODECS:
            raise ValueError(
                f"write_shards.compression must be zstd, snappy, gzip or none; got {self.compression!r}"
            )
        if self.small_column_compression not in CODECS:
            raise ValueError(
                "write_shards.small_column_compression must be zstd, snappy, gzip or none; "
                f"got {self.small_column_compression!r}"
            )
        if self.small_column_kib < 0:
            raise ValueError(f"write_shards.small_column_kib must be >= 0, got {self.small_column_kib}")

    def write(self, table: pa.Table, location: Location, sync: bool = True) -> None:
        """One shard file with these settings (``storage.write_shard_table``; ``sync``: as there)."""
        storage.write_shard_table(
            table,
            location,
            compression=self.compression,
            max_rows=self.row_group_rows,
            max_bytes=int(self.row_group_mib * 2**20),
            small_compression=self.small_column_compression,
            small_bytes=int(self.small_column_kib * 1024),
            sync=sync,
        )


def remove_partial_files(out: Location) -> int:
    """Delete temporary files a killed run left behind; returns how many."""
    return storage.remove_partial_files(out)


def write_text_atomic(path: Location, text: str) -> None:
    storage.write_text_atomic(path, text)


def write_group(
    out: Location,
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
        storage.makedirs(storage.join(out, name))
        config.write(table_from_rows(rows[name], schema), storage.join(out, name, f"{group}.parquet"))
    storage.makedirs(storage.join(out, "_done"))
    storage.touch(storage.join(out, "_done", group))


def done_groups(out: Location) -> set[str]:
    return set(storage.list_names(storage.join(out, "_done")))


def write_manifest(out: Location, manifest: dict) -> None:
    write_text_atomic(
        storage.join(out, "manifest.json"), json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    )
