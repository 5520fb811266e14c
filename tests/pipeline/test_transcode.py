import io

import av
import pytest

from tests.conftest import make_numbered_clip, read_numbers
from vidsift.pipeline.stages.probe import probe_video
from vidsift.pipeline.stages.transcode import ClipCut, TranscodeConfig, output_size, transcode_clips


def _cut(clip_id, start, end, fps=25.0):
    return ClipCut(clip_id, start, end, (end - start) / fps)


def test_cuts_are_frame_accurate_between_keyframes(tmp_path):
    src = make_numbered_clip(tmp_path / "numbers.mp4", frames=120, gop=50)
    probe = probe_video(str(src))
    cuts = [_cut("a", 17, 43), _cut("b", 43, 44), _cut("c", 77, 120)]
    out = transcode_clips(str(src), probe, cuts, TranscodeConfig())
    assert read_numbers(out["a"]["clip_mp4"]) == list(range(17, 43))
    assert read_numbers(out["b"]["clip_mp4"]) == [43]
    assert read_numbers(out["c"]["clip_mp4"]) == list(range(77, 120))
    assert out["a"]["num_frames"] == 26 and out["a"]["fps"] == pytest.approx(25.0)
    assert out["a"]["duration_s"] == pytest.approx(26 / 25)
    assert out["a"]["preview_jpeg"][:2] == b"\xff\xd8"


def test_output_is_h264_mp4_with_even_display_size(videos):
    path = videos / "cuts/rotate-buck-bunny.mp4"  # 1920x1080 coded, displayed rotated
    probe = probe_video(str(path))
    out = transcode_clips(str(path), probe, [_cut("r", 5, 29, 24.0)], TranscodeConfig(max_short_side=240))[
        "r"
    ]
    assert (out["width"], out["height"]) == (240, 426)
    with av.open(io.BytesIO(out["clip_mp4"])) as c:
        s = c.streams.video[0]
        assert c.format.name.startswith("mov,mp4")
        assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"
        frames = list(c.decode(s))
    assert len(frames) == 24 and frames[0].width == 240 and frames[0].height == 426


def test_source_ending_inside_a_clip_rejects_it(tmp_path):
    src = make_numbered_clip(tmp_path / "short.mp4", frames=30)
    out = transcode_clips(str(src), probe_video(str(src)), [_cut("x", 10, 40)], TranscodeConfig())
    assert out["x"]["reject_reason"] == "transcode_source_short"


def test_output_size_never_upscales_and_is_even():
    assert output_size(1920, 1080, 480) == (854, 480)
    assert output_size(480, 640, 480) == (480, 640)
    assert output_size(315, 273, 480) == (316, 274)
    assert output_size(1, 1, 480) == (2, 2)


def test_config_validation():
    with pytest.raises(ValueError, match="preset"):
        TranscodeConfig(preset="warp9")
    with pytest.raises(ValueError, match="crf"):
        TranscodeConfig(crf=99)


def _probe_streams(path) -> dict[str, dict]:
    """ffprobe's view of a file's streams, by type (it must read the file)."""
    import json
    import subprocess

    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name,duration,sample_rate",
         "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return {s["codec_type"]: s for s in json.loads(out)["streams"]}


@pytest.fixture
def beep_clip(tmp_path, ffmpeg):
    """4 s at 30 fps with a 48 kHz mono track that is silent until exactly 2.0 s (frame 60), then a tone."""
    import subprocess

    path = tmp_path / "beep.mp4"
    subprocess.run(
        [ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=30", "-f", "lavfi",
         "-i", "aevalsrc=if(gte(t\\,2)\\,0.8*sin(2*PI*440*t)\\,0):s=48000:d=4", "-t", "4",
         "-c:v", "libx264", "-g", "60", "-bf", "2", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)],
        check=True,
    )  # fmt: skip
    return path


@pytest.mark.parametrize("span", [(45, 105), (17, 77), (61, 119)])
def test_keep_audio_cuts_the_audio_with_the_video(beep_clip, tmp_path, span):
    import numpy as np

    start, end = span
    probe = probe_video(str(beep_clip))
    assert probe["has_audio"]
    config = TranscodeConfig(keep_audio=True)
    out = transcode_clips(str(beep_clip), probe, [_cut("a", start, end, 30.0)], config)
    clip = tmp_path / "a.mp4"
    clip.write_bytes(out["a"]["clip_mp4"])
    streams = _probe_streams(clip)
    assert streams["audio"]["codec_name"] == "aac" and streams["video"]["codec_name"] == "h264"
    frame = 1 / 30
    assert abs(float(streams["audio"]["duration"]) - float(streams["video"]["duration"])) <= frame
    assert read_numbers_count(clip) == end - start  # the video is untouched: every frame still there
    # the tone starts where the source's does, relative to the clip's first frame, within one frame
    with av.open(str(clip)) as c:
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    loud = np.flatnonzero(np.abs(samples) > 0.2)
    want = 2.0 - start / 30
    if want >= 0:
        assert loud.size and abs(loud[0] / 48000 - want) <= frame, (loud[:1] / 48000, want)
    else:
        assert loud.size and loud[0] / 48000 <= frame  # the clip starts inside the tone


def read_numbers_count(path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def test_audio_is_off_by_default_and_a_silent_source_stays_video_only(beep_clip, tmp_path):
    probe = probe_video(str(beep_clip))
    out = transcode_clips(str(beep_clip), probe, [_cut("a", 10, 40, 30.0)], TranscodeConfig())
    (tmp_path / "a.mp4").write_bytes(out["a"]["clip_mp4"])
    assert set(_probe_streams(tmp_path / "a.mp4")) == {"video"}
    src = make_numbered_clip(tmp_path / "numbers.mp4", frames=60)  # no audio stream at all
    config = TranscodeConfig(keep_audio=True)
    out = transcode_clips(str(src), probe_video(str(src)), [_cut("b", 5, 30)], config)
    assert read_numbers(out["b"]["clip_mp4"]) == list(range(5, 30))
    (tmp_path / "b.mp4").write_bytes(out["b"]["clip_mp4"])
    assert set(_probe_streams(tmp_path / "b.mp4")) == {"video"}
