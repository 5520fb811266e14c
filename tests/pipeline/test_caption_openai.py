"""The ``openai`` backend end to end against a real OpenAI-compatible HTTP server on loopback.

The server (stdlib ``http.server`` in a thread) speaks chat completions; the request's ``model``
picks its behaviour: answer, answer slowly, fail with 500 a few times or for good, rate-limit (429),
or send a malformed body.
"""

import base64
import io
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from tests.conftest import make_numbered_clip
from vidsift.pipeline.backends.base import ChatRequest
from vidsift.pipeline.backends.openai_backend import OpenAIBackend
from vidsift.pipeline.stages.caption_expand import CaptionExpand, CaptionExpandConfig
from vidsift.pipeline.stages.caption_vlm import FIELDS, CaptionVlm, CaptionVlmConfig

DESCRIPTION = "A black and white bar code flickers on a grey background while the camera stays static."


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.calls: Counter = Counter()
        self.bodies: list[dict] = []


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def send(self, code: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802 (http.server's naming)
        assert self.path == "/v1/chat/completions"
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        model = body["model"]
        self.server.calls[model] += 1
        self.server.bodies.append(body)
        n = self.server.calls[model]
        if model == "slow":
            time.sleep(1.0)
        if model == "always-500" or (model == "flaky-500" and n <= 2):
            return self.send(500, b'{"error": "engine overloaded"}')
        if model == "rate-limited" and n == 1:
            return self.send(429, b'{"error": "slow down"}', {"Retry-After": "0.2"})
        if model == "malformed":
            return self.send(200, b'{"choices": [{"message": {"role": "assistant"}}]')  # cut off
        if "response_format" in body:
            text = json.dumps({f: f"the {f}" for f in FIELDS})
        else:
            text = DESCRIPTION
        reply = {
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"completion_tokens": len(text.split())},
        }
        self.send(200, json.dumps(reply).encode())


@pytest.fixture()
def server():
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def backend(server, model, **kw):
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    cfg = CaptionVlmConfig(backend="openai", model=model, base_url=url, **({"backoff_s": 0.05} | kw))
    return OpenAIBackend(cfg, vision=True)


def frames(n=3):
    return [Image.new("RGB", (64, 48), (i * 60, 10, 200)) for i in range(n)]


def test_answer_with_frames_as_data_urls(server):
    b = backend(server, "ok")
    [res] = b.chat([ChatRequest(system="sys", prompt="describe", frames=frames(3), max_new_tokens=77)])
    assert res.error is None and res.text == DESCRIPTION and res.output_tokens == len(DESCRIPTION.split())
    body = server.bodies[0]
    assert body["max_tokens"] == 77 and body["messages"][0] == {"role": "system", "content": "sys"}
    parts = body["messages"][1]["content"]
    urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert len(urls) == 3 and parts[-1] == {"type": "text", "text": "describe"}
    img = Image.open(io.BytesIO(base64.b64decode(urls[1].split(",", 1)[1])))
    assert img.format == "JPEG" and img.size == (64, 48)


def test_json_answers_ask_for_a_schema(server):
    b = backend(server, "ok")
    [res] = b.chat([ChatRequest(system="s", prompt="fields", json_fields=FIELDS)])
    fmt = server.bodies[0]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"]["required"] == list(FIELDS)
    assert json.loads(res.text)["camera"] == "the camera"


def test_slow_reply_times_out_with_a_clear_error(server):
    b = backend(server, "slow", timeout_s=0.3, max_retries=1)
    t0 = time.monotonic()
    [res] = b.chat([ChatRequest(system="s", prompt="p")])
    assert time.monotonic() - t0 < 3
    assert res.finish_reason == "error" and "timed out after 0.3 s" in res.error and "2 attempts" in res.error
    assert server.calls["slow"] == 2


def test_500_is_retried_with_backoff_then_succeeds(server):
    b = backend(server, "flaky-500", max_retries=3)
    t0 = time.monotonic()
    [res] = b.chat([ChatRequest(system="s", prompt="p")])
    assert res.error is None and res.text == DESCRIPTION
    assert server.calls["flaky-500"] == 3
    assert time.monotonic() - t0 >= 0.05 + 0.1  # two backoffs: 0.05 s, then doubled


def test_persistent_500_becomes_a_per_request_error(server):
    b = backend(server, "always-500", max_retries=2)
    results = b.chat([ChatRequest(system="s", prompt="p")] * 2)
    assert server.calls["always-500"] == 6
    for res in results:
        assert res.finish_reason == "error" and "HTTP 500" in res.error and "after 3 attempts" in res.error


def test_429_waits_for_retry_after(server):
    b = backend(server, "rate-limited", backoff_s=0.0)
    t0 = time.monotonic()
    [res] = b.chat([ChatRequest(system="s", prompt="p")])
    assert res.error is None and server.calls["rate-limited"] == 2
    assert time.monotonic() - t0 >= 0.2


def test_malformed_body_is_an_error_not_a_crash_and_not_retried(server):
    b = backend(server, "malformed")
    [res] = b.chat([ChatRequest(system="s", prompt="p")])
    assert res.finish_reason == "error" and "malformed reply" in res.error
    assert server.calls["malformed"] == 1


@pytest.fixture(scope="module")
def clip_row(tmp_path_factory):
    path = make_numbered_clip(tmp_path_factory.mktemp("clip") / "c.mp4", frames=30)
    return {"clip_id": "c1", "clip_mp4": path.read_bytes(), "duration_s": 1.2, "caption_qa_flags": []}


def test_caption_stages_through_the_server(server, clip_row):
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    vlm = CaptionVlm(CaptionVlmConfig(backend="openai", model="ok", base_url=url, num_frames=4))
    [row] = vlm([clip_row])
    assert row["caption_vlm"] == DESCRIPTION and row["caption_subject"] == "the subject"
    assert row["caption_vlm_backend"] == "openai" and row["caption_vlm_model"] == "ok"
    assert row["caption_random_weights"] is False and not row.get("reject_reason")
    assert sum(p["type"] == "image_url" for p in server.bodies[0]["messages"][1]["content"]) == 4
    expand = CaptionExpand(CaptionExpandConfig(backend="openai", model="ok", base_url=url))
    [row] = expand([row])
    assert row["caption"] == DESCRIPTION and row["caption_short"] == DESCRIPTION
    assert row["caption_backend"] == "openai" and row["caption_error"] is None
    assert DESCRIPTION in server.bodies[-1]["messages"][1]["content"][-1]["text"]  # the VLM caption went in


def test_a_clip_whose_server_keeps_failing_is_rejected_with_the_error(server, clip_row):
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    cfg = CaptionVlmConfig(backend="openai", model="always-500", base_url=url, max_retries=1, backoff_s=0.01)
    [row] = CaptionVlm(cfg)([clip_row])
    assert row["reject_stage"] == "caption_vlm" and row["reject_reason"] == "caption_vlm_failed"
    assert "HTTP 500" in row["reject_detail"] and "engine overloaded" in row["reject_detail"]
    cfg = CaptionExpandConfig(backend="openai", model="malformed", base_url=url)
    [row] = CaptionExpand(cfg)([{**clip_row, "caption_vlm": DESCRIPTION}])
    assert row["caption"] is None and "malformed reply" in row["caption_error"]
    assert {"expand_error", "short_error"} <= set(row["caption_qa_flags"])
