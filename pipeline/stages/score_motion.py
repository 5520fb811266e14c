"""score_motion: how much a clip moves, and how: static, slideshow, frozen frames, shake.

Reads: the optical flow the analysis pass measured between analysis images (width 128) about
``1 / analyze.motion_fps`` apart, and the every-frame luma difference. Writes
``motion_score`` (mean flow magnitude, % of the frame width per second), ``static_score``
(share of flow samples slower than ``static_speed``), ``frozen_score`` (share of frames that
repeat their predecessor) and ``shake_score`` (mean change of the global motion vector between
flow samples, % of width per second: jitter, not steady pans). Rejects ``static``,
``slideshow`` (static pictures that change abruptly), ``frozen_frames`` and ``shaky``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vidsift.pipeline.rows import reject

FROZEN_DIFF = 0.1  # mean absolute luma difference (0..255) below which a frame repeats the last
SLIDE_CHANGE = 8.0  # a frame-to-frame luma change this large inside a static clip is a slide change


@dataclass(frozen=True, kw_only=True)
class ScoreMotionConfig:
    static_speed: float = 0.5  # % of frame width per second below which a flow sample is static
    max_static: float = 0.8  # reject static/slideshow when this share of samples is static
    max_frozen: float = 0.5  # reject frozen_frames when this share of frames repeats
    max_shake: float = 60.0  # reject shaky above this mean jitter (% width per second)

    def __post_init__(self) -> None:
        for name in ("max_static", "max_frozen"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"score_motion.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.static_speed < 0 or self.max_shake < 0:
            raise ValueError("score_motion.static_speed and max_shake must be >= 0")


def clip_motion(analysis, row: dict) -> tuple[float | None, float | None, float | None]:
    """(mean speed, static share, shake) over the flow samples whose two frames lie in the clip."""
    m = analysis.motion
    if not len(m):
        return None, None, None
    t, dt = m[:, 0], m[:, 1]
    inside = (t - dt >= row["start_s"] - 1e-6) & (t < row["end_s"]) & (dt > 0)
    if not inside.any():
        return None, None, None
    scale = 100.0 / analysis.detect_width / dt[inside]  # px per interval -> % of width per second
    speed = m[inside, 2] * scale
    vec = m[inside, 3:5] * scale[:, None]
    shake = float(np.linalg.norm(np.diff(vec, axis=0), axis=1).mean()) if len(vec) > 1 else 0.0
    return float(speed.mean()), speed, shake


def score_motion(config: ScoreMotionConfig, video: dict, analysis, clips: list[dict]) -> list[dict]:
    out = []
    for clip in clips:
        row = dict(clip)
        mean_speed, speeds, shake = clip_motion(analysis, row)
        diffs = analysis.frame_diff[row["start_frame"] + 1 : row["end_frame"]]
        # a one-frame clip repeats nothing: 0, not null, so every candidate has the score
        row["frozen_score"] = frozen = float((diffs < FROZEN_DIFF).mean()) if diffs.size else 0.0
        row["motion_score"] = mean_speed
        row["shake_score"] = shake
        row["static_score"] = static = (
            float((speeds < config.static_speed).mean()) if speeds is not None else None
        )
        if static is not None and static >= config.max_static:
            changes = int((diffs > SLIDE_CHANGE).sum())
            reason = "slideshow" if changes else "static"
            reject(
                row, "score_motion", reason, f"{static:.0%} of flow samples static, {changes} abrupt changes"
            )
        elif frozen is not None and frozen > config.max_frozen:
            reject(row, "score_motion", "frozen_frames", f"{frozen:.0%} of frames repeat the previous one")
        elif shake is not None and shake > config.max_shake:
            reject(row, "score_motion", "shaky", f"shake {shake:.1f} > {config.max_shake}")
        out.append(row)
    return out
