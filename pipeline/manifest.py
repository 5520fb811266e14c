"""The run's ``manifest.json`` and the summary printed at the end of ``vidsift curate``.

Counted by the code ``vidsift stats`` counts with (``stats.RunDb``: a DuckDB view per table): a few
column scans, never rows as Python objects, so it costs the same at a million clips as the stats do
(``bench/stats_scale.py``). The keys are the manifest's contract (``docs/schema.md``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vidsift.pipeline.recipe import Recipe
from vidsift.pipeline.schema import CLIP_SCHEMA, SCHEMA_VERSION
from vidsift.pipeline.stages.write_shards import done_groups
from vidsift.pipeline.stats import RunDb, _q, open_run

STAGE_TIMES = ("probe", "analyze", "split", "transcode")
CAPTION_WRITERS = ("caption_vlm_model", "caption_vlm_backend", "caption_model", "caption_backend")


def _value_counts(db: RunDb, table: str, expr: str, where: str = "true") -> dict[str, int]:
    sql = f"SELECT {expr} AS k, count(*) FROM {table} WHERE {where} GROUP BY k HAVING k IS NOT NULL"
    rows = db.rows(sql)
    return {str(k): int(n) for k, n in rows}


def _video_counts(db: RunDb) -> dict[str, Any]:
    if not db.has("videos", "status"):
        return {
            "ok": 0,
            "rejected": 0,
            "analysed": 0,
            "hours": 0.0,
            "passes": 0,
            "by_reason": {},
            "times": {},
            "detectors": {},
        }
    analysed = "coalesce(analysis_decode_passes, 0) <> 0"  # readable: decoded once for analysis
    exprs = {
        "ok": "count(*) FILTER (WHERE status = 'ok')",
        "rejected": "count(*) FILTER (WHERE status = 'rejected')",
        "analysed": f"count(*) FILTER (WHERE {analysed})",
        "hours": f"coalesce(sum(duration_s) FILTER (WHERE {analysed}), 0) / 3600",
        "passes": "coalesce(sum(analysis_decode_passes), 0)",
    }
    exprs |= {f"time_{s}": f"coalesce(sum(time_{s}_s), 0)" for s in STAGE_TIMES}
    agg = db.aggregate("videos", exprs)
    by_reason = _value_counts(db, "videos", "reason", "status = 'rejected'")
    detectors = {}
    if db.has("videos", "num_scenes"):  # videos split into scenes; rows of older versions do not say how
        name = (
            "coalesce(scene_detector, 'not recorded')"
            if db.has("videos", "scene_detector")
            else "'not recorded'"
        )
        detectors = _value_counts(db, "videos", name, "num_scenes IS NOT NULL")
    times = {s: round(float(agg.pop(f"time_{s}")), 3) for s in STAGE_TIMES}
    return {**agg, "by_reason": dict(sorted(by_reason.items())), "times": times, "detectors": detectors}


def _caption_summary(db: RunDb) -> dict:
    """Which models wrote the accepted clips' captions, and whether any had random weights."""
    present = [c for c in CAPTION_WRITERS if db.has("clips", c)]
    writers = {c: _value_counts(db, "clips", f"nullif({_q(c)}, '')") for c in present}
    random_rows = 0
    if db.has("clips", "caption_random_weights"):
        agg = db.aggregate("clips", {"n": "count(*) FILTER (WHERE caption_random_weights)"})
        random_rows = int(agg["n"])
    sources = {}
    if db.has("clips", "caption_source"):
        sources = _value_counts(db, "clips", "nullif(caption_source, '')")
    flags = {}
    if db.has("clips", "caption_qa_flags"):
        flags = _value_counts(db, "(SELECT unnest(caption_qa_flags) AS f FROM clips)", "f")
    return {
        "writers": {c: v for c, v in writers.items() if v},
        # rows written by random-weight test models are not real captions, and say so here
        "random_weights": random_rows > 0,
        "random_weights_rows": random_rows,
        "caption_source": sources,
        "qa_flags": dict(sorted(flags.items())),
    }


def build_manifest(out: Path | str, recipe: Recipe, n_inputs: int, n_groups: int, wall_s: float) -> dict:
    run = open_run(out)
    db = RunDb(run)
    try:
        videos = _video_counts(db)
        clips, rejected = run.rows["clips"], run.rows["rejected"]
        accepted_hours = 0.0
        if db.has("clips", "duration_s"):
            accepted_hours = db.aggregate("clips", {"h": "coalesce(sum(duration_s), 0) / 3600"})["h"]
        by_clip_reason = {}
        if db.has("rejected", "reject_reason"):
            reason = "coalesce(reject_stage, 'None') || '/' || coalesce(reject_reason, 'None')"
            by_clip_reason = _value_counts(db, "rejected", reason)
        # every column a random-weight test model wrote: such scores and captions are not real
        flags = [c for c in CLIP_SCHEMA.names if c.endswith("_random_weights") and db.has("clips", c)]
        counted = db.aggregate("clips", {c: f"count(*) FILTER (WHERE {_q(c)})" for c in flags})
        random_weights = {c: int(n) for c, n in counted.items() if n}
        captions = _caption_summary(db)
    finally:
        db.con.close()
    return {
        "schema_version": SCHEMA_VERSION,
        "recipe": recipe.to_dict(),
        "counts": {
            "input_files": n_inputs,
            "groups": n_groups,
            "groups_done": len(done_groups(out)),
            "videos_ok": int(videos["ok"]),
            "videos_rejected": int(videos["rejected"]),
            "videos_rejected_by_reason": videos["by_reason"],
            "videos_analysed": int(videos["analysed"]),
            "videos_by_scene_detector": dict(sorted(videos["detectors"].items())),
            "input_hours": round(float(videos["hours"]), 6),
            "candidate_clips": clips + rejected,
            "clips_accepted": clips,
            "clips_rejected": rejected,
            "clips_rejected_by_reason": dict(sorted(by_clip_reason.items())),
            "accepted_hours": round(float(accepted_hours), 6),
        },
        "captions": captions,
        "random_weights": random_weights,
        "analysis_decode_passes": int(videos["passes"]),
        "stage_seconds": videos["times"] or {s: 0.0 for s in STAGE_TIMES},
        "last_run_wall_s": round(wall_s, 3),
    }


def print_summary(console, manifest: dict) -> None:
    from rich.table import Table

    c = manifest["counts"]
    t = Table(title="vidsift curate: summary", show_header=False)
    t.add_row("input files", str(c["input_files"]))
    t.add_row("videos ok / rejected", f"{c['videos_ok']} / {c['videos_rejected']}")
    for reason, n in c["videos_rejected_by_reason"].items():
        t.add_row(f"  video rejected: {reason}", str(n))
    t.add_row("candidate clips", str(c["candidate_clips"]))
    t.add_row("clips accepted", f"{c['clips_accepted']} ({c['accepted_hours'] * 60:.2f} min)")
    for reason, n in c["clips_rejected_by_reason"].items():
        t.add_row(f"  clip rejected: {reason}", str(n))
    t.add_row("videos analysed", f"{c['videos_analysed']} ({c['input_hours'] * 60:.2f} min)")
    t.add_row("analysis decode passes", str(manifest["analysis_decode_passes"]))
    console.print(t)
    caps = manifest.get("captions") or {}
    if caps.get("random_weights"):
        console.print(
            f"[bold yellow]warning:[/] captions of {caps['random_weights_rows']} clips were written by "
            "random-weight test models: they are NOT real captions"
        )
