import os

import numpy as np
import pytest

from vidsift.model.data import ClipSource, ClipStream, ShardIndex
from vidsift.model.synthetic import COLORS, DIRECTIONS, SHAPES, caption_of, judge, moving_shape


def test_judge_reads_colour_and_direction_of_every_caption():
    """The learning check's metric is right on real synthetic clips, so its accuracy means something."""
    rng = np.random.default_rng(0)
    for c in COLORS:
        for d in DIRECTIONS:
            for s in SHAPES:
                video = moving_shape(c, d, s, 8, 32, rng).transpose(3, 0, 1, 2) / 127.5 - 1
                assert judge(video) == (c, d), caption_of(c, d, s)
    assert judge(-np.ones((3, 4, 8, 8))) == ("none", "none")


@pytest.mark.parametrize("size", [32, 16])  # 16: the learning check's training size
def test_judge_after_h264_and_the_training_resize(shards, size):
    """Still right after H.264 encoding, decoding, resize and crop (what the model is trained on)."""
    src = ClipSource(frames=8, height=size, width=size, stride=2)
    for sample in ClipStream(ShardIndex(shards), src, 0, 1).next_batch(12):
        words = sample.caption.split()  # "a <colour> <shape> moving <direction>"
        assert judge(sample.x) == (words[1], words[4])


# -- the raw pool and the judges of the curation ablation ----------------------------------------------------


def _as_sample(frames: np.ndarray, size: int = 32, n: int = 4, stride: int = 4):
    """What the ablation's model sees and draws: H.264, decoded, resized to size, n frames every stride."""
    from vidsift.model.data import decode_clip
    from vidsift.model.mp4 import encode_mp4

    return decode_clip(encode_mp4(frames), n, size, size, stride, 0.0).numpy()


def test_judges_on_clips_with_and_without_each_defect():
    from vidsift.model.synthetic import burn_text, draw_shot, judge_defects, judge_sample

    rng = np.random.default_rng(1)
    clean = {"cut": False, "black": False, "frozen": False, "text": False}
    for c, d, s in [("red", "right", "square"), ("green", "up", "circle"), ("blue", "left", "circle")]:
        shot = draw_shot(c, d, s, 36, 64, 64, rng, (28, 56))[10:26]
        assert judge_sample(_as_sample(shot)) == {"colour": c, "direction": d, "shape": s, **clean}
    a = draw_shot("red", "right", "square", 36, 64, 64, rng, (28, 56))  # shots are 30-42 frames
    b = draw_shot("blue", "down", "circle", 36, 64, 64, rng, (28, 56))
    assert judge_defects(_as_sample(a[:16])) == clean
    assert judge_defects(_as_sample(np.concatenate([a[:8], b[:8]])))["cut"]
    black = np.zeros_like(a[:6])
    assert judge_defects(_as_sample(np.concatenate([a[:7], black, a[:3]])))["black"]
    held = np.concatenate([a[:5], np.repeat(a[5:6], 8, axis=0), a[5:]])
    assert judge_defects(_as_sample(held)) == {**clean, "frozen": True}
    assert judge_defects(_as_sample(burn_text(np.concatenate([a, a]), "NEWS 24"))) == {**clean, "text": True}
    assert not judge_defects(np.random.default_rng(0).uniform(-1, 1, (3, 4, 32, 32)))["text"]  # noise


def test_raw_pool_sidecar_and_windows(tmp_path):
    """Every defect is drawn at its rate and recorded; the sidecar holds one range per shot; the uncurated
    windows carry the source-level caption, and what they hold is told by defects_in_range."""
    import json

    import pyarrow.parquet as pq

    from vidsift.model.synthetic import PoolConfig, defects_in_range, write_raw_pool, write_window_shards

    cfg = PoolConfig(
        sources=6,
        cuts_per_source=2.0,
        fade_rate=0.5,
        black_rate=0.5,
        text_rate=0.5,
        letterbox_rate=0.5,
        duplicate_rate=0.5,
        frozen_rate=0.3,
        seed=3,
    )
    pool = write_raw_pool(str(tmp_path / "pool"), cfg)
    counts = pool["counts"]
    assert counts["sources"] == 6 + counts["duplicates"] == len(os.listdir(tmp_path / "pool" / "sources"))
    assert counts["cuts"] > 0 and counts["fades"] > 0 and counts["text_sources"] > 0
    sidecar = json.loads((tmp_path / "pool" / "sidecar.json").read_text())
    assert sum(len(v) for v in sidecar.values()) == counts["shots"]
    for name, truth in pool["sources"].items():
        assert [s["caption"] for s in truth["shots"]] == [r["caption"] for r in sidecar[name]]
        frames = decode_frames(str(tmp_path / "pool" / "sources" / name))
        assert len(frames) == truth["frames"]
        if truth["letterbox_px"]:
            assert frames[:, : truth["letterbox_px"] - 1].max() < 20  # black bars (H.264 blurs the edge)
    info = write_window_shards(str(tmp_path / "pool"), str(tmp_path / "windows"), window_s=2.0)
    rows = pq.read_table(tmp_path / "windows" / "clips").to_pylist()
    assert len(rows) == info["windows"] > 0 and {r["num_frames"] for r in rows} == {24}
    multi = [r for r in rows if len(pool["sources"][os.path.basename(r["source_uri"])]["shots"]) > 1]
    assert multi, "the pool has sources with cuts"
    wrong = 0
    for r in rows:
        truth = pool["sources"][os.path.basename(r["source_uri"])]
        assert r["caption"] == truth["source_caption"]
        wrong += defects_in_range(truth, r["start_s"], r["end_s"], r["caption"])["wrong_caption"]
    assert wrong > 0  # windows after a cut keep the first shot's caption


def decode_frames(path: str) -> np.ndarray:
    from vidsift.model.synthetic import decode_frames as decode

    return decode(path)
