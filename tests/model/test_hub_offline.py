"""Hub names: loading a model never switches the process offline; offline is the user's (or recipe's) call."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # starts Ray / loads models in subprocesses

CHECK = """
import os
from vidsift.model.sample import InputError, expand_prompt
from vidsift.pipeline.text_encoder import TextEncoder

enc = TextEncoder(max_tokens=8)  # the bundled MiniLM, a local path
emb, mask = enc(["a cat jumps"])
assert emb.shape[0] == 1 and mask.any()
try:
    expand_prompt("a cat", "/nonexistent/model")
except InputError:
    pass
print("HF_HUB_OFFLINE" in os.environ)
"""


def test_loading_models_leaves_the_environment_alone(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_HOME"] = str(tmp_path / "hf")  # an empty cache: nothing may come from it either
    r = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "False"  # nobody set HF_HUB_OFFLINE behind the user's back


LOAD = """
import sys
from vidsift.pipeline.text_encoder import TextEncoder
try:
    TextEncoder("someone/tiny-encoder", offline=sys.argv[1] == "offline")
except OSError as e:
    print("OSError", type(e).__name__)
"""


def test_a_hub_name_goes_to_the_hub_unless_offline_is_asked_for(tmp_path):
    """A loopback stand-in for the hub (HF_ENDPOINT) that answers 404 and records what was asked."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            self.send_error(404)

        do_HEAD = do_GET  # noqa: N815

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}")
    try:
        for mode in ("offline", "online"):
            r = subprocess.run([sys.executable, "-c", LOAD, mode], capture_output=True, text=True, env=env,
                               timeout=300)  # fmt: skip
            assert r.returncode == 0 and "OSError" in r.stdout, r.stderr[-2000:]  # no such repo, either way
            asked = [h for h in hits if "someone/tiny-encoder" in h]
            if mode == "offline":
                assert asked == []  # local files only: the hub was not asked for the model
        assert asked  # online: the name was looked up on the hub
    finally:
        server.shutdown()
        server.server_close()


def test_offline_on_request_reads_only_local_files(tmp_path, monkeypatch):
    from vidsift.pipeline.text_encoder import TextEncoder

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # empty: the name is in no cache
    with pytest.raises(OSError):
        TextEncoder("sentence-transformers/paraphrase-MiniLM-L3-v2", offline=True)  # no network attempt
    assert "HF_HUB_OFFLINE" not in os.environ
    assert TextEncoder(offline=True, max_tokens=8).dim == 384  # the bundled default is local: works offline
