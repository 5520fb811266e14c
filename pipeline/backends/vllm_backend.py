"""``vllm`` backend: one vLLM engine per Ray actor; a whole batch goes to ``LLM.chat`` at once, so the
engine's continuous batching keeps the GPU busy. Imported only when a recipe chooses it.

Frames go as JPEG data URLs (one image part each, ``limit_mm_per_prompt`` sized for them); JSON
answers use vLLM's structured outputs (guided decoding against the fields' JSON schema), so the
structure is valid by construction.
"""

from __future__ import annotations

from vidsift.pipeline.backends.base import (
    BackendConfig,
    ChatRequest,
    ChatResult,
    is_random_weights,
    json_schema,
)
from vidsift.pipeline.backends.openai_backend import jpeg_data_url

MAX_IMAGES_PER_PROMPT = 32


class VllmBackend:
    name = "vllm"

    def __init__(self, config: BackendConfig, vision: bool) -> None:
        from vllm import LLM

        self.config = config
        self.model = config.model
        self.random_weights = is_random_weights(config.model)
        kwargs: dict = dict(
            model=config.model,
            tensor_parallel_size=config.tensor_parallel_size,
            gpu_memory_utilization=config.gpu_memory_utilization,
            max_model_len=config.max_model_len,
            dtype="auto" if config.dtype == "auto" else config.dtype,
        )
        if vision:
            kwargs["limit_mm_per_prompt"] = {"image": MAX_IMAGES_PER_PROMPT}
        self.llm = LLM(**kwargs)

    def sampling(self, req: ChatRequest):
        from vllm import SamplingParams

        kwargs: dict = dict(
            max_tokens=req.max_new_tokens or self.config.max_new_tokens, temperature=self.config.temperature
        )
        if req.json_fields:
            schema = json_schema(req.json_fields)
            try:  # vLLM >= 0.10.2
                from vllm.sampling_params import StructuredOutputsParams

                kwargs["structured_outputs"] = StructuredOutputsParams(json=schema)
            except ImportError:  # older releases
                from vllm.sampling_params import GuidedDecodingParams

                kwargs["guided_decoding"] = GuidedDecodingParams(json=schema)
        return SamplingParams(**kwargs)

    def chat(self, requests: list[ChatRequest]) -> list[ChatResult]:
        conversations = []
        for r in requests:
            parts = [{"type": "image_url", "image_url": {"url": jpeg_data_url(f)}} for f in r.frames]
            parts.append({"type": "text", "text": r.prompt})
            conversations.append(
                [{"role": "system", "content": r.system}, {"role": "user", "content": parts}]
            )
        outputs = self.llm.chat(conversations, [self.sampling(r) for r in requests], use_tqdm=False)
        results = []
        for out in outputs:
            c = out.outputs[0]
            finish = "length" if c.finish_reason == "length" else "stop"
            results.append(ChatResult(text=c.text, output_tokens=len(c.token_ids), finish_reason=finish))
        return results
