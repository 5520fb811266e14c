"""Decoding shared by the analysis pass and the transcode stage.

Both walk a source with the same demux/decode loop, so frame ``i`` means the same picture in
both: scene boundaries found by ``analyze`` cut exactly those frames in ``transcode``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import av


def video_stream(container: av.container.InputContainer) -> av.video.VideoStream:
    """The first real video stream (cover images in audio files are not video)."""
    return next(
        s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)
    )


@dataclass
class DecodeLog:
    errors: int = 0  # packets the decoder rejected (skipped)
    stopped: str | None = None  # why decoding ended before the end of the file


def decode_frames(
    container: av.container.InputContainer, log: DecodeLog, max_errors: int, nominal_fps: float
) -> Iterator[tuple[int, float, av.VideoFrame]]:
    """Yield ``(index, seconds, frame)`` in presentation order, skipping packets that fail to decode.

    A frame without a timestamp, or with one that does not increase, is placed one nominal
    interval after the previous frame, so times are strictly increasing.
    """
    stream = video_stream(container)
    stream.thread_type = "AUTO"  # frame threads: decode speed is what the pipeline is measured by
    packets = container.demux(stream)
    index, last = 0, None
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError as e:
            log.stopped = f"container read stopped: {e.strerror or e}"
            return
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            log.errors += 1
            if log.errors > max_errors:
                log.stopped = f"more than {max_errors} undecodable packets"
                return
            continue
        for frame in frames:
            t = frame.time
            if t is None or (last is not None and t <= last):
                t = (last + 1.0 / nominal_fps) if last is not None else 0.0
            last = t
            yield index, t, frame
            index += 1


def even(x: float) -> int:
    """Nearest even integer >= 2 (halves round up): codecs with 4:2:0 chroma need even sizes."""
    return max(2, int(x / 2 + 0.5) * 2)
