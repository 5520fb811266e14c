"""The ``openai`` backend end to end against a real OpenAI-compatible HTTP server on loopback.

The server (stdlib ``http.server`` in a thread, HTTP/1.1 keep-alive) speaks chat completions; the
request's ``model`` picks its behaviour: answer, answer slowly, fail with 500 a few times or for good,
rate-limit (429) with sane and hostile ``Retry-After`` headers, send a malformed, non-JSON, null-content,
odd-``usage``, huge or trickled body, or redirect to another server. Model ``hostile`` cycles through
all of them, one per request (the curate run below uses it).
"""

import base64
import io
import itertools
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from tests.conftest import make_numbered_clip
from vidsift.pipeline.backends.base import ChatRequest
from vidsift.pipeline.backends.openai_backend import (
    UNREACHABLE,
    OpenAIBackend,
    backoff_delay,
    parse_retry_after,
)
from vidsift.pipeline.stages.caption_expand import CaptionExpand, CaptionExpandConfig
from vidsift.pipeline.stages.caption_vlm import FIELDS, CaptionVlm, CaptionVlmConfig

DESCRIPTION = "A black and white bar code flickers on a grey background while the camera stays static."
KEY = "sk-test-secret-4242"
HUGE = 50 * 2**20  # bytes the "huge" replies announce or send
# what model "hostile" does, request after request (cycled)
HOSTILE = ["ok", "retry-neg", "retry-nan", "retry-huge", "500", "ok", "non-json", "usage-string",
           "content-null", "huge", "huge-undeclared", "ok", "trickle", "redirect", "retry-date",
           "ok"]  # fmt: skip


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.calls: Counter = Counter()
        self.behaviours: Counter = Counter()
        self.bodies: list[dict] = []
        self.auth: list[str | None] = []  # Authorization header of every request
        self.peers: set = set()  # client (host, port): one per connection
        self.hostile = itertools.cycle(HOSTILE)
        self.lock = threading.Lock()
        self.redirect_to = ""  # base URL of the server a "redirect" reply points at

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


def reply_body(text: str, usage=None) -> bytes:
    reply = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"completion_tokens": len((text or "").split())} if usage is None else usage,
    }
    return json.dumps(reply).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

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
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        model = body["model"]
        with srv.lock:
            srv.calls[model] += 1
            srv.bodies.append(body)
            srv.auth.append(self.headers.get("Authorization"))
            srv.peers.add(self.client_address)
            n = srv.calls[model]
            behaviour = next(srv.hostile) if model == "hostile" else model
            srv.behaviours[behaviour] += 1
        if self.path != "/v1/chat/completions":
            return self.send(404, b'{"error": "no such path"}')
        try:
            self.respond(behaviour, n, body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up reading: as it should
            self.close_connection = True

    def respond(self, behaviour: str, n: int, body: dict) -> None:
        if behaviour == "slow":
            time.sleep(1.0)
        if behaviour in ("always-500", "500") or (behaviour == "flaky-500" and n <= 2):
            return self.send(500, b'{"error": "engine overloaded"}')
        if behaviour == "bad-request":
            return self.send(400, b'{"error": "images not supported by this model"}')
        if behaviour == "always-503":
            return self.send(503, b'{"error": "loading the model"}')
        if behaviour == "rate-limited" and n == 1:
            return self.send(429, b'{"error": "slow down"}', {"Retry-After": "0.2"})
        hostile_after = {"retry-neg": "-1", "retry-nan": "NaN", "retry-huge": "1e12",
                         "retry-date": "Wed, 21 Oct 2099 07:28:00 GMT"}  # fmt: skip
        if behaviour in hostile_after:
            return self.send(429, b'{"error": "slow down"}', {"Retry-After": hostile_after[behaviour]})
        if behaviour == "malformed":
            return self.send(200, b'{"choices": [{"message": {"role": "assistant"}}]')  # cut off
        if behaviour == "non-json":
            return self.send(200, b"<html>502 Bad Gateway</html>")
        if behaviour == "content-null":
            return self.send(200, reply_body(None))
        if behaviour == "huge":  # announced: the client must refuse it without reading it
            self.send_response(200)
            self.send_header("Content-Length", str(HUGE))
            self.end_headers()
            block = b" " * 2**20
            for _ in range(HUGE // len(block)):
                self.wfile.write(block)
            return None
        if behaviour == "huge-undeclared":  # no length: the client must stop at its cap
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            self.wfile.write(b'{"choices": [{"message": {"content": "')
            block = b"a" * 2**20
            for _ in range(HUGE // len(block)):
                self.wfile.write(block)
            return None
        if behaviour == "trickle":  # one byte a second, for at most 30 s
            data = reply_body(DESCRIPTION)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            for b in data[:30]:
                self.wfile.write(bytes([b]))
                self.wfile.flush()
                time.sleep(1.0)
            self.close_connection = True
            return None
        if behaviour == "redirect":
            location = self.server.redirect_to + "/chat/completions"
            return self.send(307, b"", {"Location": location})
        text = json.dumps({f: f"the {f}" for f in FIELDS}) if "response_format" in body else DESCRIPTION
        usage = "many tokens" if behaviour == "usage-string" else None
        self.send(200, reply_body(text, usage))


def start(srv: Server) -> Server:
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture()
def server():
    srv = start(Server())
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture()
def elsewhere():
    """A second server: where ``redirect`` replies point."""
    srv = start(Server())
    yield srv
    srv.shutdown()
    srv.server_close()


def backend(server, model, **kw):
    cfg = CaptionVlmConfig(backend="openai", model=model, base_url=server.url, **({"backoff_s": 0.05} | kw))
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
    [res] = b.chat([ChatRequest(system="s", prompt="p")])
    assert res.finish_reason == "error" and "timed out after 0.3 s" in res.error and "2 attempts" in res.error
    assert res.transient and server.calls["slow"] == 2


def test_500_is_retried_with_backoff_then_succeeds(server):
    b = backend(server, "flaky-500", max_retries=3)
    [res] = b.chat([ChatRequest(system="s", prompt="p")])
    assert res.error is None and res.text == DESCRIPTION
    assert server.calls["flaky-500"] == 3


def test_backoff_doubles_with_jitter():
    import random

    rng = random.Random(0)
    delays = [[backoff_delay(1.0, a, rng) for a in range(4)] for _ in range(50)]
    for row in delays:
        assert all(0.5 * 2**a <= d <= 2**a for a, d in enumerate(row))
    assert len({round(row[0], 6) for row in delays}) > 40  # jittered: not all in step


def test_persistent_500_becomes_a_per_request_error(server):
    b = backend(server, "always-500", max_retries=2)
    results = b.chat([ChatRequest(system="s", prompt="p")] * 2)
    assert server.calls["always-500"] == 6
    for res in results:
        assert res.finish_reason == "error" and "HTTP 500" in res.error and "after 3 attempts" in res.error
        assert res.transient


def test_429_waits_for_retry_after(server, monkeypatch):
    waits = []
    monkeypatch.setattr(time, "sleep", waits.append)
    b = backend(server, "rate-limited", backoff_s=0.0)
    [res] = b.chat([ChatRequest(system="s", prompt="p")])
    assert res.error is None and server.calls["rate-limited"] == 2
    assert waits == [0.2]


def test_retry_after_is_parsed_and_bounded():
    assert parse_retry_after("2.5") == 2.5 and parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("1e12") == 60.0 and parse_retry_after("1e12", limit=0.1) == 0.1
    for bad in ("-1", "NaN", "inf", "-inf", "soon", "", None):
        assert parse_retry_after(bad) is None, bad
    assert parse_retry_after("Wed, 21 Oct 2099 07:28:00 GMT") == 60.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: at once


@pytest.mark.parametrize(
    "model, waited", [("retry-neg", "backoff"), ("retry-nan", "backoff"), ("retry-huge", 0.3)]
)
def test_hostile_retry_after_never_raises(server, monkeypatch, model, waited):
    """429 with Retry-After -1 once aborted a whole run (time.sleep raised ValueError)."""
    waits = []
    monkeypatch.setattr(time, "sleep", waits.append)
    b = backend(server, model, backoff_s=0.05, max_retries=2, max_retry_after_s=0.3)
    [res] = b.chat([ChatRequest(system="s", prompt="p")])
    # these models answer 429 every time: the result is an error after 3 tries, never an exception
    assert res.finish_reason == "error" and "HTTP 429" in res.error and res.transient
    assert server.calls[model] == 3 and len(waits) == 2
    if waited == "backoff":
        assert 0.025 <= waits[0] <= 0.05 and 0.05 <= waits[1] <= 0.1
    else:
        assert waits == [waited, waited]


@pytest.mark.parametrize(
    "model, error",
    [
        ("malformed", "malformed reply"),
        ("non-json", "malformed reply (JSONDecodeError"),
        ("content-null", "message.content is null"),
        ("huge", f"reply of {HUGE} bytes is larger than max_response_mb (1)"),
        ("huge-undeclared", "reply larger than max_response_mb (1)"),
    ],
)
def test_bad_bodies_are_errors_not_crashes_and_not_retried(server, model, error):
    b = backend(server, model, max_response_mb=1.0)
    [res] = b.chat([ChatRequest(system="s", prompt="p")])
    assert res.finish_reason == "error" and error in res.error and not res.transient
    assert server.calls[model] == 1


def test_usage_that_is_not_an_object_counts_no_tokens(server):
    """``usage`` as a string once aborted a whole run (AttributeError)."""
    [res] = backend(server, "usage-string").chat([ChatRequest(system="s", prompt="p")])
    assert res.error is None and res.text == DESCRIPTION and res.output_tokens == 0


def test_trickled_reply_ends_at_the_overall_deadline(server):
    b = backend(server, "trickle", timeout_s=1.5, max_retries=0)
    [res] = b.chat([ChatRequest(system="s", prompt="p")])
    # the body trickles at 1 byte/s: every read returns in time, only the overall deadline ends it
    assert res.finish_reason == "error" and "timed out after 1.5 s" in res.error and res.transient
    assert server.calls["trickle"] == 1


def test_redirect_is_not_followed_and_the_key_stays_home(server, elsewhere, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server.redirect_to = elsewhere.url
    [res] = backend(server, "redirect").chat([ChatRequest(system="s", prompt="p")])
    assert res.finish_reason == "error" and "HTTP 307 redirect to " + elsewhere.url in res.error
    assert not res.transient and server.auth == [f"Bearer {KEY}"]  # the key went to base_url only
    assert sum(elsewhere.calls.values()) == 0 and elsewhere.auth == []


def test_one_connection_is_kept_open_across_requests(server):
    b = backend(server, "ok", concurrency=1)
    results = b.chat([ChatRequest(system="s", prompt=f"p{i}") for i in range(5)])
    results += b.chat([ChatRequest(system="s", prompt="again")])
    assert all(r.error is None for r in results) and server.calls["ok"] == 6
    assert len(server.peers) == 1  # one TCP connection served all six


@pytest.mark.parametrize(
    "model, error",
    [("always-500", "HTTP 500"), ("always-503", "HTTP 503"), ("retry-neg", "HTTP 429")],
)
def test_a_server_that_keeps_failing_or_rate_limiting_is_unavailable(server, model, error):
    """5xx or 429 after every retry: the error says the server is unavailable (a clip stage's rejection of
    it becomes ``transient_failure``, retried by a rerun), as for a server that cannot be reached."""
    [res] = backend(server, model, max_retries=2, backoff_s=0.0, max_retry_after_s=0.0).chat(
        [ChatRequest(system="s", prompt="p")]
    )
    assert res.finish_reason == "error" and error in res.error and "after 3 attempts" in res.error
    assert res.error.endswith(f"({UNREACHABLE})") and res.transient and server.calls[model] == 3


@pytest.mark.parametrize(
    "model, error", [("bad-request", "HTTP 400"), ("malformed", "malformed reply"), ("redirect", "HTTP 307")]
)
def test_a_request_the_server_refuses_is_not_unavailable(server, model, error):
    """A 4xx other than 429, a bad body, a redirect: the server answered, so the clip's rejection stays."""
    [res] = backend(server, model, max_retries=2).chat([ChatRequest(system="s", prompt="p")])
    assert res.finish_reason == "error" and error in res.error and UNREACHABLE not in res.error
    assert not res.transient and server.calls[model] == 1


def test_a_connection_the_server_never_accepts_is_unavailable():
    """A server whose accept queue is full drops new connections (as a host that is down behind a
    firewall does): the connection times out, and that is the server unavailable, not a slow reply."""
    import socket

    with socket.socket() as full, socket.socket() as held:
        full.bind(("127.0.0.1", 0))
        full.listen(0)  # one pending connection fills the queue; later SYNs are dropped
        held.connect(full.getsockname())
        url = f"http://127.0.0.1:{full.getsockname()[1]}/v1"
        cfg = CaptionVlmConfig(backend="openai", model="m", base_url=url, max_retries=1, backoff_s=0.0,
                               timeout_s=0.3)  # fmt: skip
        [res] = OpenAIBackend(cfg, vision=True).chat([ChatRequest(system="s", prompt="p")])
    assert res.finish_reason == "error" and "connection failed: TimeoutError" in res.error
    assert res.error.endswith(f"after 2 attempts ({UNREACHABLE})") and res.transient


def test_refused_connection_is_a_transient_error():
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = CaptionVlmConfig(backend="openai", model="m", base_url=f"http://127.0.0.1:{port}/v1",
                           max_retries=1, backoff_s=0.0)  # fmt: skip
    [res] = OpenAIBackend(cfg, vision=True).chat([ChatRequest(system="s", prompt="p")])
    assert res.finish_reason == "error" and "connection failed" in res.error and res.transient
    assert UNREACHABLE in res.error


@pytest.fixture(scope="module")
def clip_row(tmp_path_factory):
    path = make_numbered_clip(tmp_path_factory.mktemp("clip") / "c.mp4", frames=30)
    return {"clip_id": "c1", "clip_mp4": path.read_bytes(), "duration_s": 1.2, "caption_qa_flags": []}


def test_caption_stages_through_the_server(server, clip_row):
    url = server.url
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
    url = server.url
    cfg = CaptionVlmConfig(backend="openai", model="always-500", base_url=url, max_retries=1, backoff_s=0.01)
    [row] = CaptionVlm(cfg)([clip_row])
    assert row["reject_stage"] == "caption_vlm" and row["reject_reason"] == "caption_vlm_failed"
    assert "HTTP 500" in row["reject_detail"] and "engine overloaded" in row["reject_detail"]
    cfg = CaptionExpandConfig(backend="openai", model="malformed", base_url=url)
    [row] = CaptionExpand(cfg)([{**clip_row, "caption_vlm": DESCRIPTION}])
    assert row["caption"] is None and "malformed reply" in row["caption_error"]
    assert {"expand_error", "short_error"} <= set(row["caption_qa_flags"])


HOSTILE_RECIPE = """
[run]
group_size = 1

[[stage]]
name = "probe"

[[stage]]
name = "analyze"

[[stage]]
name = "split_scenes"
min_scene_s = 0.5

[[stage]]
name = "transcode"
preset = "veryfast"
{captions}
[[stage]]
name = "write_shards"
"""

CAPTION_STAGE = """
[[stage]]
name = "{name}"
resources = {{ num_cpus = 0.25 }}
backend = "openai"
model = "hostile"
base_url = "{url}"
# the cycle has at most four retried replies in a row: 8 retries keep interleaved requests from running out
# (a clip whose server is still busy after every retry is a transient_failure, and the run would exit 3)
max_retries = 8
backoff_s = 0.01
timeout_s = 1.5
max_response_mb = 1.0
max_retry_after_s = 0.05
concurrency = 4
"""


def test_curate_through_a_hostile_server_accounts_for_every_clip(server, elsewhere, tmp_path):
    """A real ``vidsift curate`` whose caption stages talk to a server that cycles through every hostile
    reply: the run exits 0, every clip is accepted with the server's caption or rejected/flagged with the
    reason, the redirect target never sees the key, and the key is in no output file."""
    import os
    import subprocess

    import pyarrow.parquet as pq

    from tests.conftest import vidsift_exe

    server.redirect_to = elsewhere.url
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        make_numbered_clip(src / f"v{i}.mp4", frames=100 + 25 * i, cut_every=25, size=(160, 96))
    stages = ("caption_vlm", "caption_expand")
    captions = "".join(CAPTION_STAGE.format(name=n, url=server.url) for n in stages)
    recipe = tmp_path / "hostile.toml"
    recipe.write_text(HOSTILE_RECIPE.format(captions=captions))
    out = tmp_path / "out"
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    result = subprocess.run(
        [vidsift_exe(), "curate", str(recipe), "--input", str(src), "--output", str(out), "--quiet"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert set(HOSTILE) <= set(server.behaviours), server.behaviours  # every hostile reply was sent
    assert sum(elsewhere.calls.values()) == 0  # the redirect was never followed
    assert set(server.auth) == {f"Bearer {KEY}"}

    def rows(table):
        return [r for f in sorted((out / table).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]

    clips, rejected, videos = rows("clips"), rows("rejected"), rows("videos")
    assert len(videos) == 2 and sum(v["num_clips_accepted"] for v in videos) == len(clips)
    assert len(clips) + len(rejected) == sum(v["num_scenes"] for v in videos) >= 4
    for c in clips:
        assert c["caption_vlm"] == DESCRIPTION and c["caption_vlm_backend"] == "openai"
        flags = c["caption_qa_flags"] or []
        # the expansion either came from the server or failed with its error flagged
        assert c["caption"] == DESCRIPTION or ("expand_error" in flags and c["caption_error"]), c
    for r in rejected:
        assert r["reject_stage"] == "caption_vlm" and r["reject_reason"] == "caption_vlm_failed"
        assert r["reject_detail"].startswith(server.url)
    problems = [r["reject_detail"] for r in rejected]
    problems += [c["caption_error"] for c in clips if c["caption_error"]]
    assert problems, "the hostile server should have cost some clips a caption"
    known = ("malformed reply", "max_response_mb", "timed out", "redirect", "HTTP 429", "HTTP 500")
    assert all(any(k in p for k in known) for p in problems), problems
    leaked = [p for p in out.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert not leaked
