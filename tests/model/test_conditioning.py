"""Conditioning by frames: given frames come back unchanged after sampling (image-to-video, extension forward
and backward, connecting two clips), training skips them, and the CLI's bad inputs are one-line errors."""

import json
import os

import numpy as np
import pytest
import torch

from vidsift.model.cli import main
from vidsift.model.data import pack
from vidsift.model.dit import DiT, config_from_preset, config_to_dict
from vidsift.model.flow import FlowConfig, cond_frames_mask, packed_cond, packed_flow_loss, sample_euler
from vidsift.model.mp4 import encode_mp4
from vidsift.model.sample import generate, load_clip, load_image
from vidsift.model.train import save_weights

BAD = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "videos", "bad")


def test_conditioning_masks():
    assert cond_frames_mask(5, "first", 2) == [True, True, False, False, False]
    assert cond_frames_mask(5, "last", 1) == [False, False, False, False, True]
    assert cond_frames_mask(5, "both", 3) == [True, True, False, True, True]  # one frame left to generate
    assert cond_frames_mask(1, "first", 1) == [False]  # images are never conditioned
    assert cond_frames_mask(4, "", 2) == [False] * 4


def test_training_loss_ignores_given_frames():
    """With the true velocity on generated tokens and garbage on given ones, the packed loss is zero, and the
    model saw the given tokens clean (x_t = x0)."""
    g = torch.Generator().manual_seed(0)
    clips = [torch.randn(3, 4, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)]
    p = pack(clips, (1, 2, 2), 24, max_clips=2)
    cond = packed_cond(p, ["first", "first"], 1)
    assert cond.sum() == 4  # the video's first frame (2x2 patches); the image is never conditioned
    noise = torch.randn(p.tokens.shape, generator=g)
    seen = {}

    def oracle(xt, seq_id, pos, t, text, text_mask, drop, cond, attn_mask):
        seen["xt"] = xt
        v = noise - p.tokens
        return torch.where(cond[..., None], torch.full_like(v, 1e3), v)

    t = torch.full((1, 2), 0.7)
    text, mask = torch.zeros(1, 2, 3, 8), torch.ones(1, 2, 3, dtype=torch.bool)
    loss = packed_flow_loss(oracle, p, text, mask, torch.zeros(1, 2, dtype=torch.bool), t, noise, cond)
    assert loss.item() < 1e-10
    assert torch.equal(seen["xt"][cond], p.tokens[cond])
    assert not torch.equal(seen["xt"][~cond & p.real], p.tokens[~cond & p.real])


def awake(**kw) -> DiT:
    torch.manual_seed(0)
    model = DiT(config_from_preset("tiny", text_dim=384, patch=(1, 4, 4), depth=1, **kw))
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return model.eval()


def test_sampler_returns_given_frames_unchanged_and_generates_the_rest():
    model = awake(in_channels=4)
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(2, 4, 5, 8, 8, generator=g)
    given = torch.tensor([[True, False, False, False, False], [True, True, False, False, True]])
    text, mask = torch.randn(2, 3, 384, generator=g), torch.ones(2, 3, dtype=torch.bool)
    noise = torch.randn(clean.shape, generator=g)
    out = sample_euler(model, noise, text, mask, FlowConfig(), steps=3, guidance=3.0, cond=(clean, given))
    sel = given[:, None, :, None, None].expand_as(clean)
    assert torch.equal(out[sel], clean[sel])
    assert not torch.allclose(out[~sel], clean[~sel], atol=0.1)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    """A pixel-space DiT checkpoint (8 frames of 16x16) written the way model/train.py writes one."""
    model = awake()
    path = str(tmp_path_factory.mktemp("ckpt") / "ema.safetensors")
    meta = {
        "kind": "vidsift-dit", "dit": config_to_dict(model.cfg), "flow": {}, "text_model": "",
        "text_tokens": 8, "vae": "", "frames": 8, "height": 16, "width": 16, "fps": 12.0, "step": 0,
    }  # fmt: skip
    save_weights(model, path, meta)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    out = {}
    for name, frames in [("a", 10), ("b", 10), ("short", 1)]:
        video = rng.integers(0, 255, (frames, 16, 16, 3), dtype=np.uint8)
        out[name] = str(d / f"{name}.mp4")
        with open(out[name], "wb") as f:
            f.write(encode_mp4(video, 12.0))
    from PIL import Image

    out["png"] = str(d / "first.png")
    Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(out["png"])
    return out


def test_image_extend_and_connect_keep_the_given_frames(ckpt, clips):
    run = dict(steps=2, guidance=2.0)
    video, _ = generate(ckpt, ["a red square"], image=clips["png"], **run)
    assert torch.equal(video[0, :, :1], load_image(clips["png"], 16, 16))
    a, b = load_clip(clips["a"], 16, 16), load_clip(clips["b"], 16, 16)
    video, _ = generate(ckpt, ["x"], extend=clips["a"], context_frames=3, **run)
    assert torch.equal(video[0, :, :3], a[:, -3:])
    video, _ = generate(ckpt, ["x"], extend=clips["a"], backward=True, context_frames=3, **run)
    assert torch.equal(video[0, :, -3:], a[:, :3])
    video, _ = generate(ckpt, ["x"], connect=(clips["a"], clips["b"]), **run)  # default context: 8 // 4
    assert torch.equal(video[0, :, :2], a[:, -2:]) and torch.equal(video[0, :, -2:], b[:, :2])
    free, _ = generate(ckpt, ["x"], **run)
    assert not torch.equal(free[0, :, :2], a[:, -2:])  # without conditioning they differ


def test_cli_conditioning_and_bad_inputs_are_one_line(ckpt, clips, tmp_path, capsys, videos):
    out = str(tmp_path / "i2v.mp4")
    assert main(["sample", ckpt, "--prompt", "x", "--steps", "1", "--image", clips["png"], "--out", out]) == 0
    assert "wrote" in capsys.readouterr().out and os.path.getsize(out) > 0
    cases = [
        (["--image", str(tmp_path / "missing.png")], "image not found"),
        (["--image", clips["a"]], "unreadable image"),
        (["--extend", os.path.join(BAD, "corrupted.mp4")], "unreadable clip"),
        (["--extend", os.path.join(BAD, "crunching.mp3")], "unreadable clip"),
        (["--extend", str(tmp_path / "missing.mp4")], "clip not found"),
        (["--extend", clips["short"]], "1 frames; 2 context frames are needed"),
        (["--extend", clips["a"], "--context-frames", "8"], "fill all 8 frames"),
        (["--connect", clips["a"], clips["b"], "--context-frames", "4"], "fill all 8 frames"),
        (["--image", clips["png"], "--extend", clips["a"]], "cannot be combined"),
        (["--backward"], "--backward needs --extend"),
        (["--image", clips["png"], "--height", "30"], "not divisible"),
        (["--expand", "--expand-model", str(tmp_path / "no-llm")], "--expand: cannot load"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        argv = ["sample", ckpt, "--prompt", "x", "--steps", "1", "--out", out, *extra]
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (extra, err)


def test_expand_rewrites_the_prompt_with_the_captioning_llm(ckpt, tmp_path, capsys):
    """--expand runs the real transformers backend on the tiny random-weight Qwen2 LM the tests build, and
    prints both prompts (labelled as a test model's output)."""
    from tests.make_tiny_models import build_lm, build_tokenizer

    lm = str(build_lm(tmp_path, build_tokenizer()))
    out = str(tmp_path / "e.mp4")
    # greedy decoding of random weights writes only newlines; sampling writes (gibberish) text
    argv = ["sample", ckpt, "--prompt", "a dog on a beach", "--expand", "--expand-model", lm]
    argv += ["--expand-temperature", "1.0"]
    assert main([*argv, "--steps", "1", "--out", out]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "prompt:   a dog on a beach"
    assert lines[1].startswith("expanded (random-weight test model: not a real expansion): ")
    assert len(lines[1]) > len("expanded (random-weight test model: not a real expansion): ")
    assert json.loads(open(os.path.join(lm, "vidsift_random_weights.json")).read())["random_weights"]
