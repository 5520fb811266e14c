"""caption_from_sidecar: captions per time range of a source, given to the clips split_scenes cut from it."""

import json

import numpy as np
import pytest

from vidsift.model.mp4 import encode_mp4
from vidsift.model.synthetic import caption_of, draw_shot
from vidsift.pipeline.process import apply_clip_stage, process_video
from vidsift.pipeline.recipe import RecipeError, build_recipe
from vidsift.pipeline.stages.caption_from_sidecar import CaptionFromSidecar, CaptionFromSidecarConfig

SHOTS = [("red", "right", "square", 30), ("blue", "down", "circle", 36), ("green", "left", "square", 30)]
FPS = 12.0


def _recipe(**sidecar):
    stages = [
        {"name": "probe"},
        {"name": "analyze", "detect_width": 64},
        {"name": "split_scenes", "min_scene_s": 1.5},
        {"name": "transcode", "max_short_side": 64},
        {"name": "caption_from_sidecar", **sidecar},
        {"name": "write_shards"},
    ]
    return build_recipe({"stage": stages})


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A real source of three shots with hard cuts (2.5, 3 and 2.5 s), cut by the real per-video path."""
    folder = tmp_path_factory.mktemp("sidecar")
    rng = np.random.default_rng(0)
    video = np.concatenate([draw_shot(c, d, s, n, 64, 64, rng, (28, 56)) for c, d, s, n in SHOTS])
    path = folder / "three_shots.mp4"
    path.write_bytes(encode_mp4(video, FPS))
    sidecar = folder / "any.json"
    sidecar.write_text("[]")
    _, rows = process_video(str(path), "g", _recipe(path=str(sidecar)))
    accepted = [r for r in rows if not r.get("reject_reason")]
    assert len(accepted) == 3, [(r["start_s"], r["end_s"], r.get("reject_reason")) for r in rows]
    return folder, path, accepted


def _ranges(n: int) -> list[tuple[float, float, str]]:
    """Ground truth: (start_s, end_s, caption) of the first n shots."""
    out, t = [], 0.0
    for c, d, s, frames in SHOTS[:n]:
        out.append((t, t + frames / FPS, caption_of(c, d, s)))
        t += frames / FPS
    return out


def _stage(path, **kw) -> CaptionFromSidecar:
    return CaptionFromSidecar(CaptionFromSidecarConfig(path=str(path), **kw))


def test_csv_ranges_caption_clips_and_a_missing_range_is_rejected_with_its_reason(clips):
    folder, video, accepted = clips
    sidecar = folder / "captions.csv"
    lines = ["source,start_s,end_s,caption"] + [f"{video.name},{a},{b},{c}" for a, b, c in _ranges(2)]
    sidecar.write_text("\n".join(lines) + "\n")
    out = apply_clip_stage(_stage(sidecar), accepted)
    assert [r["caption"] for r in out[:2]] == [c for _, _, c in _ranges(2)]
    assert out[0]["caption_short"] == out[0]["caption"] and out[0]["caption_model"] == f"sidecar:{sidecar}"
    assert not out[0].get("reject_reason")
    third = out[2]
    assert third["reject_stage"] == "caption_from_sidecar"
    assert third["reject_reason"] == "sidecar_range_missing"
    assert "covers 0%" in third["reject_detail"]
    assert third["caption_qa_flags"] == ["sidecar_range_missing"] and not third.get("caption")


def test_json_by_source_uri_keep_and_partial_cover(clips):
    """Keyed by the full URI; a range covering part of a clip is not its caption; keep: flagged only."""
    folder, video, accepted = clips
    (a0, b0, c0), (a1, b1, c1) = _ranges(2)
    sidecar = folder / "captions.json"
    entries = [
        {"source": str(video), "start_s": a0, "end_s": b0, "caption": c0, "caption_short": "red square"},
        {"source": str(video), "start_s": a1, "end_s": a1 + 1.0, "caption": c1},  # a third of shot 2
    ]
    sidecar.write_text(json.dumps(entries))
    out = apply_clip_stage(_stage(sidecar, on_missing="keep"), accepted)
    assert (out[0]["caption"], out[0]["caption_short"]) == (c0, "red square")
    for row in out[1:]:
        assert not row.get("reject_reason") and not row.get("caption")
        assert row["caption_qa_flags"] == ["sidecar_range_missing"]


def test_source_missing_and_video_id_key(clips):
    folder, _, accepted = clips
    other = folder / "other.json"
    other.write_text(json.dumps({"someone_else.mp4": [{"start_s": 0, "end_s": 99, "caption": "x"}]}))
    out = apply_clip_stage(_stage(other), accepted)
    assert {r["reject_reason"] for r in out} == {"sidecar_source_missing"}
    by_id = folder / "by_id.json"
    by_id.write_text(json.dumps({accepted[0]["video_id"]: [{"start_s": 0, "end_s": 99, "caption": "all"}]}))
    assert {r["caption"] for r in apply_clip_stage(_stage(by_id), accepted)} == {"all"}


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("none.json", None, "sidecar not found"),
        ("a.txt", "", "must end in .json or .csv"),
        ("a.json", "{", "not valid JSON"),
        ("a.json", '[{"source": "x", "start_s": 2, "end_s": 1, "caption": "c"}]', "need 0 <= start_s"),
        ("a.json", '[{"source": "x", "start_s": 0, "end_s": 1}]', "missing 'caption'"),
        ("a.csv", "source,start,end,caption\n", "CSV header lacks end_s, start_s"),
        ("a.csv", "source,start_s,end_s,caption\nx,0,one,c\n", "line 2: start_s and end_s must be numbers"),
        ("a.csv", "source,start_s,end_s,caption\nx,0,1,\n", "line 2: empty caption"),
    ],
)
def test_bad_sidecars_fail_the_recipe_with_one_line(tmp_path, name, text, message):
    if text is not None:
        (tmp_path / name).write_text(text)
    with pytest.raises(RecipeError, match=message) as e:
        _recipe(path=str(tmp_path / name))
    assert "\n" not in str(e.value) and "caption_from_sidecar" in str(e.value)
    with pytest.raises(RecipeError, match="path is required"):
        _recipe()
