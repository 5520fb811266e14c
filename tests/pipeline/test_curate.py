"""End to end: ``vidsift curate`` on embedded local Ray, bad inputs, determinism, resume after SIGKILL."""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import av
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, run_cli, vidsift_exe
from tests.pipeline.conftest import HOSTILE_NAMES

# the production defaults (the quick start adds caption models, tested in test_caption_models.py)
RECIPE = str(REPO / "recipes/curate/default.toml")


def read(out: Path, table: str):
    files = sorted((out / table).glob("*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def test_every_bad_input_ends_accepted_or_rejected_with_a_reason(bad_run):
    src, out, result = bad_run
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert not (src / "PWNED").exists() and not Path("PWNED").exists()
    videos = read(out, "videos")
    inputs = sorted(str(p.absolute()) for p in src.iterdir() if p.is_file())
    assert sorted(v["source_uri"] for v in videos) == inputs  # one row per input, names kept
    for v in videos:
        assert v["status"] in ("ok", "rejected")
        if v["status"] == "rejected":
            assert v["reason"] and v["detail"], v
    by_name = {Path(v["source_uri"]).name: v for v in videos}
    assert by_name["empty_result.webm"]["reason"] == "empty_file"
    assert by_name["crunching.mp3"]["reason"] == "no_video_stream"
    assert by_name["with-attached-pic.mp3"]["reason"] == "no_video_stream"
    assert by_name["unknown_sized_non_master_element.mkv"]["reason"] == "invalid_container"
    assert by_name["vvc_400kbps_2s.mp4"]["num_frames"] == 50  # PyAV's FFmpeg decodes VVC
    # the hostile names are copies: the first of each content (sorted by path) is curated, the rest
    # are rejected as duplicates of it
    hostile = sorted(str(src / n) for n in HOSTILE_NAMES)
    firsts = {}
    for uri in sorted(inputs):
        v = by_name[Path(uri).name]
        if v["content_hash"] and v["content_hash"] not in firsts:
            firsts[v["content_hash"]] = uri
    for uri in hostile:
        v = by_name[Path(uri).name]
        if firsts[v["content_hash"]] == uri:
            assert v["status"] == "ok" and v["num_clips_accepted"] >= 1, v
        else:
            assert v["reason"] == "duplicate_file" and firsts[v["content_hash"]] in v["detail"], v
    assert by_name["av1.ivf"]["status"] == "ok" or by_name["av1.ivf"]["reason"] == "duplicate_file"


def test_accounting_adds_up_and_clips_are_real(bad_run):
    _, out, _ = bad_run
    videos, clips, rejected = read(out, "videos"), read(out, "clips"), read(out, "rejected")
    assert sum(v["num_clips_accepted"] or 0 for v in videos) == len(clips)
    assert sum(v["num_scenes"] or 0 for v in videos) == len(clips) + len(rejected)
    assert len({c["clip_id"] for c in clips + rejected}) == len(clips) + len(rejected)
    for r in rejected:
        assert r["reject_stage"] and r["reject_reason"] and r["reject_detail"]
    for c in clips:
        with av.open(__import__("io").BytesIO(c["clip_mp4"])) as container:
            frames = sum(1 for _ in container.decode(video=0))
        assert frames == c["num_frames"] == c["end_frame"] - c["start_frame"]
        assert c["width"] % 2 == 0 and c["height"] % 2 == 0
    manifest = __import__("json").loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["clips_accepted"] == len(clips) and counts["clips_rejected"] == len(rejected)
    assert counts["videos_ok"] + counts["videos_rejected"] == counts["input_files"] == len(videos)
    # exactly one analysis pass per decodable video
    analysed = [
        v for v in videos if v["status"] == "ok" or v["reason"] in ("no_clip_accepted", "undecodable")
    ]
    assert all(v["analysis_decode_passes"] == 1 for v in analysed)
    assert manifest["analysis_decode_passes"] == len(analysed)
    assert all(not v["analysis_decode_passes"] for v in videos if v["reason"] == "duplicate_file")
    split = [v for v in videos if v["num_scenes"] is not None]
    assert split and all(v["scene_detector"] for v in split)
    assert sum(counts["videos_by_scene_detector"].values()) == len(split)
    for v in videos:
        if v["reason"] == "no_clip_accepted":
            assert v["num_scenes"] >= 1 and v["detail"].startswith(
                f"all {v['num_scenes']} candidate clips rejected"
            )
    assert (out / "recipe.resolved.toml").exists()
    assert sorted(p.name for p in (out / "_done").iterdir()) == sorted({v["group"] for v in videos})


@pytest.fixture(scope="module")
def resume_inputs(videos, tmp_path_factory):
    src = tmp_path_factory.mktemp("resume_inputs")
    for name in [
        "cuts/test.mp4",
        "quality/realshort.mp4",
        "bad/corrupted.mp4",
        "bad/av1.ivf",
        "cuts/video-1080p-60fps-2s.mp4",
        "bad/edit-list-discard.mp4",
    ]:
        shutil.copy(videos / name, src / name.replace("/", "_"))
    return src


def _curate_args(src, out):
    return [
        "curate",
        RECIPE,
        "--input",
        str(src),
        "--output",
        str(out),
        "--set",
        "run.group_size=1",
        "--set",
        "split_scenes.min_scene_s=0.5",
        "--set",
        "split_scenes.detector=fast",  # resume and accounting, not shot accuracy
    ]


def _clip_ids(out):
    return sorted((c["clip_id"], c["num_frames"]) for c in read(out, "clips"))


@pytest.fixture(scope="module")
def whole_run(resume_inputs, tmp_path_factory) -> Path:
    """``resume_inputs`` curated once, uninterrupted: the oracle of the resume test, and a finished run over
    six inputs for the refusal test. Read-only."""
    whole = tmp_path_factory.mktemp("whole") / "out"
    result = run_cli(*_curate_args(resume_inputs, whole))
    assert result.returncode == 0, result.stderr[-3000:]
    return whole


def test_sigkill_then_rerun_gives_the_rows_of_an_uninterrupted_run(resume_inputs, whole_run, tmp_path):
    whole = whole_run
    expected = _clip_ids(whole)
    assert len(expected) >= 4

    killed = tmp_path / "killed"
    exe = vidsift_exe()
    proc = subprocess.Popen(
        [exe, *_curate_args(resume_inputs, killed)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        done = killed / "_done"
        if done.is_dir() and len(list(done.iterdir())) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    # the driver and every Ray process it started (raylet, workers: some in sessions of their own), at once,
    # so no worker of the killed run goes on to publish a group afterwards
    import psutil

    started = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for p in started:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    done_before = len(list((killed / "_done").iterdir()))
    assert done_before < 6

    again = run_cli(*_curate_args(resume_inputs, killed))
    assert again.returncode == 0, again.stderr
    assert f"{done_before} groups already done" in again.stderr
    assert _clip_ids(killed) == expected
    # a third run finds everything done and changes nothing
    third = run_cli(*_curate_args(resume_inputs, killed))
    assert "6 groups already done, 0 to run" in third.stderr
    assert _clip_ids(killed) == expected
    assert not list(killed.rglob(".*.tmp-*"))  # partial files of the killed run were cleaned up
    # rows reach the run folder as per-group part files the workers write, until their group is published
    assert not (killed / "_parts").exists() and not (whole / "_parts").exists()


def test_resuming_with_other_inputs_is_refused(resume_inputs, whole_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(whole_run, out)  # a finished run over all six inputs
    done = sorted(p.name for p in (out / "_done").iterdir())
    second = run_cli(*_curate_args(resume_inputs, out), "--limit", "2")
    assert second.returncode == 2
    assert "holds a run over other inputs" in second.stderr and "Traceback" not in second.stderr
    assert sorted(p.name for p in (out / "_done").iterdir()) == done
    assert _clip_ids(out) == _clip_ids(whole_run)


def test_default_recipe_on_sample_clips(sample_run):
    out, result = sample_run  # RECIPE on four sample clips, group_size 2, min_scene_s 1.0 (conftest.py)
    assert result.returncode == 0, result.stderr
    assert "4/4 videos" in result.stderr and "clips accepted" in result.stderr
    import cv2
    import numpy as np
    import pyarrow.dataset as ds

    clips = ds.dataset(out / "clips", format="parquet").to_table().to_pylist()
    assert len(clips) >= 2
    for c in clips:
        preview = cv2.imdecode(np.frombuffer(c["preview_jpeg"], np.uint8), cv2.IMREAD_COLOR)
        assert min(preview.shape[:2]) <= 128
        assert 1 <= len(c["frames_jpeg"]) <= 4 and len(c["frames_s"]) == len(c["frames_jpeg"])
        assert c["start_s"] <= c["frames_s"][0] < c["end_s"]
        assert min(c["width"], c["height"]) <= 480  # transcode.max_short_side
        assert c["end_s"] - c["start_s"] >= 1.0  # split_scenes.min_scene_s as set
    manifest = __import__("json").loads((out / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["recipe"]["run"]["group_size"] == 2
    assert set(manifest["stage_seconds"]) == {"probe", "analyze", "split", "transcode"}
    assert manifest["counts"]["input_hours"] > manifest["counts"]["accepted_hours"] > 0
