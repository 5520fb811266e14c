"""score_text: burned-in text, subtitles and watermarks, as the share of the picture they cover.

Reads: the text-line area measured on the analysis sample frames. Without a model this is the
weight-free estimate of ``pipeline.measures.text_area`` (stroke-dense, line-shaped regions; it
also counts text that is part of the scene, such as signs or printed shirts). Writes
``text_score`` (mean area fraction over the clip's samples). Rejects ``text_overlay``.
"""

from __future__ import annotations

from dataclasses import dataclass

from vidsift.pipeline.rows import reject, sample_mean


@dataclass(frozen=True, kw_only=True)
class ScoreTextConfig:
    max_text_area: float = 0.15  # share of the picture; subtitles cover ~2-8%, full-screen titles far more

    def __post_init__(self) -> None:
        if not 0 <= self.max_text_area <= 1:
            raise ValueError(f"score_text.max_text_area must be in [0, 1], got {self.max_text_area}")


def score_text(config: ScoreTextConfig, video: dict, analysis, clips: list[dict]) -> list[dict]:
    out = []
    for clip in clips:
        row = dict(clip)
        area = sample_mean(analysis, row, "text_area")
        row["text_score"] = area
        if area is not None and area > config.max_text_area:
            reject(row, "score_text", "text_overlay", f"text covers {area:.1%} > {config.max_text_area:.0%}")
        out.append(row)
    return out
