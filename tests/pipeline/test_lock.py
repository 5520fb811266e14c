"""The output lock: a second writer refuses at once naming the holder; stale locks are taken over."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from vidsift.pipeline.lock import LOCK_NAME, OutputLocked, output_lock

HOLD = """
import sys, time
from vidsift.pipeline.lock import output_lock, OutputLocked
try:
    with output_lock(sys.argv[1], "select"):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
except OutputLocked as e:
    print("refused:", e, flush=True)
    sys.exit(2)
"""

PLAIN = ("probe", "analyze", "split_scenes", "transcode", "write_shards")  # the required stages


def holder_file(path, **fields) -> None:
    base = {"host": socket.gethostname(), "pid": 1, "started": "2026-01-01T00:00:00+00:00",
            "command": "curate", "token": "t", "heartbeat": time.time(), "proc_start": 0}  # fmt: skip
    (path / LOCK_NAME).write_text(json.dumps(base | fields))


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    with output_lock(out, "curate") as me:
        held = json.loads((out / LOCK_NAME).read_text())
        assert (held["host"], held["pid"], held["command"]) == (socket.gethostname(), me.pid, "curate")
        other = subprocess.run([sys.executable, "-c", HOLD, str(out), "0"], capture_output=True, text=True)
        assert other.returncode == 2, other.stdout + other.stderr
        line = other.stdout.strip()
        assert line.startswith(f"refused: {out} is being written by vidsift curate")
        assert f"host {me.host}, pid {me.pid}, started {me.started}" in line and "\n" not in line
        with pytest.raises(OutputLocked, match=f"pid {me.pid}"):  # this process too: one writer
            with output_lock(out, "dedup"):
                pass
    assert not (out / LOCK_NAME).exists()  # released
    again = subprocess.run([sys.executable, "-c", HOLD, str(out), "0"], capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.strip() == "held"


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path, capsys):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    pid = int(gone.stdout)
    holder_file(tmp_path, pid=pid)
    with output_lock(tmp_path, "curate") as me:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == me.token
    err = capsys.readouterr().err
    assert f"took over the stale lock of vidsift curate (host {socket.gethostname()}, pid {pid}," in err
    assert "is gone" in err


def test_lock_of_a_reused_pid_is_taken_over(tmp_path, capsys):
    import os

    holder_file(tmp_path, pid=os.getppid(), proc_start=1)  # the pid lives, but started at another time
    with output_lock(tmp_path, "curate"):
        pass
    assert "is gone" in capsys.readouterr().err


def test_another_hosts_lock_is_live_until_its_heartbeat_is_old(tmp_path, capsys):
    holder_file(tmp_path, host="gpu-node-7", pid=4242, heartbeat=time.time())
    with pytest.raises(OutputLocked, match="host gpu-node-7, pid 4242, started 2026-01-01"):
        with output_lock(tmp_path, "curate", stale_after_s=60):
            pass
    holder_file(tmp_path, host="gpu-node-7", pid=4242, heartbeat=time.time() - 61)
    with output_lock(tmp_path, "curate", stale_after_s=60) as me:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == me.token
    assert "heartbeat is 61 s old" in capsys.readouterr().err


def test_unreadable_lock_is_taken_over(tmp_path, capsys):
    (tmp_path / LOCK_NAME).write_text("{half a lo")
    with output_lock(tmp_path, "curate"):
        pass
    assert "unreadable" in capsys.readouterr().err


def test_heartbeat_renews_the_lock(tmp_path):
    with output_lock(tmp_path, "curate", heartbeat_s=0.02) as me:
        beats = set()
        for _ in range(500):
            beats.add(json.loads((tmp_path / LOCK_NAME).read_text())["heartbeat"])
            if len(beats) >= 3:
                break
            time.sleep(0.01)
        assert len(beats) >= 3 and min(beats) >= me.heartbeat
    assert not list(tmp_path.iterdir())  # no lock and no temporary file left


def test_on_s3_with_conditional_writes(monkeypatch, capsys):
    moto = pytest.importorskip("moto")
    import boto3

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with moto.mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="runs")
        out = "s3://runs/a/run"
        with output_lock(out, "curate") as me:
            body = json.loads(s3.get_object(Bucket="runs", Key=f"a/run/{LOCK_NAME}")["Body"].read())
            assert body["token"] == me.token
            with pytest.raises(OutputLocked, match=f"s3://runs/a/run is being written by .*pid {me.pid}"):
                with output_lock(out, "encode"):
                    pass
        assert "Contents" not in s3.list_objects_v2(Bucket="runs", Prefix=f"a/run/{LOCK_NAME}")
        old = {"host": "elsewhere", "pid": 7, "started": "x", "command": "curate", "token": "old",
               "heartbeat": time.time() - 1000}  # fmt: skip
        s3.put_object(Bucket="runs", Key=f"a/run/{LOCK_NAME}", Body=json.dumps(old).encode())
        with output_lock(out, "curate", stale_after_s=120) as me:
            body = json.loads(s3.get_object(Bucket="runs", Key=f"a/run/{LOCK_NAME}")["Body"].read())
            assert body["token"] == me.token
        assert "took over the stale lock of vidsift curate (host elsewhere, pid 7" in capsys.readouterr().err


@pytest.mark.slow
def test_two_curates_on_one_output(tmp_path):
    """The second refuses at once naming the first; the first ends with exactly the rows of a lone run."""
    import pyarrow.parquet as pq

    from tests.conftest import make_numbered_clip, run_cli, vidsift_exe

    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        make_numbered_clip(src / f"v{i}.mp4", frames=50 + 10 * i, cut_every=25)
    recipe = tmp_path / "plain.toml"
    recipe.write_text("\n".join(f'[[stage]]\nname = "{n}"' for n in PLAIN))
    args = ["curate", str(recipe), "--input", str(src), "--set", "split_scenes.min_scene_s=0.5", "--quiet",
            "--output"]  # fmt: skip
    out = tmp_path / "out"
    first = subprocess.Popen([vidsift_exe(), *args, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for _ in range(6000):  # until the first holds the lock (it takes it before it starts Ray)
        if (out / LOCK_NAME).exists() or first.poll() is not None:
            break
        time.sleep(0.01)
    second = run_cli(*args, str(out))
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err.decode()[-2000:]
    assert second.returncode == 2
    line = second.stderr.strip()
    assert line.startswith(f"vidsift: error: {out} is being written by vidsift curate (host ")
    assert f"pid {first.pid}, started " in line and "\n" not in line
    assert not (out / LOCK_NAME).exists()
    alone = tmp_path / "alone"
    assert run_cli(*args, str(alone)).returncode == 0

    def rows(run):
        return {t: sorted(str(sorted(r.items())) for f in sorted((run / t).glob("*.parquet"))
                          for r in pq.read_table(f, columns=["clip_id" if t != "videos" else "video_id",
                                                             "source_uri"]).to_pylist())
                for t in ("clips", "rejected", "videos")}  # fmt: skip

    assert rows(out) == rows(alone) and rows(out)["clips"]


def test_plain_lock_without_boto3_keeps_one_holder(tmp_path, monkeypatch, capsys):
    """Without boto3 the S3 lock is plain writes and a read-back (through pipeline/storage, which takes local
    paths too): one holder, a stale version cannot be replaced, and the user is told it is not atomic."""
    import builtins

    from vidsift.pipeline import lock as lock_module

    real_import = builtins.__import__

    def no_boto3(name, *args, **kwargs):
        if name == "boto3":
            raise ImportError("no boto3 here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_boto3)
    plain = lock_module._s3_lock(str(tmp_path / LOCK_NAME))
    assert isinstance(plain, lock_module._PlainS3Lock) and "not atomic" in capsys.readouterr().err
    first = plain.create(b'{"token": "a"}')
    assert first == '{"token": "a"}' and plain.create(b'{"token": "b"}') is None
    assert plain.replace(b'{"token": "c"}', "stale") is None and plain.read()[1] == first
    second = plain.replace(b'{"token": "a", "heartbeat": 2}', first)
    plain.delete(first)  # an old version deletes nothing
    assert plain.read()[1] == second
    plain.delete(second)
    assert plain.read() is None


@pytest.mark.parametrize(
    "command",
    [
        ["select", "{run}", "--where", "motion_score > 0", "--output", "{out}"],
        ["dedup", "{out}"],
        ["encode", "{out}", "--vae", "{run}/vae.safetensors"],
    ],
)
def test_select_dedup_and_encode_refuse_an_output_another_process_writes(tmp_path, capsys, command):
    """The lock that curate takes is taken by every command that writes a run folder."""
    from vidsift.pipeline.cli import main

    out, run = tmp_path / "out", tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out), "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        args = [a.format(out=out, run=run) for a in command]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "select" in err and str(holder.pid) in err and "Traceback" not in err
    finally:
        holder.kill()
        holder.wait()
