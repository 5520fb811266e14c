"""Shared fixtures: the sample clips in ../shared/videos and tiny clips generated with ffmpeg."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VIDEOS = REPO.parent / "shared" / "videos"


def load_script(path: Path):
    """A script that is not part of the package (bench/..., bench/scene_eval/...), imported as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def videos() -> Path:
    if not (VIDEOS / "catalog.json").exists():
        pytest.skip(f"sample videos not found at {VIDEOS}")
    return VIDEOS


@pytest.fixture(scope="session")
def catalog(videos: Path) -> dict:
    return json.loads((videos / "catalog.json").read_text())["files"]


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        pytest.fail("ffmpeg is required (apt-get install -y ffmpeg)")
    return exe


def make_numbered_clip(
    path: Path,
    frames: int,
    fps: int = 25,
    size: tuple[int, int] = (96, 64),
    gop: int = 50,
    cut_every: int = 0,
) -> Path:
    """An H.264 clip whose frame i shows its own index as a 8-bit binary bar code (one bar per bit).

    ``cut_every`` > 0 changes the background colour every that many frames (hard cuts).
    Long GOPs make frame-accurate cutting non-trivial: most cuts fall between keyframes.
    """
    import av
    import numpy as np

    w, h = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"g": str(gop), "crf": "12", "bf": "2"}
        for i in range(frames):
            img = np.zeros((h, w, 3), np.uint8)
            if cut_every:
                rng = np.random.default_rng(i // cut_every)
                img[:] = rng.integers(0, 255, 3, dtype=np.uint8)
            for bit in range(8):
                img[: h // 2, bit * (w // 8) : (bit + 1) * (w // 8)] = 255 if (i >> bit) & 1 else 0
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def read_numbers(mp4: bytes | Path) -> list[int]:
    """Decode a clip made by ``make_numbered_clip`` (possibly rescaled) back to frame indices."""
    import io

    import av

    src = io.BytesIO(mp4) if isinstance(mp4, bytes) else str(mp4)
    numbers = []
    with av.open(src) as c:
        for frame in c.decode(video=0):
            img = frame.to_ndarray(format="gray")
            h, w = img.shape
            bars = [
                img[h // 8 : h // 2 - h // 8, b * w // 8 + w // 32 : (b + 1) * w // 8 - w // 32].mean()
                for b in range(8)
            ]
            numbers.append(sum(1 << b for b, v in enumerate(bars) if v > 128))
    return numbers


@contextlib.contextmanager
def embedded_ray(actors: bool = True):
    """One embedded local Ray started as a vidsift command starts its own (``init_ray``), for a module's
    in-process calls to share instead of a start and stop in each: the command finds it running, uses it
    and leaves it up. Stopped on exit."""
    import ray

    from vidsift.pipeline.ray_session import init_ray

    assert init_ray(None, actors=actors)
    try:
        yield
    finally:
        ray.shutdown()


def vidsift_exe() -> str:
    """The console script of the environment running the tests (the venv need not be activated)."""
    beside = Path(sys.executable).parent / "vidsift"
    exe = str(beside) if beside.exists() else shutil.which("vidsift")
    assert exe, "the vidsift console script is not installed (pip install -e .)"
    return exe


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    exe = vidsift_exe()
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd or REPO, timeout=timeout)


# Four short sample videos: enough for accepted clips with captions and a training smoke run, quick to curate.
QUICKSTART_VIDEOS = ["Big_Buck_Bunny_180_10s.webm", "flipping_a_pancake.mkv", "in.mp4", "realshort.mp4"]


@pytest.fixture(scope="session")
def quickstart_run(videos: Path, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The README quick start as it is (``vidsift curate quickstart``, reading the tiny models its first
    command builds into out/tiny-models) run once through the CLI on four short sample videos, shared by the
    caption test and the training smoke test: (run folder, the finished ``vidsift curate`` process)."""
    from tests.make_tiny_models import build_all

    root = tmp_path_factory.mktemp("quickstart")
    build_all(root / "out" / "tiny-models")
    src = root / "videos"
    src.mkdir()
    for name in QUICKSTART_VIDEOS:
        shutil.copy(videos / "quality" / name, src / name)
    # by name, as the README runs it: the recipe shipped as package data (recipes/curate/quickstart.toml)
    result = run_cli("curate", "quickstart", "--input", str(src), "--output", str(root / "run"), cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run", result


@contextlib.contextmanager
def moto_s3(log_dir: Path):
    """moto in server mode on loopback: an S3-compatible endpoint for the test's process and its children.
    Yields the AWS variables that point at it (also set in ``os.environ`` until the end)."""
    import os
    import signal
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = str(Path(sys.executable).parent / "moto_server")
    with open(log_dir / "moto.log", "wb") as log:
        proc = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
        )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(env["AWS_ENDPOINT_URL"], timeout=2)
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.3)
        yield env
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def fsynced(monkeypatch) -> list[str]:
    """The paths ``os.fsync`` flushes from now on, in order (the flushes still happen)."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced
