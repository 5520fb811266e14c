"""The shard contract: every Parquet column vidsift writes, its type, the stage that owns it.

Three tables, one flat row each:

- ``clips/*.parquet``: one row per accepted clip (the trainer reads exactly this);
- ``rejected/*.parquet``: one row per rejected candidate clip, the clip columns plus
  ``reject_stage``, ``reject_reason`` and ``reject_detail``;
- ``videos/*.parquet``: one row per input file, ``status`` ``ok`` or ``rejected``.

``docs/schema.md`` says the same for people; ``tests/pipeline/test_schema.py`` checks the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

SCHEMA_VERSION = 1


# An input list's other columns for the video, one JSON object in a string column (not a struct: every list
# has its own columns, and one schema must hold them all); null when the input was not a list. Older runs
# lack the column: readers take it as null.
SOURCE_META_DOC = "the input list's other columns for this video: a JSON object (null: not from a list)"
GROUP_DOC = "the group whose files hold it (select may merge input groups)"


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    stage: str
    doc: str
    nullable: bool = True

    def field(self) -> pa.Field:
        return pa.field(self.name, self.type, nullable=self.nullable)


# Probe columns are shared by the video table and (prefixed ``src_``) nowhere else: a clip row
# carries only what a trainer or a filter needs about its source.
VIDEO_COLUMNS: list[Column] = [
    Column("source_uri", pa.string(), "runner", "input path or URI, as listed", nullable=False),
    Column("source_meta", pa.string(), "runner", SOURCE_META_DOC),
    Column("video_id", pa.string(), "probe", "first 16 hex digits of the content hash; null if unreadable"),
    Column("group", pa.string(), "runner", GROUP_DOC, nullable=False),
    Column("status", pa.string(), "runner", "`ok` (analysed) or `rejected`", nullable=False),
    Column("reason", pa.string(), "probe/analyze", "why the video was rejected (see docs/schema.md)"),
    Column("detail", pa.string(), "probe/analyze", "human-readable detail of the rejection"),
    Column("size_bytes", pa.int64(), "probe", "file size"),
    Column("content_hash", pa.string(), "probe", "blake2b-128 of the file bytes (hex)"),
    Column("container", pa.string(), "probe", "container format name(s) as FFmpeg reports them"),
    Column("vcodec", pa.string(), "probe", "video codec of the chosen stream"),
    Column("pix_fmt", pa.string(), "probe", "pixel format"),
    Column("coded_width", pa.int32(), "probe", "coded frame width"),
    Column("coded_height", pa.int32(), "probe", "coded frame height"),
    Column("rotation", pa.int32(), "probe", "clockwise display rotation in degrees (0/90/180/270)"),
    Column("sar", pa.float32(), "probe", "sample aspect ratio (1.0 for square pixels)"),
    Column("display_width", pa.int32(), "probe", "width as displayed: rotation and sample aspect applied"),
    Column("display_height", pa.int32(), "probe", "height as displayed: rotation and sample aspect applied"),
    Column("fps_nominal", pa.float64(), "probe", "container/codec frame rate (r_frame_rate)"),
    Column("fps_avg", pa.float64(), "probe/analyze", "average frame rate: decoded frames over their span"),
    Column("is_vfr", pa.bool_(), "analyze", "frame intervals vary by more than 10% of the median"),
    Column("duration_s", pa.float64(), "probe/analyze", "duration in seconds (decoded timestamps win)"),
    Column("num_frames", pa.int64(), "analyze", "frames decoded in the analysis pass"),
    Column("has_audio", pa.bool_(), "probe", "an audio stream exists"),
    Column("audio_codec", pa.string(), "probe", "codec of the first audio stream"),
    Column("bitrate", pa.int64(), "probe", "overall bit rate in bit/s"),
    Column("decode_errors", pa.int32(), "analyze", "packets the decoder rejected during analysis"),
    Column(
        "analysis_decode_passes", pa.int32(), "analyze", "decode passes spent on analysis (always 0 or 1)"
    ),
    Column("num_scenes", pa.int32(), "split_scenes", "candidate clips after scene splitting"),
    Column(
        "scene_detector",
        pa.string(),
        "split_scenes",
        "detector that cut the scenes; for the network: gating, precision and device resolved on the worker",
    ),
    Column(
        "scene_network_frames",
        pa.int64(),
        "split_scenes",
        "frames that went through TransNetV2, context included (0 for fast)",
    ),
    Column("num_clips_accepted", pa.int32(), "runner", "clips of this video in the clips table"),
    Column("time_probe_s", pa.float64(), "probe", "wall time of the probe stage"),
    Column("time_analyze_s", pa.float64(), "analyze", "wall time of the analysis pass (decode + signals)"),
    Column("time_split_s", pa.float64(), "split_scenes", "wall time of scene detection"),
    Column("time_transcode_s", pa.float64(), "transcode", "wall time of cutting and encoding its clips"),
]

CLIP_COLUMNS: list[Column] = [
    # identity
    Column(
        "clip_id", pa.string(), "split_scenes", "blake2b of video_id + frame range (32 hex)", nullable=False
    ),
    Column("video_id", pa.string(), "probe", "the source's content id", nullable=False),
    Column("source_uri", pa.string(), "runner", "input path or URI", nullable=False),
    Column("source_meta", pa.string(), "runner", SOURCE_META_DOC),
    Column("group", pa.string(), "runner", GROUP_DOC, nullable=False),
    Column("scene_index", pa.int32(), "split_scenes", "0-based index of the candidate in its video"),
    Column("start_frame", pa.int64(), "split_scenes", "first source frame (0-based decode index)"),
    Column("end_frame", pa.int64(), "split_scenes", "one past the last source frame"),
    Column("start_s", pa.float64(), "split_scenes", "presentation time of start_frame"),
    Column("end_s", pa.float64(), "split_scenes", "presentation time of end_frame (end of the clip)"),
    Column(
        "cut_kind_start",
        pa.string(),
        "split_scenes",
        "what starts the clip: start, cut, fade, dissolve, chunk",
    ),
    Column(
        "cut_kind_end", pa.string(), "split_scenes", "what ends the clip: end, cut, fade, dissolve, chunk"
    ),
    # cheap per-frame statistics from the analysis pass, reduced over the clip's frames
    Column("luma_mean", pa.float32(), "analyze", "mean luma, 0..255"),
    Column("luma_std", pa.float32(), "analyze", "mean over frames of the spatial luma standard deviation"),
    Column("black_ratio", pa.float32(), "analyze", "share of frames whose mean luma is below 16"),
    Column("sharpness", pa.float32(), "analyze", "mean variance of the Laplacian on the analysis frames"),
    Column("frame_diff", pa.float32(), "analyze", "mean absolute luma difference between consecutive frames"),
    Column(
        "frames_jpeg", pa.list_(pa.binary()), "analyze", "a few frames (rotation applied, short side 256)"
    ),
    Column("frames_s", pa.list_(pa.float64()), "analyze", "presentation times of frames_jpeg"),
    # quality scores (docs/filters.md): every score is stored; thresholds only decide reject reasons
    Column("duration_score", pa.float64(), "score_bounds", "clip duration in seconds"),
    Column(
        "resolution_score", pa.float64(), "score_bounds", "short side of the source picture (after crop), px"
    ),
    Column("aspect_score", pa.float64(), "score_bounds", "long side / short side of the picture"),
    Column("brightness_score", pa.float32(), "score_brightness", "mean luma, 0..255"),
    Column("contrast_score", pa.float32(), "score_brightness", "mean spatial luma standard deviation"),
    Column("black_frame_score", pa.float32(), "score_brightness", "share of black frames (mean luma < 16)"),
    Column("sharpness_score", pa.float32(), "score_sharpness", "median Laplacian variance / contrast^2"),
    Column("motion_score", pa.float32(), "score_motion", "mean optical-flow speed, % of width per second"),
    Column("static_score", pa.float32(), "score_motion", "share of flow samples slower than static_speed"),
    Column("frozen_score", pa.float32(), "score_motion", "share of frames repeating the previous frame"),
    Column("shake_score", pa.float32(), "score_motion", "mean jitter of the global motion vector, % width/s"),
    Column(
        "text_score",
        pa.float32(),
        "score_text",
        "share of the picture that is text, weighted by size (estimate)",
    ),
    Column(
        "ocr_score",
        pa.float32(),
        "score_ocr",
        "share of the picture inside OCR-detected text boxes, mean over frames",
    ),
    Column("ocr_boxes", pa.int32(), "score_ocr", "most OCR text boxes on one frame"),
    Column("ocr_model", pa.string(), "score_ocr", "PP-OCR ONNX weights (det[+rec]) that wrote ocr_score"),
    Column("blockiness_score", pa.float32(), "score_blockiness", "excess of 8-px grid steps (0 = none)"),
    Column(
        "bars_score", pa.float32(), "score_bars", "share of the picture covered by letterbox/pillarbox bars"
    ),
    Column(
        "crop_x", pa.int32(), "score_bars", "left of the picture inside the bars (display px); null: no bars"
    ),
    Column("crop_y", pa.int32(), "score_bars", "top of the picture inside the bars"),
    Column(
        "crop_w", pa.int32(), "score_bars", "width of the picture inside the bars (transcode crops to it)"
    ),
    Column("crop_h", pa.int32(), "score_bars", "height of the picture inside the bars"),
    Column(
        "dedup_hashes",
        pa.list_(pa.int64()),
        "dedup",
        "dHashes of sampled frames at 3 centre crops (100%, 80%; 64% or the picture inside bars)",
    ),
    Column(
        "dedup_curve",
        pa.list_(pa.float32()),
        "dedup",
        "mean luma, then frame difference, over the clip at 32 points each",
    ),
    Column("dup_of", pa.string(), "dedup", "clip_id of the representative this clip duplicates"),
    # model-based scores (open_clip on frames_jpeg); *_random_weights: test weights, not a real score
    Column(
        "aesthetic_score",
        pa.float32(),
        "score_aesthetic",
        "LAION aesthetic predictor, mean over frames (~1..10)",
    ),
    Column("aesthetic_min_score", pa.float32(), "score_aesthetic", "LAION aesthetic predictor, worst frame"),
    Column(
        "aesthetic_model",
        pa.string(),
        "score_aesthetic",
        "CLIP model:weights+head that wrote aesthetic_score",
    ),
    Column(
        "aesthetic_random_weights",
        pa.bool_(),
        "score_aesthetic",
        "the aesthetic model has random (test) weights: not a real score",
    ),
    Column(
        "clip_text_score",
        pa.float32(),
        "score_clip_text",
        "CLIP cosine of frames to the caption, mean over frames (raw cosine, -1..1)",
    ),
    Column("clip_text_source", pa.string(), "score_clip_text", "caption column scored: caption, caption_vlm"),
    Column(
        "clip_text_model", pa.string(), "score_clip_text", "CLIP model:weights that wrote clip_text_score"
    ),
    Column(
        "clip_text_random_weights",
        pa.bool_(),
        "score_clip_text",
        "the CLIP model has random (test) weights: not a real score",
    ),
    # media
    Column("width", pa.int32(), "transcode", "clip width (even, display orientation)"),
    Column("height", pa.int32(), "transcode", "clip height (even, display orientation)"),
    Column("fps", pa.float64(), "transcode", "clip frame rate"),
    Column("num_frames", pa.int64(), "transcode", "frames in the clip, verified after encoding"),
    Column("duration_s", pa.float64(), "transcode", "num_frames / fps"),
    Column(
        "clip_mp4",
        pa.binary(),
        "transcode",
        "H.264 MP4 bytes (yuv420p, faststart; AAC audio only with transcode.keep_audio)",
    ),
    Column("preview_jpeg", pa.binary(), "transcode", "middle frame, short side 128"),
    # captions (filled by the captioning stages when a recipe has them)
    Column("caption", pa.string(), "caption_expand", "final long caption the trainer conditions on"),
    Column(
        "caption_vlm", pa.string(), "caption_vlm", "the VLM's dense description (boilerplate stripped by QA)"
    ),
    Column("caption_short", pa.string(), "caption_expand", "short user-style prompt for the same clip"),
    Column(
        "caption_json", pa.string(), "caption_vlm", "the VLM's structured answer: a JSON object of the fields"
    ),
    Column("caption_subject", pa.string(), "caption_vlm", "structured field: the main subjects"),
    Column("caption_action", pa.string(), "caption_vlm", "structured field: what happens"),
    Column("caption_scene", pa.string(), "caption_vlm", "structured field: the setting"),
    Column("caption_camera", pa.string(), "caption_vlm", "structured field: shot size, angle, camera motion"),
    Column("caption_style", pa.string(), "caption_vlm", "structured field: visual style"),
    Column("caption_lighting", pa.string(), "caption_vlm", "structured field: lighting"),
    Column("caption_vlm_model", pa.string(), "caption_vlm", "model name or path that wrote caption_vlm"),
    Column(
        "caption_vlm_backend", pa.string(), "caption_vlm", "backend that ran it: transformers, vllm, openai"
    ),
    Column("caption_vlm_tokens", pa.int32(), "caption_vlm", "tokens the VLM generated for this clip"),
    Column(
        "caption_model", pa.string(), "caption_expand", "model name or path that wrote caption, caption_short"
    ),
    Column(
        "caption_backend", pa.string(), "caption_expand", "backend that ran it: transformers, vllm, openai"
    ),
    Column(
        "caption_error", pa.string(), "caption_expand", "why a caption_expand request failed (null: none did)"
    ),
    Column("caption_source", pa.string(), "caption_qa", "who wrote caption: expand, or vlm (QA fallback)"),
    Column(
        "caption_faithfulness", pa.float32(), "caption_qa", "MiniLM cosine of the expansion to caption_vlm"
    ),
    Column(
        "caption_support_min",
        pa.float32(),
        "caption_qa",
        "lowest best-match MiniLM cosine of an expansion sentence to caption_vlm",
    ),
    Column("caption_qa_flags", pa.list_(pa.string()), "caption_qa", "caption problems and decisions found"),
    Column(
        "caption_random_weights",
        pa.bool_(),
        "caption_vlm",
        "a model that wrote this row's captions has random weights (test model): not a real caption",
    ),
    # cached model inputs (filled by `vidsift encode`, so training never runs the VAE per step)
    Column("latent", pa.binary(), "encode", "VAE latent of the clip, float16 C-order bytes"),
    Column("latent_shape", pa.list_(pa.int32()), "encode", "shape of latent: [C, T, H, W]"),
    Column("latent_model", pa.string(), "encode", "VAE checkpoint (path or name) that wrote latent"),
    Column(
        "text_emb",
        pa.binary(),
        "encode/text_embed",
        "text-encoder token embeddings of caption, float16 bytes",
    ),
    Column("text_emb_shape", pa.list_(pa.int32()), "encode/text_embed", "shape of text_emb: [tokens, dim]"),
    Column("text_model", pa.string(), "encode/text_embed", "text encoder that wrote text_emb"),
]

REJECT_COLUMNS: list[Column] = [
    Column("reject_stage", pa.string(), "drop_rejected", "stage that rejected the clip", nullable=False),
    Column(
        "reject_reason",
        pa.string(),
        "drop_rejected",
        "short reason key, e.g. scene_too_short",
        nullable=False,
    ),
    Column("reject_detail", pa.string(), "drop_rejected", "human-readable detail with the measured value"),
]

VIDEO_SCHEMA = pa.schema([c.field() for c in VIDEO_COLUMNS], metadata={"vidsift_schema": str(SCHEMA_VERSION)})
CLIP_SCHEMA = pa.schema([c.field() for c in CLIP_COLUMNS], metadata={"vidsift_schema": str(SCHEMA_VERSION)})
REJECTED_SCHEMA = pa.schema(
    [c.field() for c in CLIP_COLUMNS + REJECT_COLUMNS], metadata={"vidsift_schema": str(SCHEMA_VERSION)}
)


def table_from_rows(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) to a table of exactly ``schema``: missing keys become nulls, extra keys are an error."""
    names = set(schema.names)
    for row in rows:
        extra = set(row) - names
        if extra:
            raise KeyError(f"columns not in the schema: {sorted(extra)}")
    return pa.Table.from_pylist([{n: r.get(n) for n in schema.names} for r in rows], schema=schema)


# Cached latents of a diffusers model (``vidsift encode --vae diffusers:NAME``): RUN/<LATENTS_DIR>/<model
# key>/<group>.parquet, each file's schema metadata holding the settings it was written with under
# LATENTS_SETTINGS_KEY. Written by vidsift.model.finetune.latents; carried by ``vidsift select``.
LATENTS_DIR = "latents"
LATENTS_SETTINGS_KEY = b"vidsift_latents"
