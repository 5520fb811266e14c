"""score_bounds: duration, resolution and aspect-ratio bounds of each candidate clip.

Reads: clip times and the source's display size. Writes ``duration_score`` (seconds),
``resolution_score`` (short side of the source picture in px, after the crop of bars when
score_bars ran first) and ``aspect_score`` (long side over short side). Rejects ``too_short``,
``too_long``, ``low_resolution`` and ``extreme_aspect``.
"""

from __future__ import annotations

from dataclasses import dataclass

from vidsift.pipeline.rows import reject


@dataclass(frozen=True, kw_only=True)
class ScoreBoundsConfig:
    min_duration_s: float = 1.0  # shorter clips teach little motion
    max_duration_s: float = 600.0  # split_scenes already chunks long scenes; this catches odd inputs
    min_short_side: int = 144  # px of the source picture; below this, detail is mostly upscaling
    max_aspect: float = 3.0  # long/short side; panoramas and strips beyond this are rejected

    def __post_init__(self) -> None:
        if not 0 <= self.min_duration_s < self.max_duration_s:
            raise ValueError("score_bounds needs 0 <= min_duration_s < max_duration_s")
        if self.min_short_side < 1:
            raise ValueError(f"score_bounds.min_short_side must be >= 1, got {self.min_short_side}")
        if self.max_aspect < 1:
            raise ValueError(f"score_bounds.max_aspect must be >= 1, got {self.max_aspect}")


def score_bounds(config: ScoreBoundsConfig, video: dict, analysis, clips: list[dict]) -> list[dict]:
    out = []
    for clip in clips:
        row = dict(clip)
        w = row.get("crop_w") or video["display_width"]
        h = row.get("crop_h") or video["display_height"]
        row["duration_score"] = duration = row["end_s"] - row["start_s"]
        row["resolution_score"] = float(min(w, h))
        row["aspect_score"] = aspect = max(w, h) / max(1, min(w, h))
        if duration < config.min_duration_s:
            reject(
                row, "score_bounds", "too_short", f"{duration:.2f} s < min_duration_s {config.min_duration_s}"
            )
        elif duration > config.max_duration_s:
            reject(
                row, "score_bounds", "too_long", f"{duration:.1f} s > max_duration_s {config.max_duration_s}"
            )
        if min(w, h) < config.min_short_side:
            reject(row, "score_bounds", "low_resolution", f"{w}x{h}: short side < {config.min_short_side}")
        if aspect > config.max_aspect:
            reject(
                row, "score_bounds", "extreme_aspect", f"{w}x{h}: aspect {aspect:.2f} > {config.max_aspect}"
            )
        out.append(row)
    return out
