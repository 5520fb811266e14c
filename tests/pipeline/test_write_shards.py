import pyarrow.parquet as pq
import pytest

from vidsift.pipeline.stages.write_shards import (
    WriteShardsConfig,
    done_groups,
    remove_partial_files,
    write_group,
)


def _clip(uri, start, cid):
    return {"clip_id": cid, "video_id": "v", "source_uri": uri, "group": "g1", "start_frame": start}


def test_group_files_then_marker_sorted(tmp_path):
    clips = [_clip("b.mp4", 0, "c3"), _clip("a.mp4", 50, "c2"), _clip("a.mp4", 0, "c1")]
    videos = [{"source_uri": u, "group": "g1", "status": "ok"} for u in ("b.mp4", "a.mp4")]
    write_group(tmp_path, "g1", clips, [], videos, WriteShardsConfig(row_group_rows=2))
    table = pq.read_table(tmp_path / "clips/g1.parquet")
    assert table.column("clip_id").to_pylist() == ["c1", "c2", "c3"]
    meta = pq.ParquetFile(tmp_path / "clips/g1.parquet").metadata
    assert meta.num_row_groups == 2
    write_group(
        tmp_path / "one", "g1", clips, [], videos, WriteShardsConfig(row_group_rows=2, small_column_kib=0)
    )
    meta = pq.ParquetFile(tmp_path / "one/clips/g1.parquet").metadata
    assert {meta.row_group(0).column(i).compression for i in range(meta.num_columns)} == {"ZSTD"}
    assert pq.read_table(tmp_path / "videos/g1.parquet").column("source_uri").to_pylist() == [
        "a.mp4",
        "b.mp4",
    ]
    assert pq.read_table(tmp_path / "rejected/g1.parquet").num_rows == 0
    assert done_groups(tmp_path) == {"g1"}


def test_small_column_chunks_use_the_cheap_codec(tmp_path):
    """zstd where a column chunk holds >= small_column_kib of data, snappy below (Arrow sets zstd up afresh
    per column chunk); every codec reads back the same rows."""
    clips = [{**_clip("a.mp4", i, f"c{i:03d}"), "clip_mp4": bytes([i]) * 1000} for i in range(40)]
    write_group(tmp_path, "g1", clips, [], [], WriteShardsConfig(small_column_kib=16))
    meta = pq.ParquetFile(tmp_path / "clips/g1.parquet").metadata.row_group(0)
    codec = {meta.column(i).path_in_schema: meta.column(i).compression for i in range(meta.num_columns)}
    assert codec["clip_mp4"] == "ZSTD"  # 40 KB of media
    assert codec["clip_id"] == "SNAPPY" and codec["dedup_hashes.list.element"] == "SNAPPY"
    table = pq.read_table(tmp_path / "clips/g1.parquet")
    assert table.column("clip_mp4").to_pylist() == [c["clip_mp4"] for c in clips]
    with pytest.raises(ValueError, match="small_column_compression"):
        WriteShardsConfig(small_column_compression="brotli")
    with pytest.raises(ValueError, match="small_column_kib"):
        WriteShardsConfig(small_column_kib=-1)


def test_every_table_is_on_disk_before_the_marker(tmp_path, fsynced):
    """fsync order on a local disk: each table file (before its rename), the folder of the rename, and only
    then the marker's folder, so a crash never leaves a marker for data the disk does not hold."""
    synced = fsynced
    write_group(tmp_path, "g1", [_clip("a.mp4", 0, "c1")], [], [], WriteShardsConfig())
    tables = [i for i, p in enumerate(synced) if ".g1.parquet.tmp-" in p]
    assert len(tables) == 3  # clips, rejected, videos: each fsynced before it is renamed into place
    assert synced[-1] == str(tmp_path / "_done") and max(tables) < len(synced) - 1


def test_partial_files_are_hidden_and_cleaned(tmp_path):
    (tmp_path / "clips").mkdir()
    partial = tmp_path / "clips" / ".g7.parquet.tmp-1234"
    partial.write_bytes(b"half")
    assert list((tmp_path / "clips").glob("*.parquet")) == []
    assert remove_partial_files(tmp_path) == 1 and not partial.exists()


def test_config_validation():
    with pytest.raises(ValueError, match="compression"):
        WriteShardsConfig(compression="lz5")


def test_workers_write_parts_and_a_group_is_published_from_the_parts_it_has_receipts_for(tmp_path):
    """Rows go from the workers to part files (``write_parts``), only receipts to the driver; publishing reads
    the parts named in the receipts, so a second copy a retried task wrote is never read twice."""
    import dataclasses

    import pyarrow as pa

    from tests.conftest import make_numbered_clip
    from vidsift.pipeline.cli import _default_recipe
    from vidsift.pipeline.dataflow import video_task
    from vidsift.pipeline.publish import PARTS, RECEIPT_COLUMNS, publish_group, write_parts

    src = make_numbered_clip(tmp_path / "v.mp4", frames=60, cut_every=20)
    recipe = _default_recipe(["split_scenes.min_scene_s=0.5"])
    no_dup = pa.array([None], pa.string())
    item = pa.table({"source_uri": [str(src)], "group": ["g000000"], "duplicate_of": no_dup})
    out = tmp_path / "out"
    rows = video_task(item, recipe.to_dict(), str(out))
    assert rows.num_rows >= 3  # the video's receipt and its clips
    # the video row travels separately: the per-video task already wrote it to its own part
    (video_part,) = (out / PARTS / "g000000").glob("*.video.parquet")
    assert rows.filter(pa.compute.equal(rows["row_kind"], "video"))["part"].to_pylist() == [str(video_part)]
    assert "video__status" not in rows.column_names and pq.read_table(video_part)["status"][0].as_py() == "ok"
    receipts = write_parts(rows, str(out))
    write_parts(rows, str(out))  # a retried task's second copy: no receipt reaches the driver
    assert receipts.column_names == list(RECEIPT_COLUMNS) and "clip_mp4" not in receipts.column_names
    assert len(list((out / PARTS / "g000000").glob("*.parquet"))) == 3  # the video part, two clip parts
    parts = sorted(set(receipts["part"].to_pylist()))
    config = dataclasses.asdict(recipe.stage("write_shards"))
    accepted = publish_group(str(out), "g000000", [str(src)], parts, config)
    clips = pq.read_table(out / "clips/g000000.parquet")
    assert accepted == clips.num_rows >= 2 and len(set(clips["clip_id"].to_pylist())) == clips.num_rows
    assert pq.read_table(out / "videos/g000000.parquet").num_rows == 1
    assert done_groups(out) == {"g000000"} and not (out / PARTS / "g000000").exists()
    # Ray runs the task again if its worker dies after the group was written: nothing changes
    assert publish_group(str(out), "g000000", [str(src)], parts, config) == accepted
    with pytest.raises(RuntimeError, match="do not hold every row"):  # a receipt's part is missing
        publish_group(str(out), "g000001", [str(src)], [], config)


def test_parquet_writer_atomic_publishes_whole_files_only(tmp_path) -> None:
    import os

    import pyarrow as pa

    from vidsift.pipeline import storage

    t = pa.table({"x": [1, 2, 3]})
    with storage.parquet_writer_atomic(tmp_path / "a.parquet", t.schema) as out:
        out.write_table(t)
        assert sorted(p.name for p in tmp_path.iterdir()) == [f".a.parquet.tmp-{os.getpid()}"]
    assert pq.read_table(tmp_path / "a.parquet").equals(t)
    with pytest.raises(RuntimeError), storage.parquet_writer_atomic(tmp_path / "b.parquet", t.schema) as out:
        out.write_table(t)
        raise RuntimeError("writer died")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet"]  # no b.parquet, no partial file


def _sizes(path):
    md = pq.ParquetFile(path).metadata
    return [md.row_group(i).num_rows for i in range(md.num_row_groups)]


def test_row_groups_are_bounded_by_bytes_and_rows(tmp_path):
    """Clips with MP4 bytes get row groups of about row_group_mib; rows without media share one row
    group; row_group_rows caps the rows; row_group_mib 0 is a fixed row count. Every row is written once,
    in order."""
    import os

    clips = [_clip("a.mp4", i, f"c{i:04d}") for i in range(300)]
    for i, c in enumerate(clips):
        c["clip_mp4"] = os.urandom(40_000 if i < 100 else 10)  # a large part, then a small one
    videos = [{"source_uri": "a.mp4", "group": "g1", "status": "ok"}]
    write_group(tmp_path, "g1", clips, [], videos, WriteShardsConfig(row_group_mib=1))
    sizes = _sizes(tmp_path / "clips/g1.parquet")
    assert sum(sizes) == 300 and len(sizes) == 5
    assert max(sizes[:3]) <= 27 and min(sizes[:3]) >= 24  # 1 MiB / 40 KB: about 26 clips a group
    assert sizes[-1] > 64  # the small rows after them fill the last two row groups
    table = pq.read_table(tmp_path / "clips/g1.parquet")
    assert table.column("clip_id").to_pylist() == [c["clip_id"] for c in clips]
    assert table.column("clip_mp4").to_pylist() == [c["clip_mp4"] for c in clips]

    write_group(tmp_path / "capped", "g1", clips, [], videos, WriteShardsConfig(row_group_rows=64))
    assert max(_sizes(tmp_path / "capped/clips/g1.parquet")) == 64
    write_group(
        tmp_path / "rows", "g1", clips, [], videos, WriteShardsConfig(row_group_rows=7, row_group_mib=0)
    )
    assert set(_sizes(tmp_path / "rows/clips/g1.parquet")[:-1]) == {7}
    write_group(tmp_path / "small", "g1", clips[100:], [], videos, WriteShardsConfig())
    assert _sizes(tmp_path / "small/clips/g1.parquet") == [200]


def test_a_row_larger_than_the_budget_is_a_group_of_its_own():
    import pyarrow as pa

    from vidsift.pipeline.storage import row_group_sizes

    t = pa.table({"b": [b"x" * 100, b"x" * 5000, b"x" * 100, b"x" * 100]})
    assert row_group_sizes(t, max_rows=100, max_bytes=1000) == [1, 1, 2]
    assert row_group_sizes(t.slice(0, 0), max_rows=100, max_bytes=1000) == []


def test_row_group_mib_must_not_be_negative():
    with pytest.raises(ValueError, match="row_group_mib must be >= 0"):
        WriteShardsConfig(row_group_mib=-1)
