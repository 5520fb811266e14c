"""analyze: the one decode pass per source video that every later analysis reads from.

Reads: a probed video (``source_uri`` and probe columns). Produces an in-memory ``Analysis``:
the per-frame scene-detection signals (``split_scenes.SceneSignals``), presentation times of
every frame (variable frame rate handled by timestamps, not by nominal rate), cheap per-frame
statistics (luma mean/std, black frames, sharpness, frame difference) and a sparse set of
mid-resolution frames (rotation applied) for model stages. Nothing later decodes the source
again for analysis; ``analysis_decode_passes`` records that. Writes the video-table columns
``num_frames``, ``fps_avg``, ``is_vfr``, ``duration_s``, ``decode_errors``.

Packets the decoder rejects are counted and skipped (a few corrupt packets do not lose the
video); a container that breaks off mid-file ends the pass with what was decoded.

With a budget (``probe.decode_budget_s``) the pass runs in its own thread (``probe.run_bounded``): past the
budget it raises ``DecodeTimeout`` at the next frame, and if no frame comes because the decoder is blocked
in a read (a stalled mount, a pipe whose writer stops), the caller stops waiting at the budget all the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import av
import cv2
import numpy as np

from vidsift.pipeline import measures
from vidsift.pipeline.media import DecodeLog, decode_frames, even
from vidsift.pipeline.stages.probe import DecodeTimeout, Overran, Watch, open_input, run_bounded
from vidsift.pipeline.stages.split_scenes import SceneSignals, SplitScenesConfig

BLACK_LUMA = 16.0


@dataclass(frozen=True, kw_only=True)
class AnalyzeConfig:
    detect_width: int = 128  # width of the every-frame analysis image (height follows the aspect)
    sample_fps: float = 1.0  # mid-resolution frames kept per second for model stages
    sample_short_side: int = 256  # short side of those frames, display orientation
    jpeg_quality: int = 90  # JPEG quality of the sampled frames (frames_jpeg)
    max_decode_errors: int = 200  # more rejected packets than this ends the pass early
    frames_per_clip: int = 4  # sampled frames stored per clip (frames_jpeg) for model stages
    motion_fps: float = 3.0  # optical-flow samples per second (on the analysis image, half size)

    def __post_init__(self) -> None:
        if not 16 <= self.detect_width <= 512:
            raise ValueError(f"analyze.detect_width must be in 16..512, got {self.detect_width}")
        if self.sample_fps <= 0:
            raise ValueError(f"analyze.sample_fps must be > 0, got {self.sample_fps}")
        if not 0 < self.motion_fps <= 60:
            raise ValueError(f"analyze.motion_fps must be in (0, 60], got {self.motion_fps}")
        if not 32 <= self.sample_short_side <= 1024:
            raise ValueError(f"analyze.sample_short_side must be in 32..1024, got {self.sample_short_side}")


class SampleFrame:
    """One mid-resolution sample frame (display orientation) as the filters' ``measure_sample`` hooks see
    it: ``bgr``, ``gray`` and the full-resolution ``luma`` plane of the decoded frame (computed once, when a
    hook first asks)."""

    def __init__(self, bgr: np.ndarray, frame: av.VideoFrame) -> None:
        self.bgr, self.frame = bgr, frame

    @cached_property
    def gray(self) -> np.ndarray:
        return cv2.cvtColor(self.bgr, cv2.COLOR_BGR2GRAY)

    @cached_property
    def luma(self) -> np.ndarray:
        if self.frame.format.name in FAST_FORMATS:
            return _plane(self.frame, 0, self.frame.width, self.frame.height)
        return self.frame.reformat(format="gray").to_ndarray()


class SampleMeasures(dict):
    """What the recipe's filters measured on one sample frame, by name, plus its ``height`` and ``width``;
    attribute access reads a key (``s.sharpness``)."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class Analysis:
    num_frames: int
    times: np.ndarray  # seconds, one per decoded frame
    luma_mean: np.ndarray
    luma_std: np.ndarray
    sharpness: np.ndarray
    frame_diff: np.ndarray
    signals: SceneSignals
    sample_times: list[float] = field(default_factory=list)
    sample_jpegs: list[bytes] = field(default_factory=list)
    samples: list[SampleMeasures] = field(default_factory=list)  # one per sample_jpegs entry
    # optical flow between analysis images 1/motion_fps apart; rows: time, interval, magnitude, dx, dy (px)
    motion: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))
    detect_width: int = 128  # width of the analysis image the flow was measured on
    decode_errors: int = 0
    stopped_early: str | None = None  # why the pass ended before the end of the file
    seconds: float = 0.0

    @property
    def frame_interval(self) -> float:
        if self.num_frames < 2:
            return 0.0
        return float(np.median(np.diff(self.times)))

    def end_time(self, end_frame: int) -> float:
        """Presentation time where frame ``end_frame`` starts (one past the last frame allowed)."""
        if end_frame < self.num_frames:
            return float(self.times[end_frame])
        return float(self.times[-1] + (self.frame_interval or 0.0))

    def video_columns(self) -> dict:
        n = self.num_frames
        duration = self.end_time(n) - float(self.times[0]) if n else 0.0
        intervals = np.diff(self.times) if n > 1 else np.zeros(0)
        median = float(np.median(intervals)) if intervals.size else 0.0
        vfr = bool(median > 0 and np.mean(np.abs(intervals - median) > 0.1 * median) > 0.05)
        return {
            "num_frames": n,
            "duration_s": duration,
            "fps_avg": (n / duration) if duration > 0 else None,
            "is_vfr": vfr,
            "decode_errors": self.decode_errors,
            "analysis_decode_passes": 1,
            "time_analyze_s": self.seconds,
        }


def detect_size(coded_w: int, coded_h: int, sar: float, width: int) -> tuple[int, int]:
    aspect = coded_h / max(1.0, coded_w * (sar or 1.0))
    return width, min(256, max(16, even(width * aspect)))


def sample_size(display_w: int, display_h: int, rotation: int, short_side: int) -> tuple[int, int]:
    """Reformat size in coded orientation such that, once rotated, the short side is ``short_side``."""
    scale = min(1.0, short_side / max(1, min(display_w, display_h)))
    w, h = even(display_w * scale), even(display_h * scale)
    return (h, w) if rotation in (90, 270) else (w, h)


FAST_FORMATS = ("yuv420p", "yuvj420p")


def _plane(frame: av.VideoFrame, index: int, width: int, height: int) -> np.ndarray:
    p = frame.planes[index]
    return np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[:height, :width]


def _shrink(plane: np.ndarray, width: int, height: int) -> np.ndarray:
    # Sample at twice the target with bilinear taps, then average 2x2: close to an area filter
    # at a twentieth of its cost on 1080p planes (reading every source pixel is what costs).
    coarse = cv2.resize(plane, (width * 2, height * 2), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_AREA)


def small_bgr(frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    """The frame at analysis size as BGR. 8-bit 4:2:0 goes through its planes (fast path);
    other formats through swscale."""
    if frame.format.name in FAST_FORMATS and frame.width >= 2 * width and frame.height >= 2 * height:
        cw, ch = (frame.width + 1) // 2, (frame.height + 1) // 2
        y = _shrink(_plane(frame, 0, frame.width, frame.height), width, height)
        u = _shrink(_plane(frame, 1, cw, ch), width // 2, height // 2)
        v = _shrink(_plane(frame, 2, cw, ch), width // 2, height // 2)
        i420 = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(height * 3 // 2, width)
        code = cv2.COLOR_YUV2BGR_I420
        return cv2.cvtColor(i420, code)
    return frame.reformat(width=width, height=height, format="bgr24").to_ndarray()


def measure_sample(bgr: np.ndarray, frame: av.VideoFrame, hooks: Sequence[Callable]) -> SampleMeasures:
    """Every hook's measurements of one sample frame (the filters of the recipe own the hooks)."""
    sample = SampleFrame(bgr, frame)
    out = SampleMeasures(height=bgr.shape[0], width=bgr.shape[1])
    for hook in hooks:
        out.update(hook(sample))
    return out


def analyze_video(
    path: str,
    probe: dict,
    config: AnalyzeConfig,
    split_config: SplitScenesConfig,
    quality: bool = True,
    budget_s: float | None = None,
    hooks: Sequence[Callable] = (),
) -> Analysis:
    """One decode pass over ``path``. ``probe`` is the probe row (coded size, sar, rotation).

    ``quality``: also take the measurements the quality filters read (optical flow, and on every sample
    frame the ``measure_sample`` ``hooks`` of the recipe's filters); off when no filter runs.
    ``budget_s``: wall seconds the pass may take (``probe.decode_budget_s``); past them it raises
    ``DecodeTimeout``: at the next frame, or at the budget (plus ``BLOCKED_GRACE_S``) when the decoder is
    blocked in a read that does not return (the pass then runs in a thread that is left behind).
    """
    if budget_s is None:
        return _analyze(path, probe, config, split_config, quality, None, hooks, Watch())
    try:
        return run_bounded(
            lambda watch: _analyze(path, probe, config, split_config, quality, budget_s, hooks, watch),
            total_s=budget_s + BLOCKED_GRACE_S,
            name="vidsift-decode",
        )
    except Overran as e:
        raise DecodeTimeout(budget_s, e.steps, left_behind=True) from None


BLOCKED_GRACE_S = 1.0  # past the budget, how long the caller waits for the pass to notice it itself


def _analyze(
    path: str,
    probe: dict,
    config: AnalyzeConfig,
    split_config: SplitScenesConfig,
    quality: bool,
    budget_s: float | None,
    hooks: Sequence[Callable],
    watch: Watch,
) -> Analysis:
    start = time.perf_counter()
    dw, dh = detect_size(
        probe["coded_width"], probe["coded_height"], probe.get("sar") or 1.0, config.detect_width
    )
    rotation = probe.get("rotation") or 0
    sw, sh = sample_size(probe["display_width"], probe["display_height"], rotation, config.sample_short_side)
    signals = SceneSignals(split_config)
    times: list[float] = []
    stats: list[tuple[float, float, float, float]] = []
    sample_times: list[float] = []
    sample_jpegs: list[bytes] = []
    samples: list[SampleMeasures] = []
    motion: list[tuple[float, ...]] = []
    motion_t = 0.0
    next_sample = next_motion = None
    prev_gray = motion_gray = None
    log = DecodeLog()
    # a FIFO or device waits for data without end: PyAV's read timeout (the budget) ends such a read, as
    # ExitError or as the error a demuxer makes of it (mov: invalid data), or it stops the demux loop
    try:
        with open_input(path, timeout=budget_s) as container:
            for _, t, frame in decode_frames(
                container, log, config.max_decode_errors, probe.get("fps_nominal") or 25.0
            ):
                if budget_s is not None and time.perf_counter() - start > budget_s:
                    raise DecodeTimeout(budget_s, len(times))  # probe.decode_budget_x / decode_budget_min_s
                watch.beat()
                times.append(t)
                bgr = small_bgr(frame, dw, dh)
                signals.update(bgr)
                gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
                mean, std = cv2.meanStdDev(gray)
                sharp = cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_32F))[1][0, 0] ** 2
                diff = float(cv2.absdiff(gray, prev_gray).mean()) if prev_gray is not None else 0.0
                prev_gray = gray
                stats.append((float(mean[0, 0]), float(std[0, 0]), float(sharp), diff))
                if quality and (next_motion is None or t >= next_motion):
                    next_motion = t + 1.0 / config.motion_fps
                    # flow at half the analysis size (a quarter of the pixels, the cost that dominated
                    # the filters), reported in analysis-image pixels
                    small = cv2.pyrDown(gray)
                    if motion_gray is not None:
                        mag, dx, dy = measures.flow(motion_gray, small)
                        motion.append((t, t - motion_t, 2 * mag, 2 * dx, 2 * dy))
                    motion_gray, motion_t = small, t
                if next_sample is None or t >= next_sample:
                    next_sample = t + 1.0 / config.sample_fps
                    img = small_bgr(frame, sw, sh)
                    if rotation:
                        img = np.ascontiguousarray(np.rot90(img, k=-rotation // 90))
                    ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality])
                    if ok:
                        sample_times.append(t)
                        sample_jpegs.append(jpg.tobytes())
                        if quality:
                            samples.append(measure_sample(img, frame, hooks))
    except av.error.FFmpegError:
        if budget_s is not None and time.perf_counter() - start > budget_s:
            raise DecodeTimeout(budget_s, len(times)) from None
        raise
    if log.stopped and budget_s is not None and time.perf_counter() - start > budget_s:
        raise DecodeTimeout(budget_s, len(times))  # the read timeout interrupted a read that waited
    arr = np.asarray(stats, dtype=np.float32).reshape(-1, 4)
    return Analysis(
        num_frames=len(times),
        times=np.asarray(times, dtype=np.float64),
        luma_mean=arr[:, 0],
        luma_std=arr[:, 1],
        sharpness=arr[:, 2],
        frame_diff=arr[:, 3],
        signals=signals,
        sample_times=sample_times,
        sample_jpegs=sample_jpegs,
        samples=samples,
        motion=np.asarray(motion, dtype=np.float64).reshape(-1, 5),
        detect_width=dw,
        decode_errors=log.errors,
        stopped_early=log.stopped,
        seconds=time.perf_counter() - start,
    )


def clip_statistics(analysis: Analysis, start: int, end: int, max_frames: int) -> dict:
    """Clip-level reductions of the per-frame statistics and the sampled frames inside [start, end)."""
    sl = slice(start, end)
    n = max(1, end - start)
    diffs = analysis.frame_diff[start + 1 : end]  # the first frame's diff looks across the boundary
    t0, t1 = float(analysis.times[start]), analysis.end_time(end)
    inside = [i for i, t in enumerate(analysis.sample_times) if t0 <= t < t1]
    if not inside and analysis.sample_times:
        mid = (t0 + t1) / 2
        inside = [int(np.argmin([abs(t - mid) for t in analysis.sample_times]))]
    if len(inside) > max_frames:
        pick = np.linspace(0, len(inside) - 1, max_frames).round().astype(int)
        inside = [inside[i] for i in pick]
    return {
        "luma_mean": float(analysis.luma_mean[sl].mean()),
        "luma_std": float(analysis.luma_std[sl].mean()),
        "black_ratio": float((analysis.luma_mean[sl] < BLACK_LUMA).sum() / n),
        "sharpness": float(analysis.sharpness[sl].mean()),
        "frame_diff": float(diffs.mean()) if diffs.size else 0.0,
        "frames_jpeg": [analysis.sample_jpegs[i] for i in inside],
        "frames_s": [analysis.sample_times[i] for i in inside],
    }
