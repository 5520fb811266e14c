"""Publishing a run's rows: the flat row type that travels through Ray Data, part files and receipts.

One flat row type (``WORK_SCHEMA``) travels through Ray Data: a candidate clip (clip + reject columns), or
the one row per video that carries the video table's columns (prefixed ``video__``) and how many rows it
sent. ``placement``: JSON {stage: Ray node id} of where the row was processed (bookkeeping, not a shard
column).

The last step of the Ray Data plan, ``write_parts``, runs on the workers: each batch's rows go to part files
``OUT/_parts/<group>/<uuid>.parquet`` and the driver gets only a receipt per row. When every video of a
group is in, a zero-CPU ``publish_group`` task reads the parts named by the receipts (a part a retried task
wrote twice is read once), writes the group's three tables and its ``_done`` marker
(``stages/write_shards.py``), then deletes the parts.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow as pa

from vidsift.pipeline import storage
from vidsift.pipeline.schema import CLIP_SCHEMA, REJECTED_SCHEMA, VIDEO_SCHEMA
from vidsift.pipeline.stages.write_shards import write_group

VIDEO_PREFIX = "video__"
WORK_SCHEMA = pa.schema(
    [
        pa.field("row_kind", pa.string()),
        pa.field("rows_of_video", pa.int32()),
        pa.field("placement", pa.string()),
    ]
    + [pa.field(f.name, f.type) for f in REJECTED_SCHEMA]
    + [pa.field(VIDEO_PREFIX + f.name, f.type) for f in VIDEO_SCHEMA]
)


PARTS = "_parts"  # OUT/_parts/<group>/<part>.parquet: rows written by workers, not yet a published group
RECEIPT_COLUMNS = ("group", "source_uri", "row_kind", "rows_of_video", "reject_reason", "placement", "part")


def write_parts(batch: pa.Table, out: str) -> pa.Table:
    """Ray Data UDF, the pipeline's last step: the batch's rows go to one part file per group, on the
    worker, and only a small receipt per row (group, video, kind, part file, placement) goes on to the
    driver. So clip bytes never pass through the driver; it publishes a group once every video of it
    has all its receipts (``publish_group``)."""
    import uuid

    def either(name: str) -> list[str]:  # clip rows carry it plain, video rows prefixed
        clip, video = batch[name].to_pylist(), batch[VIDEO_PREFIX + name].to_pylist()
        return [c or v for c, v in zip(clip, video, strict=True)]

    groups, uris = either("group"), either("source_uri")
    parts = [""] * len(groups)
    for g in sorted(set(groups)):
        rows = [i for i, x in enumerate(groups) if x == g]
        path = storage.join(out, PARTS, g, f"{uuid.uuid4().hex}.parquet")
        storage.makedirs(storage.join(out, PARTS, g))
        storage.write_table_atomic(batch.take(rows), path)
        for i in rows:
            parts[i] = path
    columns = {"group": groups, "source_uri": uris, "part": parts}
    return pa.table({c: columns[c] if c in columns else batch[c] for c in RECEIPT_COLUMNS})


def publish_group(out: str, group: str, files: list[str], parts: list[str], config: dict) -> int:
    """Ray task: read a finished group's part files (only those the driver has receipts for: a part a
    retried task wrote twice is read once), write the group's three tables and its ``_done`` marker, then
    delete the parts. Returns the group's accepted clips."""
    from vidsift.pipeline.stages.write_shards import WriteShardsConfig

    if storage.exists(storage.join(out, "_done", group)):  # a retry of this task after it had finished
        return len(storage.read_table(storage.join(out, "clips", f"{group}.parquet"), ["clip_id"]))
    buf = GroupBuffer(expected=set(files))
    for part in sorted(set(parts)):
        for row in storage.read_table(part).to_pylist():
            buf.add(row)
    if not buf.complete():
        raise RuntimeError(f"group {group}: its part files do not hold every row of its videos")
    write_group(out, group, buf.clips, buf.rejected, buf.accounted_videos(), WriteShardsConfig(**config))
    storage.remove_tree(storage.join(out, PARTS, group))
    return len(buf.clips)


@dataclass
class GroupBuffer:
    expected: set[str]
    rows_seen: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    rows_due: dict[str, int] = field(default_factory=dict)
    videos: list[dict] = field(default_factory=list)
    clips: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)

    def count(self, row: dict) -> None:
        """Completion bookkeeping only (the driver, from receipts)."""
        uri = row["source_uri"] or row.get(VIDEO_PREFIX + "source_uri")
        self.rows_seen[uri] += 1
        self.rows_due[uri] = row["rows_of_video"]

    def add(self, row: dict) -> None:
        self.count(row)
        if row["row_kind"] == "video":
            self.videos.append(
                {k[len(VIDEO_PREFIX) :]: v for k, v in row.items() if k.startswith(VIDEO_PREFIX)}
            )
        elif row["reject_reason"]:
            self.rejected.append({k: row[k] for k in REJECTED_SCHEMA.names})
        else:
            self.clips.append({k: row[k] for k in CLIP_SCHEMA.names})

    def complete(self) -> bool:
        return all(u in self.rows_due and self.rows_seen[u] == self.rows_due[u] for u in self.expected)

    def accounted_videos(self) -> list[dict]:
        """Video rows with their final accepted-clip counts (clip stages may have rejected some)."""
        from vidsift.pipeline.process import account_group

        return account_group(self.videos, self.clips, self.rejected)
