"""score_blockiness: visible compression artefacts (8x8 blocking).

Reads: the blockiness measured on the full-resolution luma of each analysis sample frame
(``pipeline.measures.blockiness``: how much stronger luma steps are on the 8-px grid than off
it). Writes ``blockiness_score`` (mean over the clip's samples; 0 = none). Rejects ``blocky``.
"""

from __future__ import annotations

from dataclasses import dataclass

from vidsift.pipeline.rows import reject, sample_mean


@dataclass(frozen=True, kw_only=True)
class ScoreBlockinessConfig:
    max_blockiness: float = 0.5  # small steps on the grid 1.5x those off it: visible blocks in smooth areas

    def __post_init__(self) -> None:
        if self.max_blockiness < 0:
            raise ValueError(f"score_blockiness.max_blockiness must be >= 0, got {self.max_blockiness}")


def score_blockiness(config: ScoreBlockinessConfig, video: dict, analysis, clips: list[dict]) -> list[dict]:
    out = []
    for clip in clips:
        row = dict(clip)
        b = sample_mean(analysis, row, "blockiness")
        row["blockiness_score"] = b
        if b is not None and b > config.max_blockiness:
            reject(row, "score_blockiness", "blocky", f"blockiness {b:.2f} > {config.max_blockiness}")
        out.append(row)
    return out
