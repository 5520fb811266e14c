"""Model-based filters: score_aesthetic and score_clip_text on a tiny random-weight open_clip model.

The model, its weights and the aesthetic head are built here (tests/make_tiny_clip.py) and loaded
through the production path, ``open_clip.create_model_and_transforms(name, pretrained=file)``. The
scores mean nothing (random weights, labelled as such); the tests check that every frame reaches the
right clip's reduction, against the model called directly one frame at a time.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch

from tests.conftest import run_cli
from tests.make_tiny_clip import build
from vidsift.pipeline.process import apply_clip_stage
from vidsift.pipeline.stages.score_aesthetic import (
    ScoreAesthetic,
    ScoreAestheticConfig,
    build_aesthetic_head,
)
from vidsift.pipeline.stages.score_clip_text import ScoreClipText, ScoreClipTextConfig


def picture(kind: int, size: tuple[int, int] = (320, 256)) -> bytes:
    """A JPEG frame whose content depends on ``kind``: colours, gradients, noise, stripes."""
    from PIL import Image

    w, h = size
    rng = np.random.default_rng(kind)
    y, x = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.float64)
    img[:] = rng.integers(0, 256, 3)
    img += (kind % 3) * 40 * np.sin(x / (4 + kind))[..., None]
    img += rng.normal(0, 8 * (kind % 4), (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    return build(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def aesthetic(tiny) -> ScoreAesthetic:
    return ScoreAesthetic(ScoreAestheticConfig(**tiny, min_score=0, frames_per_pass=2, device="cpu"))


@pytest.fixture(scope="module")
def clip_text(tiny) -> ScoreClipText:
    settings = {k: tiny[k] for k in ("model", "pretrained")}
    return ScoreClipText(ScoreClipTextConfig(**settings, frames_per_pass=3, device="cpu"))


def rows_with_frames(counts: list[int]) -> list[dict]:
    kinds = iter(range(100))
    return [
        {"clip_id": f"c{i}", "frames_jpeg": [picture(next(kinds)) for _ in range(n)]}
        for i, n in enumerate(counts)
    ]


def one_frame_scores(stage: ScoreAesthetic, jpegs: list[bytes]) -> list[float]:
    """The published recipe, one frame at a time: head(normalize(encode_image(preprocess(frame))))."""
    from PIL import Image

    out = []
    with torch.no_grad():
        for data in jpegs:
            x = stage.clip.preprocess(Image.open(io.BytesIO(data)).convert("RGB"))[None]
            emb = stage.clip.model.encode_image(x)
            emb = emb / emb.norm(dim=-1, keepdim=True)
            out.append(float(stage.head(emb)[0, 0]))
    return out


def test_head_has_the_published_layer_layout():
    state = build_aesthetic_head(768).state_dict()
    assert [(k, tuple(v.shape)) for k, v in state.items()] == [
        ("layers.0.weight", (1024, 768)),
        ("layers.0.bias", (1024,)),
        ("layers.2.weight", (128, 1024)),
        ("layers.2.bias", (128,)),
        ("layers.4.weight", (64, 128)),
        ("layers.4.bias", (64,)),
        ("layers.6.weight", (16, 64)),
        ("layers.6.bias", (16,)),
        ("layers.7.weight", (1, 16)),
        ("layers.7.bias", (1,)),
    ]


def test_weights_come_from_the_saved_checkpoint(tiny, aesthetic):
    saved = torch.load(tiny["pretrained"], weights_only=True)
    loaded = aesthetic.clip.model.state_dict()
    assert saved.keys() == loaded.keys()
    for key in ("visual.conv1.weight", "visual.proj", "text_projection", "token_embedding.weight"):
        assert torch.equal(saved[key], loaded[key]), key
    head = torch.load(tiny["head"], weights_only=True)
    assert torch.equal(head["layers.0.weight"], aesthetic.head.state_dict()["layers.0.weight"])
    assert aesthetic.clip.arch == "tiny-clip" and aesthetic.clip.embed_dim == 64


def test_batched_preprocessing_is_the_models_own_transform(aesthetic):
    from PIL import Image

    jpegs = [picture(k, size) for k, size in enumerate([(320, 256), (256, 456), (300, 300), (64, 40)])]
    assert aesthetic.clip.normalize is not None  # ToTensor + Normalize run once per batch
    ours = aesthetic.clip.model_input(aesthetic.clip.decode_jpegs(jpegs))
    own = torch.stack([aesthetic.clip.preprocess(Image.open(io.BytesIO(j))) for j in jpegs])
    assert torch.equal(ours, own)


def test_mean_and_min_over_each_clips_frames(aesthetic):
    # 1, 3, 0 and 2 frames with 2 frames per forward pass: passes straddle clips
    rows = rows_with_frames([1, 3, 0, 2])
    out = aesthetic(rows)
    for row, done in zip(rows, out, strict=True):
        assert done["aesthetic_model"] == aesthetic.label and done["aesthetic_random_weights"] is True
        if not row["frames_jpeg"]:
            assert done["aesthetic_score"] is None and done["aesthetic_min_score"] is None
            assert not done.get("reject_reason")
            continue
        expected = one_frame_scores(aesthetic, row["frames_jpeg"])
        assert done["aesthetic_score"] == pytest.approx(np.mean(expected), abs=1e-5)
        assert done["aesthetic_min_score"] == pytest.approx(min(expected), abs=1e-5)
    # the frames really score differently, so a frame sent to the wrong clip would show
    every = one_frame_scores(aesthetic, [f for r in rows for f in r["frames_jpeg"]])
    assert np.ptp(every) > 1e-3
    assert out[1]["aesthetic_min_score"] < out[1]["aesthetic_score"]


def test_only_accepted_rows_are_scored(aesthetic):
    rows = rows_with_frames([2, 1, 2])
    rows[1].update(reject_stage="score_motion", reject_reason="static", reject_detail="0.95 static")
    video_row = {"row_kind": "video", "clip_id": None}
    before = [dict(r) for r in rows]
    out = apply_clip_stage(aesthetic, rows + [video_row])
    assert out[1] == before[1] and out[3] == video_row
    for i in (0, 2):
        assert isinstance(out[i]["aesthetic_score"], float)
        assert out[i]["aesthetic_min_score"] <= out[i]["aesthetic_score"]
        assert not out[i].get("reject_reason")


@pytest.fixture(scope="module")
def spread_head(tiny, aesthetic, tmp_path_factory) -> str:
    """The tiny head rescaled to 5 + 200 (score - mean): on the AVA scale and spread out, so
    thresholds can split clips."""
    raw = one_frame_scores(aesthetic, [f for r in rows_with_frames([2, 2, 2]) for f in r["frames_jpeg"]])
    state = torch.load(tiny["head"], weights_only=True)
    state["layers.7.weight"] *= 200
    state["layers.7.bias"] = (state["layers.7.bias"] - float(np.mean(raw))) * 200 + 5.0
    path = tmp_path_factory.mktemp("head") / "spread-head.pth"
    torch.save(state, path)
    return str(path)


def test_thresholds_reject_and_keep_the_scores(tiny, spread_head):
    rows = rows_with_frames([2, 2, 2])
    settings = {**tiny, "head": spread_head, "device": "cpu"}
    scores = ScoreAesthetic(ScoreAestheticConfig(**settings, min_score=0))(rows)
    means = sorted(r["aesthetic_score"] for r in scores)
    lows = sorted(r["aesthetic_min_score"] for r in scores)
    assert means[0] > 0 and means[-1] - means[0] > 0.05 and lows[-1] - lows[0] > 0.05
    for cut, key, field in [
        ((means[0] + means[1]) / 2, "min_score", "aesthetic_score"),
        ((lows[1] + lows[2]) / 2, "min_frame_score", "aesthetic_min_score"),
    ]:
        config = ScoreAestheticConfig(**{**settings, "min_score": 0, key: cut})
        out = ScoreAesthetic(config)(rows)
        for row, plain in zip(out, scores, strict=True):
            assert row["aesthetic_score"] == pytest.approx(plain["aesthetic_score"], abs=1e-5)
            if plain[field] < cut:
                assert (row["reject_stage"], row["reject_reason"]) == ("score_aesthetic", "low_aesthetic")
                assert f"< {cut}" in row["reject_detail"]
            else:
                assert not row.get("reject_reason")
        assert sum(bool(r.get("reject_reason")) for r in out) in (1, 2)


def test_bad_paths_name_the_path(tiny, tmp_path):
    missing = tmp_path / "nowhere" / "clip.pt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        ScoreAesthetic(ScoreAestheticConfig(**{**tiny, "pretrained": str(missing)}, device="cpu"))
    with pytest.raises(FileNotFoundError, match="head.*" + str(tmp_path / "head.pth")):
        ScoreAesthetic(ScoreAestheticConfig(**{**tiny, "head": str(tmp_path / "head.pth")}, device="cpu"))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "arch.json")):
        ScoreAesthetic(ScoreAestheticConfig(**{**tiny, "model": str(tmp_path / "arch.json")}, device="cpu"))
    wrong = tmp_path / "not-a-head.pth"
    torch.save({"weight": torch.zeros(3)}, wrong)
    with pytest.raises(ValueError, match=f"{wrong} is not an aesthetic-predictor state dict"):
        ScoreAesthetic(ScoreAestheticConfig(**{**tiny, "head": str(wrong)}, device="cpu"))
    vit_l = tmp_path / "l14-head.pth"
    torch.save(build_aesthetic_head(768).state_dict(), vit_l)
    with pytest.raises(ValueError, match="takes 768-d embeddings, the CLIP model makes 64-d"):
        ScoreAesthetic(ScoreAestheticConfig(**{**tiny, "head": str(vit_l)}, device="cpu"))


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"head": ""}, "score_aesthetic.head is required"),
        ({"min_score": -1.0}, "must be >= 0"),
        ({"dtype": "int8"}, "dtype must be"),
        ({"device": "tpu"}, "device must be"),
        ({"pretrained": ""}, "pretrained is required"),
        ({"frames_per_pass": 0}, "frames_per_pass must be >= 1"),
    ],
)
def test_aesthetic_config_is_validated(settings, message):
    with pytest.raises(ValueError, match=message):
        ScoreAestheticConfig(**{"head": "h.pth", **settings})


def test_random_weights_label_follows_the_marker(tiny, tmp_path):
    for key in ("model", "pretrained", "head"):
        shutil.copy(tiny[key], tmp_path)
    copied = {k: str(tmp_path / v.rsplit("/", 1)[1]) for k, v in tiny.items()}
    stage = ScoreAesthetic(ScoreAestheticConfig(**copied, min_score=0, device="cpu"))
    row = stage(rows_with_frames([1]))[0]
    assert row["aesthetic_random_weights"] is False  # no marker beside these copies
    assert row["aesthetic_model"] == f"{copied['model']}:{copied['pretrained']}+{copied['head']}"


def test_clip_text_scores_frames_against_the_caption(clip_text):
    rows = rows_with_frames([2, 3, 1, 2, 0])
    rows[0]["caption"] = "A red car drives along a coastal road at sunset."
    rows[1].update(caption=None, caption_vlm="Close-up of hands flipping a pancake in a pan.")
    rows[2].update(caption="  ", caption_vlm="A dog runs on a beach.")  # blank caption: falls back
    rows[3].update(caption=None, caption_vlm=None)  # no text yet: no score
    rows[4]["caption"] = "frames are missing"
    out = clip_text(rows)
    assert [r["clip_text_source"] for r in out] == ["caption", "caption_vlm", "caption_vlm", None, "caption"]
    assert out[3]["clip_text_score"] is None and out[4]["clip_text_score"] is None
    for row, done in zip(rows[:3], out[:3], strict=True):
        text = (row.get("caption") or "").strip() or row["caption_vlm"]
        t = clip_text.clip.text_features([text])[0]
        cosines = [float(next(clip_text.clip.image_features([f], 1))[0] @ t) for f in row["frames_jpeg"]]
        assert done["clip_text_score"] == pytest.approx(np.mean(cosines), abs=1e-5)
        assert done["clip_text_model"] == clip_text.clip.label and done["clip_text_random_weights"] is True
    # each clip against its own text: swapping captions changes the scores
    swapped = clip_text([dict(rows[0], caption=rows[1]["caption_vlm"])])[0]
    assert swapped["clip_text_score"] != pytest.approx(out[0]["clip_text_score"], abs=1e-6)


def test_clip_text_rejects_below_its_threshold_only_when_set(tiny, clip_text):
    rows = rows_with_frames([1, 1])
    for r in rows:
        r["caption"] = "a cat on a sofa"
    rows[1].update(reject_stage="dedup", reject_reason="near_duplicate", reject_detail="dup")
    before = dict(rows[1])
    assert not any(r.get("reject_reason") for r in clip_text(rows[:1]))
    settings = {k: tiny[k] for k in ("model", "pretrained")}
    strict = ScoreClipText(ScoreClipTextConfig(**settings, min_score=0.99, device="cpu"))
    out = apply_clip_stage(strict, rows)
    assert out[0]["reject_reason"] == "caption_mismatch" and out[0]["clip_text_score"] < 0.99
    assert out[1] == before


def test_clip_text_config_from_toml_lists():
    cfg = ScoreClipTextConfig(text_columns=["caption_short", "caption"])
    assert cfg.text_columns == ("caption_short", "caption")
    assert ScoreClipTextConfig(**dataclasses.asdict(cfg)) == cfg  # how Ray actors receive it
    with pytest.raises(ValueError, match="text_columns"):
        ScoreClipTextConfig(text_columns=["clip_mp4"])
    with pytest.raises(ValueError, match="cosine"):
        ScoreClipTextConfig(min_score=2.0)


def test_runner_actor_scores_accepted_clips_and_joins_its_columns_back(tiny):
    """The Ray actor wrapper (without Ray): config through asdict; the stage sees only the accepted clips'
    declared columns, its written columns are joined back in place, other rows pass through unchanged."""
    from vidsift.pipeline.dataflow import ClipStageTask
    from vidsift.pipeline.publish import WORK_SCHEMA

    config = ScoreAestheticConfig(**tiny, min_score=0, device="cpu")
    task = ClipStageTask("score_aesthetic", dataclasses.asdict(config))
    seen = []
    stage = task.stage
    task.stage = lambda rows: seen.extend(rows) or stage(rows)
    task.stage.reads, task.stage.writes = stage.reads, stage.writes
    clips = [{"row_kind": "clip", "rows_of_video": 4, **r} for r in rows_with_frames([2, 1, 1])]
    clips[1].update(reject_stage="score_motion", reject_reason="static", reject_detail="still")
    receipt = {"row_kind": "video", "rows_of_video": 4, "group": "g", "source_uri": "v.mp4", "part": "p"}
    rows = [clips[0], receipt, clips[1], clips[2]]
    table = task(pa.Table.from_pylist([{n: r.get(n) for n in WORK_SCHEMA.names} for r in rows], WORK_SCHEMA))
    assert table.schema == WORK_SCHEMA
    assert [set(r) for r in seen] == [{"frames_jpeg"}] * 2  # only accepted clips, only what it reads
    scores = table.column("aesthetic_score").to_pylist()
    assert scores[0] is not None and scores[3] is not None and scores[1] is None and scores[2] is None
    assert table.column("aesthetic_random_weights").to_pylist() == [True, None, None, True]
    assert table.column("part").to_pylist() == [None, "p", None, None]
    assert table.column("reject_reason").to_pylist() == [None, None, "static", None]


def test_a_stage_that_changes_a_column_it_does_not_declare_is_stopped():
    from vidsift.pipeline.process import apply_clip_stage

    class Sloppy:
        reads = ("duration_s",)
        writes = ("aesthetic_score",)

        def __call__(self, rows):
            return [{**r, "aesthetic_score": 1.0, "caption": "oops"} for r in rows]

    with pytest.raises(RuntimeError, match=r"does not declare: \['caption'\]"):
        apply_clip_stage(Sloppy(), [{"clip_id": "c", "duration_s": 2.0}])


def test_vidsift_stage_scores_a_real_clip(tiny, videos):
    clip = videos / "quality" / "realshort.mp4"  # 1.2 s, one shot
    result = run_cli(
        "stage",
        "score_aesthetic",
        str(clip),
        "--set",
        f"model={tiny['model']}",
        "--set",
        f"pretrained={tiny['pretrained']}",
        "--set",
        f"head={tiny['head']}",
        "--set",
        "min_score=0",
        "--set",
        "split_scenes.min_scene_s=0.5",
        "--json",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    [report] = json.loads(result.stdout)
    assert report["status"] == "ok" and report["num_clips_accepted"] >= 1
    for c in report["clips"]:
        assert not c.get("reject_reason") and c["frames_jpeg"]
        assert isinstance(c["aesthetic_score"], float) and c["aesthetic_min_score"] <= c["aesthetic_score"]
        assert c["aesthetic_random_weights"] is True
        assert c["aesthetic_model"] == f"{tiny['model']}:{tiny['pretrained']}+{tiny['head']}"
