"""One video's fault never ends a run: unexpected exceptions, hung decodes, per-video budgets, transient
storage failures. Real clips made with the tests' encoder, the real per-video code path (``video_task``,
the Ray Data UDF, called in-process so a fault can be injected for one video)."""

from __future__ import annotations

import tempfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import make_numbered_clip
from vidsift.pipeline import process, storage
from vidsift.pipeline.dataflow import video_task
from vidsift.pipeline.recipe import build_recipe
from vidsift.pipeline.stages import analyze, core

PLAIN = ("probe", "analyze", "split_scenes", "transcode", "write_shards")  # the required stages


@pytest.fixture(scope="module")
def two_clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    return [make_numbered_clip(d / f"v{i}.mp4", frames=60, cut_every=30 + i) for i in range(2)]


def recipe(*overrides: str):
    """The required stages only (the per-video path with nothing optional)."""
    stages = [{"name": n} for n in PLAIN]
    return build_recipe({"stage": stages}, ["split_scenes.min_scene_s=0.5", *overrides])


def run_videos(paths, rec) -> dict[str, tuple[dict, list[dict]]]:
    """``video_task`` over ``paths`` -> {uri: (video row, clip rows)}."""
    items = [{"source_uri": str(p), "group": "g000000", "duplicate_of": None} for p in paths]
    batch = pa.Table.from_pylist(items)
    out: dict = {}
    with tempfile.TemporaryDirectory() as parts:  # the per-video task writes each video row to a part there
        for row in video_task(batch, rec.to_dict(), parts).to_pylist():
            if row["row_kind"] == "video":
                (video,) = pq.read_table(row["part"]).drop_columns(["rows_of_video"]).to_pylist()
                out.setdefault(video["source_uri"], [None, []])[0] = video
            else:
                out.setdefault(row["source_uri"], [None, []])[1].append(row)
    return {k: tuple(v) for k, v in out.items()}


def test_an_exception_in_one_video_is_that_videos_internal_error(two_clips, monkeypatch):
    real = core.transcode_clips

    def broken_for_one(path, video, cuts, config):
        if path.endswith("v1.mp4"):
            raise KeyError("injected bug")
        return real(path, video, cuts, config)

    monkeypatch.setattr(core, "transcode_clips", broken_for_one)
    rows = run_videos(two_clips, recipe())
    good, bad = rows[str(two_clips[0])], rows[str(two_clips[1])]
    assert good[0]["status"] == "ok" and good[0]["reason"] is None and good[1]
    assert all(c["clip_mp4"] for c in good[1] if not c["reject_reason"])
    assert bad[0]["status"] == "rejected" and bad[0]["reason"] == "internal_error" and bad[1] == []
    assert "Traceback" in bad[0]["detail"] and "KeyError: 'injected bug'" in bad[0]["detail"]
    assert "broken_for_one" in bad[0]["detail"]  # where it was raised


def test_a_decode_past_its_budget_ends_as_decode_timeout(two_clips, monkeypatch):
    real = analyze.decode_frames
    seen = []

    def hanging(container, log, max_errors, fps):  # a decoder that stops making progress after 5 frames
        for item in real(container, log, max_errors, fps):
            seen.append(item[0])
            if len(seen) > 5:
                import time

                time.sleep(0.2)
            yield item

    monkeypatch.setattr(analyze, "decode_frames", hanging)
    rec = recipe("probe.decode_budget_x=0", "probe.decode_budget_min_s=0.5")
    video, clips = run_videos(two_clips[:1], rec)[str(two_clips[0])]
    assert video["status"] == "rejected" and video["reason"] == "decode_timeout" and clips == []
    assert "budget of 0.5 s" in video["detail"] and "probe.decode_budget_x" in video["detail"]
    assert len(seen) < 60  # it ended before the end of the video


def test_a_transcode_that_blocks_ends_as_transcode_timeout(two_clips, monkeypatch):
    """Transcode reads the source again: a read that blocks there (simulated: the cut never returns) ends at
    the probe's decode budget with the clips rejected as transcode_timeout, and the video is accounted."""
    import threading

    release = threading.Event()

    def blocked(path, video, cuts, config):
        release.wait(60)
        return {}

    monkeypatch.setattr(core, "transcode_clips", blocked)
    try:
        rec = recipe("probe.decode_budget_x=0", "probe.decode_budget_min_s=3")
        video, clips = run_videos(two_clips[:1], rec)[str(two_clips[0])]
    finally:
        release.set()
    assert video["status"] == "ok" and clips
    assert {c["reject_reason"] for c in clips} == {"transcode_timeout"}
    assert all("budget of 3.0 s" in c["reject_detail"] and c["reject_stage"] == "transcode" for c in clips)
    assert process.account_video(video, clips)["reason"] == "no_clip_accepted"


def test_budget_relative_to_duration():
    from vidsift.pipeline.stages.probe import ProbeConfig, decode_budget_s

    cfg = ProbeConfig(decode_budget_x=10, decode_budget_min_s=60)
    assert decode_budget_s({"duration_s": 30.0}, cfg) == 300.0
    assert decode_budget_s({"duration_s": 1.0}, cfg) == 60.0
    assert decode_budget_s({"duration_s": None}, cfg) == 60.0
    off = ProbeConfig(decode_budget_x=0, decode_budget_min_s=0)
    assert decode_budget_s({"duration_s": 30.0}, off) is None


@pytest.mark.parametrize(
    "error, reason",
    [
        (ConnectionResetError("peer reset"), "transient_failure"),
        (OSError("reading key 'v.mp4': AWS Error NETWORK_CONNECTION"), "transient_failure"),
        (OSError(28, "No space left on device"), "transient_failure"),
        (PermissionError(13, "Permission denied"), "unreadable"),
        (OSError("AWS Error ACCESS_DENIED"), "unreadable"),
    ],
)
def test_fetch_failures_are_transient_or_permanent(two_clips, monkeypatch, error, reason):
    def failing(location, spool_dir=""):
        raise error

    monkeypatch.setattr(storage, "local_file", failing)
    video, clips = process.process_video(str(two_clips[0]), "g000000", recipe())
    assert video["status"] == "rejected" and video["reason"] == reason and clips == []
    assert str(error) in video["detail"]


# Loaded by every Python process of the run (driver and Ray workers) through PYTHONPATH: while
# VIDSIFT_TEST_FAIL_FETCH names an input, fetching it fails as an unreachable S3 endpoint does.
FAIL_HOOK = """
import os
_uri = os.environ.get("VIDSIFT_TEST_FAIL_FETCH")
if _uri:
    import contextlib
    from vidsift.pipeline import storage
    _real = storage.local_file

    @contextlib.contextmanager
    def _failing(location, spool_dir=""):
        if str(location) == _uri:
            raise OSError("When reading information for key 'v1.mp4': AWS Error NETWORK_CONNECTION (test)")
        with _real(location, spool_dir) as path:
            yield path

    storage.local_file = _failing
"""


FULL_DISK_HOOK = """
import errno, os
if os.environ.get("VIDSIFT_TEST_FULL_DISK"):
    from vidsift.pipeline import storage
    _real = storage.write_table_atomic

    def _full(table, location, *args, **kwargs):
        if "/_parts/g000001/" in str(location):  # the second group's part files: the disk is full by then
            raise OSError(errno.ENOSPC, "No space left on device", str(location))
        return _real(table, location, *args, **kwargs)

    storage.write_table_atomic = _full
"""


@pytest.mark.slow
def test_an_output_that_cannot_be_written_stops_the_run_with_one_line_and_resumes(two_clips, tmp_path):
    """The output's disk fills up mid-run (writes of the second group's parts fail with ENOSPC, in the Ray
    workers): the run stops with one line naming the error and exit 3, the first group stays finished, and
    the same command afterwards completes the run with the ids of a run that never failed."""
    import os
    import subprocess

    from tests.conftest import vidsift_exe

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FULL_DISK_HOOK)
    recipe_file = tmp_path / "plain.toml"
    recipe_file.write_text("\n".join(f'[[stage]]\nname = "{n}"' for n in PLAIN))

    def curate(out, full: bool):
        env = {**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        env["VIDSIFT_TEST_FULL_DISK"] = "1" if full else ""
        args = [vidsift_exe(), "curate", str(recipe_file), "--input", str(two_clips[0].parent),
                "--output", str(out), "--quiet", "--set", "split_scenes.min_scene_s=0.5",
                "--set", "run.group_size=1", "--set", "run.max_videos_in_flight=1"]  # fmt: skip
        return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)

    out = tmp_path / "out"
    first = curate(out, full=True)
    assert first.returncode == 3, first.stderr[-3000:]
    assert "Traceback" not in first.stderr
    [line] = [x for x in first.stderr.splitlines() if x.startswith("vidsift: error:")]
    assert "the run stopped on a storage error: OSError: [Errno 28] No space left on device" in line
    assert "rerun the same command to resume" in line
    assert sorted(p.name for p in (out / "_done").iterdir()) == ["g000000"]
    second = curate(out, full=False)
    assert second.returncode == 0, second.stderr[-3000:]
    assert sorted(p.name for p in (out / "_done").iterdir()) == ["g000000", "g000001"]
    got = sorted(r["clip_id"] for f in sorted((out / "clips").glob("*.parquet"))
                 for r in pq.read_table(f, columns=["clip_id"]).to_pylist())  # fmt: skip
    clean = sorted(c["clip_id"] for _, clips in run_videos(two_clips, recipe()).values() for c in clips
                   if not c.get("reject_reason"))  # fmt: skip
    assert got == clean and got


@pytest.mark.slow
def test_transient_failure_leaves_its_group_for_the_rerun(two_clips, tmp_path):
    """The fetch of one input fails transiently: its group is written but not finished, the run exits 3
    saying so; the rerun completes it with the ids of a run that never failed."""
    import os
    import subprocess

    import pyarrow.parquet as pq

    from tests.conftest import vidsift_exe

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAIL_HOOK)
    recipe_file = tmp_path / "plain.toml"
    recipe_file.write_text("\n".join(f'[[stage]]\nname = "{n}"' for n in PLAIN))
    src = two_clips[0].parent

    def curate(out, fail: str = "", *extra):
        env = {**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        env["VIDSIFT_TEST_FAIL_FETCH"] = fail
        args = [vidsift_exe(), "curate", str(recipe_file), "--input", str(src), "--output", str(out),
                "--quiet",
                "--set", "split_scenes.min_scene_s=0.5", "--set", "run.group_size=1", *extra]  # fmt: skip
        return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)

    def ids(out):
        return sorted(
            (r["source_uri"], r["clip_id"])
            for t in ("clips", "rejected")
            for f in sorted((out / t).glob("*.parquet"))
            for r in pq.read_table(f, columns=["source_uri", "clip_id"]).to_pylist()
        )

    out = tmp_path / "out"
    first = curate(out, str(two_clips[1]))
    assert first.returncode == 3, first.stderr[-2000:]
    assert "1 videos or clips in 1 groups failed transiently" in first.stderr
    assert "Traceback" not in first.stderr
    assert sorted(p.name for p in (out / "_done").iterdir()) == ["g000000"]  # v1's group waits for a rerun
    [video] = pq.read_table(out / "videos" / "g000001.parquet").to_pylist()
    assert video["reason"] == "transient_failure" and "NETWORK_CONNECTION" in video["detail"]
    assert (out / "_tries" / "g000001").read_text().strip() == "1"
    second = curate(out)
    assert second.returncode == 0, second.stderr[-2000:]
    assert sorted(p.name for p in (out / "_done").iterdir()) == ["g000000", "g000001"]
    assert not (out / "_tries" / "g000001").exists()
    clean = sorted((c["source_uri"], c["clip_id"]) for _, clips in run_videos(two_clips, recipe()).values()
                   for c in clips)  # fmt: skip
    assert ids(out) == clean and {u for u, _ in clean} == {str(p) for p in two_clips}  # as if it never failed


def test_transient_groups_are_held_back_then_final_then_reopened(tmp_path):
    """The bookkeeping of ``hold_back_transient`` over ``run.transient_tries`` runs and ``--retry-failed``."""
    from vidsift.pipeline.stages.write_shards import WriteShardsConfig, done_groups, write_group

    def write(group, reason):
        video = {"source_uri": f"/v/{group}.mp4", "group": group, "status": "rejected", "reason": reason}
        write_group(tmp_path, group, [], [], [video], WriteShardsConfig())

    tries = recipe("run.transient_tries=4").run.transient_tries
    for n in range(tries):
        write("g0", "transient_failure")
        write("g1", "undecodable")
        held = process.hold_back_transient(tmp_path, ["g0", "g1"], tries)
        if n < tries - 1:
            assert held == {"g0": (1, n + 1)} and done_groups(tmp_path) == {"g1"}
        else:  # the last try: finished, with the reason kept
            assert held == {} and done_groups(tmp_path) == {"g0", "g1"}
    assert not (tmp_path / process.TRIES / "g0").exists()
    assert process.reopen_transient(tmp_path) == ["g0"] and done_groups(tmp_path) == {"g1"}


def test_a_caption_server_out_of_reach_is_a_transient_failure(tmp_path):
    """A clip whose caption server refuses every connection, or answers 500 to every try, is held for a
    rerun (transient_failure); one whose request the server refuses (400) is a permanent rejection."""
    import socket

    from tests.pipeline.test_caption_openai import Server, start
    from vidsift.pipeline.stages.caption_vlm import CaptionVlm, CaptionVlmConfig
    from vidsift.pipeline.stages.write_shards import WriteShardsConfig, done_groups, write_group

    clip = make_numbered_clip(tmp_path / "c.mp4", frames=30)
    row = {"clip_id": "c1", "clip_mp4": clip.read_bytes(), "duration_s": 1.2, "caption_qa_flags": [],
           "source_uri": "/v/a.mp4", "group": "g0", "start_frame": 0}  # fmt: skip
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    server = start(Server())
    verdicts, details = {}, {}
    try:
        cases = [("down", closed, "m"), ("failing", server.url, "always-500")]
        for name, url, model in [*cases, ("refused", server.url, "bad-request")]:
            cfg = CaptionVlmConfig(backend="openai", model=model, base_url=url, max_retries=1, backoff_s=0.0)
            [out] = process.apply_clip_stage(CaptionVlm(cfg), [row])
            verdicts[name] = (out["reject_stage"], out["reject_reason"])
            details[name] = out["reject_detail"]
    finally:
        server.shutdown()
        server.server_close()
    assert verdicts["down"] == ("caption_vlm", "transient_failure")
    assert verdicts["failing"] == ("caption_vlm", "transient_failure")
    assert verdicts["refused"] == ("caption_vlm", "caption_vlm_failed")
    assert "connection failed: ConnectionRefusedError" in details["down"] and "HTTP 500" in details["failing"]
    assert all(details[k].endswith("(server unavailable)") for k in ("down", "failing"))
    assert "HTTP 400" in details["refused"] and "server unavailable" not in details["refused"]
    rejected = {**row, "video_id": "v", "end_frame": 30, "reject_stage": "caption_vlm",
                "reject_reason": "transient_failure", "reject_detail": details["down"]}  # fmt: skip
    video = {"source_uri": "/v/a.mp4", "group": "g0", "status": "ok"}
    write_group(tmp_path / "run", "g0", [], [rejected], [video], WriteShardsConfig())
    assert process.hold_back_transient(tmp_path / "run", ["g0"]) == {"g0": (1, 1)}
    assert done_groups(tmp_path / "run") == set()


class HeldFifo:
    """A FIFO whose writer (a thread) writes ``data`` and then holds it open without writing more, as a
    stalled mount or a stuck producer does: a reader blocks once it has read ``data``. ``release()``
    closes the writer (the reader then sees the end of the file)."""

    def __init__(self, path, data: bytes) -> None:
        import os
        import threading

        os.mkfifo(path)
        self.path, self.data = str(path), data
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._write, daemon=True)
        self.thread.start()

    def _write(self) -> None:
        with open(self.path, "wb") as f:  # blocks until a reader opens the FIFO
            f.write(self.data)
            f.flush()
            self.stop.wait(600)

    def release(self) -> None:
        import os

        self.stop.set()
        if self.thread.is_alive():  # no reader ever came: open it once so the writer's open returns
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            self.thread.join(60)
            os.close(fd)


def decode_threads() -> list:
    import threading

    return [t for t in threading.enumerate() if t.name == "vidsift-decode"]


@pytest.mark.timeout(120)  # the hang guard: a blocked read that is not ended would hang here
def test_a_fifo_input_is_rejected_unread(two_clips, tmp_path):
    fifo = HeldFifo(tmp_path / "held.mp4", two_clips[0].read_bytes()[:3000])
    try:
        video, clips = process.process_video(fifo.path, "g000000", recipe())
    finally:
        fifo.release()
    assert video["status"] == "rejected" and video["reason"] == "unreadable" and clips == []
    assert "not a regular file (a FIFO)" in video["detail"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("written", ["nothing", "half"])
def test_a_read_blocked_inside_ffmpeg_ends_as_decode_timeout(two_clips, tmp_path, monkeypatch, written):
    """The analysis pass reads a FIFO whose writer stops (after nothing, or after half the file): the read
    blocks inside FFmpeg, no frame comes, and still the video ends as ``decode_timeout`` at its budget while
    the other video of the batch is curated. The FIFO is opened non-blocking with PyAV's read timeout, so
    the blocked read itself ends: no decode thread is left behind. (The probe rejects FIFOs, so the probe
    reads the real file and the analysis pass is pointed at the FIFO.)"""
    data = two_clips[0].read_bytes()
    fifo = HeldFifo(tmp_path / "held.mp4", b"" if written == "nothing" else data[: len(data) // 2])
    real_open = analyze.open_input

    def open_the_fifo(path, timeout=None):
        return real_open(fifo.path if path == str(two_clips[0]) else path, timeout)

    monkeypatch.setattr(analyze, "open_input", open_the_fifo)
    rec = recipe("probe.decode_budget_x=0", "probe.decode_budget_min_s=1")
    try:
        rows = run_videos(two_clips, rec)
        for thread in decode_threads():
            thread.join(60)  # a hang guard: the interrupted read ends the thread at once
        blocked = decode_threads()  # (before the writer is released: a thread still here is blocked)
    finally:
        fifo.release()
    video, clips = rows[str(two_clips[0])]
    assert video["status"] == "rejected" and video["reason"] == "decode_timeout" and clips == []
    assert "budget of 1.0 s" in video["detail"] and "probe.decode_budget_min_s" in video["detail"]
    other, other_clips = rows[str(two_clips[1])]
    assert other["status"] == "ok" and any(not c["reject_reason"] for c in other_clips)
    assert blocked == []


@pytest.mark.timeout(120)
def test_a_decoder_that_never_returns_is_left_behind(two_clips, tmp_path, monkeypatch):
    """A read that no timeout can end (a FIFO opened blocking, as a stalled network mount blocks a regular
    file's read in the kernel): the caller stops waiting at the budget, the video is ``decode_timeout`` and
    the decode thread is left behind; once the read returns, that thread ends."""
    import av

    from vidsift.pipeline.stages.probe import DecodeTimeout
    from vidsift.pipeline.stages.split_scenes import SplitScenesConfig

    data = two_clips[0].read_bytes()
    fifo = HeldFifo(tmp_path / "held.mp4", data[: len(data) // 2])
    monkeypatch.setattr(analyze, "open_input", lambda path, timeout=None: av.open(path))  # no interrupt
    probe = process.probe_video(str(two_clips[0]), recipe().stage("probe"))
    try:
        with pytest.raises(DecodeTimeout) as caught:
            config = analyze.AnalyzeConfig()
            analyze.analyze_video(fifo.path, probe, config, SplitScenesConfig(), budget_s=0.5)
        left = [t for t in decode_threads() if t.is_alive()]
    finally:
        fifo.release()
    message = str(caught.value)
    assert caught.value.left_behind and "did not return" in message and "left behind" in message
    assert len(left) == 1  # blocked in FFmpeg's read of the FIFO
    left[0].join(60)  # the writer closed: the read returns, the thread ends (60 s: a hang guard)
    assert not left[0].is_alive()


@pytest.mark.timeout(120)
def test_a_probe_read_that_blocks_ends_as_decode_timeout(two_clips, monkeypatch):
    """The probe's read of a regular file blocks (a stalled mount; here the file object's read waits on an
    event): after ``decode_budget_min_s`` without progress the video is ``decode_timeout``."""
    import contextlib
    import threading

    from vidsift.pipeline.stages import probe

    never = threading.Event()

    class Stalled:
        def read(self, n=-1):
            never.wait(600)
            return b""

    @contextlib.contextmanager
    def stalled(location):
        yield Stalled()

    monkeypatch.setattr(probe.storage, "open_input", stalled)
    try:
        row = probe.probe_video(str(two_clips[0]), probe.ProbeConfig(decode_budget_min_s=0.5))
    finally:
        never.set()
    assert row["status"] == "rejected" and row["reason"] == "decode_timeout"
    assert "no progress reading the file for 0.5 s" in row["detail"] and row["size_bytes"] > 0
