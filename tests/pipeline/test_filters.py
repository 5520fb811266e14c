"""Quality filters on the sample clips: the upstream expectations in catalog.json, bad inputs, select."""

import json
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from vidsift.pipeline.process import process_video
from vidsift.pipeline.recipe import load_recipe
from vidsift.pipeline.stages.dedup import DedupConfig, find_duplicates

RECIPE = REPO / "recipes/curate/default.toml"


@pytest.fixture(scope="module")
def scored(videos, processed):
    names = [
        "quality/video_for_blend_modes.mp4",
        "quality/test_video.mp4",
        "quality/in.mp4",
        "quality/video2.mp4",
        "quality/video3.mp4",
        "quality/flipping_a_pancake.mkv",
        "cuts/video1.mp4",
        "cuts/test1.mp4",
    ]
    return {n: processed(videos / n)[1] for n in names}  # the default recipe (conftest.py)


def _weighted(clips, column):
    total = sum(c["duration_score"] for c in clips)
    return sum(c[column] * c["duration_score"] for c in clips) / total


def test_static_slideshow_scores_as_static(scored):
    for c in scored["quality/test_video.mp4"]:
        assert c["static_score"] > 0.9 and c.get("reject_reason") in ("slideshow", "static")


def test_defocused_bokeh_is_blurry(scored):
    (clip,) = scored["quality/video_for_blend_modes.mp4"]
    assert clip["reject_reason"] == "blurry"
    others = [
        c["sharpness_score"]
        for n, cs in scored.items()
        for c in cs
        if "blend" not in n and c["black_frame_score"] < 0.5
    ]
    assert clip["sharpness_score"] < min(others) / 10


def test_countdown_black_tail_is_black_frames(scored):
    clips = scored["quality/in.mp4"]
    tail = clips[-1]
    assert tail["start_frame"] >= 178 and tail["black_frame_score"] == 1.0
    assert all(c["black_frame_score"] == 0.0 for c in clips[:-1])


def test_talking_head_and_pancake_pass(scored):
    for name in ("quality/video3.mp4", "quality/flipping_a_pancake.mkv", "quality/video2.mp4"):
        long_clips = [c for c in scored[name] if c["duration_score"] >= 2.0]
        assert long_clips and all(not c.get("reject_reason") for c in long_clips), name


def test_largest_text_area_has_the_highest_text_score(scored):
    best = max((c["text_score"], n) for n, cs in scored.items() for c in cs if c["text_score"] is not None)
    assert best[1] == "quality/video2.mp4"


def test_motion_ranks_like_data_juicer_farneback(scored):
    # data-juicer's Farneback reference: video2 3.52 > video1 1.87 > video3 1.17
    m = {
        n: _weighted(scored[n], "motion_score")
        for n in ("quality/video2.mp4", "cuts/video1.mp4", "quality/video3.mp4")
    }
    assert m["quality/video2.mp4"] > m["cuts/video1.mp4"] > m["quality/video3.mp4"]


def test_letterbox_is_detected_and_cropped(scored):
    clip = next(c for c in scored["cuts/test1.mp4"] if not c.get("reject_reason"))
    assert clip["bars_score"] > 0.15 and clip["crop_y"] > 40 and clip["crop_w"] == 640
    assert clip["height"] == clip["crop_h"] and clip["width"] == 640  # transcode applied the crop
    for name in ("quality/video2.mp4", "quality/flipping_a_pancake.mkv", "quality/video_for_blend_modes.mp4"):
        assert all(c["crop_w"] is None and c["bars_score"] == 0.0 for c in scored[name]), name


@pytest.mark.parametrize(
    "name",
    [
        "bad/-video-with-dash-.mp4",
        "bad/unordered.mov",
        "bad/video_90.mov",
        "bad/no-correct-videoframe-format.mov",
        "bad/pigs_in_a_polka.gif",
    ],
)
def test_odd_sources_get_scores_or_reasons(videos, name):
    video, clips = process_video(
        str(videos / name), "g", load_recipe(RECIPE, ["split_scenes.min_scene_s=0.01"])
    )
    assert clips, video
    for c in clips:
        for col in (
            "brightness_score",
            "black_frame_score",
            "frozen_score",
            "duration_score",
            "resolution_score",
        ):
            assert c[col] is not None, (col, c)
    if name.startswith("bad/-video"):  # 1x1 pixel
        assert all(c.get("reject_reason") == "low_resolution" for c in clips)


def test_near_duplicates_reencoded_cropped_reversed(videos, bunny_copies, processed):
    src = videos / "quality/Big_Buck_Bunny_180_10s.webm"
    rows = []  # the default recipe (conftest.py)
    for path in [
        src,
        *bunny_copies.values(),  # re-encoded, cropped and rescaled, reversed (conftest.py)
        videos / "quality/traffic_camera.mp4",
        videos / "quality/flipping_a_pancake.mkv",
    ]:
        rows.extend(c for c in processed(path)[1] if not c.get("reject_reason"))
    dups = find_duplicates(rows, DedupConfig())
    source = {r["clip_id"]: Path(r["source_uri"]).name for r in rows}
    bunny = {src.name, "reencoded.mp4", "cropped.mp4", "reversed.mp4"}
    assert {source[c] for c in dups} | {source[r] for r in dups.values()} == bunny
    assert len(dups) == 3  # one representative kept
    assert len({dups[c] for c in dups}) == 1


def test_two_halves_of_a_static_camera_are_not_duplicates(videos):
    recipe = load_recipe(RECIPE, ["split_scenes.max_scene_s=12"])
    rows = [c for c in process_video(str(videos / "quality/traffic_camera.mp4"), "g", recipe)[1]]
    assert len(rows) == 2
    assert find_duplicates(rows, DedupConfig()) == {}


def test_select_reapplies_thresholds_without_decoding(sample_run, tmp_path):
    out, r = sample_run  # RECIPE on four sample clips, min_scene_s 1.0 (conftest.py); select only reads it
    assert r.returncode == 0, r.stderr
    before = json.loads((out / "manifest.json").read_text())["counts"]
    strict = tmp_path / "strict"
    r = run_cli(
        "select",
        str(out),
        "--where",
        "motion_score > 3.0 and sharpness_score >= 0.01",
        "--output",
        str(strict),
    )
    assert r.returncode == 0, r.stderr
    moves = json.loads(r.stdout)["moves"]
    assert moves["accepted_to_rejected"] >= 1
    import pyarrow.dataset as ds

    kept = ds.dataset(strict / "clips", format="parquet").to_table().to_pylist()
    assert kept and all(c["motion_score"] > 3.0 for c in kept)
    rejected = ds.dataset(strict / "rejected", format="parquet").to_table().to_pylist()
    moved = [x for x in rejected if x["reject_reason"] == "select_where"]
    assert len(moved) == moves["accepted_to_rejected"] + moves.get("rejected_kept", 0) - sum(
        1 for x in rejected if x["reject_stage"] not in ("select",) and x["reject_reason"] != "select_where"
    )
    assert len(kept) + len(rejected) == before["candidate_clips"]  # nothing lost
    manifest = json.loads((strict / "manifest.json").read_text())
    assert manifest["select"]["where"].startswith("motion_score")
    videos_rows = ds.dataset(strict / "videos", format="parquet").to_table().to_pylist()
    assert sum(v["num_clips_accepted"] or 0 for v in videos_rows) == len(kept)


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("motion_score >", "not a valid expression"),
        ("__import__('os')", "not allowed"),
        ("colour > 1", "unknown column"),
    ],
)
def test_select_rejects_bad_expressions(tmp_path, where, message):
    (tmp_path / "manifest.json").write_text("{}")
    r = run_cli("select", str(tmp_path), "--where", where, "--output", str(tmp_path / "o"))
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
