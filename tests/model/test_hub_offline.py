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


class RecordingHub:
    """A loopback stand-in for the hub (``HF_ENDPOINT``) that answers 404 and records every path asked."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        hits = self.hits = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                hits.append(self.path)
                self.send_error(404)

            do_HEAD = do_GET  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_offline_is_a_recipe_key_of_the_trainer_and_the_text_stages_off_by_default():
    from vidsift.model.train import TrainConfig, load_recipe
    from vidsift.pipeline.stages.caption_qa import CaptionQaConfig
    from vidsift.pipeline.stages.text_embed import TextEmbedConfig

    assert TrainConfig().offline is False and load_recipe("tiny").offline is False
    assert load_recipe("tiny", ["offline=true"]).offline is True
    assert TextEmbedConfig().offline is False and CaptionQaConfig().offline is False


def test_train_offline_with_an_uncached_hub_name_fails_in_one_line_without_asking_the_hub(shards, tmp_path):
    """``vidsift train --set offline=true``: one line, exit 2, no request; offline=false asks the hub."""
    hub = RecordingHub()
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=hub.url)
    base = [sys.executable, "-m", "vidsift.model", "train", "tiny", "--data", shards, "--set", "steps=1"]
    base += ["--set", 'text_model="someone/tiny-encoder"']
    try:
        offline = [*base, "--out", str(tmp_path / "a"), "--set", "offline=true"]
        r = subprocess.run(offline, capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 2, r.stderr[-2000:]
        assert r.stderr.strip() == (
            "error: text_model: 'someone/tiny-encoder' is neither a local folder nor in the Hugging Face "
            "cache, and offline = true reads local files only (set offline = false to download it)"
        )
        assert hub.hits == []  # no request at all, not even huggingface_hub's own registry look-up
        r = subprocess.run([*base, "--out", str(tmp_path / "b")], capture_output=True, text=True, env=env,
                           timeout=300)  # fmt: skip
        err = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(err) == 1, r.stderr[-2000:]
        assert err[0].startswith("error: text_model: ")
        assert "Traceback" not in r.stderr
        assert any("someone/tiny-encoder" in h for h in hub.hits)  # the default: the hub was asked
    finally:
        hub.close()


@pytest.mark.parametrize("stage", ["text_embed", "caption_qa"])
def test_text_stages_pass_offline_to_the_encoder(stage, tmp_path, monkeypatch):
    from vidsift.pipeline.stages.caption_qa import CaptionQa, CaptionQaConfig
    from vidsift.pipeline.stages.text_embed import TextEmbed, TextEmbedConfig

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    name = "someone/tiny-encoder"
    make = {
        "text_embed": lambda **kw: TextEmbed(TextEmbedConfig(model=name, **kw)),
        "caption_qa": lambda **kw: CaptionQa(CaptionQaConfig(encoder=name, **kw)),
    }[stage]
    with pytest.raises(OSError) as e:
        make(offline=True)
    assert str(e.value).startswith(f"{name!r} is neither a local folder nor in the Hugging Face cache")
    assert len(str(e.value).splitlines()) == 1


def test_finetune_offline_with_an_uncached_hub_id_fails_in_one_line_without_asking_the_hub(shards, tmp_path):
    """The fine-tuner's ``offline`` key (default false) does the same for a diffusers model's hub id."""
    from vidsift.model.finetune.loop import FinetuneConfig

    assert FinetuneConfig().offline is False
    hub = RecordingHub()
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=hub.url)
    base = [sys.executable, "-m", "vidsift.model", "finetune", "tiny", "--data", shards, "--set", "steps=0"]
    base += ["--set", 'model="someone/tiny-wan"']
    try:
        offline = [*base, "--out", str(tmp_path / "a"), "--set", "offline=true"]
        r = subprocess.run(offline, capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 2, r.stderr[-2000:]
        assert r.stderr.strip() == (
            "error: cannot load wan model 'someone/tiny-wan': 'someone/tiny-wan' is neither a local folder "
            "nor in the Hugging Face cache, and offline = true reads local files only (set offline = false "
            "to download it)"
        )
        assert hub.hits == []
        r = subprocess.run([*base, "--out", str(tmp_path / "b")], capture_output=True, text=True, env=env,
                           timeout=300)  # fmt: skip
        # huggingface_hub warns about an argument diffusers passes when asking the hub (no traceback)
        err = r.stderr.strip().splitlines()
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert err[-1].startswith("error: cannot load wan model 'someone/tiny-wan': ")
        assert any("someone/tiny-wan" in h for h in hub.hits)  # the default: the hub was asked
    finally:
        hub.close()
