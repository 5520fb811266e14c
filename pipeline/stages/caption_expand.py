"""caption_expand: a language model rewrites the VLM caption into the final long caption, plus a short one.

Reads ``caption_vlm`` and the structured fields; writes ``caption`` (a long, Sora-style description
that adds nothing the VLM did not see), ``caption_short`` (the one-line prompt a user would type for
the same clip: the pair teaches prompt expansion), ``caption_model``, ``caption_backend``, and ORs
``caption_random_weights``. A request that fails for good leaves the text null and flags
``expand_error`` / ``short_error``: caption_qa then falls back to the VLM caption or rejects the clip,
as its recipe says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vidsift.pipeline.backends.base import BackendConfig
from vidsift.pipeline.stages.caption_vlm import FIELDS  # the structured caption fields it reads

SYSTEM = (
    "You rewrite video descriptions into captions for training a text-to-video model. You never add "
    "people, objects, actions, places, text, sounds or details that the description does not state."
)

EXPAND = (
    "Rewrite the description below into one vivid, flowing paragraph of 100 to 200 words for a "
    "text-to-video model. Cover the subjects and their appearance, the action in the order it happens, "
    "the setting, the camera framing and motion, the lighting and the visual style. Use only facts "
    "stated in the description or in the fields; if something is not stated, leave it out. Do not "
    "start with 'The video shows' or similar. Output only the paragraph.\n\n"
    "Description: {caption_vlm}\n\nFields: {fields}"
)

SHORTEN = (
    "Write the short prompt a person would type to ask a text-to-video model for this clip: one "
    "sentence of 5 to 20 words naming the main subject, the action and the setting. Output only the "
    "prompt.\n\nDescription: {caption_vlm}"
)


@dataclass(frozen=True, kw_only=True)
class CaptionExpandConfig(BackendConfig):
    STAGE: ClassVar[str] = "caption_expand"

    max_new_tokens: int = 400  # budget of the long caption
    short_max_new_tokens: int = 48  # budget of caption_short
    system: str = SYSTEM  # system prompt of both requests
    prompt: str = EXPAND  # {caption_vlm} and {fields} are filled in
    short_prompt: str = SHORTEN  # {caption_vlm} is filled in

    def __post_init__(self) -> None:
        super().__post_init__()
        if "{caption_vlm}" not in self.prompt or "{caption_vlm}" not in self.short_prompt:
            raise ValueError(
                "caption_expand.prompt and caption_expand.short_prompt must contain {caption_vlm}"
            )
        if self.short_max_new_tokens < 1:
            raise ValueError(
                f"caption_expand.short_max_new_tokens must be >= 1, got {self.short_max_new_tokens}"
            )


class CaptionExpand:
    reads: tuple[str, ...] = (
        "caption_vlm",
        *(f"caption_{f}" for f in FIELDS),
        "caption_qa_flags",
        "caption_random_weights",
    )  # the columns it is given (process.call_clip_stage)
    writes: tuple[str, ...] = (
        "caption",
        "caption_short",
        "caption_error",
        "caption_model",
        "caption_backend",
        "caption_random_weights",
        "caption_qa_flags",
    )

    def __init__(self, config: CaptionExpandConfig) -> None:
        from vidsift.pipeline.backends import load_backend

        self.config = config
        self.backend = load_backend(config, vision=False)

    def __call__(self, rows: list[dict]) -> list[dict]:
        from vidsift.pipeline.backends.base import ChatRequest
        from vidsift.pipeline.stages.caption_qa import strip_boilerplate

        c = self.config
        requests = []
        for row in rows:
            vlm = strip_boilerplate(row.get("caption_vlm") or "")[0]
            fields = "; ".join(f"{f}: {row.get(f'caption_{f}')}" for f in FIELDS if row.get(f"caption_{f}"))
            requests.append(
                ChatRequest(system=c.system, prompt=c.prompt.format(caption_vlm=vlm, fields=fields))
            )
            requests.append(
                ChatRequest(
                    system=c.system,
                    prompt=c.short_prompt.format(caption_vlm=vlm),
                    max_new_tokens=c.short_max_new_tokens,
                )
            )
        results = self.backend.chat(requests) if requests else []
        out = []
        for k, row in enumerate(rows):
            row = dict(row)
            long, short = results[2 * k], results[2 * k + 1]
            flags = list(row.get("caption_qa_flags") or [])
            flags += ["expand_error"] * bool(long.error) + ["expand_truncated"] * (
                long.finish_reason == "length"
            )
            flags += ["short_error"] * bool(short.error)
            row["caption"] = None if long.error else long.text
            row["caption_short"] = None if short.error else short.text
            row["caption_error"] = long.error or short.error
            row["caption_model"] = self.backend.model
            row["caption_backend"] = self.backend.name
            row["caption_random_weights"] = (
                bool(row.get("caption_random_weights")) or self.backend.random_weights
            )
            row["caption_qa_flags"] = flags
            out.append(row)
        return out
