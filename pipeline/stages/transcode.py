"""transcode: cut each accepted clip frame-accurately from its source and encode it as H.264 MP4.

Reads: the source file and the accepted candidate clips of one video (``clip_id``,
``start_frame``, ``end_frame``, frame times from the analysis). Writes ``width``, ``height``,
``fps``, ``num_frames``, ``duration_s``, ``clip_mp4`` and ``preview_jpeg``.

Frames are addressed by their decode index, the same index the analysis pass assigned (both
walk the source with ``pipeline.media.decode_frames``), so a cut lands on exactly the frame
scene detection chose, whatever the keyframe layout, edit lists or timestamps of the source.
One sequential decode serves all clips of a video; frames outside every clip are decoded but
not converted. The display rotation and sample aspect are applied, the short side is scaled down
to at most ``max_short_side`` with even dimensions, and the encoded frame count is verified.
A clip whose encoding fails or whose frame count does not verify is rejected with a reason.

With ``keep_audio = true`` the clip also carries the source's first audio stream, cut to the same
span (from the presentation time of the clip's first frame, for the clip's duration, to the sample),
resampled to planar float at the source's rate, mono or stereo (more channels are downmixed) and
encoded as AAC at ``AUDIO_BITRATE``. A source without audio gives video-only clips (its video row
says ``has_audio = false``); audio that cannot be decoded rejects the clip as ``transcode_audio_failed``.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction

import av
import cv2
import numpy as np

from vidsift.pipeline.media import DecodeLog, decode_frames, even
from vidsift.pipeline.stages.probe import as_fraction


@dataclass(frozen=True, kw_only=True)
class TranscodeConfig:
    max_short_side: int = 480  # the clip's short side is scaled down to at most this (never up)
    crf: int = 23  # x264 constant rate factor: lower is better quality and larger
    preset: str = "veryfast"  # x264 speed/size trade-off
    preview_short_side: int = 128  # short side of preview_jpeg
    max_decode_errors: int = 200  # as analyze: the same packets must be skipped for indices to agree
    keep_audio: bool = False  # keep the source's audio (AAC), cut with the video; off: clips are video only

    def __post_init__(self) -> None:
        if not 16 <= self.max_short_side <= 4320:
            raise ValueError(f"transcode.max_short_side must be in 16..4320, got {self.max_short_side}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"transcode.crf must be in 0..51, got {self.crf}")
        presets = (
            "ultrafast",
            "superfast",
            "veryfast",
            "faster",
            "fast",
            "medium",
            "slow",
            "slower",
            "veryslow",
        )
        if self.preset not in presets:
            raise ValueError(f"transcode.preset must be one of {', '.join(presets)}; got {self.preset!r}")


@dataclass(frozen=True)
class ClipCut:
    clip_id: str
    start_frame: int
    end_frame: int  # exclusive
    seconds: float  # presentation span of the clip in the source
    crop: tuple[int, int, int, int] | None = None  # (x, y, w, h) in display pixels: the picture without bars


@dataclass(frozen=True)
class Geometry:
    """How one clip's frames are turned into output frames."""

    size: tuple[int, int]  # output width, height (display orientation, even)
    full: tuple[int, int]  # the whole display picture scaled by the output scale
    offset: tuple[int, int]  # top-left of the output window inside ``full``
    rotation: int  # clockwise degrees

    @staticmethod
    def of(display: tuple[int, int], rotation: int, crop: tuple[int, int, int, int] | None, max_short: int):
        dw, dh = display
        x, y, cw, ch = crop or (0, 0, dw, dh)
        w, h = output_size(cw, ch, max_short)
        sx, sy = w / cw, h / ch
        full = (max(w, round(dw * sx)), max(h, round(dh * sy)))
        offset = (min(round(x * sx), full[0] - w), min(round(y * sy), full[1] - h))
        return Geometry((w, h), full, offset, rotation)

    @property
    def simple(self) -> bool:
        return not self.rotation and self.full == self.size


def output_size(display_w: int, display_h: int, max_short_side: int) -> tuple[int, int]:
    """Display size scaled so the short side is at most ``max_short_side``; both even, aspect kept."""
    scale = min(1.0, max_short_side / max(1, min(display_w, display_h)))
    return even(display_w * scale), even(display_h * scale)


class _ClipEncoder:
    """One open MP4 output: frames in display orientation at the output size, CFR timestamps."""

    def __init__(
        self, cut: ClipCut, geometry: Geometry, config: TranscodeConfig, tmp: str, start: float = 0.0
    ) -> None:
        self.cut = cut
        self.start = start  # presentation time of the clip's first frame in the source (seconds)
        self.path = os.path.join(tmp, f"{cut.clip_id}.mp4")
        self.geometry = geometry
        self.size = size = geometry.size
        n = cut.end_frame - cut.start_frame
        self.rate = as_fraction(n / cut.seconds if cut.seconds > 0 else 25.0)
        self.out = av.open(self.path, "w", format="mp4", options={"movflags": "+faststart"})
        self.stream = self.out.add_stream("libx264", rate=self.rate)
        self.stream.width, self.stream.height = size
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": str(config.crf), "preset": config.preset}
        self.stream.codec_context.time_base = 1 / self.rate
        self.count = 0
        self.preview: np.ndarray | None = None
        self.preview_at = n // 2

    def add(self, frame: av.VideoFrame) -> None:
        g = self.geometry
        w, h = g.size
        if g.simple:
            out = frame.reformat(width=w, height=h, format="yuv420p")
            rgb = None
        else:
            # rotate and crop in numpy: swscale does neither, and a filter graph per clip costs more setup
            fw, fh = g.full
            coded = (fh, fw) if g.rotation in (90, 270) else (fw, fh)
            rgb = frame.reformat(width=coded[0], height=coded[1], format="rgb24").to_ndarray()
            if g.rotation:
                rgb = np.rot90(rgb, k=-g.rotation // 90)
            x, y = g.offset
            rgb = np.ascontiguousarray(rgb[y : y + h, x : x + w])
            out = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        if self.count == self.preview_at:
            self.preview = rgb if rgb is not None else out.to_ndarray(format="rgb24")
        out.pts = self.count
        out.time_base = 1 / self.rate
        self.out.mux(self.stream.encode(out))
        self.count += 1

    def finish(self) -> None:
        self.out.mux(self.stream.encode(None))
        self.out.close()


def _count_video_packets(path: str) -> int:
    with av.open(path) as c:
        return sum(1 for p in c.demux(c.streams.video[0]) if p.size)


def _preview_jpeg(rgb: np.ndarray, short_side: int) -> bytes:
    h, w = rgb.shape[:2]
    scale = min(1.0, short_side / min(h, w))
    small = cv2.resize(
        rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
    )
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return jpg.tobytes() if ok else b""


def transcode_clips(path: str, probe: dict, cuts: list[ClipCut], config: TranscodeConfig) -> dict[str, dict]:
    """Encode every cut of one source in one sequential decode.

    Returns ``{clip_id: columns}``; a failed clip maps to ``{"reject_reason": ..., "reject_detail": ...}``.
    """
    results: dict[str, dict] = {}
    if not cuts:
        return results
    cuts = sorted(cuts, key=lambda c: c.start_frame)
    display = (probe["display_width"], probe["display_height"])
    rotation = probe.get("rotation") or 0
    started = time.perf_counter()
    log = DecodeLog()
    pending = list(cuts)
    current: _ClipEncoder | None = None
    with tempfile.TemporaryDirectory(prefix="vidsift-transcode-") as tmp:
        with av.open(path, metadata_errors="ignore") as container:
            frames = decode_frames(container, log, config.max_decode_errors, probe.get("fps_nominal") or 25.0)
            for index, seconds, frame in frames:
                if current is None and pending and index == pending[0].start_frame:
                    cut = pending.pop(0)
                    geometry = Geometry.of(display, rotation, cut.crop, config.max_short_side)
                    current = _ClipEncoder(cut, geometry, config, tmp, seconds)
                if current is not None:
                    current.add(frame)
                    if index + 1 == current.cut.end_frame:
                        audio = path if config.keep_audio and probe.get("has_audio") else None
                        results[current.cut.clip_id] = _finish(current, config, audio)
                        current = None
                if current is None and not pending:
                    break  # nothing left to cut: stop decoding here
        if current is not None:  # the source ended (or broke off) inside a clip
            current.finish()
            pending.insert(0, current.cut)
        for cut in pending:
            results[cut.clip_id] = {
                "reject_reason": "transcode_source_short",
                "reject_detail": f"source ended before frame {cut.end_frame} "
                f"({log.stopped or 'end of stream'})",
            }
    elapsed = time.perf_counter() - started
    for r in results.values():
        r["_seconds"] = elapsed / len(results)
    return results


def _finish(enc: _ClipEncoder, config: TranscodeConfig, audio_source: str | None = None) -> dict:
    try:
        enc.finish()
        packets = _count_video_packets(enc.path)
    except av.error.FFmpegError as e:
        return {"reject_reason": "transcode_failed", "reject_detail": f"encoder error: {e.strerror or e}"}
    expected = enc.cut.end_frame - enc.cut.start_frame
    if packets != expected:
        return {
            "reject_reason": "transcode_frame_mismatch",
            "reject_detail": f"encoded {packets} frames, expected {expected}",
        }
    path = enc.path
    if audio_source is not None:
        path = enc.path.removesuffix(".mp4") + "-audio.mp4"
        try:
            add_audio(enc.path, audio_source, enc.start, expected / float(enc.rate), path)
        except (av.error.FFmpegError, ValueError, IndexError) as e:
            detail = f"audio from {enc.start:.3f} s: {getattr(e, 'strerror', None) or e}"
            return {"reject_reason": "transcode_audio_failed", "reject_detail": detail}
    with open(path, "rb") as f:
        data = f.read()
    return {
        "width": enc.size[0],
        "height": enc.size[1],
        "fps": float(enc.rate),
        "num_frames": expected,
        "duration_s": expected / float(enc.rate),
        "clip_mp4": data,
        "preview_jpeg": _preview_jpeg(enc.preview, config.preview_short_side)
        if enc.preview is not None
        else None,
    }


AUDIO_BITRATE = 128_000  # bit/s of the AAC track of keep_audio


def add_audio(video_path: str, source: str, start: float, seconds: float, out_path: str) -> None:
    """Write ``out_path``: the video stream of ``video_path`` (copied) plus the source's first audio
    stream from ``start`` for ``seconds`` (sample-exact), encoded as AAC."""
    with av.open(source, metadata_errors="ignore") as src, av.open(video_path) as vin:
        a_in = src.streams.audio[0]
        rate = a_in.codec_context.sample_rate or 48000
        layout = "stereo" if a_in.codec_context.layout.nb_channels >= 2 else "mono"
        with av.open(out_path, "w", format="mp4", options={"movflags": "+faststart"}) as out:
            v_out = out.add_stream_from_template(vin.streams.video[0])
            a_out = out.add_stream("aac", rate=rate, layout=layout)
            a_out.bit_rate = AUDIO_BITRATE
            for packet in vin.demux(vin.streams.video[0]):
                if packet.dts is not None:
                    packet.stream = v_out
                    out.mux(packet)
            first, last = round(start * rate), round((start + seconds) * rate)  # sample positions
            # seek a little early: a decoder may need the packets before the first sample
            src.seek(max(0, int((start - 0.5) / a_in.time_base)), stream=a_in, any_frame=False)
            resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)  # same rate: no delay
            written = 0
            for frame in src.decode(a_in):
                if frame.time is None:
                    continue
                pos = round(frame.time * rate)
                if pos >= last:
                    break
                for piece in resampler.resample(frame):
                    samples = piece.to_ndarray()  # (channels, samples), planar float
                    lo, hi = max(first, pos) - pos, min(last, pos + samples.shape[1]) - pos
                    pos += samples.shape[1]
                    if hi <= lo:
                        continue
                    part = np.ascontiguousarray(samples[:, lo:hi])
                    cut = av.AudioFrame.from_ndarray(part, format="fltp", layout=layout)
                    cut.sample_rate, cut.pts, cut.time_base = rate, written, Fraction(1, rate)
                    written += hi - lo
                    for packet in a_out.encode(cut):
                        out.mux(packet)
            for packet in a_out.encode(None):
                out.mux(packet)
