"""score_clip_text: how well a clip's caption matches its pictures, by CLIP frame-text similarity.

Reads ``frames_jpeg`` and the first non-empty text among ``text_columns`` (default: the final
``caption``, else the VLM's ``caption_vlm``), so it runs after the captioning stages. Every frame and
the text go through the same open_clip model (frames of all clips in a batch encoded together);
``clip_text_score`` is the mean over the frames of the cosine between the L2-normalised frame and
text embeddings (raw cosine: CLIPScore is 100 x max(cosine, 0)). CLIP reads at most 77 tokens, so a
long caption is scored on its beginning. Also writes ``clip_text_source`` (the column scored),
``clip_text_model`` and ``clip_text_random_weights``. A clip with no frames or no text gets null
scores and is not rejected.

Rejects ``caption_mismatch`` when the score is below ``min_score``; 0 (the default) never rejects:
useful cut-offs depend on the model (matching pairs sit around 0.25-0.35 for OpenAI ViT-L/14).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vidsift.pipeline.clip_models import ClipModelConfig
from vidsift.pipeline.rows import reject

TEXT_COLUMNS = ("caption", "caption_vlm", "caption_short")  # the caption texts a recipe may score


@dataclass(frozen=True, kw_only=True)
class ScoreClipTextConfig(ClipModelConfig):
    STAGE: ClassVar[str] = "score_clip_text"

    text_columns: tuple[str, ...] = ("caption", "caption_vlm")  # first non-empty one is scored
    min_score: float = 0.0  # reject caption_mismatch when the mean cosine is below this; 0 = never

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "text_columns", tuple(self.text_columns))  # TOML gives a list
        bad = [c for c in self.text_columns if c not in TEXT_COLUMNS]
        if not self.text_columns or bad:
            raise ValueError(
                f"score_clip_text.text_columns must list some of {', '.join(TEXT_COLUMNS)}, "
                f"got {list(self.text_columns)}"
            )
        if not -1 <= self.min_score <= 1:
            raise ValueError(f"score_clip_text.min_score must be a cosine in [-1, 1], got {self.min_score}")


class ScoreClipText:
    reads: tuple[str, ...] = (
        "frames_jpeg",
    )  # the columns it is given (process.call_clip_stage); and text_columns
    writes: tuple[str, ...] = (
        "clip_text_score",
        "clip_text_source",
        "clip_text_model",
        "clip_text_random_weights",
    )

    def __init__(self, config: ScoreClipTextConfig) -> None:
        from vidsift.pipeline.clip_models import load_clip

        self.config = config
        self.reads = (*type(self).reads, *config.text_columns)
        self.clip = load_clip(config)

    def text_of(self, row: dict) -> tuple[str | None, str | None]:
        for column in self.config.text_columns:
            text = (row.get(column) or "").strip()
            if text:
                return column, text
        return None, None

    def __call__(self, rows: list[dict]) -> list[dict]:
        import numpy as np
        import torch

        c = self.config
        out = [dict(r) for r in rows]
        todo, texts, frames, owner = [], [], [], []
        for i, row in enumerate(out):
            row["clip_text_model"] = self.clip.label
            row["clip_text_random_weights"] = self.clip.random_weights
            column, text = self.text_of(row)
            row["clip_text_source"] = column
            row["clip_text_score"] = None
            jpegs = row.get("frames_jpeg") or []
            if text is None or not jpegs:
                continue
            owner += [len(todo)] * len(jpegs)
            todo.append(i)
            texts.append(text)
            frames += jpegs
        if not todo:
            return out
        text_feats = self.clip.text_features(texts)
        parts = list(self.clip.image_features(frames, c.frames_per_pass))
        owner_t = torch.as_tensor(owner, device=text_feats.device)
        # each frame against its own clip's text
        cosines = (torch.cat(parts) * text_feats[owner_t]).sum(dim=1).cpu().numpy()
        owner_np = np.asarray(owner)
        for k, i in enumerate(todo):
            row = out[i]
            row["clip_text_score"] = score = float(cosines[owner_np == k].mean())
            if c.min_score and score < c.min_score:
                reject(
                    row,
                    c.STAGE,
                    "caption_mismatch",
                    f"CLIP cosine of frames to {row['clip_text_source']} {score:.3f} < {c.min_score}",
                )
        return out
