"""Captioning on tiny random-weight models of real architectures, loaded through the production path.

``tests/make_tiny_models.py`` builds a Qwen2.5-VL and a Qwen2 LM; ``vidsift curate`` runs the caption
stages on real clips as Ray actor pools and every accepted clip comes out with every caption column.
"""

import json
import os

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, make_numbered_clip, read_numbers
from tests.make_tiny_models import LM_DIR, VLM_DIR, build_all
from vidsift.pipeline.backends.base import ChatRequest, is_random_weights, parse_json_fields
from vidsift.pipeline.stages.caption_vlm import FIELDS, CaptionVlm, CaptionVlmConfig, sample_frames

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may come from a model hub


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working directory holding out/tiny-models, as the quick start builds it."""
    root = tmp_path_factory.mktemp("captions")
    build_all(root / "out" / "tiny-models")
    return root


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_numbered_clip(
        tmp_path_factory.mktemp("clip") / "n.mp4", frames=40, size=(128, 96)
    ).read_bytes()


def test_frames_are_sampled_uniformly_across_the_clip(clip):
    import numpy as np

    frames = sample_frames(clip, 8, max_side=64)
    assert len(frames) == 8 and max(frames[0].size) == 64
    # frame k is the middle of the k-th of 8 equal spans of the 40 frames: 2, 7, 12, ..., 37
    numbers = []
    for img in frames:
        gray = np.asarray(img.convert("L").resize((128, 96)))
        bars = [gray[12:36, b * 16 + 4 : (b + 1) * 16 - 4].mean() for b in range(8)]
        numbers.append(sum(1 << b for b, v in enumerate(bars) if v > 128))
    assert numbers == [2, 7, 12, 17, 22, 27, 32, 37]
    assert read_numbers(clip) == list(range(40))


def test_vlm_fills_every_field_even_with_random_weights(workdir, clip):
    path = str(workdir / "out" / "tiny-models" / VLM_DIR)
    assert is_random_weights(path) and not is_random_weights(str(REPO))
    stage = CaptionVlm(
        CaptionVlmConfig(model=path, device="cpu", num_frames=4, max_side=112, max_new_tokens=16)
    )
    rows = stage(
        [{"clip_id": "a", "clip_mp4": clip, "duration_s": 1.6}, {"clip_id": "b", "clip_mp4": b"junk"}]
    )
    good, bad = rows
    assert bad["reject_reason"] == "caption_vlm_failed" and bad["reject_detail"].startswith("frames:")
    assert good["caption_vlm"] is not None and good["caption_vlm_tokens"] > 0
    fields = parse_json_fields(good["caption_json"], FIELDS)  # random weights: valid only by constraint
    assert fields is not None and all(good[f"caption_{f}"] == fields[f] for f in FIELDS)
    assert "json_repaired" in good["caption_qa_flags"]
    assert good["caption_random_weights"] is True
    assert good["caption_vlm_model"] == path and good["caption_vlm_backend"] == "transformers"


def test_backend_matches_calling_generate_directly(workdir, clip):
    """Same frames, same prompt: the backend's tokens are exactly those of a hand-written generate()."""
    import torch

    path = str(workdir / "out" / "tiny-models" / VLM_DIR)
    stage = CaptionVlm(CaptionVlmConfig(model=path, device="cpu", max_new_tokens=12))
    backend = stage.backend
    frames = sample_frames(clip, 4, 112)
    req = ChatRequest(system="s", prompt="Describe.", frames=frames, fps=2.5, as_video=True)
    [res] = backend.chat([req])
    inputs = backend.encode([backend.prompt_text(req)], [req])
    assert "pixel_values_videos" in inputs  # native video input, not four images
    with torch.inference_mode():
        out = backend.net.generate(**inputs, max_new_tokens=12, do_sample=False, pad_token_id=backend.pad_id)
    direct = out[0, inputs["input_ids"].shape[1] :].tolist()
    assert res.output_tokens == len(direct[: res.output_tokens])
    assert res.text == backend.tokenizer.decode(direct[: res.output_tokens], skip_special_tokens=True)


@pytest.mark.slow
def test_quickstart_with_captions_fills_every_caption_column(quickstart_run):
    out, result = quickstart_run  # recipes/curate/quickstart.toml as it is, on four sample videos
    clips = [r for f in sorted((out / "clips").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert clips, "no accepted clips"
    for row in clips:
        for col in (
            "caption_vlm",
            "caption",
            "caption_short",
            "caption_json",
            *(f"caption_{f}" for f in FIELDS),
        ):
            assert isinstance(row[col], str) and row[col].strip(), (col, row[col])
        assert row["caption_vlm_model"] == f"out/tiny-models/{VLM_DIR}"
        assert row["caption_model"] == f"out/tiny-models/{LM_DIR}"
        assert row["caption_vlm_backend"] == row["caption_backend"] == "transformers"
        assert row["caption_random_weights"] is True  # labelled: gibberish, not a real caption
        assert row["caption_qa_flags"] and "json_repaired" in row["caption_qa_flags"]
        assert json.loads(row["caption_json"]).keys() == set(FIELDS)
        assert row["caption_source"] in ("expand", "vlm")
        assert row["text_model"] == "all-MiniLM-L6-v2" and row["text_emb_shape"][1] == 384
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["captions"]["random_weights"] is True  # the run says its captions are not real
    assert manifest["captions"]["random_weights_rows"] == len(clips)
    assert manifest["random_weights"]["caption_random_weights"] == len(clips)
    assert "random-weight test models" in result.stderr
    resolved = (out / "recipe.resolved.toml").read_text()
    assert "caption_qa" in resolved and "tiny-qwen2_5-vl" in resolved
