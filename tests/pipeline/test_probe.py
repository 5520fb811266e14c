from pathlib import Path

import pytest

from vidsift.pipeline.stages.probe import (
    ProbeConfig,
    clockwise_rotation,
    content_hash,
    display_size,
    probe_video,
)


def test_probe_reads_a_normal_clip(videos, catalog):
    row = probe_video(str(videos / "cuts/test.mp4"))
    entry = catalog["cuts/test.mp4"]
    assert row["status"] == "ok"
    assert f"{row['coded_width']}x{row['coded_height']}" == entry["coded_wh"]
    assert row["vcodec"] == "h264" and row["has_audio"] and row["audio_codec"] == "aac"
    assert row["fps_nominal"] == pytest.approx(entry["fps"])
    assert row["duration_s"] == pytest.approx(float(entry["duration_s"]), abs=0.1)
    assert row["num_frames"] == 168
    assert row["rotation"] == 0 and (row["display_width"], row["display_height"]) == (294, 240)
    assert len(row["content_hash"]) == 32 and row["video_id"] == row["content_hash"][:16]
    assert row["bitrate"] > 0 and row["size_bytes"] == entry["bytes"]


def test_rotation_and_sample_aspect_give_display_size(videos):
    rotated = probe_video(str(videos / "bad/video_90.mov"))
    assert rotated["rotation"] == 90
    assert (rotated["coded_width"], rotated["coded_height"]) == (568, 320)
    assert (rotated["display_width"], rotated["display_height"]) == (320, 568)
    hevc = probe_video(str(videos / "bad/no-correct-videoframe-format.mov"))
    assert hevc["rotation"] == 90 and hevc["pix_fmt"] == "yuv420p10le"
    assert (hevc["display_width"], hevc["display_height"]) == (1080, 1920)
    ts = probe_video(str(videos / "bad/no-initial-keyframe.ts"))
    assert ts["sar"] != 1.0 and ts["display_width"] != ts["coded_width"]


@pytest.mark.parametrize(
    ("name", "reason", "detail"),
    [
        ("bad/empty_result.webm", "empty_file", "0 bytes"),
        ("bad/avi_aac-only.avi", "no_video_stream", "audio"),
        ("bad/crunching.mp3", "no_video_stream", "no video stream"),
        ("bad/with-attached-pic.mp3", "no_video_stream", "cover image"),
        ("bad/init_truncated.mp4", "no_video_stream", "streams: none"),
        ("bad/unknown_sized_non_master_element.mkv", "invalid_container", "Invalid data"),
    ],
)
def test_unusable_files_are_rejected_with_a_specific_reason(videos, name, reason, detail):
    row = probe_video(str(videos / name))
    assert row["status"] == "rejected"
    assert row["reason"] == reason
    assert detail in row["detail"]


def test_missing_file_and_directory(tmp_path: Path):
    assert probe_video(str(tmp_path / "nope.mp4"))["reason"] == "file_not_found"
    assert probe_video(str(tmp_path))["reason"] == "unreadable"


def test_content_hash_is_deterministic_and_partial_mode_differs(tmp_path: Path):
    f = tmp_path / "big.bin"
    f.write_bytes(bytes(range(256)) * 100_000)  # 25.6 MB, above the partial-hash threshold
    full = content_hash(str(f))
    assert full == content_hash(str(f))
    assert content_hash(str(f), full=False) != full
    other = tmp_path / "other.bin"
    other.write_bytes(bytes(range(256)) * 99_999 + b"x" * 256)
    assert content_hash(str(other)) != full
    assert probe_video(str(f), ProbeConfig(hash_full_file=False))["reason"] == "invalid_container"


def test_rotation_helpers():
    assert clockwise_rotation(-90) == 90 and clockwise_rotation(90) == 270 and clockwise_rotation(180) == 180
    assert clockwise_rotation(None) == 0
    assert display_size(640, 352, 0.978, 0) == (626, 352)
    assert display_size(568, 320, 1.0, 90) == (320, 568)
