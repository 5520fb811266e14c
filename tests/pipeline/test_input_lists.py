"""Input lists (``--input list.jsonl|csv|parquet``): ``source_meta`` in every clip; URLs fetched."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import make_numbered_clip, run_cli, vidsift_exe
from vidsift.pipeline.config import RecipeError
from vidsift.pipeline.input_lists import FetchLimits, fetched, read_input_list

RECIPE = "default"
BIG = 2 << 20  # bytes of the oversized URL's body
LIMIT_MB = 1
# the slow URL never sends its body, so it times out whatever the limit; the limit only has to be long
# enough for the other loopback fetches (files of a few hundred KiB at most) on a busy machine
TIMEOUT_S = 4


# ---------------------------------------------------------------- reading lists


def test_jsonl_csv_and_parquet_lists_read_alike(tmp_path):
    (tmp_path / "sub").mkdir()
    rows = [
        {"uri": "a.mp4", "licence": "CC-BY-4.0", "year": 2019, "tags": ["x", "y"]},
        {"uri": "sub/b.mp4", "licence": "CC0-1.0", "year": 2021},
        {"uri": "s3://bucket/c.mp4"},
        {"uri": "http://127.0.0.1:9/d.mp4", "title": "Pfannkuchen, süß"},
    ]
    (tmp_path / "a.mp4").write_bytes(b"12345")
    (tmp_path / "list.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    listed = read_input_list(str(tmp_path / "list.jsonl"))
    a, b = str(tmp_path / "a.mp4"), str(tmp_path / "sub" / "b.mp4")
    assert list(listed) == [a, b, "s3://bucket/c.mp4", "http://127.0.0.1:9/d.mp4"]  # the list's order
    assert listed[a].size == 5 and listed[b].size == 0  # b is missing: probe rejects it later
    assert json.loads(listed[a].source_meta) == {"licence": "CC-BY-4.0", "year": 2019, "tags": ["x", "y"]}
    assert listed["s3://bucket/c.mp4"].source_meta is None
    assert json.loads(listed["http://127.0.0.1:9/d.mp4"].source_meta) == {"title": "Pfannkuchen, süß"}

    csv_text = 'uri,licence,year\na.mp4,CC-BY-4.0,2019\nsub/b.mp4,,2021\n"s3://bucket/c.mp4",,\n'
    (tmp_path / "list.csv").write_text(csv_text)
    listed = read_input_list(str(tmp_path / "list.csv"))
    assert json.loads(listed[a].source_meta) == {"licence": "CC-BY-4.0", "year": "2019"}  # CSV cells: strings
    assert json.loads(listed[b].source_meta) == {"year": "2021"}  # an empty cell is no value
    assert listed["s3://bucket/c.mp4"].source_meta is None

    table = pa.table({"uri": ["a.mp4", "sub/b.mp4"], "licence": ["CC-BY-4.0", None], "year": [2019, 2021]})
    pq.write_table(table, tmp_path / "list.parquet")
    listed = read_input_list(str(tmp_path / "list.parquet"))
    assert json.loads(listed[a].source_meta) == {"licence": "CC-BY-4.0", "year": 2019}
    assert json.loads(listed[b].source_meta) == {"licence": None, "year": 2021}


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("l1.jsonl", '{"uri": "a.mp4"}\n{"path": "b.mp4"}\n', "line 2: no uri"),
        ("l2.jsonl", '{"uri": "a.mp4"}\n{"uri": "a.mp4"}\n', "listed twice (first on line 1)"),
        ("l3.jsonl", '{"uri": "a.mp4"}\nnot json\n', "line 2: not JSON"),
        ("l4.jsonl", '["a.mp4"]\n', "expected a JSON object"),
        ("l5.csv", "path,licence\na.mp4,x\n", "line 2: no uri"),
        ("l6.csv", "uri\n", "holds no rows"),
        ("l7.parquet", "not parquet", "cannot read the input list"),
    ],
)
def test_bad_lists_are_one_line_errors(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_input_list(str(tmp_path / name))
    r = run_cli("curate", RECIPE, "--input", str(tmp_path / name), "--output", str(tmp_path / "out"))
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- fetching URLs on loopback


class Server:
    """A real HTTP server on loopback: ``/files/NAME`` serves a file; ``/big`` states and sends ``BIG``
    bytes; ``/slow`` sends headers and a few bytes, then nothing until the test ends."""

    def __init__(self, root: Path) -> None:
        self.root, self.stop, self.hits = root, threading.Event(), []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                server.hits.append(self.path)
                if self.path.startswith("/files/"):
                    path = server.root / self.path.removeprefix("/files/")
                    if not path.is_file():
                        self.send_error(404)
                        return
                    data = path.read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif self.path.startswith("/big"):
                    self.send_response(200)
                    self.send_header("Content-Length", str(BIG))
                    self.end_headers()
                    try:
                        self.wfile.write(b"\0" * BIG)
                    except OSError:
                        pass  # the client hung up on the oversized body, as it should
                elif self.path.startswith("/busy"):
                    self.send_error(503)
                elif self.path.startswith("/slow"):
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")  # under the limit: only time stops it
                    self.end_headers()
                    self.wfile.write(b"\0" * 100)
                    self.wfile.flush()
                    server.stop.wait(120)  # never finishes while the test runs
                else:
                    self.send_error(404)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    s = Server(root)
    yield s
    s.close()


def test_fetch_limits(server, tmp_path):
    (server.root / "ok.bin").write_bytes(b"v" * 5000)
    limits = FetchLimits(max_bytes=LIMIT_MB << 20, timeout_s=TIMEOUT_S)
    with fetched(f"{server.url}/files/ok.bin", limits, str(tmp_path / "spool")) as path:
        assert Path(path).read_bytes() == b"v" * 5000
    assert list((tmp_path / "spool").iterdir()) == []  # the spool file is gone afterwards
    for url, reason in [
        ("/big", "fetch_too_large"),
        ("/slow", "fetch_timeout"),
        ("/files/missing.mp4", "fetch_failed"),
    ]:
        with pytest.raises(Exception) as e:
            with fetched(server.url + url, limits, str(tmp_path / "spool")):
                pass
        assert getattr(e.value, "reason", None) == reason, (url, e.value)
    assert list((tmp_path / "spool").iterdir()) == []
    # without a stated length the bytes are counted as they come
    small = FetchLimits(max_bytes=1000, timeout_s=5.0)
    with pytest.raises(Exception) as e:
        with fetched(f"{server.url}/files/ok.bin", small):
            pass
    assert e.value.reason == "fetch_too_large"


def test_fetch_failures_become_rejections_or_transient_failures(server, tmp_path):
    import socket

    from vidsift.pipeline.input_lists import process_input
    from vidsift.pipeline.recipe import load_recipe

    recipe = load_recipe("default", [f"run.spool_dir={tmp_path / 'spool'}"])
    limits = FetchLimits(max_bytes=LIMIT_MB << 20, timeout_s=TIMEOUT_S)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/x.mp4"
    cases = {
        f"{server.url}/files/missing.mp4": "fetch_failed",  # 404: the URL is wrong, a rerun will not help
        f"{server.url}/big": "fetch_too_large",
        f"{server.url}/busy": "transient_failure",  # 503: the server's trouble, the group is retried
        closed: "transient_failure",  # connection refused
    }
    for url, reason in cases.items():
        video, clips = process_input(url, "g000000", recipe, None, limits)
        assert (video["status"], video["reason"], clips) == ("rejected", reason, []), (url, video)
        assert video["source_uri"] == url and video["detail"]


# ---------------------------------------------------------------- a curation run from a list


@pytest.mark.slow
def test_curate_from_a_jsonl_list(server, videos, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(videos / "quality" / "realshort.mp4", src / "realshort.mp4")
    make_numbered_clip(src / "cuts.mp4", frames=60, cut_every=30)
    make_numbered_clip(server.root / "remote.mp4", frames=50, cut_every=25, size=(64, 48))
    rows = [
        {"uri": "src/realshort.mp4", "licence": "CC-BY-4.0", "title": "short", "year": 2020},
        {"uri": "src/cuts.mp4", "licence": "CC0-1.0", "title": "bars"},
        {"uri": f"{server.url}/files/remote.mp4", "licence": "CC-BY-4.0", "title": "from http"},
        {"uri": f"{server.url}/big?name=huge.mp4", "licence": "CC0-1.0"},
        {"uri": f"{server.url}/slow", "licence": "CC0-1.0"},
        {"uri": "src/missing.mp4", "licence": "CC0-1.0"},
    ]
    listing = tmp_path / "list.jsonl"
    listing.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    env = {**os.environ, "VIDSIFT_FETCH_MAX_MB": "100000"}  # the recipe's limits win over the environment
    import subprocess

    args = [vidsift_exe(), "curate", RECIPE, "--input", str(listing), "--output", str(out), "--quiet",
            "--set", "split_scenes.min_scene_s=0.5", "--set", "run.group_size=2",
            "--set", "split_scenes.detector=fast",
            "--set", f"run.fetch_max_mb={LIMIT_MB}", "--set", f"run.fetch_timeout_s={TIMEOUT_S}"]  # fmt: skip
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

    def table(name: str) -> list[dict]:
        return pq.read_table(out / name).to_pylist()

    videos_rows = {v["source_uri"]: v for v in table("videos")}
    expected = {}
    for row in rows:
        uri = row["uri"] if row["uri"].startswith("http") else str(tmp_path / row["uri"])
        expected[uri] = {k: v for k, v in row.items() if k != "uri"}
    assert videos_rows.keys() == expected.keys()  # every listed input is accounted for
    for uri, meta in expected.items():
        assert json.loads(videos_rows[uri]["source_meta"]) == meta
    by_reason = {u: v["reason"] for u, v in videos_rows.items() if v["status"] == "rejected"}
    assert by_reason[f"{server.url}/big?name=huge.mp4"] == "fetch_too_large"
    assert by_reason[f"{server.url}/slow"] == "fetch_timeout"
    assert by_reason[str(tmp_path / "src/missing.mp4")] == "file_not_found"
    remote = f"{server.url}/files/remote.mp4"
    # fetched and analysed (its clips may still fail the default filters: numbered bars are not footage)
    why = (videos_rows[remote]["reason"], videos_rows[remote]["detail"])
    assert videos_rows[remote]["analysis_decode_passes"] == 1, why
    assert videos_rows[remote]["num_scenes"] >= 1 and videos_rows[remote]["size_bytes"] > 0

    clips, rejected = table("clips"), table("rejected")
    assert clips, "the run should accept clips"
    for c in clips + rejected:  # every clip row, accepted or rejected, carries its video's metadata
        assert json.loads(c["source_meta"]) == expected[c["source_uri"]], c["source_uri"]
    assert any(c["source_uri"] == remote for c in clips + rejected)

    # select --where on a list column keeps exactly the clips of that licence
    chosen = tmp_path / "cc-by"
    sel = run_cli(
        "select", str(out), "--where", "source_meta.licence == 'CC-BY-4.0'", "--output", str(chosen)
    )
    assert sel.returncode == 0, sel.stderr
    kept = {c["clip_id"] for c in pq.read_table(chosen / "clips").to_pylist()}
    want = {c["clip_id"] for c in clips if expected[c["source_uri"]]["licence"] == "CC-BY-4.0"}
    assert kept == want and kept

    # stats and the export's dataset card count clips per licence
    stats = json.loads(run_cli("stats", str(out), "--json").stdout)
    licences = stats["licences"]
    counted = Counter(expected[c["source_uri"]]["licence"] for c in clips)
    assert licences["clips"] == counted
    assert licences["videos"] == {"CC-BY-4.0": 2, "CC0-1.0": 4}
    terminal = run_cli("stats", str(out)).stdout  # the terminal table and the HTML report show them too
    assert "Licences" in terminal and "CC-BY-4.0" in terminal and "CC0-1.0" in terminal
    assert run_cli("stats", str(out), "--html", str(tmp_path / "r.html")).returncode == 0
    html = (tmp_path / "r.html").read_text()
    assert "Licences (input list)" in html and "<td>CC0-1.0</td>" in html
    exp = run_cli("export", str(out), "--format", "webdataset", "--output", str(tmp_path / "wds"), "--quiet")
    assert exp.returncode == 0, exp.stderr
    assert json.loads(exp.stdout)["licences"] == counted
    card = (tmp_path / "wds" / "README.md").read_text()
    assert all(f"| {k} | {n} |" in card for k, n in counted.items())
    time.sleep(0)  # the slow handler is released by the fixture
