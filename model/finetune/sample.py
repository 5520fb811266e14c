"""Samples during fine-tuning (``sample_every``): the family's own diffusers pipeline around the transformer
being trained (LoRA active), on short prompts of curated clips, written as one MP4 grid per step.

``RUN/samples/step_N.mp4`` holds one column per prompt, side by side; ``step_N.txt`` lists the prompts in
that order. Prompts come from the ``caption_short`` column (the caption when a clip has none) of the held-out
clips first, then of training clips. Noise is seeded by ``seed``, so grids of different steps compare.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vidsift.model.finetune.families import Components, Family
from vidsift.model.mp4 import encode_mp4


def sample_grid(
    family: Family,
    c: Components,
    prompts: list[str],
    size: tuple[int, int, int],
    steps: int,
    guidance: float,
    tokens: int,
    seed: int,
) -> np.ndarray:
    """[F, H, W * len(prompts), 3] uint8: one video per prompt from the family pipeline, side by side."""
    frames, height, width = size
    pipe = family.pipeline(c)
    pipe.set_progress_bar_config(disable=True)
    was_training = c.transformer.training
    c.transformer.eval()
    try:
        with torch.no_grad():
            out = pipe(
                prompt=prompts,
                num_frames=frames,
                height=height,
                width=width,
                num_inference_steps=steps,
                guidance_scale=guidance,
                max_sequence_length=tokens,
                generator=torch.Generator().manual_seed(seed),
                output_type="np",
            ).frames
    finally:
        c.transformer.train(was_training)
    videos = np.asarray(out)  # [B, F, H, W, 3] in [0, 1]
    videos = (videos.clip(0, 1) * 255).round().astype(np.uint8)
    return np.concatenate(list(videos), axis=2)


def write_grid(grid: np.ndarray, prompts: list[str], folder: Path, step: int, fps: float = 16.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step}.mp4"
    path.write_bytes(encode_mp4(grid, fps=fps))
    (folder / f"step_{step}.txt").write_text("".join(f"{p}\n" for p in prompts))
    return path
