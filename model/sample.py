"""Text-to-video sampling from a DiT checkpoint: Euler integration of the rectified flow with CFG.

    vidsift sample RUN_OR_CKPT --prompt "a red square moving right" --out out.mp4 [--frames 9 --height 32
        --width 32 --steps 30 --cfg 4 --seed 0]

RUN_OR_CKPT is a training run folder (its EMA weights are used) or a ``*.safetensors`` file written by
model/train.py, whose metadata names the DiT config, text encoder, VAE and training size. Writes an H.264
MP4 and a GIF preview beside it.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch


class CheckpointError(Exception):
    """A missing or foreign checkpoint; the CLI prints it on one line."""


def checkpoint_path(path: str) -> str:
    if os.path.isdir(path):
        path = os.path.join(path, "ema.safetensors")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def load_dit(path: str, device: str | torch.device = "cpu"):
    """(model, metadata) from a run folder or a weights file; the metadata alone rebuilds the model."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from model.dit import DiT, DiTConfig

    path = checkpoint_path(path)
    try:
        with safe_open(path, framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - any unreadable file is a bad checkpoint
        raise CheckpointError(f"not a safetensors checkpoint: {path} ({e})") from e
    meta = {k: json.loads(v) for k, v in raw.items()}
    if meta.get("kind") != "vidsift-dit":
        raise CheckpointError(f"{path} is not a vidsift DiT checkpoint")
    model = DiT(DiTConfig(**meta["dit"]))
    model.load_state_dict(load_file(path, device=str(device)))
    return model.to(device).eval(), meta


@torch.no_grad()
def generate(
    ckpt: str,
    prompts: list[str],
    frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    steps: int = 30,
    guidance: float = 4.0,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[torch.Tensor, dict]:
    """Videos [B, 3, F, H, W] in [-1, 1] for the prompts, and the checkpoint metadata."""
    from model.flow import FlowConfig, sample_euler
    from model.text import TextEncoder

    model, meta = load_dit(ckpt, device)
    frames, height, width = frames or meta["frames"], height or meta["height"], width or meta["width"]
    vae = None
    if meta["vae"]:
        from model.vae import load_vae

        if not os.path.isfile(meta["vae"]):
            raise CheckpointError(f"the checkpoint's VAE is missing: {meta['vae']}")
        vae = load_vae(meta["vae"], device)
    try:  # fail early, with a clear message, on sizes the VAE or the patch size does not divide
        shape = vae.latent_shape(frames, height, width) if vae is not None else (3, frames, height, width)
        model.grid(shape)
    except ValueError as e:
        raise CheckpointError(f"size {frames}x{height}x{width} does not fit this checkpoint: {e}") from e
    encoder = TextEncoder(meta["text_model"], meta["text_tokens"], device)
    text, mask = encoder(prompts)
    noise = torch.randn((len(prompts), *shape), generator=torch.Generator().manual_seed(seed)).to(device)
    x = sample_euler(model, noise, text, mask, FlowConfig(**meta["flow"]), steps, guidance)
    if vae is not None:
        x = vae.decode(x)
    return x.clamp(-1, 1), meta


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """[3, F, H, W] in [-1, 1] -> [F, H, W, 3] uint8."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).cpu().numpy()


def write_video(video: torch.Tensor, path: str, fps: float = 12.0) -> None:
    """MP4 (H.264) at ``path`` and a GIF preview beside it."""
    from PIL import Image

    from model.mp4 import encode_mp4

    frames = to_uint8(video)
    with open(path, "wb") as f:
        f.write(encode_mp4(frames, fps))
    imgs = [Image.fromarray(fr) for fr in frames]
    imgs[0].save(
        os.path.splitext(path)[0] + ".gif",
        save_all=True,
        append_images=imgs[1:],
        duration=int(1000 / fps),
        loop=0,
    )


def save_grid(videos: torch.Tensor, path: str) -> None:
    """PNG grid: one row per video [B, 3, F, H, W], frames left to right."""
    from PIL import Image

    rows = [np.concatenate(list(to_uint8(v)), axis=1) for v in videos]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
