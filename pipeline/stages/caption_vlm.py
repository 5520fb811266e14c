"""caption_vlm: a vision-language model describes each accepted clip, densely and as structured fields.

Reads ``clip_mp4`` (decodes ``num_frames`` frames spread uniformly over the clip; the model gets them
as one video where it takes video natively, else as images) and writes ``caption_vlm`` (a dense
description of subjects, actions, setting, camera motion, lighting and style), ``caption_json`` and
the fields ``caption_subject`` ... ``caption_lighting`` (validated JSON), ``caption_vlm_model``,
``caption_vlm_backend``, ``caption_random_weights`` and flags in ``caption_qa_flags``
(``vlm_truncated`` when the answer hit ``max_new_tokens``, ``json_repaired`` when the fields came
from constrained decoding). A clip that does not decode, or whose request failed for good (a server
that keeps failing), is rejected as ``caption_vlm_failed`` with the error in ``reject_detail``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import ClassVar

from vidsift.pipeline.backends.base import BackendConfig

FIELDS = ("subject", "action", "scene", "camera", "style", "lighting")

SYSTEM = "You are an expert video annotator who writes precise, factual descriptions of video clips."

DESCRIBE = (
    "These are frames sampled uniformly from one video clip, in time order. Describe the clip in one "
    "dense paragraph of 80 to 150 words: the main subjects and their appearance, what they do and how "
    "it changes over time, the setting and background, the camera (shot size, angle, and motion such "
    "as static, pan, tilt, zoom, tracking or handheld), the lighting, and the visual style (live "
    "action, animation, colour grading). Describe only what is visible; do not guess names, brands or "
    "intentions, and do not mention frames or the word 'video'. Begin directly with the content."
)

STRUCTURE = (
    "These are frames sampled uniformly from one video clip, in time order. Answer with a JSON object "
    'with exactly these string fields: "subject" (the main subjects), "action" (what happens), '
    '"scene" (the setting), "camera" (shot size, angle and camera motion), "style" (visual style) and '
    '"lighting". Each value is a short phrase describing only what is visible. Output only the JSON.'
)


@dataclass(frozen=True, kw_only=True)
class CaptionVlmConfig(BackendConfig):
    STAGE: ClassVar[str] = "caption_vlm"

    num_frames: int = 8  # frames sampled uniformly across the clip
    max_side: int = 448  # frames are scaled so their longer side is at most this (pixels)
    as_video: bool = True  # send frames as one video where the model takes video (Qwen2-VL family)
    prompt: str = DESCRIBE  # the dense-description request
    fields_prompt: str = STRUCTURE  # the structured-fields request
    system: str = SYSTEM  # system prompt of both requests
    fields_max_new_tokens: int = 160  # token budget of the JSON answer

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.num_frames <= 64:
            raise ValueError(f"caption_vlm.num_frames must be in 1..64, got {self.num_frames}")
        if self.max_side < 28:
            raise ValueError(f"caption_vlm.max_side must be >= 28, got {self.max_side}")
        if self.fields_max_new_tokens < len(FIELDS) * 8:
            raise ValueError(f"caption_vlm.fields_max_new_tokens must be >= {len(FIELDS) * 8}")


def sample_frames(mp4: bytes, count: int, max_side: int) -> list:
    """``count`` frames spread uniformly over the clip (the middle of ``count`` equal spans), as RGB PIL
    images no larger than ``max_side``. Decodes the clip once."""
    import av

    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = [f for f in container.decode(stream)]
    if not frames:
        raise ValueError("the clip has no decodable frame")
    n = len(frames)
    picks = sorted({min(n - 1, int((i + 0.5) * n / count)) for i in range(count)})
    images = []
    for i in picks:
        img = frames[i].to_image()
        scale = max_side / max(img.size)
        if scale < 1:
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
        images.append(img)
    return images


class CaptionVlm:
    reads: tuple[str, ...] = (
        "clip_mp4",
        "duration_s",
        "caption_qa_flags",
        "caption_random_weights",
    )  # the columns it is given (process.call_clip_stage)
    writes: tuple[str, ...] = (
        "caption_vlm",
        "caption_json",
        *(f"caption_{f}" for f in FIELDS),
        "caption_vlm_model",
        "caption_vlm_backend",
        "caption_vlm_tokens",
        "caption_random_weights",
        "caption_qa_flags",
    )

    def __init__(self, config: CaptionVlmConfig) -> None:
        from vidsift.pipeline.backends import load_backend

        self.config = config
        self.backend = load_backend(config, vision=True)

    def __call__(self, rows: list[dict]) -> list[dict]:
        from vidsift.pipeline.backends.base import ChatRequest, parse_json_fields

        c = self.config
        out = [dict(r) for r in rows]
        todo, requests = [], []
        for i, row in enumerate(out):
            try:
                frames = sample_frames(row["clip_mp4"], c.num_frames, c.max_side)
            except Exception as e:  # av errors and empty clips alike: a per-clip failure, not a crash
                self.reject(row, f"frames: {type(e).__name__}: {e}")
                continue
            fps = len(frames) / row["duration_s"] if row.get("duration_s") else 0.0
            common = dict(system=c.system, frames=frames, fps=fps, as_video=c.as_video)
            requests.append(ChatRequest(prompt=c.prompt, **common))
            requests.append(
                ChatRequest(
                    prompt=c.fields_prompt,
                    json_fields=FIELDS,
                    max_new_tokens=c.fields_max_new_tokens,
                    **common,
                )
            )
            todo.append(i)
        results = self.backend.chat(requests) if requests else []
        for k, i in enumerate(todo):
            row, desc, fields = out[i], results[2 * k], results[2 * k + 1]
            if desc.error or fields.error:
                self.reject(row, desc.error or fields.error)
                continue
            flags = list(row.get("caption_qa_flags") or [])
            flags += ["vlm_truncated"] * (desc.finish_reason == "length")
            flags += ["json_repaired"] * fields.repaired_json
            parsed = parse_json_fields(fields.text, FIELDS)
            row["caption_vlm"] = desc.text
            row["caption_json"] = fields.text
            for f in FIELDS:
                row[f"caption_{f}"] = parsed[f] if parsed else None
            row["caption_vlm_model"] = self.backend.model
            row["caption_vlm_backend"] = self.backend.name
            row["caption_vlm_tokens"] = desc.output_tokens + fields.output_tokens
            row["caption_random_weights"] = (
                bool(row.get("caption_random_weights")) or self.backend.random_weights
            )
            row["caption_qa_flags"] = flags
        return out

    def reject(self, row: dict, detail: str) -> None:
        row["caption_vlm_model"] = self.backend.model
        row["caption_vlm_backend"] = self.backend.name
        row["reject_stage"] = "caption_vlm"
        row["reject_reason"] = "caption_vlm_failed"
        row["reject_detail"] = detail
