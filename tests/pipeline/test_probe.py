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


@pytest.fixture(scope="module")
def stretched(tmp_path_factory, ffmpeg):
    """2 s at 25 fps, 64x48 coded, sample aspect 5:1 (a pixel five times wider than tall)."""
    import subprocess

    path = tmp_path_factory.mktemp("sar") / "sar5.mp4"
    subprocess.run(
        [ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=25:duration=2",
         "-vf", "setsar=5/1", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )  # fmt: skip
    return str(path)


@pytest.mark.parametrize(
    "budget, reason, detail",
    [
        ({"max_pixels": 64 * 48}, "too_many_pixels", "320x48 = 15360 pixels > probe.max_pixels 3072"),
        ({"max_duration_s": 1.5}, "too_long", "2.0 s > probe.max_duration_s 1.5"),
        ({"max_frames": 49}, "too_many_frames", "50 frames (stated) > probe.max_frames 49"),
        ({"max_sample_aspect": 4.0}, "odd_sample_aspect", "sample aspect ratio 5 outside 1/4..4"),
    ],
)
def test_inputs_over_a_budget_are_rejected_before_decoding(stretched, budget, reason, detail):
    off = {"max_pixels": 0, "max_duration_s": 0, "max_frames": 0, "max_sample_aspect": 0}
    assert probe_video(stretched, ProbeConfig(**off))["status"] == "ok"
    row = probe_video(stretched, ProbeConfig(**(off | budget)))
    assert (row["status"], row["reason"], row["detail"]) == ("rejected", reason, detail)
    assert row["video_id"] and row["coded_width"] == 64  # the probe columns are kept


def test_default_budgets_take_ordinary_videos(videos):
    for name in ("cuts/test.mp4", "bad/video_90.mov", "bad/no-initial-keyframe.ts"):
        assert probe_video(str(videos / name))["status"] == "ok", name


def test_budget_keys_are_validated():
    with pytest.raises(ValueError, match="max_pixels must be >= 0"):
        ProbeConfig(max_pixels=-1)
    with pytest.raises(ValueError, match="max_sample_aspect must be >= 1"):
        ProbeConfig(max_sample_aspect=0.5)
