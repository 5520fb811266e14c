import pyarrow.parquet as pq
import pytest

from pipeline.stages.write_shards import WriteShardsConfig, done_groups, remove_partial_files, write_group


def _clip(uri, start, cid):
    return {"clip_id": cid, "video_id": "v", "source_uri": uri, "group": "g1", "start_frame": start}


def test_group_files_then_marker_sorted_and_zstd(tmp_path):
    clips = [_clip("b.mp4", 0, "c3"), _clip("a.mp4", 50, "c2"), _clip("a.mp4", 0, "c1")]
    videos = [{"source_uri": u, "group": "g1", "status": "ok"} for u in ("b.mp4", "a.mp4")]
    write_group(tmp_path, "g1", clips, [], videos, WriteShardsConfig(row_group_rows=2))
    table = pq.read_table(tmp_path / "clips/g1.parquet")
    assert table.column("clip_id").to_pylist() == ["c1", "c2", "c3"]
    meta = pq.ParquetFile(tmp_path / "clips/g1.parquet").metadata
    assert meta.num_row_groups == 2 and meta.row_group(0).column(0).compression == "ZSTD"
    assert pq.read_table(tmp_path / "videos/g1.parquet").column("source_uri").to_pylist() == [
        "a.mp4",
        "b.mp4",
    ]
    assert pq.read_table(tmp_path / "rejected/g1.parquet").num_rows == 0
    assert done_groups(tmp_path) == {"g1"}


def test_partial_files_are_hidden_and_cleaned(tmp_path):
    (tmp_path / "clips").mkdir()
    partial = tmp_path / "clips" / ".g7.parquet.tmp-1234"
    partial.write_bytes(b"half")
    assert list((tmp_path / "clips").glob("*.parquet")) == []
    assert remove_partial_files(tmp_path) == 1 and not partial.exists()


def test_config_validation():
    with pytest.raises(ValueError, match="compression"):
        WriteShardsConfig(compression="lz5")
