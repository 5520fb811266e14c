"""H.264 MP4 encoding of uint8 RGB frames with PyAV (yuv420p, like the clips the curation pipeline writes)."""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np


def encode_mp4(frames: np.ndarray, fps: float = 12.0, crf: int = 18) -> bytes:
    """frames [F, H, W, 3] uint8 with even H and W (yuv420p halves chroma) -> MP4 bytes."""
    import av

    f, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 yuv420p needs even width and height, got {w}x{h}")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for img in frames:
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            ):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()
