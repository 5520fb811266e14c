"""``openai`` backend: any OpenAI-compatible chat-completions server (vLLM, SGLang, TGI, Ollama, hosted).

Frames go as base64 JPEG data URLs, one ``image_url`` part each, in time order (the portable form;
every server above takes it). JSON answers ask for ``response_format`` (a JSON schema by default).
Requests run ``concurrency`` at a time on threads the backend keeps, each with its own keep-alive
connection (``http.client``; standard library only).

Nothing a server sends raises: every reply becomes a ``ChatResult``, with ``error`` set when it is
not a usable answer.

- Retried (``transient``): timeouts, refused or dropped connections, a body cut off mid-read, 408,
  409, 429 and 5xx. The delay doubles from ``backoff_s`` with jitter (x0.5..1); a ``Retry-After``
  header (seconds or an HTTP date) replaces it, bounded to 0..``max_retry_after_s`` (60 s); a
  negative, NaN or unparsable one is ignored. After ``max_retries`` the result carries the last
  error and ``transient = True``.
- The server unavailable: when the last try could not connect (refused, reset, unresolvable, no answer
  to the connection within ``timeout_s``) or was answered 429 or 5xx, the error also says ``UNREACHABLE``
  ("server unavailable"); the clip stages' rejection of such a clip is a ``transient_failure``
  (``process.apply_clip_stage``): its group is left for a rerun, as for an input that storage could not
  serve. Other 4xx, bad bodies and read timeouts of a connected server stay permanent rejections.
- Not retried: other 4xx, a redirect (3xx: never followed, so the key in ``Authorization`` never
  reaches another address), a body over ``max_response_mb`` (the rest is not read), a body that is
  not JSON or lacks ``choices[0].message.content`` as a string (``content: null`` included).
- ``timeout_s`` is the overall deadline of one request, connection to last byte: a server that
  trickles its reply is cut off when it passes (a timer shuts the socket down, so no blocked read
  outlives it).
- Odd but harmless fields are tolerated: ``usage`` that is not an object or a token count that is
  not an integer counts 0 tokens; an unknown ``finish_reason`` reads as ``stop``.
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import io
import json
import math
import os
import random
import socket
import ssl
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

from vidsift.pipeline.backends.base import (
    BackendConfig,
    ChatRequest,
    ChatResult,
    is_random_weights,
    json_schema,
)

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
# in the error of a request whose last try could not connect (refused, reset, unresolvable, a connection
# timeout) or was answered 429 or 5xx, after every retry: the clip stages' rejection of it is a transient
# failure (``process.apply_clip_stage``), retried by a rerun
UNREACHABLE = "server unavailable"
MAX_RETRY_AFTER_S = 60.0
READ_CHUNK = 64 << 10


class RequestFailed(Exception):
    """One try failed; ``retry``: worth another; ``unavailable``: the server could not be reached or said it
    cannot serve now (429, 5xx)."""

    def __init__(
        self, message: str, retry: bool, retry_after: float | None = None, unavailable: bool = False
    ) -> None:
        super().__init__(message)
        self.retry = retry
        self.retry_after = retry_after
        self.unavailable = unavailable


def jpeg_data_url(image, quality: int = 90) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def parse_retry_after(
    value: str | None, limit: float = MAX_RETRY_AFTER_S, now: float | None = None
) -> float | None:
    """Seconds to wait from a ``Retry-After`` header, within [0, ``limit``]; None when absent or
    meaningless (negative, NaN, infinite, neither a number nor an HTTP date): the backoff applies then."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None or when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
        seconds = max(0.0, seconds)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, limit)


def backoff_delay(base: float, attempt: int, rng: random.Random) -> float:
    """``base * 2**attempt``, jittered to 50..100% so many actors do not retry in step."""
    return base * (2**attempt) * (0.5 + 0.5 * rng.random())


class OpenAIBackend:
    name = "openai"

    def __init__(self, config: BackendConfig, vision: bool) -> None:
        self.config = config
        self.model = config.model
        self.random_weights = is_random_weights(config.model)
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{config.STAGE}.base_url must be an http(s) URL, got {config.base_url!r}")
        self.scheme, self.host, self.port = parts.scheme, parts.hostname, parts.port
        self.path = parts.path + (f"?{parts.query}" if parts.query else "")
        key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"} | (
            {"Authorization": f"Bearer {key}"} if key else {}
        )
        self.max_body = int(config.max_response_mb * 2**20)
        self.local = threading.local()  # one keep-alive connection per thread
        self.pool: ThreadPoolExecutor | None = None
        self.rng = random.Random()

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

    # -- one HTTP exchange -------------------------------------------------------------------------

    def _connection(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection and whether it was used before (a reused one may have been closed)."""
        conn = getattr(self.local, "conn", None)
        if conn is not None and conn.sock is not None:
            conn.timeout = timeout
            conn.sock.settimeout(timeout)
            return conn, True
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=timeout)
        self.local.conn = conn
        return conn, False

    def _drop_connection(self) -> None:
        conn = getattr(self.local, "conn", None)
        if conn is not None:
            conn.close()
        self.local.conn = None

    def post(self, payload: bytes) -> ChatResult:
        """One request, bounded by ``timeout_s`` overall. Raises ``RequestFailed``, nothing else."""
        deadline = time.monotonic() + self.config.timeout_s
        try:
            try:
                status, headers, raw = self._exchange(payload, deadline)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                if not getattr(e, "reused", False):
                    raise
                # the server closed an idle keep-alive connection: once more on a fresh one
                status, headers, raw = self._exchange(payload, deadline)
        except RequestFailed:
            self._drop_connection()
            raise
        except TimeoutError:
            self._drop_connection()
            raise RequestFailed(f"timed out after {self.config.timeout_s:g} s", True) from None
        except http.client.IncompleteRead as e:
            self._drop_connection()
            raise RequestFailed(f"reply cut off after {len(e.partial)} bytes", True) from None
        except (http.client.HTTPException, OSError) as e:
            self._drop_connection()
            if time.monotonic() >= deadline:
                raise RequestFailed(f"timed out after {self.config.timeout_s:g} s (deadline)", True) from None
            why = f"{type(e).__name__}: {e}"
            raise RequestFailed(f"connection failed: {why}", True, unavailable=True) from None
        return self._parse(status, headers, raw)

    def _exchange(self, payload: bytes, deadline: float) -> tuple[int, http.client.HTTPMessage, bytes]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        conn, reused = self._connection(remaining)
        if conn.sock is None:  # a new connection: not reaching the server at all is the server unavailable
            try:
                conn.connect()
            except ssl.SSLError as e:  # a certificate or TLS mismatch: another try would meet it again
                self._drop_connection()
                raise RequestFailed(f"TLS failed: {e}", False) from None
            except OSError as e:  # refused, unresolvable, no route, no answer within the deadline
                self._drop_connection()
                why = f"{type(e).__name__}: {str(e) or 'no answer'}"
                raise RequestFailed(f"connection failed: {why}", True, unavailable=True) from None
        # the overall deadline: a timer shuts the socket down, which ends any read blocked in it
        expired = threading.Event()

        def cut() -> None:
            expired.set()
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        timer = threading.Timer(remaining, cut)
        timer.daemon = True
        timer.start()
        try:
            try:
                conn.request("POST", self.path, body=payload, headers=self.headers)
                resp = conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                if expired.is_set():
                    raise TimeoutError from None
                self._drop_connection()
                e.reused = reused  # type: ignore[attr-defined]
                raise
            raw = self._read_body(resp, deadline, expired)
            if resp.will_close:
                self._drop_connection()
            return resp.status, resp.headers, raw
        except (OSError, http.client.HTTPException):
            if expired.is_set():
                raise TimeoutError from None
            raise
        finally:
            timer.cancel()

    def _read_body(self, resp: http.client.HTTPResponse, deadline: float, expired: threading.Event) -> bytes:
        length = resp.getheader("Content-Length")
        try:
            declared = int(length) if length is not None else None
        except ValueError:
            declared = None
        if declared is not None and declared > self.max_body:
            raise RequestFailed(
                f"reply of {declared} bytes is larger than max_response_mb ({self.config.max_response_mb:g})",
                False,
            )
        chunks: list[bytes] = []
        total = 0
        while True:
            if time.monotonic() >= deadline or expired.is_set():
                raise TimeoutError
            chunk = resp.read1(READ_CHUNK)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > self.max_body:
                raise RequestFailed(
                    f"reply larger than max_response_mb ({self.config.max_response_mb:g}); not read further",
                    False,
                )
        resp.read()  # nothing is left; this marks the response closed, so the connection can be reused
        if expired.is_set():
            raise TimeoutError
        return b"".join(chunks)

    def _parse(self, status: int, headers: http.client.HTTPMessage, raw: bytes) -> ChatResult:
        if 300 <= status < 400:
            where = headers.get("Location", "?")
            raise RequestFailed(
                f"HTTP {status} redirect to {where[:200]} not followed (the API key is sent to base_url "
                "only; set base_url to the final address)",
                False,
            )
        if status != 200:
            detail = raw[:200].decode(errors="replace").strip()
            after = parse_retry_after(headers.get("Retry-After"), self.config.max_retry_after_s)
            busy = status == 429 or status >= 500
            raise RequestFailed(f"HTTP {status}: {detail}", status in RETRY_STATUS or busy, after, busy)
        try:
            reply = json.loads(raw)
            if not isinstance(reply, dict):
                raise TypeError(f"reply is a JSON {type(reply).__name__}, not an object")
            choices = reply["choices"]
            if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
                raise TypeError("choices is not a non-empty list of objects")
            choice = choices[0]
            message = choice["message"]
            if not isinstance(message, dict):
                raise TypeError("message is not an object")
            text = message["content"]
            if not isinstance(text, str):
                raise TypeError(f"message.content is {'null' if text is None else type(text).__name__}")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise RequestFailed(f"malformed reply ({type(e).__name__}: {e}): {raw[:120]!r}", False) from None
        usage = reply.get("usage")
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        finish = choice.get("finish_reason")
        return ChatResult(
            text=text,
            output_tokens=tokens if type(tokens) is int and tokens >= 0 else 0,
            finish_reason="length" if finish == "length" else "stop",
        )

    # -- retries and concurrency -------------------------------------------------------------------

    def one(self, req: ChatRequest) -> ChatResult:
        payload = json.dumps(self.body(req)).encode()
        for attempt in range(self.config.max_retries + 1):
            try:
                return self.post(payload)
            except RequestFailed as e:
                if not e.retry or attempt == self.config.max_retries:
                    tries = f" after {attempt + 1} attempts" if e.retry else ""
                    tries += f" ({UNREACHABLE})" if e.unavailable else ""
                    return ChatResult(
                        text="", finish_reason="error", error=f"{self.url}: {e}{tries}", transient=e.retry
                    )
                wait = e.retry_after
                if wait is None:
                    wait = backoff_delay(self.config.backoff_s, attempt, self.rng)
                time.sleep(wait)
        raise AssertionError("unreachable")

    def chat(self, requests: list[ChatRequest]) -> list[ChatResult]:
        if len(requests) <= 1 or self.config.concurrency == 1:
            return [self.one(r) for r in requests]
        if self.pool is None:  # kept for the actor's life, so each thread keeps its connection open
            self.pool = ThreadPoolExecutor(self.config.concurrency, thread_name_prefix="openai")
        return list(self.pool.map(self.one, requests))
