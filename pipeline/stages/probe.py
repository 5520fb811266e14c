"""probe: read a file's container and stream metadata and its content hash, without decoding.

Reads: ``source_uri``. Writes the probe columns of the video table (see ``pipeline/schema.py``):
container, codec, coded and display size (rotation and sample aspect applied), nominal and
average frame rate, duration, frame count as the container states it, audio, bitrate, content
hash and ``video_id``. A file that cannot be a usable video gets ``status = "rejected"`` with a
specific ``reason``: ``file_not_found``, ``unreadable``, ``empty_file``, ``invalid_container``,
``no_video_stream`` or ``unsupported_codec`` (``unreadable`` also for a FIFO, socket or device: a stream
cannot be read twice, and its reads can wait forever). Decodability is proven by the analysis pass.

Per-video budgets (``ProbeConfig``), checked here from what the container states, so one huge or odd
input cannot take a worker's memory or hours of its time: ``too_many_pixels`` (display width x height
over ``max_pixels``), ``too_long`` (duration over ``max_duration_s``), ``too_many_frames`` (stated or
estimated frame count over ``max_frames``) and ``odd_sample_aspect`` (sample aspect ratio outside
1/``max_sample_aspect``..``max_sample_aspect``). The analysis pass then gets ``decode_budget_s(row)``
seconds of wall time (``decode_budget_x`` times the duration, at least ``decode_budget_min_s``); a
decode that takes longer ends as ``decode_timeout`` (``pipeline/process.py``). 0 turns a budget off.

A budget must also end a read that blocks and never returns (a stalled NFS or FUSE mount, a pipe whose
writer stops): no frame arrives, so no check between frames runs. PyAV's ``av.open(timeout=...)`` does
not help there for local files: FFmpeg polls its interrupt callback only between retries of a read that
returns EAGAIN, and a plain path is opened blocking (a FIFO read then hangs, checked with PyAV 18).
So the analysis pass and the probe run in a thread (``run_bounded``) that the caller stops waiting for
at the budget: the video is rejected as ``decode_timeout`` and the run goes on; a thread that is still
blocked is left behind and ends at its next frame or chunk if its read ever returns. A FIFO, socket or
device that the analysis is given anyway is opened non-blocking through FFmpeg's ``fd:`` protocol with
PyAV's read timeout (``open_input``), so its read ends too and no thread is left behind. The probe's
thread is stopped after ``decode_budget_min_s`` without progress (a hashed chunk, the header).
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import TypeVar

import av

from vidsift.pipeline import storage

HASH_CHUNK = 1 << 20
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    # hash the whole file (true) or only its first and last 8 MiB plus its size (false: faster on huge
    # remote files, still deterministic, but two files that differ only in the middle share an id)
    hash_full_file: bool = True
    # per-video budgets (0 = off): inputs over them are rejected before they are decoded
    max_pixels: int = 8192 * 8192  # display width x height (8K UHD is 33 Mpx) -> too_many_pixels
    max_duration_s: float = 24 * 3600.0  # stated duration -> too_long
    max_frames: int = 5_000_000  # stated frame count, else duration x frame rate -> too_many_frames
    max_sample_aspect: float = 4.0  # sample aspect ratio outside 1/this..this -> odd_sample_aspect
    decode_budget_x: float = 10.0  # the analysis pass may take this many times the video's duration ...
    decode_budget_min_s: float = 300.0  # ... but at least this many seconds -> decode_timeout

    def __post_init__(self) -> None:
        numbers = ("max_pixels", "max_duration_s", "max_frames", "decode_budget_x", "decode_budget_min_s")
        for name in numbers:
            if getattr(self, name) < 0:
                raise ValueError(f"probe.{name} must be >= 0 (0 = no limit), got {getattr(self, name)}")
        if self.max_sample_aspect and self.max_sample_aspect < 1:
            raise ValueError(f"probe.max_sample_aspect must be >= 1 (0 = off), got {self.max_sample_aspect}")


def over_budget(row: dict, config: ProbeConfig) -> tuple[str, str] | None:
    """``(reason, detail)`` when a probed video is over one of ``config``'s budgets, else None."""
    pixels = (row.get("display_width") or 0) * (row.get("display_height") or 0)
    if config.max_pixels and pixels > config.max_pixels:
        w, h = row["display_width"], row["display_height"]
        return "too_many_pixels", f"{w}x{h} = {pixels} pixels > probe.max_pixels {config.max_pixels}"
    duration = row.get("duration_s") or 0.0
    if config.max_duration_s and duration > config.max_duration_s:
        return "too_long", f"{duration:.1f} s > probe.max_duration_s {config.max_duration_s:g}"
    frames = row.get("num_frames") or int(duration * (row.get("fps_nominal") or 0.0))
    if config.max_frames and frames > config.max_frames:
        how = "stated" if row.get("num_frames") else "duration x frame rate"
        return "too_many_frames", f"{frames} frames ({how}) > probe.max_frames {config.max_frames}"
    sar = row.get("sar") or 1.0
    if config.max_sample_aspect and not 1 / config.max_sample_aspect <= sar <= config.max_sample_aspect:
        limit = config.max_sample_aspect
        return "odd_sample_aspect", f"sample aspect ratio {sar:g} outside 1/{limit:g}..{limit:g}"
    return None


def decode_budget_s(row: dict, config: ProbeConfig) -> float | None:
    """Seconds the analysis pass of this video may take, or None (no budget)."""
    if not config.decode_budget_x and not config.decode_budget_min_s:
        return None
    return max(config.decode_budget_min_s, config.decode_budget_x * (row.get("duration_s") or 0.0))


def content_hash(path: str, full: bool = True, progress: Callable[[], None] | None = None) -> str:
    """blake2b-128 of the file bytes (or of size + head + tail when ``full`` is false).

    ``path`` may be an ``s3://`` URI (the driver hashes inputs whose sizes collide): read in
    1 MiB chunks, so memory stays flat for any size. ``progress`` is called after each chunk.
    """
    beat = progress or (lambda: None)
    h = hashlib.blake2b(digest_size=16)
    size = storage.size(path)
    with storage.open_input(path) as f:
        if full or size <= 16 * HASH_CHUNK:
            while chunk := f.read(HASH_CHUNK):
                h.update(chunk)
                beat()
        else:
            h.update(str(size).encode())
            h.update(f.read(8 * HASH_CHUNK))
            beat()
            f.seek(size - 8 * HASH_CHUNK)
            h.update(f.read(8 * HASH_CHUNK))
    return h.hexdigest()


class Cancelled(Exception):
    """Raised inside bounded work by ``Watch.beat`` once its caller has stopped waiting for it."""


class Watch:
    """What bounded work reports to ``run_bounded``: ``beat()`` after each step (a frame, a chunk)."""

    def __init__(self) -> None:
        self.count = 0
        self.last = time.monotonic()
        self.cancelled = False

    def beat(self) -> None:
        if self.cancelled:
            raise Cancelled
        self.count += 1
        self.last = time.monotonic()


class Overran(Exception):
    """``run_bounded`` stopped waiting: the work ran past ``total_s`` or made no step for ``stall_s``."""

    def __init__(self, waited_s: float, steps: int, stalled: bool) -> None:
        what = "no progress" if stalled else "past its budget"
        super().__init__(f"{what} after {waited_s:.1f} s and {steps} steps")
        self.waited_s, self.steps, self.stalled = waited_s, steps, stalled


def run_bounded(
    work: Callable[[Watch], T],
    *,
    total_s: float | None = None,
    stall_s: float | None = None,
    name: str = "vidsift-bounded",
) -> T:
    """``work(watch)`` in a daemon thread; its value, or its exception re-raised here. Raises ``Overran``
    once it has run ``total_s`` seconds, or ``stall_s`` seconds since its last ``watch.beat()``: the
    caller goes on, and the thread, if it is blocked in a read that never returns, is left behind (it
    ends with ``Cancelled`` at its next beat). Without limits ``work`` runs here, in this thread."""
    watch = Watch()
    if total_s is None and stall_s is None:
        return work(watch)
    done = threading.Event()
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = work(watch)
        except BaseException as e:  # noqa: BLE001 - handed to the caller, which re-raises it
            box["error"] = e
        finally:
            done.set()

    start = time.monotonic()
    threading.Thread(target=target, name=name, daemon=True).start()
    try:
        while True:
            now = time.monotonic()
            limits = []
            if total_s is not None:
                limits.append((start + total_s, False))
            if stall_s is not None:
                limits.append((watch.last + stall_s, True))
            until, stalled = min(limits)
            if now >= until:
                raise Overran(now - start, watch.count, stalled)
            if done.wait(until - now):
                break
    finally:
        if not done.is_set():
            watch.cancelled = True
    if "error" in box:
        raise box["error"]
    return box["value"]


def open_input(path: str, timeout: float | None = None) -> av.container.InputContainer:
    """``av.open`` of a local file. A FIFO, socket or device is opened non-blocking through FFmpeg's
    ``fd:`` protocol: a read that finds no data then returns EAGAIN, FFmpeg retries it and polls PyAV's
    interrupt callback, so ``timeout`` (seconds without data; PyAV's read timeout) ends it with
    ``av.error.ExitError``. A regular file is opened by path (its reads never wait that way)."""
    if timeout is None or stat.S_ISREG(os.stat(path).st_mode):
        return av.open(path, metadata_errors="ignore")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        return av.open("fd:", metadata_errors="ignore", options={"fd": str(fd)}, timeout=timeout)
    finally:
        os.close(fd)  # FFmpeg's fd: protocol reads its own duplicate


def clockwise_rotation(display_matrix_degrees: float | None) -> int:
    """FFmpeg's display-matrix angle is counter-clockwise; we store the clockwise turn to display."""
    if not display_matrix_degrees:
        return 0
    return int(round(-display_matrix_degrees / 90.0)) * 90 % 360


def display_size(width: int, height: int, sar: float, rotation: int) -> tuple[int, int]:
    w = max(1, int(round(width * sar))) if sar and sar > 0 else width
    return (height, w) if rotation in (90, 270) else (w, height)


def _rejected(reason: str, detail: str) -> dict:
    return {"status": "rejected", "reason": reason, "detail": detail}


def _first_rotation(container: av.container.InputContainer, stream: av.video.VideoStream) -> float | None:
    """The display matrix travels as frame side data in PyAV; peek at the first decodable frame."""
    try:
        for frame in container.decode(stream):
            return frame.rotation
    except av.error.FFmpegError:
        return None
    return None


def probe_video(path: str, config: ProbeConfig = ProbeConfig()) -> dict:
    """Video-table columns for one file. Never raises for a bad file: a bad file is a rejected row.

    Reads that block without end (a stalled network mount) end after ``decode_budget_min_s`` without
    progress as ``decode_timeout`` (``run_bounded``)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return _rejected("file_not_found", f"no such file: {path}")
    except OSError as e:
        return _rejected("unreadable", f"cannot stat: {e.strerror or e}")
    if stat.S_ISDIR(st.st_mode):
        return _rejected("unreadable", "is a directory")
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
        )
        return _rejected("unreadable", f"not a regular file ({kind}): a stream cannot be read twice")
    row: dict = {"size_bytes": st.st_size}
    if st.st_size == 0:
        return row | _rejected("empty_file", "file has 0 bytes")
    stall = config.decode_budget_min_s or None
    try:
        return run_bounded(
            lambda watch: _probe(path, config, dict(row), watch), stall_s=stall, name="vidsift-probe"
        )
    except Overran as e:
        detail = (
            f"probe: no progress reading the file for {config.decode_budget_min_s:g} s "
            f"(probe.decode_budget_min_s; {e.steps} steps done); the read did not return and was left behind"
        )
        return row | _rejected("decode_timeout", detail)


def _probe(path: str, config: ProbeConfig, row: dict, watch: Watch) -> dict:
    try:
        row["content_hash"] = content_hash(path, config.hash_full_file, watch.beat)
    except OSError as e:
        return row | _rejected("unreadable", f"cannot read: {e.strerror or e}")
    row["video_id"] = row["content_hash"][:16]
    try:
        container = av.open(path, metadata_errors="ignore")
    except av.error.FFmpegError as e:
        return row | _rejected("invalid_container", f"FFmpeg cannot open the file: {e.strerror or e}")
    watch.beat()
    with container:
        row["container"] = container.format.name
        row["bitrate"] = container.bit_rate or None
        audio = [s for s in container.streams.audio]
        row["has_audio"] = bool(audio)
        row["audio_codec"] = audio[0].codec_context.name if audio and audio[0].codec_context else None
        # a cover image in an audio file is a "video" stream with the attached_pic disposition
        videos = [
            s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)
        ]
        if not videos:
            what = "only a cover image" if container.streams.video else "no video stream"
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
            return row | _rejected("no_video_stream", f"{what} (streams: {kinds})")
        stream = videos[0]
        ctx = stream.codec_context
        if ctx is None:
            return row | _rejected(
                "unsupported_codec", "no decoder for the video stream in this FFmpeg build"
            )
        row["vcodec"] = stream.codec.name if stream.codec else ctx.name
        row["pix_fmt"] = ctx.pix_fmt
        row["coded_width"], row["coded_height"] = stream.width, stream.height
        if not stream.width or not stream.height:
            return row | _rejected("invalid_container", "video stream has no frame size")
        sar = float(stream.sample_aspect_ratio) if stream.sample_aspect_ratio else 1.0
        row["sar"] = sar
        rate = stream.base_rate or stream.guessed_rate
        row["fps_nominal"] = float(rate) if rate else None
        row["fps_avg"] = float(stream.average_rate) if stream.average_rate else None
        if stream.duration and stream.time_base:
            row["duration_s"] = float(stream.duration * stream.time_base)
        elif container.duration:
            row["duration_s"] = container.duration / av.time_base
        row["num_frames"] = stream.frames or None
        # budgets before the first frame is decoded (a huge frame is what max_pixels guards against)
        width, height = display_size(stream.width, stream.height, sar, 0)
        over = over_budget(row | {"display_width": width, "display_height": height}, config)
        if over is not None:
            return row | _rejected(*over)
        rotation = clockwise_rotation(_first_rotation(container, stream))
        row["rotation"] = rotation
        row["display_width"], row["display_height"] = display_size(stream.width, stream.height, sar, rotation)
    row["status"] = "ok"
    return row


def as_fraction(fps: float) -> Fraction:
    """A frame rate as the small rational an encoder wants (29.97 -> 30000/1001)."""
    return Fraction(fps).limit_denominator(1001)


class DecodeTimeout(Exception):
    """The analysis pass of a video ran past its ``decode_budget_s``: raised between frames, or by the
    caller when the decoder blocked and did not return (``left_behind``: its thread was left behind)."""

    def __init__(self, budget_s: float, frames: int, left_behind: bool = False) -> None:
        why = "; the decoder did not return (blocked in a read or a frame): its thread was left behind"
        why = why if left_behind else ""
        super().__init__(f"analysis passed its budget of {budget_s:.1f} s after {frames} frames{why}")
        self.budget_s = budget_s
        self.frames = frames
        self.left_behind = left_behind
