"""score_brightness: exposure of each candidate clip, from the every-frame analysis statistics.

Reads: per-frame luma mean and standard deviation of the analysis pass. Writes
``brightness_score`` (mean luma, 0..255), ``contrast_score`` (mean spatial luma standard
deviation) and ``black_frame_score`` (share of frames whose mean luma is below 16: black frames,
and what fades to and from black leave inside a clip). Rejects ``too_dark``, ``washed_out``
(bright and flat) and ``black_frames``.
"""

from __future__ import annotations

from dataclasses import dataclass

from vidsift.pipeline.rows import reject
from vidsift.pipeline.stages.analyze import BLACK_LUMA


@dataclass(frozen=True, kw_only=True)
class ScoreBrightnessConfig:
    min_brightness: float = 20.0  # mean luma below this: too dark to learn from
    max_brightness: float = 235.0  # mean luma above this with low contrast: washed out
    washed_out_contrast: float = 20.0  # contrast below which a bright clip counts as washed out
    max_black_frames: float = 0.3  # share of black frames above which the clip is rejected

    def __post_init__(self) -> None:
        if not 0 <= self.min_brightness < self.max_brightness <= 255:
            raise ValueError("score_brightness needs 0 <= min_brightness < max_brightness <= 255")
        if not 0 <= self.max_black_frames <= 1:
            raise ValueError(
                f"score_brightness.max_black_frames must be in [0, 1], got {self.max_black_frames}"
            )


def score_brightness(config: ScoreBrightnessConfig, video: dict, analysis, clips: list[dict]) -> list[dict]:
    out = []
    for clip in clips:
        row = dict(clip)
        sl = slice(row["start_frame"], row["end_frame"])
        luma = analysis.luma_mean[sl]
        row["brightness_score"] = b = float(luma.mean())
        row["contrast_score"] = c = float(analysis.luma_std[sl].mean())
        row["black_frame_score"] = black = float((luma < BLACK_LUMA).mean())
        if black > config.max_black_frames:
            reject(
                row,
                "score_brightness",
                "black_frames",
                f"{black:.0%} black frames > {config.max_black_frames:.0%}",
            )
        elif b < config.min_brightness:
            reject(row, "score_brightness", "too_dark", f"mean luma {b:.1f} < {config.min_brightness}")
        elif b > config.max_brightness and c < config.washed_out_contrast:
            reject(row, "score_brightness", "washed_out", f"mean luma {b:.1f}, contrast {c:.1f}")
        out.append(row)
    return out
