"""score_ocr: the real PP-OCRv4 text-detection model (the ONNX weights rapidocr-onnxruntime ships) on
the sample clips, against the catalog's notes on which clips carry burned-in text."""

from __future__ import annotations

import importlib.util

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("rapidocr_onnxruntime")

from tests.conftest import REPO, run_cli  # noqa: E402
from vidsift.pipeline.process import apply_clip_stage, scan_video  # noqa: E402
from vidsift.pipeline.recipe import RecipeError, build_recipe, load_recipe  # noqa: E402
from vidsift.pipeline.stages import score_ocr  # noqa: E402
from vidsift.pipeline.stages.core import make_clips  # noqa: E402
from vidsift.pipeline.stages.score_ocr import ScoreOcr, ScoreOcrConfig, covered_share  # noqa: E402

# catalog.json "content": video2 "large caption text", video1 "YOUKU watermark + vertical Chinese
# subtitles"; the clean ones are a home video, a pool, and Big Buck Bunny without its title card
TEXT = ["quality/video2.mp4", "cuts/video1.mp4"]
CLEAN = [
    "quality/flipping_a_pancake.mkv",
    "quality/tests_data_test.mp4",
    "quality/Big_Buck_Bunny_180_10s.webm",
]
SINTEL = "cuts/test_clip_10s.mp4"  # no text on screen; its third shot is a face close-up


@pytest.fixture(scope="module")
def rows(videos) -> dict[str, list[dict]]:
    """Candidate clip rows with frames_jpeg straight from the analysis pass (no transcode needed)."""
    recipe = build_recipe(
        {"stage": [{"name": n} for n in ("probe", "analyze", "split_scenes", "transcode", "write_shards")]},
        ["split_scenes.min_scene_s=0.5"],  # keep Sintel's 1 s close-up
    )
    out = {}
    for name in TEXT + CLEAN + [SINTEL]:
        work = scan_video(str(videos / name), recipe)
        work.video.update(source_uri=name, group="g")
        make_clips(work, recipe.stage("split_scenes"), 4)
        out[name] = [r for r in work.clips if not r.get("reject_reason")]  # the scenes long enough
        assert out[name] and all(r["frames_jpeg"] for r in out[name]), name
    return out


@pytest.fixture(scope="module")
def ocr() -> ScoreOcr:
    return ScoreOcr(ScoreOcrConfig(device="cpu", frames_per_pass=8))


@pytest.fixture(scope="module")
def scored(rows, ocr) -> dict[str, list[dict]]:
    return {name: ocr(clips) for name, clips in rows.items()}


def test_text_clips_score_above_clean_ones(scored):
    text = [c["ocr_score"] for n in TEXT for c in scored[n]]
    clean = [c["ocr_score"] for n in CLEAN for c in scored[n]]
    assert min(text) > 0.02 and max(clean) < 0.01, (text, clean)
    assert all(c["ocr_boxes"] >= 1 for n in TEXT for c in scored[n])
    # the clip with the largest text area (data-juicer's EasyOCR: ~0.29) scores highest
    assert max(scored, key=lambda n: max(c["ocr_score"] for c in scored[n])) == "quality/video2.mp4"


def test_threshold_rejects_with_a_reason_and_keeps_the_score(scored, rows, ocr):
    [video2] = scored["quality/video2.mp4"]
    assert video2["ocr_score"] > 0.15  # the default max_text_area
    assert (video2["reject_stage"], video2["reject_reason"]) == ("score_ocr", "text_overlay")
    assert "OCR text boxes cover" in video2["reject_detail"]
    assert not any(c.get("reject_reason") for n in CLEAN for c in scored[n])
    assert video2["ocr_model"].endswith("ch_PP-OCRv4_det_infer.onnx")
    # a box-count limit rejects the watermarked, subtitled cartoon as well; the area rule is off
    strict = ScoreOcr(ScoreOcrConfig(device="cpu", max_text_area=1.0, max_boxes=2))
    cartoon = rows["cuts/video1.mp4"]
    judged = strict(cartoon + rows["quality/flipping_a_pancake.mkv"])
    assert [c.get("reject_reason") for c in judged] == ["text_overlay"] * len(cartoon) + [None]
    assert "text boxes on one frame > 2" in judged[0]["reject_detail"]


def test_boxes_match_rapidocrs_own_detector(rows, ocr):
    """Our batched pipeline gives the boxes rapidocr's TextDetector gives, frame by frame."""
    import cv2
    import yaml
    from rapidocr_onnxruntime.ch_ppocr_det import TextDetector

    base = score_ocr.weights_path("", "config.yaml", "test")
    cfg = yaml.safe_load(base.read_text())["Det"]
    cfg.update(model_path=str(score_ocr.weights_path("", score_ocr.DET_WEIGHTS, "test")), limit_side_len=256)
    theirs = TextDetector(cfg)
    jpegs = [j for n in TEXT + CLEAN[:1] for j in rows[n][0]["frames_jpeg"]]
    ours = ocr.frame_boxes(jpegs)
    for jpeg, (area, count) in zip(jpegs, ours, strict=True):
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        boxes, _ = theirs(img)
        boxes = np.zeros((0, 4, 2), np.float32) if boxes is None or not len(boxes) else boxes
        assert count == len(boxes)
        assert area == pytest.approx(
            covered_share(boxes.astype(np.float32), img.shape[1], img.shape[0]), abs=0.01
        )


def test_verify_drops_a_face_but_keeps_subtitles(rows, scored):
    verifying = ScoreOcr(ScoreOcrConfig(device="cpu", verify=True))
    face = scored[SINTEL][2]
    assert face["ocr_score"] > 0.05  # the detector alone takes the close-up for a text block
    assert verifying([rows[SINTEL][2]])[0]["ocr_score"] == 0.0
    subtitled = verifying(rows["cuts/video1.mp4"][:1])
    assert subtitled[0]["ocr_score"] > 0.02
    assert subtitled[0]["ocr_model"].endswith(
        "det_infer.onnx+" + str(score_ocr.weights_path("", score_ocr.REC_WEIGHTS, "t"))
    )


def test_clips_without_frames_and_rejected_rows(ocr, rows):
    empty = {"clip_id": "a", "frames_jpeg": []}
    earlier = {**rows["quality/video2.mp4"][0], "reject_stage": "score_motion", "reject_reason": "static"}
    done = apply_clip_stage(ocr, [empty, earlier])
    assert done[0]["ocr_score"] is None and done[0]["ocr_boxes"] is None and not done[0].get("reject_reason")
    assert "ocr_score" not in done[1] and done[1]["reject_reason"] == "static"  # not scored, reason kept


def test_missing_model_is_one_clear_error(tmp_path, monkeypatch):
    missing = tmp_path / "det.onnx"
    with pytest.raises(ValueError, match=f"score_ocr.model: no such ONNX file: {missing}"):
        ScoreOcrConfig(model=str(missing))
    recipe = REPO / "recipes/curate/cluster.toml"
    with pytest.raises(RecipeError, match="stage score_ocr: score_ocr.model: no such ONNX file"):
        load_recipe(recipe, [f"score_ocr.model={missing}"])
    with pytest.raises(ValueError, match="rec_model: no such ONNX file"):
        ScoreOcrConfig(verify=True, rec_model=str(missing))
    missing.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        ScoreOcr(ScoreOcrConfig(model=str(missing), device="cpu"))
    # without the weights package: the error says what to install
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "rapidocr_onnxruntime" else real(n, *a)
    )
    with pytest.raises(
        ValueError, match=r"rapidocr-onnxruntime .* not installed: pip install 'vidsift\[ocr\]'"
    ):
        ScoreOcrConfig()


def test_device_and_settings_are_checked():
    import onnxruntime as ort

    for bad in (dict(device="tpu"), dict(short_side=8), dict(max_text_area=2), dict(max_boxes=-1)):
        with pytest.raises(ValueError, match="score_ocr"):
            ScoreOcrConfig(**bad)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(RuntimeError, match="no CUDAExecutionProvider.*onnxruntime-gpu"):
            ScoreOcr(ScoreOcrConfig(device="cuda"))


def test_curation_run_through_the_runner(videos, tmp_path):
    """The commented block of the default recipe, switched on, in a real `vidsift curate` run."""
    text = (REPO / "recipes/curate/default.toml").read_text()
    block = '# [[stage]]\n# name = "score_ocr"\n'
    assert block in text
    recipe = tmp_path / "ocr.toml"
    recipe.write_text(text.replace(block, '[[stage]]\nname = "score_ocr"\n'))
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("cuts/video1.mp4", "quality/Big_Buck_Bunny_180_10s.webm"):
        (inputs / name.split("/")[1]).symlink_to(videos / name)
    out = tmp_path / "out"
    args = ["curate", str(recipe), "--input", str(inputs), "--output", str(out)]
    result = run_cli(*args, "--set", "score_ocr.max_text_area=0.02", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    clips = pq.read_table(out / "clips").to_pylist()
    rejected = pq.read_table(out / "rejected").to_pylist()
    assert clips and all(c["ocr_score"] is not None and c["ocr_score"] <= 0.02 for c in clips)
    assert {c["source_uri"].rsplit("/", 1)[1] for c in clips} == {"Big_Buck_Bunny_180_10s.webm"}
    by_ocr = [r for r in rejected if r["reject_stage"] == "score_ocr"]
    assert by_ocr and all(r["reject_reason"] == "text_overlay" and r["ocr_score"] > 0.02 for r in by_ocr)
    assert {r["source_uri"].rsplit("/", 1)[1] for r in by_ocr} == {"video1.mp4"}
