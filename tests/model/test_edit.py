"""SDEdit video-to-video (model/edit.py, ``vidsift sample --edit``) on tiny random-weight checkpoints."""

import os
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from vidsift.model.cli import main
from vidsift.model.edit import edit_clip, edit_latent, read_clip
from vidsift.model.flow import FlowConfig
from vidsift.model.mp4 import encode_mp4
from vidsift.model.sample import generate
from vidsift.model.synthetic import moving_shape


def save_dit(path: str, in_channels: int, patch: list[int], vae: str = "") -> str:
    """A random-weight DiT checkpoint whose zero-initialised layers get random weights too, so velocities
    are not zero and the sampler's arithmetic is exercised."""
    from vidsift.model.dit import DiT, DiTConfig, config_to_dict
    from vidsift.model.train import save_weights

    torch.manual_seed(0)
    model = DiT(DiTConfig(in_channels=in_channels, patch=patch, dim=32, depth=2, heads=2))
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.05)
    meta = {
        "kind": "vidsift-dit",
        "dit": config_to_dict(model.cfg),
        "flow": {"shift_base_tokens": 64},  # shift > 1 at these sizes: the schedule is really warped
        "text_model": "",
        "text_tokens": 8,
        "vae": vae,
        "frames": 5,
        "height": 16,
        "width": 16,
        "fps": 12.0,
        "step": 0,
    }
    save_weights(model, path, meta)
    return path


@pytest.fixture(scope="module")
def pixel_ckpt(tmp_path_factory) -> str:
    return save_dit(str(tmp_path_factory.mktemp("pix") / "ema.safetensors"), 3, [1, 4, 4])


@pytest.fixture(scope="module")
def latent_ckpt(tmp_path_factory) -> str:
    from vidsift.model.vae import PRESETS, VAEConfig, VideoVAE, save_vae

    d = tmp_path_factory.mktemp("lat")
    torch.manual_seed(1)
    vae = VideoVAE(VAEConfig(**PRESETS["tiny"]))
    save_vae(vae, str(d / "vae.safetensors"))
    return save_dit(str(d / "ema.safetensors"), 4, [1, 1, 1], vae=str(d / "vae.safetensors"))


def write_clip(path, frames: int, height: int, width: int, fps: float = 15.0) -> str:
    rng = np.random.default_rng(0)
    video = moving_shape("red", "right", "square", frames, max(height, width), rng)[:, :height, :width]
    with open(path, "wb") as f:
        f.write(encode_mp4(video, fps))
    return str(path)


def probe(path: str) -> tuple[int, int, int, Fraction]:
    with av.open(path) as c:
        rate = c.streams.video[0].average_rate
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return len(frames), frames[0].shape[0], frames[0].shape[1], rate


def test_strength_0_returns_the_input_latent(pixel_ckpt, latent_ckpt, tmp_path):
    from vidsift.model.vae import load_vae

    x0 = torch.randn(1, 3, 2, 8, 8)
    text, mask = torch.randn(1, 4, 384), torch.ones(1, 4, dtype=torch.bool)
    model = torch.nn.Identity()  # never called at strength 0
    for keep in (False, True):
        assert torch.equal(edit_latent(model, x0, text, mask, FlowConfig(), 0.0, keep_first_frame=keep), x0)

    clip = write_clip(tmp_path / "in.mp4", 9, 16, 24)
    # Pixel space: the edited video is the decoded input itself.
    out, inp, _ = edit_clip(pixel_ckpt, clip, "a blue square moving right", strength=0.0, steps=4)
    assert torch.equal(out, inp.video)
    # Latent space: the VAE round trip of the input, nothing more.
    out, inp, _ = edit_clip(latent_ckpt, clip, "a blue square moving right", strength=0.0, steps=4)
    vae = load_vae(os.path.join(os.path.dirname(latent_ckpt), "vae.safetensors"))
    assert torch.equal(out, vae.decode(vae.encode(inp.video[None]))[0])


def test_strength_1_is_text_to_video_with_the_same_seed(pixel_ckpt, latent_ckpt, tmp_path):
    clip = write_clip(tmp_path / "in.mp4", 9, 16, 24)  # non-square
    prompt = "a green circle moving up"
    for ckpt in (pixel_ckpt, latent_ckpt):
        edited, _, info = edit_clip(ckpt, clip, prompt, strength=1.0, steps=3, guidance=3.0, seed=7)
        plain, _ = generate(ckpt, [prompt], 9, 16, 24, steps=3, guidance=3.0, seed=7)
        assert info["t_start"] == 1.0 and info["steps"] == 3
        assert torch.equal(edited, plain[0]), ckpt
    # A partial edit really depends on the input, and on the strength.
    half, _, info = edit_clip(pixel_ckpt, clip, prompt, strength=0.5, steps=4, seed=7)
    assert info["steps"] == 2 and 0.5 < info["t_start"] < 1.0  # shifted towards noise (shift base 64)
    assert not torch.equal(half, edited)


def test_keep_first_frame_keeps_it_exactly(pixel_ckpt, tmp_path):
    clip = write_clip(tmp_path / "in.mp4", 5, 16, 16)
    out, inp, _ = edit_clip(pixel_ckpt, clip, "a blue square", strength=0.8, steps=3, keep_first_frame=True)
    assert torch.equal(out[:, 0], inp.video[:, 0])
    assert not torch.equal(out[:, 1:], inp.video[:, 1:])


def test_cli_keeps_size_frame_count_and_fps(pixel_ckpt, latent_ckpt, tmp_path, capsys):
    clip = write_clip(tmp_path / "in.mp4", 9, 24, 40, fps=15)  # non-square, not the training size or fps
    for ckpt in (pixel_ckpt, latent_ckpt):
        out = str(tmp_path / "out.mp4")
        argv = ["sample", ckpt, "--edit", clip, "--prompt", "a blue square moving right", "--strength", "0.5"]
        assert main([*argv, "--steps", "2", "--out", out]) == 0
        assert probe(out) == (9, 24, 40, Fraction(15)) and os.path.getsize(tmp_path / "out.gif") > 0
        assert "9 frames, 40x24, 15 fps" in capsys.readouterr().out
    # Strength 0 through the whole CLI: the written clip is the input up to H.264.
    out = str(tmp_path / "same.mp4")
    assert main(["sample", pixel_ckpt, "--edit", clip, "--prompt", "x", "--strength", "0", "--out", out]) == 0
    a, b = read_clip(clip).video, read_clip(out).video
    assert (a - b).abs().mean() < 0.02


def test_image_in_image_out_or_one_frame_mp4(pixel_ckpt, latent_ckpt, tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (16, 24, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "in.png")
    for ckpt in (pixel_ckpt, latent_ckpt):
        out = str(tmp_path / "out.png")
        argv = [
            "sample",
            ckpt,
            "--edit",
            str(tmp_path / "in.png"),
            "--prompt",
            "a red circle",
            "--steps",
            "2",
        ]
        assert main([*argv, "--out", out]) == 0
        assert np.asarray(Image.open(out)).shape == (16, 24, 3)
    assert main([*argv, "--out", str(tmp_path / "out.mp4")]) == 0
    assert probe(str(tmp_path / "out.mp4"))[:3] == (1, 16, 24)


def test_bad_inputs_exit_2_with_one_line(pixel_ckpt, latent_ckpt, tmp_path, capsys):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 100)
    odd = write_clip(tmp_path / "odd.mp4", 5, 16, 30)  # 30 is not a multiple of the patch (4)
    eight = write_clip(tmp_path / "eight.mp4", 8, 16, 16)  # the VAE needs 1 + 4k frames
    good = write_clip(tmp_path / "good.mp4", 5, 16, 16)
    cases = [
        ([pixel_ckpt, "--edit", str(garbage)], "cannot read"),
        ([pixel_ckpt, "--edit", str(tmp_path / "missing.mp4")], "input not found"),
        ([pixel_ckpt, "--edit", odd], "multiples of 4 (e.g. --width 32 --height 16"),
        ([latent_ckpt, "--edit", eight], "1 + 4k frames (e.g. 5 or 9"),
        ([latent_ckpt, "--edit", good, "--width", "20"], "multiples of 8"),
        ([pixel_ckpt, "--edit", good, "--strength", "1.5"], "--strength must be in [0, 1]"),
        ([pixel_ckpt, "--edit", good, "--out", str(tmp_path / "x.png")], "is an image path"),
        ([pixel_ckpt, "--strength", "0.5"], "need --edit"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(["sample", *argv, "--prompt", "x", "--steps", "1"]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    # An unsupported size is fine when a working size is given: the result comes back at the input's size.
    out = str(tmp_path / "resized.mp4")
    argv = [pixel_ckpt, "--edit", odd, "--width", "32", "--prompt", "x", "--steps", "1", "--out", out]
    assert main(["sample", *argv]) == 0 and probe(out)[:3] == (5, 16, 30)
    assert main(["sample", latent_ckpt, "--edit", eight, "--frames", "5", "--prompt", "x", "--out", out]) == 0
    assert probe(out)[:3] == (5, 16, 16)


def test_edit_with_another_conditioning_mode_is_refused(pixel_ckpt, tmp_path, capsys):
    clip = write_clip(tmp_path / "in.mp4", 5, 16, 16)
    for extra in (
        ["--image", clip],
        ["--extend", clip],
        ["--connect", clip, clip],
        ["--context-frames", "1"],
    ):
        capsys.readouterr()
        assert main(["sample", pixel_ckpt, "--edit", clip, *extra, "--prompt", "x"]) == 2
        err = capsys.readouterr().err
        assert f"--edit cannot be combined with {extra[0]}" in err and err.count("\n") == 1, err
