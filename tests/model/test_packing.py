"""Packing: clips of different durations and sizes in rows of a fixed token budget, computed exactly as one
forward pass per clip, with no attention across clips; the packed stream and a packed training run."""

import csv
import os

import pytest
import torch

from vidsift.model.data import (
    ClipSource,
    ClipStream,
    DataError,
    NativeSize,
    PackedStream,
    ShardIndex,
    clip_tokens,
    first_fit_decreasing,
    pack,
)
from vidsift.model.dit import DiT, config_from_preset, packed_attention_mask
from vidsift.model.flow import FlowConfig, packed_training_loss
from vidsift.model.train import load_recipe, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PATCH = (1, 2, 2)
# (C, T, H, W): a video, an image (one frame), a portrait clip, a short landscape clip
SHAPES = [(3, 4, 8, 12), (3, 1, 6, 10), (3, 2, 12, 6), (3, 3, 4, 8)]


def awake_model(**kw) -> DiT:
    """A tiny DiT whose zero-initialised branches are filled, so every path (gates, cross-attention,
    output) contributes; at init the output is identically zero and proves nothing."""
    torch.manual_seed(0)
    model = DiT(config_from_preset("tiny", text_dim=16, patch=PATCH, depth=2, **kw))
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return model.eval()


def inputs(n: int, L: int = 5):
    g = torch.Generator().manual_seed(1)
    clips = [torch.randn(s, generator=g) for s in SHAPES[:n]]
    text = torch.randn(n, L, 16, generator=g)
    mask = torch.ones(n, L, dtype=torch.bool)
    mask[1, 2:] = False  # captions of different lengths
    t = torch.rand(n, generator=g)
    drop = torch.tensor([False, True, False, False][:n])  # one caption dropped (CFG)
    return clips, text, mask, t, drop


def packed_call(model, clips, text, mask, t, drop, kind, budget=120):
    p = pack(clips, PATCH, budget, max_clips=4)
    out = model.forward_packed(
        p.tokens, p.seq_id, p.pos, p.per_clip(t), p.per_clip(text), p.per_clip(mask, fill=True),
        p.per_clip(drop, fill=True), attn_mask=packed_attention_mask(p.seq_id, kind),
    )  # fmt: skip
    return p, p.unpack(out, PATCH)


@pytest.mark.parametrize("kind,abs_pos", [("dense", False), ("segments", False), ("dense", True)])
def test_packed_forward_equals_one_forward_per_clip(kind, abs_pos):
    model = awake_model(abs_pos=abs_pos)
    clips, text, mask, t, drop = inputs(4)
    p, outs = packed_call(model, clips, text, mask, t, drop, kind)
    assert len(p.slots) == 2 and sorted(i for row in p.slots for i in row) == [0, 1, 2, 3]  # really packed
    assert (p.seq_id < 0).any()  # and padded
    with torch.no_grad():
        for i, c in enumerate(clips):
            ref = model(c[None], t[i : i + 1], text[i : i + 1], mask[i : i + 1], drop[i : i + 1])[0]
            assert ref.abs().max() > 0.1  # the comparison is not between zeros
            torch.testing.assert_close(outs[i], ref, rtol=0, atol=1e-5)


def test_no_attention_crosses_clips():
    """Changing one clip (its pixels, caption and timestep) changes its output and no other clip's."""
    model = awake_model()
    clips, text, mask, t, drop = inputs(4)
    with torch.no_grad():
        p, before = packed_call(model, clips, text, mask, t, drop, "dense")
        victim = p.slots[0][1]  # shares a row with another clip
        clips[victim] = clips[victim] + torch.randn_like(clips[victim])
        text[victim] += 1.0
        t[victim] = 1 - t[victim]
        p2, after = packed_call(model, clips, text, mask, t, drop, "dense")
    assert p2.slots == p.slots
    assert (after[victim] - before[victim]).abs().max() > 1e-2
    for i in range(4):
        if i != victim:
            torch.testing.assert_close(after[i], before[i], rtol=0, atol=1e-6)


def test_first_fit_decreasing_fills_rows_and_keeps_every_clip():
    sizes = [90, 10, 60, 40, 35, 25, 5, 100, 15, 20]
    bins, left = first_fit_decreasing(sizes, 100, max_items=5)
    assert not left and sorted(i for b in bins for i in b) == list(range(10))
    assert all(sum(sizes[i] for i in b) <= 100 for b in bins)
    assert len(bins) == 4  # 400 tokens in 4 rows of 100: no padding at all
    bins, _ = first_fit_decreasing(sizes, 100, max_items=4)
    assert len(bins) == 5 and max(map(len, bins)) == 4  # at most 4 clips a row: the 5 needs a fifth row
    # A fixed number of rows: what does not fit is left over, and left overs go first next time.
    bins, left = first_fit_decreasing(sizes, 100, max_items=4, bins=2)
    assert len(bins) == 2 and left and set(left).isdisjoint({i for b in bins for i in b})
    bins, _ = first_fit_decreasing([5, 100, 100], 100, max_items=4, bins=2, first=1)
    assert [0] in bins  # the left-over small clip is placed although larger ones came after it
    with pytest.raises(DataError, match="does not fit the packing budget"):
        first_fit_decreasing([101], 100, max_items=4)


def test_native_size_keeps_aspect_ratio_and_duration():
    size = NativeSize(area=32 * 32, max_frames=8, stride=2, multiple=4)
    assert size.video(640, 360, 100) == (8, 24, 40)  # 16:9 stays 16:9 within ~1024 pixels
    assert size.video(360, 640, 100) == (8, 40, 24)  # portrait
    assert size.video(640, 360, 7) == (4, 24, 40)  # a short clip keeps its 4 strided frames
    assert size.image(20, 12) == (1, 12, 20)  # never upscaled
    vae = NativeSize(area=64 * 64, max_frames=17, stride=1, multiple=8, vae_time=4)
    assert vae.video(64, 64, 12)[0] == 9  # the causal VAE's 1 + 4k frames


def stream(shards, image_ratio=0.0):
    index = ShardIndex(shards)
    native = NativeSize(area=16 * 16, max_frames=6, stride=2, multiple=4)
    source = ClipSource(6, 16, 16, 2, native=native)
    return PackedStream(ClipStream(index, source, 0, 1, seed=3), (1, 4, 4), 2, 192, 8, image_ratio)


def test_packed_stream_mixes_images_resumes_exactly_and_pads_little(shards):
    a = stream(shards, image_ratio=0.5)
    batches = [a.next_batch() for _ in range(3)]
    samples = [s for b, _ in batches for s in b]
    frames = {s.x.shape[1] for s in samples}
    assert frames == {1, 6}  # images (one-frame clips) and videos in the same batches
    for b, bins in batches:
        sizes = [clip_tokens(s.x.shape, (1, 4, 4)) for s in b]
        assert len(bins) == 2 and all(sum(sizes[i] for i in row) <= 192 for row in bins)
        assert sum(sizes) >= 0.95 * 2 * 192  # padding <= 5% of the rows
    state = a.state_dict()
    after = [a.next_batch() for _ in range(2)]
    b = stream(shards, image_ratio=0.5)
    b.load_state_dict(state)
    again = [b.next_batch() for _ in range(2)]
    for (sa, ba), (sb, bb) in zip(after, again, strict=True):
        assert ba == bb and [s.clip_id for s in sa] == [s.clip_id for s in sb]
        assert all(torch.equal(x.x, y.x) for x, y in zip(sa, sb, strict=True))


def test_image_only_batches_train():
    """A batch of images only (one-frame clips of different sizes) trains: the loss on it falls."""
    torch.manual_seed(0)
    model = DiT(config_from_preset("tiny", text_dim=16, patch=PATCH, depth=2))
    g = torch.Generator().manual_seed(0)
    images = [
        torch.randn(3, 1, h, w, generator=g).clamp(-1, 1) for h, w in [(8, 8), (6, 12), (12, 6), (4, 4)]
    ]
    p = pack(images, PATCH, 64, max_clips=4, rows=2)
    text, mask = torch.randn(2, 4, 5, 16, generator=g), torch.ones(2, 4, 5, dtype=torch.bool)
    empty = torch.zeros(2, 4, dtype=torch.bool)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):  # the same timesteps and noise every step: the loss on them must fall
        loss = packed_training_loss(
            model.forward_packed, p, text, mask, empty, FlowConfig(), torch.Generator().manual_seed(0)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert losses[-1] < 0.7 * losses[0], losses


def test_packed_training_run_from_the_recipe(shards, tmp_path):
    """`pack = true` with images and conditioning, from recipes/train/tiny_packed.toml: trains, logs useful
    tokens/s, checkpoints, and resumes (the reader state includes left-over clips)."""
    recipe = os.path.join(ROOT, "recipes", "train", "tiny_packed.toml")
    fast = [
        "model_args={depth = 2, patch = [1, 4, 4]}", "frames=6", "height=16", "width=16", "batch_size=2",
        "token_budget=160", "warmup=1", "log_every=1", "eval_every=0", "save_every=0", "val_clips=2",
    ]  # fmt: skip
    cfg = load_recipe(recipe, [*fast, "steps=3"])
    assert cfg.pack and cfg.image_ratio > 0 and cfg.cond_first > 0
    cfg.data, cfg.out = shards, str(tmp_path / "run")
    m = train(cfg)
    assert m["step"] == 3 and m["loss"] == m["loss"] and m["val_loss"] == m["val_loss"]  # finite, not NaN
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert all(float(r["tokens_per_s"]) > 0 for r in rows[1:])
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=False)
    assert {"pending", "items", "images_taken"} <= set(state["readers"][0])
    cfg = load_recipe(recipe, [*fast, "steps=4"])
    cfg.data, cfg.out = shards, str(tmp_path / "run")
    assert train(cfg, resume=True)["step"] == 4


def test_pack_builds_its_tensors_on_the_clips_device():
    """A trainer on a GPU packs clips it moved there: the rows must be built there too (they were built on
    the CPU, and a GPU's packed pass met CPU tokens: a device mismatch, seen on an H200). The meta device
    stands in for a GPU."""
    p = pack([torch.zeros(s, device="meta") for s in SHAPES], PATCH, 120, max_clips=4)
    assert {p.tokens.device.type, p.seq_id.device.type, p.pos.device.type} == {"meta"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex_attention document masks need a GPU")
def test_flex_attention_matches_dense_on_gpu():
    """In float32 without TF32, which a training run on a GPU turns on for its whole process (model/train.py;
    with it the two kernels differed by up to 6e-4, without it by 5e-7 on an H200)."""
    model = awake_model().cuda()
    clips, text, mask, t, drop = inputs(4)
    cuda = [c.cuda() for c in clips]
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            p, dense = packed_call(model, cuda, text.cuda(), mask.cuda(), t.cuda(), drop.cuda(), "dense", 256)
            _, flex = packed_call(model, cuda, text.cuda(), mask.cuda(), t.cuda(), drop.cuda(), "flex", 256)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    assert p.tokens.is_cuda and p.seq_id.is_cuda and p.pos.is_cuda  # packed where the clips are
    for a, b in zip(dense, flex, strict=True):
        assert a.abs().max() > 0.1  # the comparison is not between zeros
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
