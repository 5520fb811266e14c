"""Sampling a fine-tuned diffusers video model with the family's own pipeline.

During training (``sample_every``): the pipeline around the transformer being trained (LoRA active), on short
prompts of curated clips, written as one MP4 grid per step. ``RUN/samples/step_N.mp4`` holds one column per
prompt, side by side; ``step_N.txt`` lists the prompts in that order. Prompts come from the ``caption_short``
column (the caption when a clip has none) of the held-out clips first, then of training clips. Noise is
seeded by ``seed``, so grids of different steps compare.

After training (``vidsift sample FINETUNE_RUN``, ``sample_run``): the family's pipeline loaded from the run's
base model (``from_pretrained`` of the recipe's ``model``) plus what the run saved: ``load_lora_weights`` of
``RUN/lora`` (LoRA mode) or the transformer in ``RUN/transformer`` (full mode). Prompts are given, or the
same clips' ``caption_short`` as ``sample_every`` uses (``sample_prompts`` of them); one MP4 per prompt.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from vidsift.model.finetune.families import FAMILIES, Components, Family, check_offline
from vidsift.model.mp4 import encode_mp4


def generate(
    pipe, prompts: list[str], size: tuple[int, int, int], steps: int, guidance: float, tokens: int, seed: int
) -> np.ndarray:
    """[B, F, H, W, 3] float frames in [0, 1]: one video per prompt from a family pipeline."""
    frames, height, width = size
    pipe.set_progress_bar_config(disable=True)
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
    return np.asarray(out).clip(0, 1)


def to_uint8(videos: np.ndarray) -> np.ndarray:
    return (videos * 255).round().astype(np.uint8)


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
    pipe = family.pipeline(c)
    was_training = c.transformer.training
    c.transformer.eval()
    try:
        videos = to_uint8(generate(pipe, prompts, size, steps, guidance, tokens, seed))
    finally:
        c.transformer.train(was_training)
    return np.concatenate(list(videos), axis=2)


def write_grid(grid: np.ndarray, prompts: list[str], folder: Path, step: int, fps: float = 16.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step}.mp4"
    path.write_bytes(encode_mp4(grid, fps=fps))
    (folder / f"step_{step}.txt").write_text("".join(f"{p}\n" for p in prompts))
    return path


# ---------------------------------------------------------------------------------------------------------
# A finished run, from the command line


def read_run(path: str) -> dict | None:
    """The manifest of a ``vidsift finetune`` output folder, or None when ``path`` is not one."""
    manifest = Path(path) / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        m = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("family") in FAMILIES and "outputs" in m else None


def load_run_pipeline(run: str, manifest: dict, device: str = "cpu"):
    """The family pipeline of the run's base model with the run's LoRA loaded (or its full transformer)."""
    from vidsift.model.sample import InputError

    family = FAMILIES[manifest["family"]]
    cls = family.classes()
    model, offline = manifest["recipe"]["model"], manifest["recipe"].get("offline", False)
    extra = {"local_files_only": offline}
    try:
        check_offline(model, offline)
        with _no_loading_bars():  # one progress display: the loaders' per-file bars say nothing here
            if manifest["mode"] == "full":
                extra["transformer"] = cls["transformer"].from_pretrained(str(Path(run) / "transformer"))
            pipe = cls["pipeline"].from_pretrained(model, **extra)
            if manifest["mode"] == "lora":
                pipe.load_lora_weights(str(Path(run) / "lora"))
    except (OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"cannot load the fine-tuned {family.name} model of {run}: {reason}") from None
    return pipe.to(device)


@contextmanager
def _no_loading_bars():
    """diffusers' and transformers' loading bars off for the block, as they were after it."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    shown = [(m, m.is_progress_bar_enabled()) for m in (diffusers_logging, transformers_logging)]
    for m, _ in shown:
        m.disable_progress_bar()
    try:
        yield
    finally:
        for m, on in shown:
            if on:
                m.enable_progress_bar()


def run_prompts(manifest: dict, n: int | None = None, data: str | None = None) -> list[str]:
    """The run's own sampling prompts: caption_short of the held-out clips first, then of training clips."""
    from vidsift.model.finetune.loop import FinetuneConfig
    from vidsift.model.finetune.shards import index_clips

    cfg = FinetuneConfig(**manifest["recipe"])
    index = index_clips(
        data or cfg.data, cfg.caption_column, cfg.bucket_list, cfg.frame_stride, cfg.bucket_policy,
        cfg.max_aspect_change,
    )  # fmt: skip
    return [clip.prompt for clip in index.clips[: n or cfg.sample_prompts]]


def sample_run(
    run: str,
    prompts: list[str],
    size: tuple[int | None, int | None, int | None] = (None, None, None),
    steps: int = 30,
    guidance: float = 5.0,
    seed: int = 0,
    device: str = "cpu",
    manifest: dict | None = None,
) -> np.ndarray:
    """[B, F, H, W, 3] float frames in [0, 1] of a fine-tuned run; ``size`` (frames, height, width)
    defaults to the run's first bucket and must follow the family's rules."""
    from vidsift.model.finetune.loop import FinetuneConfig, check_buckets
    from vidsift.model.sample import CheckpointError

    manifest = manifest or read_run(run)
    if manifest is None:
        raise CheckpointError(f"{run} is not a vidsift finetune output folder (no manifest.json of a run)")
    family = FAMILIES[manifest["family"]]
    default = FinetuneConfig(**manifest["recipe"]).bucket_list[0]
    size = tuple(s or d for s, d in zip(size, default, strict=True))
    pipe = load_run_pipeline(run, manifest, device)
    c = Components(pipe.transformer, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler)
    check_buckets(family, c, [size])
    return generate(pipe, prompts, size, steps, guidance, manifest["text_tokens"], seed)


def write_samples(videos: np.ndarray, prompts: list[str], out: str, fps: float) -> list[str]:
    """One MP4 per prompt: ``out`` itself for one prompt, else ``STEM_00.mp4``, ``STEM_01.mp4``, ... beside
    it, with ``STEM.txt`` listing the prompts in that order."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = to_uint8(videos)
    names = [path.with_name(f"{path.stem}_{i:02d}.mp4") for i in range(len(frames))]
    names = [path] if len(frames) == 1 else names
    for name, video in zip(names, frames, strict=True):
        name.write_bytes(encode_mp4(video, fps=fps))
    path.with_suffix(".txt").write_text("".join(f"{p}\n" for p in prompts))
    return [str(n) for n in names]
