"""The one small interface every captioning backend implements, and the settings they share.

A backend turns a list of chat requests (a system prompt, a user prompt, optionally frames, optionally
a set of JSON fields to answer with) into a list of results of the same length and order. Per-request
failures (a server that keeps answering 500, a malformed reply, a timeout) are results with ``error``
set; only programming errors raise.

Backends (``pipeline/backends/__init__.py`` maps the recipe key to the loader):

- ``transformers``: in-process ``from_pretrained`` (CPU or one GPU), the model's own chat template;
- ``vllm``: one vLLM engine per Ray actor, a whole batch per call (continuous batching on the GPU);
- ``openai``: any OpenAI-compatible chat-completions server (vLLM, SGLang, TGI, Ollama, hosted).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

RANDOM_WEIGHTS_MARKER = "vidsift_random_weights.json"  # written by tests/make_tiny_models.py


@dataclass(frozen=True, kw_only=True)
class BackendConfig:
    """Settings of a model stage's backend; the captioning stage configs extend this."""

    STAGE: ClassVar[str] = "stage"  # the stage name used in error messages

    backend: str = "transformers"  # transformers | vllm | openai
    model: str = ""  # Hugging Face name or local path; for openai, the served model name
    max_new_tokens: int = 256  # cap on generated tokens per answer
    temperature: float = 0.0  # 0: greedy (deterministic)
    batch_size: int = 8  # rows per call of the stage (Ray Data batch); one generate() per batch
    # transformers
    device: str = "auto"  # auto (cuda when present) | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bfloat16 on GPU, float32 on CPU) | float32 | bfloat16 | float16
    # vllm
    tensor_parallel_size: int = 1  # GPUs per engine; give the stage as many num_gpus
    gpu_memory_utilization: float = 0.85  # share of GPU memory vLLM may take
    max_model_len: int = 16384  # context length the engine reserves KV cache for
    # openai
    base_url: str = ""  # e.g. http://localhost:8000/v1
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key ("" or unset: none sent)
    timeout_s: float = 120.0  # overall deadline of one HTTP request: connect, send and the whole reply
    max_retries: int = 4  # retries on timeouts, connection errors, 429 and 5xx
    backoff_s: float = 1.0  # first retry delay; doubles each retry, jittered x0.5..1 (a Retry-After wins)
    max_retry_after_s: float = 60.0  # a server's Retry-After is bounded to 0..this (seconds)
    max_response_mb: float = 32.0  # a reply body larger than this is an error (the rest is not read)
    concurrency: int = 8  # requests in flight per actor
    response_format: str = "json_schema"  # how JSON answers are requested: json_schema | json_object | none

    def __post_init__(self) -> None:
        s = self.STAGE
        if self.backend not in ("transformers", "vllm", "openai"):
            raise ValueError(f"{s}.backend must be transformers, vllm or openai, got {self.backend!r}")
        if not self.model:
            raise ValueError(f"{s}.model is required (a Hugging Face name, a local path or a served name)")
        if self.backend == "openai" and not self.base_url:
            raise ValueError(f"{s}.base_url is required with backend = 'openai'")
        if self.max_new_tokens < 1:
            raise ValueError(f"{s}.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"{s}.temperature must be >= 0, got {self.temperature}")
        if self.batch_size < 1:
            raise ValueError(f"{s}.batch_size must be >= 1, got {self.batch_size}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"{s}.dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if self.timeout_s <= 0 or self.max_retries < 0 or self.backoff_s < 0 or self.concurrency < 1:
            raise ValueError(f"{s}: need timeout_s > 0, max_retries >= 0, backoff_s >= 0, concurrency >= 1")
        if not self.max_response_mb > 0:
            raise ValueError(f"{s}.max_response_mb must be > 0, got {self.max_response_mb}")
        if not 0 <= self.max_retry_after_s <= 60:
            raise ValueError(f"{s}.max_retry_after_s must be in 0..60, got {self.max_retry_after_s}")
        if self.response_format not in ("json_schema", "json_object", "none"):
            raise ValueError(f"{s}.response_format must be json_schema, json_object or none")
        if not 0 < self.gpu_memory_utilization <= 1 or self.tensor_parallel_size < 1:
            raise ValueError(f"{s}: need 0 < gpu_memory_utilization <= 1 and tensor_parallel_size >= 1")


@dataclass(frozen=True)
class ChatRequest:
    system: str
    prompt: str
    frames: list[Any] = field(default_factory=list)  # PIL images, in time order
    fps: float = 0.0  # rate of ``frames`` when sent as one video (native video input)
    as_video: bool = False  # send frames as one video where the backend/model takes video
    json_fields: tuple[str, ...] = ()  # answer with a JSON object of these string fields
    max_new_tokens: int | None = None  # None: the backend's default


@dataclass(frozen=True)
class ChatResult:
    text: str  # the answer ("" on error)
    output_tokens: int = 0
    finish_reason: str = "stop"  # stop | length | error
    error: str | None = None  # why the request failed, for reject_detail
    repaired_json: bool = False  # JSON came from constrained field-by-field decoding after a bad answer
    transient: bool = False  # the error may go away on a later try (server down, timeouts, 429/5xx)


class ChatBackend(Protocol):
    name: str  # the backend key
    model: str  # model name or path, as configured (recorded in the shards)
    random_weights: bool  # the model is a random-weight test checkpoint

    def chat(self, requests: list[ChatRequest]) -> list[ChatResult]: ...


def is_random_weights(model: str) -> bool:
    """True for a local checkpoint that tests/make_tiny_models.py built (it leaves a marker file)."""
    marker = Path(model) / RANDOM_WEIGHTS_MARKER
    try:
        return bool(json.loads(marker.read_text()).get("random_weights"))
    except (OSError, ValueError):
        return False


def json_schema(fields: tuple[str, ...]) -> dict:
    return {
        "type": "object",
        "properties": {f: {"type": "string"} for f in fields},
        "required": list(fields),
        "additionalProperties": False,
    }


def parse_json_fields(text: str, fields: tuple[str, ...]) -> dict[str, str] | None:
    """The answer's JSON object reduced to ``fields`` (strings), or None when it is not valid JSON with
    every field. Tolerates a Markdown code fence around the object, which chat models like to add."""
    body = text.strip()
    if body.startswith("```"):
        body = body.strip("`")
        body = body[body.find("{") :] if "{" in body else body
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        obj = json.loads(body[start : end + 1])
    except ValueError:
        return None
    if not isinstance(obj, dict) or any(f not in obj for f in fields):
        return None
    out = {}
    for f in fields:
        v = obj[f]
        if isinstance(v, list):
            v = ", ".join(str(x) for x in v)
        out[f] = v.strip() if isinstance(v, str) else ("" if v is None else json.dumps(v))
    return out
