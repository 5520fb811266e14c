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
