"""One video's fault never ends a run: unexpected exceptions, hung decodes, per-video budgets, transient
storage failures. Real clips made with the tests' encoder, the real per-video code path (``video_task``,
the Ray Data UDF, called in-process so a fault can be injected for one video)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tests.conftest import make_numbered_clip
from vidsift.pipeline import process, storage
from vidsift.pipeline.recipe import load_recipe
from vidsift.pipeline.runner import VIDEO_PREFIX, video_task
from vidsift.pipeline.stages import analyze


@pytest.fixture(scope="module")
def two_clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    return [make_numbered_clip(d / f"v{i}.mp4", frames=60, cut_every=30 + i) for i in range(2)]


def recipe(*overrides: str):
    return load_recipe("default", ["split_scenes.min_scene_s=0.5", *overrides])


def run_videos(paths, rec) -> dict[str, tuple[dict, list[dict]]]:
    """``video_task`` over ``paths`` -> {uri: (video row, clip rows)}."""
    items = [{"source_uri": str(p), "group": "g000000", "duplicate_of": None} for p in paths]
    batch = pa.Table.from_pylist(items)
    out: dict = {}
    for row in video_task(batch, rec.to_dict()).to_pylist():
        if row["row_kind"] == "video":
            video = {k[len(VIDEO_PREFIX) :]: v for k, v in row.items() if k.startswith(VIDEO_PREFIX)}
            out.setdefault(video["source_uri"], [None, []])[0] = video
        else:
            out.setdefault(row["source_uri"], [None, []])[1].append(row)
    return {k: tuple(v) for k, v in out.items()}


def test_an_exception_in_one_video_is_that_videos_internal_error(two_clips, monkeypatch):
    real = process.transcode_clips

    def broken_for_one(path, video, cuts, config):
        if path.endswith("v1.mp4"):
            raise KeyError("injected bug")
        return real(path, video, cuts, config)

    monkeypatch.setattr(process, "transcode_clips", broken_for_one)
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
