"""Captioning backends behind one interface (``base.ChatBackend``); each is imported only when chosen."""

from __future__ import annotations

from vidsift.pipeline.backends.base import BackendConfig, ChatBackend, ChatRequest, ChatResult


def load_backend(config: BackendConfig, vision: bool) -> ChatBackend:
    """The backend a stage's config names, with its model loaded (``vision``: a VLM with frames)."""
    if config.backend == "transformers":
        from vidsift.pipeline.backends.transformers_backend import TransformersBackend

        return TransformersBackend(config, vision)
    if config.backend == "vllm":
        from vidsift.pipeline.backends.vllm_backend import VllmBackend

        return VllmBackend(config, vision)
    from vidsift.pipeline.backends.openai_backend import OpenAIBackend

    return OpenAIBackend(config, vision)


__all__ = ["BackendConfig", "ChatBackend", "ChatRequest", "ChatResult", "load_backend"]
