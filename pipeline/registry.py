"""The one plain registry: stage name -> config class, what the stage is, default resources.

A recipe's ``[[stage]]`` entries name stages from here; nothing else is looked up by string.
Kinds:

- ``video``: the core per-video stages, run fused in one Ray task per source video (decoded
  frames never leave the worker), always in the order probe, analyze, split_scenes, transcode;
  ``impl(config, work)`` is a step over one ``stages.core.VideoWork``;
- ``video_filter``: ``impl(config, video, analysis, clips) -> clips``, run in that same task
  between split_scenes and transcode; scores every candidate from the analysis pass and marks
  rejects, so rejected clips are never transcoded;
- ``clip``: ``impl(config)`` is a callable class that loads its model once and maps a list of
  accepted clip rows to rows with its columns filled; it declares the columns it ``reads`` (all it is
  given) and ``writes`` (all it may change, besides the reject columns), and the runner joins those
  back into the batch (``dataflow.run_clip_stage``); run as a Ray Data actor pool with the
  stage's resources, between transcode and write_shards;
- ``sink``: write_shards, on the driver.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from vidsift.pipeline.stages import core
from vidsift.pipeline.stages.analyze import AnalyzeConfig
from vidsift.pipeline.stages.caption_expand import CaptionExpand, CaptionExpandConfig
from vidsift.pipeline.stages.caption_from_sidecar import CaptionFromSidecar, CaptionFromSidecarConfig
from vidsift.pipeline.stages.caption_qa import CaptionQa, CaptionQaConfig
from vidsift.pipeline.stages.caption_vlm import CaptionVlm, CaptionVlmConfig
from vidsift.pipeline.stages.dedup import DedupConfig, hash_clips
from vidsift.pipeline.stages.dedup import measure_sample as measure_dedup
from vidsift.pipeline.stages.probe import ProbeConfig
from vidsift.pipeline.stages.score_aesthetic import ScoreAesthetic, ScoreAestheticConfig
from vidsift.pipeline.stages.score_bars import ScoreBarsConfig, score_bars
from vidsift.pipeline.stages.score_bars import measure_sample as measure_bars
from vidsift.pipeline.stages.score_blockiness import ScoreBlockinessConfig, score_blockiness
from vidsift.pipeline.stages.score_blockiness import measure_sample as measure_blockiness
from vidsift.pipeline.stages.score_bounds import ScoreBoundsConfig, score_bounds
from vidsift.pipeline.stages.score_brightness import ScoreBrightnessConfig, score_brightness
from vidsift.pipeline.stages.score_clip_text import ScoreClipText, ScoreClipTextConfig
from vidsift.pipeline.stages.score_motion import ScoreMotionConfig, score_motion
from vidsift.pipeline.stages.score_ocr import ScoreOcr, ScoreOcrConfig
from vidsift.pipeline.stages.score_sharpness import ScoreSharpnessConfig, score_sharpness
from vidsift.pipeline.stages.score_sharpness import measure_sample as measure_sharpness
from vidsift.pipeline.stages.score_text import ScoreTextConfig, score_text
from vidsift.pipeline.stages.score_text import measure_sample as measure_text
from vidsift.pipeline.stages.split_scenes import SplitScenesConfig
from vidsift.pipeline.stages.text_embed import TextEmbed, TextEmbedConfig
from vidsift.pipeline.stages.transcode import TranscodeConfig
from vidsift.pipeline.stages.write_shards import WriteShardsConfig


@dataclass(frozen=True, kw_only=True)
class Resources:
    """What one worker of a stage asks Ray for; Ray places the worker on a node that has it all.

    On a cluster, GPU stages land on GPU nodes through ``num_gpus`` (or a ``custom`` resource the
    GPU nodes advertise, or ``accelerator_type``); CPU-only work spreads over every node. Before a
    run starts, the runner checks that one per-video task plus ``min_actors`` of every clip-stage
    pool can be placed at once (``cluster.check_fits``).
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_gb: float = 0.0  # 0: no reservation
    custom: dict[str, float] = field(default_factory=dict)  # e.g. {"gpu_node": 1} on a cluster
    accelerator_type: str = ""  # Ray accelerator type, e.g. "A100" or "H100"; "" = any
    min_actors: int = 1  # actor pool bounds, for clip stages that load a model
    max_actors: int = 1

    def __post_init__(self) -> None:
        if self.num_cpus < 0 or self.num_gpus < 0 or self.memory_gb < 0:
            raise ValueError("resources must be >= 0")
        if any(v < 0 for v in self.custom.values()):
            raise ValueError(f"custom resources must be >= 0, got {self.custom}")
        if not 1 <= self.min_actors <= self.max_actors:
            raise ValueError(f"need 1 <= min_actors <= max_actors, got {self.min_actors}, {self.max_actors}")

    def ray_options(self) -> dict:
        opts: dict = {"num_cpus": self.num_cpus}
        if self.num_gpus:
            opts["num_gpus"] = self.num_gpus
        if self.memory_gb:
            opts["memory"] = int(self.memory_gb * 2**30)
        if self.custom:
            opts["resources"] = dict(self.custom)
        if self.accelerator_type:
            opts["accelerator_type"] = self.accelerator_type
        return opts


@dataclass(frozen=True)
class StageSpec:
    config: type
    kind: str  # "video" | "video_filter" | "clip" | "sink"
    required: bool
    resources: Resources
    doc: str
    impl: Callable | None = None  # video: step(config, work); video_filter: function; clip: callable class
    needs: tuple[str, ...] = ()  # optional stages this one reads the columns of
    # video_filter: called by analyze on every sample frame inside the one decode pass; returns the named
    # measurements its impl reduces over each clip (the filter owns both, in its one file)
    measure_sample: Callable | None = None


STAGES: dict[str, StageSpec] = {
    # the core per-video stages: steps over one VideoWork (stages/core.py)
    "probe": StageSpec(
        ProbeConfig, "video", True, Resources(), "container/stream metadata and content hash", core.probe_step
    ),
    "analyze": StageSpec(
        AnalyzeConfig,
        "video",
        True,
        Resources(),
        "the one decode pass: signals and statistics",
        core.analyze_step,
    ),
    "split_scenes": StageSpec(
        SplitScenesConfig, "video", True, Resources(), "shot boundaries -> candidate clips", core.split_step
    ),
    # weight-free filters: scores from the analysis pass, run before transcode (docs/filters.md)
    "score_bars": StageSpec(
        ScoreBarsConfig,
        "video_filter",
        False,
        Resources(),
        "letterbox crop box",
        score_bars,
        measure_sample=measure_bars,
    ),
    "score_bounds": StageSpec(
        ScoreBoundsConfig, "video_filter", False, Resources(), "duration, resolution, aspect", score_bounds
    ),
    "score_brightness": StageSpec(
        ScoreBrightnessConfig, "video_filter", False, Resources(), "dark, washed out, black", score_brightness
    ),
    "score_sharpness": StageSpec(
        ScoreSharpnessConfig,
        "video_filter",
        False,
        Resources(),
        "focus and blur",
        score_sharpness,
        measure_sample=measure_sharpness,
    ),
    "score_motion": StageSpec(
        ScoreMotionConfig, "video_filter", False, Resources(), "flow, static, frozen, shake", score_motion
    ),
    "score_text": StageSpec(
        ScoreTextConfig,
        "video_filter",
        False,
        Resources(),
        "burned-in text",
        score_text,
        measure_sample=measure_text,
    ),
    "score_blockiness": StageSpec(
        ScoreBlockinessConfig,
        "video_filter",
        False,
        Resources(),
        "compression blocking",
        score_blockiness,
        measure_sample=measure_blockiness,
    ),
    "dedup": StageSpec(
        DedupConfig,
        "video_filter",
        False,
        Resources(),
        "near-duplicate hashes; decided over the run",
        hash_clips,
        measure_sample=measure_dedup,
    ),
    "transcode": StageSpec(
        TranscodeConfig,
        "video",
        True,
        Resources(),
        "frame-accurate H.264 clips + previews",
        core.transcode_step,
    ),
    # model-based filters (clip stages, open_clip; docs/filters.md): CPU here, num_gpus=1 on a cluster
    "score_aesthetic": StageSpec(
        ScoreAestheticConfig,
        "clip",
        False,
        Resources(num_cpus=1, memory_gb=3),
        "LAION aesthetic score (open_clip ViT-L/14 + MLP head), mean and worst frame",
        impl=ScoreAesthetic,
    ),
    "score_ocr": StageSpec(
        ScoreOcrConfig,
        "clip",
        False,
        Resources(num_cpus=1, memory_gb=1),
        "burned-in text area from a PP-OCR text-detection model (onnxruntime)",
        impl=ScoreOcr,
    ),
    # captioning (clip stages; model code is imported inside each impl's __init__)
    "caption_vlm": StageSpec(
        CaptionVlmConfig,
        "clip",
        False,
        Resources(num_cpus=1, memory_gb=2),
        "VLM dense caption + structured fields from uniformly sampled frames",
        impl=CaptionVlm,
    ),
    "caption_expand": StageSpec(
        CaptionExpandConfig,
        "clip",
        False,
        Resources(num_cpus=1, memory_gb=2),
        "LLM rewrite of the VLM caption into the final long caption + a short prompt",
        impl=CaptionExpand,
        needs=("caption_vlm",),
    ),
    "caption_qa": StageSpec(
        CaptionQaConfig,
        "clip",
        False,
        Resources(num_cpus=1, memory_gb=1),
        "caption cleaning, QA flags, MiniLM faithfulness; fallback or reject",
        impl=CaptionQa,
        needs=("caption_vlm", "caption_expand"),
    ),
    "caption_from_sidecar": StageSpec(
        CaptionFromSidecarConfig,
        "clip",
        False,
        Resources(num_cpus=1),
        "captions from a JSON/CSV sidecar of time ranges per source (existing or oracle captions)",
        impl=CaptionFromSidecar,
    ),
    "score_clip_text": StageSpec(
        ScoreClipTextConfig,
        "clip",
        False,
        Resources(num_cpus=1, memory_gb=3),
        "CLIP frame-caption cosine (reads captions when present)",
        impl=ScoreClipText,
    ),
    "text_embed": StageSpec(
        TextEmbedConfig,
        "clip",
        False,
        Resources(num_cpus=1, memory_gb=1),
        "caption token embeddings for the trainer (text_emb)",
        impl=TextEmbed,
    ),
    "write_shards": StageSpec(
        WriteShardsConfig, "sink", True, Resources(num_cpus=0), "Parquet shards + markers"
    ),
}


def _key_comments(cls: type) -> dict[str, str]:
    """The ``# comment`` after each field of a config class: the documentation of its recipe key."""
    import inspect
    import re

    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    found = re.findall(r"^\s+(\w+)\s*:[^=\n]*=[^\n#]*#\s*(.*)$", source, flags=re.M)
    return {name: doc.strip() for name, doc in found}


def describe_stages() -> list[dict]:
    """Every stage with its kind, keys (name, default, comment) and default resources; what
    ``vidsift stages`` prints, generated from this registry."""
    import dataclasses

    out = []
    for name, spec in STAGES.items():
        docs = _key_comments(spec.config)
        keys = []
        for f in dataclasses.fields(spec.config):
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = None
            if isinstance(default, tuple):
                default = list(default)
            keys.append({"name": f.name, "default": default, "doc": docs.get(f.name, "")})
        out.append(
            {
                "name": name,
                "kind": spec.kind,
                "required": spec.required,
                "needs": list(spec.needs),
                "doc": spec.doc,
                "resources": dataclasses.asdict(spec.resources),
                "keys": keys,
            }
        )
    return out
