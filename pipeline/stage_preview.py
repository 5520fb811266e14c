"""``vidsift stage NAME VIDEO``: run one stage, and the stages it needs, on one file; return its columns.

Binary columns are shown by their size, so the output stays readable and JSON-safe.
"""

from __future__ import annotations

from vidsift.pipeline.process import account_video, apply_clip_stage, process_video, scan_video
from vidsift.pipeline.recipe import Recipe, RecipeError
from vidsift.pipeline.registry import STAGES
from vidsift.pipeline.stages.probe import probe_video


def _printable(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        if isinstance(v, bytes):
            out[k] = f"<{len(v)} bytes>"
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            out[k] = [f"<{len(b)} bytes>" for b in v]
        else:
            out[k] = v
    return out


def preview_stage(name: str, path: str, recipe: Recipe) -> dict:
    if name == "probe":
        return {"path": path, **probe_video(path, recipe.stage("probe"))}
    if name in ("analyze", "split_scenes"):
        scan = scan_video(path, recipe)
        result: dict = {"path": path, **scan.video}
        if name == "split_scenes":
            result["transitions"] = [vars(t) for t in scan.transitions]
            result["scenes"] = [vars(s) | {"too_short": False} for s in scan.scenes] + [
                vars(s) | {"too_short": True} for s in scan.too_short
            ]
        return result
    if STAGES[name].kind == "sink":
        raise RecipeError(f"stage {name!r} writes a run folder; run it with `vidsift curate`")
    # transcode, filters and clip stages: the whole per-video part, then the clip stages in-process
    video, clips = process_video(path, "preview", recipe)
    for entry in recipe.stages_of_kind("clip"):
        clips = apply_clip_stage(STAGES[entry.name].impl(entry.config), clips)
    video = account_video(video, clips) if video["status"] == "ok" else video
    return {"path": path, **_printable(video), "clips": [_printable(c) for c in clips]}
