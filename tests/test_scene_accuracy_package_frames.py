"""bench/scene_accuracy.py: the TransNetV2 package's frame numbers are moved to PyAV's by time.

The package decodes with ``ffmpeg -f rawvideo`` at a constant rate from the file's start, so a video
stream that starts after the audio gets repeated frames in front, and every index the package reports
is late by them. Checked here with ffmpeg itself, on clips made here.
"""

import shutil
import subprocess

import numpy as np
import pytest

from tests.conftest import REPO, load_script

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")


def _bench():
    return load_script(REPO / "bench" / "scene_accuracy.py")


def _ffmpeg(*args: str) -> bytes:
    return subprocess.run(["ffmpeg", "-v", "error", "-y", *args], capture_output=True, check=True).stdout


def _first_blue_in_package_frames(path) -> tuple[int, int]:
    """(frames, first blue frame) in the rawvideo stream the package's predict_video reads."""
    raw = _ffmpeg("-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "48x27", "pipe:")
    frames = np.frombuffer(raw, np.uint8).reshape(-1, 27, 48, 3).astype(np.int16)
    blue = frames[..., 2].mean(axis=(1, 2)) > frames[..., 0].mean(axis=(1, 2))
    return len(frames), int(np.argmax(blue))


def test_package_frames_map_to_pyav_frames_by_time(tmp_path):
    # 25 red frames, then 25 blue ones (PyAV frames 0..49, the cut at 25), 25 fps
    video = tmp_path / "v.mp4"
    _ffmpeg(
        *("-f", "lavfi", "-i", "color=c=red:s=64x48:r=25:d=1"),
        *("-f", "lavfi", "-i", "color=c=blue:s=64x48:r=25:d=1"),
        *("-filter_complex", "[0:v][1:v]concat=n=2:v=1:a=0[v]", "-map", "[v]"),
        *("-c:v", "libx264", "-pix_fmt", "yuv420p", str(video)),
    )
    # the same video starting 0.4 s after the audio: ffmpeg's rawvideo output repeats its first frame
    late = tmp_path / "late.mp4"
    _ffmpeg(
        *("-itsoffset", "0.4", "-i", str(video)),
        *("-f", "lavfi", "-t", "2.4", "-i", "anullsrc=r=48000:cl=mono"),
        *("-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", str(late)),
    )
    bench = _bench()
    n, cut = _first_blue_in_package_frames(video)
    assert (n, cut) == (50, 25)
    assert bench.package_to_pyav(video, [cut, 0, n - 1]) == [25, 0, 49]
    n, cut = _first_blue_in_package_frames(late)
    assert (n, cut) == (60, 35)  # ten frames (0.4 s) of the first picture in front
    assert bench.package_to_pyav(late, [cut, 0, n - 1]) == [25, 0, 49]
