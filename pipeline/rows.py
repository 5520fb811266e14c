"""Helpers for clip rows shared by the filter stages."""

from __future__ import annotations

import numpy as np


def reject(row: dict, stage: str, reason: str, detail: str) -> None:
    """Mark ``row`` rejected unless an earlier stage already did (the first reason is the one kept)."""
    if not row.get("reject_reason"):
        row.update(reject_stage=stage, reject_reason=reason, reject_detail=detail)


def sample_mean(analysis, row: dict, field: str, reduce=np.mean) -> float | None:
    """``reduce`` (mean by default) of one ``SampleMeasures`` field over the clip's sample frames."""
    idx = sample_indices(analysis, row)
    return float(reduce([getattr(analysis.samples[i], field) for i in idx])) if idx else None


def sample_indices(analysis, row: dict) -> list[int]:
    """Indices of the analysis sample frames that fall inside the clip (nearest one if none)."""
    t0, t1 = row["start_s"], row["end_s"]
    inside = [i for i, t in enumerate(analysis.sample_times) if t0 <= t < t1]
    if not inside and analysis.sample_times:
        mid = (t0 + t1) / 2
        inside = [int(np.argmin([abs(t - mid) for t in analysis.sample_times]))]
    return inside
