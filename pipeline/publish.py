"""Publishing a run's rows: the row type that travels through Ray Data, part files and receipts.

Video rows and clip rows travel separately. The per-video task writes its video row at once to a video part,
``OUT/_parts/<group>/<uuid>.video.parquet`` (``write_video_part``: the video table's columns plus
``rows_of_video``, how many rows the video sent in all), and sends on only its clips and one receipt row for
the video. What travels (``WORK_SCHEMA``) is the clip columns plus ``row_kind`` (``clip`` or ``video``),
``rows_of_video`` and ``part``.

The last step of the Ray Data plan, ``write_parts``, runs on the workers: each batch's clip rows go to part
files ``OUT/_parts/<group>/<uuid>.parquet`` and the driver gets only a receipt per row (a video's receipt
names its video part). When every video of a group has all its receipts, a zero-CPU ``publish_group`` task
reads the parts named by the receipts (a part a retried task wrote twice is read once), writes the group's
three tables and its ``_done`` marker (``stages/write_shards.py``), then deletes the parts.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from vidsift.pipeline import storage
from vidsift.pipeline.schema import CLIP_SCHEMA, REJECTED_SCHEMA, VIDEO_SCHEMA
from vidsift.pipeline.stages.write_shards import write_group

WORK_SCHEMA = pa.schema(
    [
        pa.field("row_kind", pa.string()),  # "clip", or "video": the receipt of a video row in ``part``
        pa.field("rows_of_video", pa.int32()),  # rows the video sent: its video row and every candidate clip
        pa.field("part", pa.string()),
        # where the batch this row came in was worked on: JSON {stage: {node: rows}}, on one row of each batch
        # per stage (null on the others), so the driver's sums count every row once
        pa.field("placement", pa.string()),
    ]
    + [pa.field(f.name, f.type) for f in REJECTED_SCHEMA]
)
VIDEO_PART_SCHEMA = pa.schema([*VIDEO_SCHEMA, pa.field("rows_of_video", pa.int32())])
CLIP_PART_SCHEMA = pa.schema([pa.field("rows_of_video", pa.int32()), *REJECTED_SCHEMA])


PARTS = "_parts"  # OUT/_parts/<group>/<part>.parquet: rows written by workers, not yet a published group
VIDEO_PART = ".video.parquet"
RECEIPT_COLUMNS = (
    "group", "source_uri", "row_kind", "rows_of_video", "reject_reason", "reject_detail", "part", "placement"
)  # fmt: skip
RECEIPT_SCHEMA = pa.schema([WORK_SCHEMA.field(c) for c in RECEIPT_COLUMNS])
# row_kind of a receipt that says a part file could not be written (its error in reject_detail): the driver
# stops the run with that error. Ray passes a worker's exception to the driver as text only, so a failed
# write travels as data, like every other failure.
WRITE_FAILED = "write_failed"


def write_failed(group: str, source_uri: str | None, error: OSError) -> dict:
    return {"row_kind": WRITE_FAILED, "group": group, "source_uri": source_uri,
            "reject_detail": f"{type(error).__name__}: {error}"}  # fmt: skip


def _part_path(out: str, group: str, suffix: str) -> str:
    import uuid

    storage.makedirs(storage.join(out, PARTS, group))
    return storage.join(out, PARTS, group, f"{uuid.uuid4().hex}{suffix}")


def write_video_part(out: str, video: dict, rows_of_video: int) -> str:
    """The per-video task's video row, written at once to its own part file; returns the file's path."""
    path = _part_path(out, video["group"], VIDEO_PART)
    row = {**video, "rows_of_video": rows_of_video}
    table = pa.Table.from_pylist([{n: row.get(n) for n in VIDEO_PART_SCHEMA.names}], schema=VIDEO_PART_SCHEMA)
    storage.write_table_atomic(table, path)
    return path


def write_parts(batch: pa.Table, out: str) -> pa.Table:
    """Ray Data UDF, the pipeline's last step: the batch's clip rows go to one part file per group, on the
    worker, and only a small receipt per row (group, video, kind, part file) goes on to the driver. So clip
    bytes never pass through the driver; it publishes a group once every video of it has all its receipts
    (``publish_group``). A video's receipt already names its part."""
    clips = pc.equal(batch["row_kind"], "clip").to_pylist()
    groups = batch["group"].to_pylist()
    parts = batch["part"].to_pylist()
    for g in sorted({x for x, c in zip(groups, clips, strict=True) if c}):
        rows = [i for i, (x, c) in enumerate(zip(groups, clips, strict=True)) if c and x == g]
        try:
            path = _part_path(out, g, ".parquet")
            storage.write_table_atomic(batch.take(rows).select(CLIP_PART_SCHEMA.names), path)
        except OSError as e:  # the output cannot be written: the driver stops the run with this error
            failed = write_failed(g, batch["source_uri"][rows[0]].as_py(), e)
            return pa.Table.from_pylist([{c: failed.get(c) for c in RECEIPT_COLUMNS}], schema=RECEIPT_SCHEMA)
        for i in rows:
            parts[i] = path
    return pa.table({c: parts if c == "part" else batch[c] for c in RECEIPT_COLUMNS}, schema=RECEIPT_SCHEMA)


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
            buf.add(row, video=part.endswith(VIDEO_PART))
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
        self.rows_seen[row["source_uri"]] += 1
        self.rows_due[row["source_uri"]] = row["rows_of_video"]

    def add(self, row: dict, video: bool) -> None:
        """A row of a part file: a video row (of a video part) or a clip row."""
        self.count(row)
        if video:
            self.videos.append({k: row[k] for k in VIDEO_SCHEMA.names})
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
