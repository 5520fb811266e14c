"""The four core stages as registry steps over one video: probe, analyze, split_scenes, transcode.

Every per-video stage of the registry (kinds ``video`` and ``video_filter``) runs inside one task per source
video, in the recipe's order, over one ``VideoWork`` (``process.run_video_stages``): the core stages' step is
``step(config, work)``, a filter's ``impl(config, video, analysis, clips) -> clips``. A step that rejects the
video sets ``work.video["status"]`` and the stages after it do not run. The measuring code lives in each
stage's own module (``probe.py``, ``analyze.py``, ``split_scenes.py``, ``transcode.py``); this module only
says what each step reads from and writes to the work.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from vidsift.pipeline.stages.analyze import Analysis, analyze_video, clip_statistics
from vidsift.pipeline.stages.probe import DecodeTimeout, Overran, decode_budget_s, probe_video, run_bounded
from vidsift.pipeline.stages.split_scenes import (
    Scene,
    Transition,
    detect_transitions,
    scenes_from_transitions,
)
from vidsift.pipeline.stages.transcode import ClipCut, transcode_clips


@dataclass
class VideoWork:
    """One video on its way through the per-video stages."""

    path: str  # the local file (an s3:// or URL input was fetched to a spool file first)
    recipe: object  # the run's Recipe: a step reads the configs of the stages it depends on
    video: dict  # video-table columns so far
    analysis: Analysis | None = None
    transitions: list[Transition] = field(default_factory=list)
    scenes: list[Scene] = field(default_factory=list)
    too_short: list[Scene] = field(default_factory=list)
    clips: list[dict] = field(default_factory=list)  # candidate clip rows, rejected ones marked

    @property
    def ok(self) -> bool:
        return self.video.get("status") == "ok"

    @property
    def fps(self) -> float:
        if self.analysis is not None and self.analysis.frame_interval > 0:
            return 1.0 / self.analysis.frame_interval
        return self.video.get("fps_nominal") or 25.0


def probe_step(config, work: VideoWork) -> None:
    """Container and stream metadata; a file that is not a readable video is rejected here."""
    t0 = time.perf_counter()
    work.video = {**probe_video(work.path, config), **work.video}  # the run's source_uri and group win
    work.video["time_probe_s"] = time.perf_counter() - t0


def analyze_step(config, work: VideoWork) -> None:
    """The one decode pass: scene signals, per-frame statistics, and the recipe's filters' sample measures
    (their ``measure_sample`` hooks), within the probe's decode budget."""
    import av

    from vidsift.pipeline.registry import STAGES

    recipe, video = work.recipe, work.video
    filters = [STAGES[s.name] for s in recipe.stages_of_kind("video_filter")]
    hooks = [f.measure_sample for f in filters if f.measure_sample is not None]  # in the one decode
    budget = decode_budget_s(video, recipe.stage("probe"))
    try:
        analysis = analyze_video(
            work.path,
            video,
            config,
            recipe.stage("split_scenes"),
            bool(filters),
            budget_s=budget,
            hooks=hooks,
        )
    except av.error.FFmpegError as e:
        video.update(status="rejected", reason="undecodable", detail=f"decoding failed: {e.strerror or e}")
        return
    except DecodeTimeout as e:
        detail = f"{e} (probe.decode_budget_x, probe.decode_budget_min_s)"
        video.update(status="rejected", reason="decode_timeout", detail=detail)
        return
    work.analysis = analysis
    video.update(analysis.video_columns())
    if analysis.num_frames == 0:
        why = analysis.stopped_early or f"{analysis.decode_errors} packets failed to decode"
        video.update(status="rejected", reason="undecodable", detail=f"no frame could be decoded ({why})")
    elif analysis.stopped_early:
        video["detail"] = f"analysis ended early after {analysis.num_frames} frames: {analysis.stopped_early}"


def split_step(config, work: VideoWork) -> None:
    """Shot boundaries -> scenes -> one candidate clip row per scene; too-short scenes are rejected clips."""
    find_scenes(config, work)
    make_clips(work, config, work.recipe.stage("analyze").frames_per_clip)


def find_scenes(config, work: VideoWork) -> None:
    """Transitions and scenes (long enough, too short) from the analysis signals (``vidsift scenes`` too)."""
    t0 = time.perf_counter()
    analysis = work.analysis
    work.transitions = detect_transitions(analysis.signals, work.fps, config)
    work.scenes, work.too_short = scenes_from_transitions(
        work.transitions, analysis.num_frames, work.fps, config
    )
    work.video["time_split_s"] = time.perf_counter() - t0
    work.video["num_scenes"] = len(work.scenes) + len(work.too_short)
    work.video["scene_detector"] = analysis.signals.detector
    work.video["scene_network_frames"] = analysis.signals.network_frames


def make_clips(work: VideoWork, config, frames_per_clip: int) -> None:
    """One candidate clip row per scene, in time order, with its statistics from the analysis pass."""
    from vidsift.pipeline.process import make_clip_id

    video, analysis = work.video, work.analysis
    ordered = sorted(
        [(s, True) for s in work.scenes] + [(s, False) for s in work.too_short],
        key=lambda p: p[0].start_frame,
    )
    for index, (scene, long_enough) in enumerate(ordered):
        row = {
            "clip_id": make_clip_id(video["video_id"], scene.start_frame, scene.end_frame),
            "video_id": video["video_id"],
            "source_uri": video["source_uri"],
            "group": video["group"],
            "scene_index": index,
            "start_frame": scene.start_frame,
            "end_frame": scene.end_frame,
            "start_s": float(analysis.times[scene.start_frame]),
            "end_s": analysis.end_time(scene.end_frame),
            "cut_kind_start": scene.kind_start,
            "cut_kind_end": scene.kind_end,
            **clip_statistics(analysis, scene.start_frame, scene.end_frame, frames_per_clip),
        }
        if not long_enough:
            # split_scenes counts frames at the stream's typical rate; say both, so a VFR clip
            # whose timestamps span more than that does not read as a contradiction
            frames = row["end_frame"] - row["start_frame"]
            row.update(
                reject_stage="split_scenes",
                reject_reason="scene_too_short",
                reject_detail=f"{frames} frames ({row['end_s'] - row['start_s']:.2f} s) < min_scene_s "
                f"{config.min_scene_s} at {work.fps:.2f} fps",
            )
        work.clips.append(row)


def transcode_step(config, work: VideoWork) -> None:
    """Frame-accurate H.264 clips (and previews) of the candidates no stage has rejected, within the probe's
    decode budget: transcode reads the source again, and a read that blocks (a stalled network mount) must
    not hang the task. Past the budget every clip still to cut is rejected as ``transcode_timeout`` (the
    blocked thread is left behind, as for the analysis pass)."""
    cuts = [
        ClipCut(r["clip_id"], r["start_frame"], r["end_frame"], r["end_s"] - r["start_s"], _crop(r))
        for r in work.clips
        if not r.get("reject_reason")
    ]
    budget = decode_budget_s(work.video, work.recipe.stage("probe"))
    try:
        results = run_bounded(
            lambda _watch: transcode_clips(work.path, work.video, cuts, config),
            total_s=budget,
            name="vidsift-transcode",
        )
    except Overran as e:
        detail = (
            f"transcoding {len(cuts)} clips passed the budget of {budget:.1f} s ({e}; probe.decode_budget_x, "
            "probe.decode_budget_min_s)"
        )
        for row in work.clips:
            if not row.get("reject_reason"):
                row.update(reject_stage="transcode", reject_reason="transcode_timeout", reject_detail=detail)
        return
    work.video["time_transcode_s"] = sum(r.pop("_seconds", 0.0) for r in results.values())
    for row in work.clips:
        result = results.get(row["clip_id"])
        if result is None:
            continue
        if "reject_reason" in result:
            row.update(reject_stage="transcode", **result)
        else:
            row.update(result)


def _crop(row: dict) -> tuple[int, int, int, int] | None:
    if row.get("crop_w") is None:
        return None
    return row["crop_x"], row["crop_y"], row["crop_w"], row["crop_h"]
