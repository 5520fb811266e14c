"""``openai`` backend: any OpenAI-compatible chat-completions server (vLLM, SGLang, TGI, Ollama, hosted).

Frames go as base64 JPEG data URLs, one ``image_url`` part each, in time order (the portable form;
every server above takes it). JSON answers ask for ``response_format`` (a JSON schema by default).
Requests run ``concurrency`` at a time. Timeouts, connection errors, 429 and 5xx are retried with
exponential backoff (``Retry-After`` wins when the server sends it); after ``max_retries`` the
request becomes a result with ``error`` set, as do 4xx answers and malformed bodies (not retried:
they would fail the same way again). Uses only the standard library.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from vidsift.pipeline.backends.base import (
    BackendConfig,
    ChatRequest,
    ChatResult,
    is_random_weights,
    json_schema,
)

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class RequestFailed(Exception):
    def __init__(self, message: str, retry: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry = retry
        self.retry_after = retry_after


def jpeg_data_url(image, quality: int = 90) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


class OpenAIBackend:
    name = "openai"

    def __init__(self, config: BackendConfig, vision: bool) -> None:
        self.config = config
        self.model = config.model
        self.random_weights = is_random_weights(config.model)
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        self.headers = {"Content-Type": "application/json"} | (
            {"Authorization": f"Bearer {key}"} if key else {}
        )

    def body(self, req: ChatRequest) -> dict:
        content: list[dict] = [
            {"type": "image_url", "image_url": {"url": jpeg_data_url(f)}} for f in req.frames
        ]
        content.append({"type": "text", "text": req.prompt})
        body: dict = {
            "model": self.model,
            "messages": [{"role": "system", "content": req.system}, {"role": "user", "content": content}],
            "max_tokens": req.max_new_tokens or self.config.max_new_tokens,
            "temperature": self.config.temperature,
        }
        if req.json_fields and self.config.response_format == "json_schema":
            schema = {"name": "caption_fields", "schema": json_schema(req.json_fields), "strict": True}
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif req.json_fields and self.config.response_format == "json_object":
            body["response_format"] = {"type": "json_object"}
        return body

    def post(self, payload: bytes) -> ChatResult:
        request = urllib.request.Request(self.url, data=payload, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:200].decode(errors="replace").strip()
            after = e.headers.get("Retry-After") if e.headers else None
            try:
                retry_after = float(after) if after else None
            except ValueError:
                retry_after = None
            raise RequestFailed(f"HTTP {e.code}: {detail}", e.code in RETRY_STATUS, retry_after) from None
        except TimeoutError as e:
            raise RequestFailed(f"timed out after {self.config.timeout_s:g} s", True) from e
        except (urllib.error.URLError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, TimeoutError):
                raise RequestFailed(f"timed out after {self.config.timeout_s:g} s", True) from e
            raise RequestFailed(f"connection failed: {reason}", True) from e
        try:
            reply = json.loads(raw)
            choice = reply["choices"][0]
            text = choice["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("message.content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise RequestFailed(f"malformed reply ({type(e).__name__}: {e}): {raw[:120]!r}", False) from None
        usage = reply.get("usage") or {}
        finish = choice.get("finish_reason") or "stop"
        return ChatResult(
            text=text,
            output_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason="length" if finish == "length" else "stop",
        )

    def one(self, req: ChatRequest) -> ChatResult:
        payload = json.dumps(self.body(req)).encode()
        delay = self.config.backoff_s
        for attempt in range(self.config.max_retries + 1):
            try:
                return self.post(payload)
            except RequestFailed as e:
                if not e.retry or attempt == self.config.max_retries:
                    tries = f" after {attempt + 1} attempts" if e.retry else ""
                    return ChatResult(text="", finish_reason="error", error=f"{self.url}: {e}{tries}")
                time.sleep(min(e.retry_after, 60.0) if e.retry_after is not None else delay)
                delay *= 2
        raise AssertionError("unreachable")

    def chat(self, requests: list[ChatRequest]) -> list[ChatResult]:
        if len(requests) <= 1 or self.config.concurrency == 1:
            return [self.one(r) for r in requests]
        with ThreadPoolExecutor(min(self.config.concurrency, len(requests))) as pool:
            return list(pool.map(self.one, requests))
