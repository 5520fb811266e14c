"""split_scenes: shot boundaries on real clips from ../shared/videos and on tiny synthetic clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vidsift.pipeline.stages.split_scenes import (
    Scene,
    SceneSignals,
    SplitScenesConfig,
    Transition,
    detect_transitions,
    scenes_from_transitions,
)

VIDEOS = Path(__file__).resolve().parents[2].parent / "shared" / "videos"
CFG = SplitScenesConfig()
FPS = 25.0


def _decode(path: Path) -> tuple[SceneSignals, float]:
    """The analysis pass in miniature: PyAV decode, 128-px BGR frames, one update per frame."""
    av = pytest.importorskip("av")
    if not path.exists():
        pytest.skip(f"{path} missing")
    signals = SceneSignals(CFG)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        w = 128
        h = min(256, max(16, round(w * stream.codec_context.height / stream.codec_context.width / 2) * 2))
        fps = float(stream.average_rate)
        for frame in container.decode(stream):
            signals.update(frame.reformat(width=w, height=h, format="bgr24").to_ndarray())
    return signals, fps


def _cut_frames(signals: SceneSignals, fps: float) -> list[int]:
    return [t.frame for t in detect_transitions(signals, fps, CFG) if t.frame < signals.num_frames]


def _near(found: list[int], expected: list[int], tol: int = 2) -> bool:
    return len(found) == len(expected) and all(
        abs(f - e) <= tol for f, e in zip(found, expected, strict=True)
    )


# --- real clips -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, cuts",
    [
        ("cuts/test1.mp4", [55]),  # one hard cut in a letterboxed handheld clip
        ("cuts/video1.mp4", [144, 237]),  # cartoon; a character jumping into frame at 8 is not a cut
        ("cuts/video-1080p-60fps-2s.mp4", [21]),
        ("quality/video2.mp4", []),  # talking head with big captions, no cut
    ],
)
def test_hard_cuts_on_real_clips(name: str, cuts: list[int]) -> None:
    signals, fps = _decode(VIDEOS / name)
    found = _cut_frames(signals, fps)
    assert _near(found, cuts), found


def test_countdown_leader_digits_are_not_cuts() -> None:
    # colour bars -> countdown (cut at 64), digits change at 89 and 114 (same shot), cut to black at 140
    signals, fps = _decode(VIDEOS / "cuts/test.mp4")
    found = _cut_frames(signals, fps)
    assert _near(found, [64, 140]), found


def test_fade_in_from_black_at_the_start_is_one_transition() -> None:
    signals, fps = _decode(VIDEOS / "cuts/big_buck_bunny_0_30.webm")
    transitions = detect_transitions(signals, fps, CFG)
    fades = [t for t in transitions if t.kind == "fade"]
    assert len(fades) == 1 and 0 <= fades[0].frame <= 42 and fades[0].first == 0, fades
    assert _near([t.frame for t in transitions if t.kind == "cut"], [283, 376, 551])


def test_light_changes_in_bokeh_are_not_cuts() -> None:
    signals, fps = _decode(VIDEOS / "quality/video_for_blend_modes.mp4")
    assert _cut_frames(signals, fps) == []


# --- synthetic clips --------------------------------------------------------------------------


def _textured(seed: int, n: int, h: int = 72, w: int = 128, drift: float = 0.5) -> np.ndarray:
    """n frames of a smooth random picture panning slowly right (a steady shot with some motion)."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(4, 9, 3)).astype(np.float32)
    big = cv2.resize(base, (w + 64, h), interpolation=cv2.INTER_CUBIC)
    frames = [big[:, int(i * drift) % 64 : int(i * drift) % 64 + w] for i in range(n)]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def _signals(frames: np.ndarray) -> SceneSignals:
    signals = SceneSignals(CFG)
    for f in frames:
        signals.update(f)
    return signals


def _transitions(frames: np.ndarray) -> list[Transition]:
    return detect_transitions(_signals(frames), FPS, CFG)


def test_synthetic_hard_cut() -> None:
    frames = np.concatenate([_textured(1, 60), _textured(2, 60)])
    t = _transitions(frames)
    assert [(x.frame, x.kind, x.first, x.last) for x in t] == [(60, "cut", 60, 59)]


def test_one_frame_white_flash_is_not_a_cut() -> None:
    frames = _textured(3, 100)
    frames[50] = 255
    assert _transitions(frames) == []


def test_short_occlusion_is_not_a_cut() -> None:
    frames = _textured(4, 100)
    frames[40:45, :, :100] = 20  # a dark object passes in front for five frames
    assert _transitions(frames) == []


def test_fade_to_black_and_back_is_one_fade() -> None:
    a, b = _textured(5, 60).astype(np.float32), _textured(6, 60).astype(np.float32)
    ramp = np.linspace(1, 0, 12)[:, None, None, None]
    frames = np.concatenate([a[:48], a[48:] * ramp, np.zeros((10, 72, 128, 3)), b[:12] * ramp[::-1], b[12:]])
    t = _transitions(frames.astype(np.uint8))
    assert len(t) == 1 and t[0].kind == "fade", t
    # the black starts at 60 and ends at 69; the ramps are 48..59 and 70..81
    assert 46 <= t[0].first <= 50 and 79 <= t[0].last <= 83 and t[0].first <= t[0].frame <= t[0].last + 1


def test_cut_into_black_then_fade_in_is_two_boundaries() -> None:
    a, b = _textured(5, 60).astype(np.float32), _textured(6, 60).astype(np.float32)
    ramp = np.linspace(0, 1, 12)[:, None, None, None]
    frames = np.concatenate([a, np.zeros((15, 72, 128, 3)), b[:12] * ramp, b[12:]])  # black 60..74
    t = _transitions(frames.astype(np.uint8))
    assert [(x.frame, x.kind) for x in t][:1] == [(60, "cut")]
    assert len(t) == 2 and t[1].kind == "fade" and 74 <= t[1].frame <= 78, t
    scenes, _ = scenes_from_transitions(t, len(frames), FPS, SplitScenesConfig(min_scene_s=0.1))
    # the shot before, the black shot (kept, for the brightness filter to reject), the shot after
    assert [(s.start_frame, s.end_frame) for s in scenes[:2]] == [(0, 60), (60, t[1].frame)]
    assert scenes[-1].end_frame == len(frames) and scenes[2].start_frame > t[1].frame


def test_short_black_between_shots_is_one_transition() -> None:
    frames = np.concatenate([_textured(7, 60), np.zeros((3, 72, 128, 3), np.uint8), _textured(8, 60)])
    t = _transitions(frames)
    assert len(t) == 1, t


def test_dissolve_is_one_transition() -> None:
    a, b = _textured(7, 70).astype(np.float32), _textured(8, 70).astype(np.float32)
    w = np.linspace(0, 1, 14)[1:-1, None, None, None]  # 12 blended frames, 50..61
    frames = np.concatenate([a[:50], (1 - w) * a[50:62] + w * b[:12], b[12:]]).astype(np.uint8)
    t = _transitions(frames)
    assert len(t) == 1 and t[0].kind == "dissolve", t
    assert 48 <= t[0].frame <= 63 and t[0].first <= 52 and t[0].last >= 59


def test_whole_video_black_has_no_transition() -> None:
    assert _transitions(np.zeros((30, 72, 128, 3), np.uint8)) == []


# --- scenes from transitions ------------------------------------------------------------------


def test_scenes_trim_transition_frames_and_cover_the_rest() -> None:
    cfg = SplitScenesConfig(min_scene_s=1.0, max_scene_s=100.0)
    transitions = [
        Transition(frame=100, first=100, last=99, kind="cut"),
        Transition(frame=200, first=190, last=209, kind="fade"),
        Transition(frame=215, first=215, last=214, kind="cut"),
    ]
    scenes, short = scenes_from_transitions(transitions, 300, FPS, cfg)
    assert scenes == [
        Scene(0, 100, "start", "cut"),
        Scene(100, 190, "cut", "fade"),
        Scene(215, 300, "cut", "end"),
    ]
    assert short == [Scene(210, 215, "fade", "cut")]  # 5 frames < 25
    covered = sorted(f for s in scenes + short for f in range(s.start_frame, s.end_frame))
    assert covered == [f for f in range(300) if not 190 <= f <= 209]


def test_long_scene_is_chunked_into_near_equal_pieces() -> None:
    cfg = SplitScenesConfig(min_scene_s=1.0, max_scene_s=10.0)
    scenes, short = scenes_from_transitions([], 1001, FPS, cfg)  # 40 s at 25 fps, max 250 frames
    assert short == []
    lengths = [s.end_frame - s.start_frame for s in scenes]
    assert len(scenes) == 5 and max(lengths) <= 250 and max(lengths) - min(lengths) <= 1, lengths
    assert [s.start_frame for s in scenes[1:]] == [s.end_frame for s in scenes[:-1]]
    assert scenes[0].kind_start == "start" and scenes[-1].kind_end == "end"
    assert all(s.kind_end == "chunk" for s in scenes[:-1])


def test_fade_out_at_the_end_trims_the_last_scene() -> None:
    a = _textured(9, 80).astype(np.float32)
    ramp = np.linspace(1, 0, 10)[:, None, None, None]
    frames = np.concatenate([a[:70], a[70:] * ramp, np.zeros((10, 72, 128, 3))]).astype(np.uint8)
    t = _transitions(frames)
    assert len(t) == 1 and t[0].frame == len(frames) and t[0].kind == "fade"
    scenes, short = scenes_from_transitions(t, len(frames), FPS, CFG)
    assert scenes[-1].end_frame == t[0].first and 68 <= t[0].first <= 71


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="max_scene_s"):
        SplitScenesConfig(min_scene_s=5.0, max_scene_s=2.0)
    with pytest.raises(ValueError, match="min_scene_s"):
        SplitScenesConfig(min_scene_s=0.0)
    with pytest.raises(ValueError, match="dark_level"):
        SplitScenesConfig(dark_level=300)


def test_memory_per_frame_is_bounded() -> None:
    signals = _signals(_textured(10, 300))
    stored = (
        signals.content.nbytes + signals.thumbs.nbytes + signals.luma.nbytes + signals.lit_fraction.nbytes
    )
    assert signals.num_frames == 300 and stored / 300 < 4096
