"""probe: read a file's container and stream metadata and its content hash, without decoding.

Reads: ``source_uri``. Writes the probe columns of the video table (see ``pipeline/schema.py``):
container, codec, coded and display size (rotation and sample aspect applied), nominal and
average frame rate, duration, frame count as the container states it, audio, bitrate, content
hash and ``video_id``. A file that cannot be a usable video gets ``status = "rejected"`` with a
specific ``reason``: ``file_not_found``, ``unreadable``, ``empty_file``, ``invalid_container``,
``no_video_stream`` or ``unsupported_codec``. Decodability is proven by the analysis pass.

Per-video budgets (``ProbeConfig``), checked here from what the container states, so one huge or odd
input cannot take a worker's memory or hours of its time: ``too_many_pixels`` (display width x height
over ``max_pixels``), ``too_long`` (duration over ``max_duration_s``), ``too_many_frames`` (stated or
estimated frame count over ``max_frames``) and ``odd_sample_aspect`` (sample aspect ratio outside
1/``max_sample_aspect``..``max_sample_aspect``). The analysis pass then gets ``decode_budget_s(row)``
seconds of wall time (``decode_budget_x`` times the duration, at least ``decode_budget_min_s``); a
decode that takes longer ends as ``decode_timeout`` (``pipeline/process.py``). 0 turns a budget off.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from fractions import Fraction

import av

from vidsift.pipeline import storage

HASH_CHUNK = 1 << 20


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


def content_hash(path: str, full: bool = True) -> str:
    """blake2b-128 of the file bytes (or of size + head + tail when ``full`` is false).

    ``path`` may be an ``s3://`` URI (the driver hashes inputs whose sizes collide): read in
    1 MiB chunks, so memory stays flat for any size.
    """
    h = hashlib.blake2b(digest_size=16)
    size = storage.size(path)
    with storage.open_input(path) as f:
        if full or size <= 16 * HASH_CHUNK:
            while chunk := f.read(HASH_CHUNK):
                h.update(chunk)
        else:
            h.update(str(size).encode())
            h.update(f.read(8 * HASH_CHUNK))
            f.seek(size - 8 * HASH_CHUNK)
            h.update(f.read(8 * HASH_CHUNK))
    return h.hexdigest()


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
    """Video-table columns for one file. Never raises for a bad file: a bad file is a rejected row."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return _rejected("file_not_found", f"no such file: {path}")
    except OSError as e:
        return _rejected("unreadable", f"cannot stat: {e.strerror or e}")
    if os.path.isdir(path):
        return _rejected("unreadable", "is a directory")
    row: dict = {"size_bytes": size}
    if size == 0:
        return row | _rejected("empty_file", "file has 0 bytes")
    try:
        row["content_hash"] = content_hash(path, config.hash_full_file)
    except OSError as e:
        return row | _rejected("unreadable", f"cannot read: {e.strerror or e}")
    row["video_id"] = row["content_hash"][:16]
    try:
        container = av.open(path, metadata_errors="ignore")
    except av.error.FFmpegError as e:
        return row | _rejected("invalid_container", f"FFmpeg cannot open the file: {e.strerror or e}")
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
    """The analysis pass of a video ran past its ``decode_budget_s`` (raised between frames)."""

    def __init__(self, budget_s: float, frames: int) -> None:
        super().__init__(f"analysis passed its budget of {budget_s:.1f} s after {frames} frames")
        self.budget_s = budget_s
        self.frames = frames
