"""Text-to-video sampling from a DiT checkpoint: Euler integration of the rectified flow with CFG.

    vidsift sample RUN_OR_CKPT --prompt "a red square moving right" --out out.mp4 [--frames 9 --height 32
        --width 32 --steps 30 --cfg 4 --seed 0]
        [--image first.png | --extend clip.mp4 [--backward] | --connect a.mp4 b.mp4] [--context-frames N]
        [--expand --expand-model PATH]

RUN_OR_CKPT is a training run folder (its EMA weights are used) or a ``*.safetensors`` file written by
model/train.py, whose metadata names the DiT config, text encoder, VAE and training size. Writes an H.264
MP4 and a GIF preview beside it.

Conditioning by frames (model/flow.py ``sample_euler(cond=...)``): the given frames are encoded to the
model's space (``encode_video``), placed at the start (``--image``, ``--extend``), the end (``--extend
--backward``) or both ends (``--connect``) of the clip, and held fixed while the rest is generated, so they
come back unchanged. ``--expand`` rewrites a short prompt into the long caption style with a language model
through the captioning backends (pipeline/backends), and prints both.

A ``vidsift finetune`` output folder given to ``vidsift sample`` is not a DiT checkpoint: model/cli.py sends
it to model/finetune/sample.py (the family's diffusers pipeline plus the run's LoRA or transformer).
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from vidsift.model.checkpoint import CheckpointError  # a missing or foreign checkpoint (re-exported)


class InputError(Exception):
    """A missing, unreadable or unusable conditioning image or clip, or a failed prompt expansion; the CLI
    prints it on one line."""


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

    from vidsift.model.dit import DiT, DiTConfig

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
    *,
    image: str | None = None,
    extend: str | None = None,
    backward: bool = False,
    connect: tuple[str, str] | None = None,
    context_frames: int | None = None,
) -> tuple[torch.Tensor, dict]:
    """Videos [B, 3, F, H, W] in [-1, 1] for the prompts, and the checkpoint metadata.

    Conditioning (at most one): ``image`` is the first frame (image-to-video); ``extend`` continues a clip
    from its last ``context_frames`` frames (``backward``: leads into its first ones); ``connect`` = (a, b)
    starts with a's last and ends with b's first ``context_frames`` frames. Given frames are unchanged in
    the result (exactly in pixel space; their latents are exact with a VAE)."""
    from vidsift.model.flow import FlowConfig, sample_euler
    from vidsift.pipeline.text_encoder import TextEncoder

    modes = [m for m, v in (("--image", image), ("--extend", extend), ("--connect", connect)) if v]
    if len(modes) > 1:
        raise InputError(f"{' and '.join(modes)} cannot be combined: choose one conditioning mode")
    if backward and not extend:
        raise InputError("--backward needs --extend CLIP")
    model, meta = load_dit(ckpt, device)
    frames, height, width = frames or meta["frames"], height or meta["height"], width or meta["width"]
    vae = load_checkpoint_vae(meta, device)
    try:  # fail early, with a clear message, on sizes the VAE or the patch size does not divide
        shape = vae.latent_shape(frames, height, width) if vae is not None else (3, frames, height, width)
        model.grid(shape)
    except ValueError as e:
        raise CheckpointError(f"size {frames}x{height}x{width} does not fit this checkpoint: {e}") from e
    cond = None
    if modes:
        cond = conditioning(
            model, vae, shape, frames, height, width, len(prompts), device,
            image=image, extend=extend, backward=backward, connect=connect, context_frames=context_frames,
        )  # fmt: skip
    encoder = TextEncoder(meta["text_model"], meta["text_tokens"], device)
    text, mask = encoder(prompts)
    noise = torch.randn((len(prompts), *shape), generator=torch.Generator().manual_seed(seed)).to(device)
    flow = FlowConfig(**{k: v for k, v in meta["flow"].items() if k in FlowConfig.__dataclass_fields__})
    x = sample_euler(model, noise, text, mask, flow, steps, guidance, cond=cond)
    if vae is not None:
        x = vae.decode(x)
    return x.clamp(-1, 1), meta


def load_checkpoint_vae(meta: dict, device: str | torch.device = "cpu"):
    """The VAE a DiT checkpoint was trained with (None for pixel space)."""
    if not meta.get("vae"):
        return None
    from vidsift.model.vae import load_vae

    if not os.path.isfile(meta["vae"]):
        raise CheckpointError(f"the checkpoint's VAE is missing: {meta['vae']}")
    return load_vae(meta["vae"], device)


# ---------------------------------------------------------------------------------------------------------
# conditioning inputs: an image or frames of a clip, in the model's space


def load_image(path: str, height: int, width: int) -> torch.Tensor:
    """An image file, resized to cover height x width and centre-cropped: [3, 1, H, W] in [-1, 1]."""
    from vidsift.model.data import load_image as read

    if not os.path.isfile(path):
        raise InputError(f"image not found: {path}")
    try:
        return read(path, height, width)
    except Exception as e:  # noqa: BLE001 - PIL raises many types; all mean "not a readable image"
        raise InputError(f"unreadable image {path} ({type(e).__name__}: {e})") from e


def load_clip(path: str, height: int, width: int) -> torch.Tensor:
    """Every frame of a video file, resized to cover height x width and centre-cropped: [3, F, H, W] in
    [-1, 1] (conditioning clips are short; an image file reads as a one-frame clip)."""
    from vidsift.model.data import read_video

    if not os.path.isfile(path):
        raise InputError(f"clip not found: {path}")
    try:
        return read_video(path, height, width)[0]
    except Exception as e:  # noqa: BLE001 - PyAV raises many types; all mean "not a readable video"
        raise InputError(f"unreadable clip {path} ({type(e).__name__}: {e})") from e


def encode_video(video: torch.Tensor, vae=None) -> torch.Tensor:
    """Pixels [3, F, H, W] in [-1, 1] -> the DiT's input space [C, T, h, w] (the VAE latent, or the pixels
    themselves in pixel space). Reusable by any mode that starts from given frames."""
    if vae is None:
        return video
    try:
        return vae.encode(video[None].to(vae.latent_mean.device))[0]
    except ValueError as e:  # the causal VAE takes 1 + 4k frames
        raise InputError(f"{video.shape[1]} frames do not fit the VAE: {e}") from e


def conditioning(
    model, vae, shape, frames: int, height: int, width: int, batch: int, device,
    *, image=None, extend=None, backward=False, connect=None, context_frames=None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(clean [B, C, T, H, W], given frames [B, T]) for ``sample_euler(cond=...)``."""
    if context_frames is not None and context_frames < 1:
        raise InputError(f"--context-frames must be at least 1, got {context_frames}")
    # Default context: the image itself, or a quarter of the clip (whole VAE frame groups: 1 + 4k).
    vae_time = vae.cfg.factors[0] if vae is not None else 1
    n = context_frames or max(1, frames // 4)
    if vae_time > 1:
        n = 1 + (n - 1) // vae_time * vae_time
    if image:
        parts = [(encode_video(load_image(image, height, width), vae), "start")]
    elif extend:
        clip = _context(extend, height, width, n)
        ctx = clip[:, :n] if backward else clip[:, -n:]
        parts = [(encode_video(ctx, vae), "end" if backward else "start")]
    else:
        a, b = _context(connect[0], height, width, n), _context(connect[1], height, width, n)
        parts = [(encode_video(a[:, -n:], vae), "start"), (encode_video(b[:, :n], vae), "end")]
    clean = torch.zeros(shape)
    given = torch.zeros(shape[1], dtype=torch.bool)
    pt = model.cfg.patch[0]
    for z, where in parts:
        t = z.shape[1]
        if t % pt:
            raise InputError(f"{t} conditioning frames do not fill whole temporal patches of {pt}")
        s = 0 if where == "start" else shape[1] - t
        clean[:, s : s + t] = z.cpu()
        given[s : s + t] = True
    if given.all():
        raise InputError(
            f"the {int(given.sum())} given frames fill all {shape[1]} frames: ask for more --frames or fewer "
            "--context-frames"
        )
    return clean[None].expand(batch, *shape).to(device), given[None].expand(batch, -1).to(device)


def _context(path: str, height: int, width: int, n: int) -> torch.Tensor:
    clip = load_clip(path, height, width)
    if clip.shape[1] < n:
        raise InputError(f"{path} has {clip.shape[1]} frames; {n} context frames are needed")
    return clip


# ---------------------------------------------------------------------------------------------------------
# prompt expansion: a short user prompt in the long caption style the model was trained on

EXPAND_SYSTEM = "You write the captions a text-to-video model is trained on."
EXPAND_PROMPT = (
    "Expand the short prompt below into one vivid, flowing paragraph of 80 to 150 words, in the style of "
    "a detailed video caption: the subjects and their appearance, the action in the order it happens, the "
    "setting, the camera framing and motion, the lighting and the visual style. Keep everything the prompt "
    "says and contradict none of it; add only details that fit it. Do not start with 'The video shows' or "
    "similar. Output only the paragraph.\n\nPrompt: {prompt}"
)


def expand_prompt(
    prompt: str,
    model: str,
    backend: str = "transformers",
    base_url: str = "",
    device: str = "cpu",
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    seed: int = 0,
) -> tuple[str, bool]:
    """(long prompt, written by a random-weight test model) via the captioning backends
    (pipeline/backends: transformers in-process, vLLM, or an OpenAI-compatible server). A local path, or
    a hub name (downloaded unless the user sets HF_HUB_OFFLINE=1: the environment is left as it is)."""
    from vidsift.pipeline.backends import load_backend
    from vidsift.pipeline.backends.base import BackendConfig, ChatRequest

    try:
        config = BackendConfig(
            backend=backend,
            model=model,
            base_url=base_url,
            device=device,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
        )
    except ValueError as e:
        raise InputError(f"--expand: {e}") from e
    try:
        llm = load_backend(config, vision=False)
    except Exception as e:  # noqa: BLE001 - from_pretrained raises many types; all mean "cannot load it"
        raise InputError(
            f"--expand: cannot load {model!r} ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from e
    torch.manual_seed(seed)  # sampling (temperature > 0) in-process is then repeatable
    result = llm.chat([ChatRequest(system=EXPAND_SYSTEM, prompt=EXPAND_PROMPT.format(prompt=prompt))])[0]
    text = " ".join("".join(c for c in result.text if c.isprintable() or c.isspace()).split())
    if result.error or not text:
        why = result.error or "an empty answer; a higher --expand-temperature may help"
        raise InputError(f"--expand: {model} returned no text ({why})")
    return text, llm.random_weights


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """[3, F, H, W] in [-1, 1] -> [F, H, W, 3] uint8."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).cpu().numpy()


def write_video(video: torch.Tensor, path: str, fps: float = 12.0) -> None:
    """MP4 (H.264) at ``path`` and a GIF preview beside it."""
    from PIL import Image

    from vidsift.model.mp4 import encode_mp4

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
