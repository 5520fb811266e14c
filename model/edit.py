"""Video-to-video editing with a new prompt (SDEdit: Meng et al. 2022), from a text-to-video checkpoint.

    vidsift sample CKPT --edit clip.mp4 --prompt "a blue square moving right" --strength 0.5 \
        [--keep-first-frame] [--steps 30 --cfg 4 --seed 0] --out edited.mp4

The input clip is encoded (with the checkpoint's VAE, or kept as pixels for a pixel-space checkpoint),
moved part of the way along the rectified-flow path towards noise, and the ODE is integrated back to data
under the new prompt. What survives the partial noising (layout, motion, coarse shapes) is kept; what the
noise drowns (colour, texture, style) is re-imagined to follow the prompt.

- Strength S is the fraction of the sampling schedule that is re-run. The start is the schedule's own time
  t0 = shift(S), with the resolution-dependent shift of model/flow.py (like SD3's img2img in diffusers), and
  ceil(S * steps) Euler steps go from t0 to 0. S = 0 returns the input latent untouched (the output is the
  VAE round trip of the input); S = 1 starts from pure noise and is exactly `model.sample.generate` with
  the same seed: same noise draw, same schedule, same guided Euler steps.
- The start point uses flow.py's straight line x_t = (1 - t) x0 + t e (t = 1 is noise), with the same
  seeded noise e that text-to-video draws.
- ``keep_first_frame``: after every step the first latent frame is put back on the input's own path,
  (1 - t) x0 + t e at the step's new t, so the model always sees one consistent noise level (it was
  trained with one t per clip) and the first frame ends exactly as the input's first latent frame (with
  the causal VAE that is the first video frame alone).
- The clip is edited at its own size, frame count and frame rate. Sizes the checkpoint cannot take
  (patch or VAE divisibility, 1 + 4k frames for the VAE, even sides for H.264) are a one-line error that
  names the nearest sizes that work; ``frames`` edits only the first frames and ``height``/``width`` pick
  a working size that the result is resized back from.
- Images are one-frame clips. The output format follows the output path: an image extension writes that
  image (one-frame results only), anything else an H.264 MP4 with a GIF preview beside it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DEFAULT_STRENGTH = 0.5


class EditError(Exception):
    """Bad edit input (unreadable clip, a size the checkpoint cannot take, strength out of range); the CLI
    prints it on one line."""


@dataclass(frozen=True)
class Clip:
    video: torch.Tensor  # [3, F, H, W] in [-1, 1]
    fps: float | None  # None for an image


# ---------------------------------------------------------------------------------------------------------
# input


def read_clip(path: str) -> Clip:
    """Every frame of a video file (PyAV), or an image file as a one-frame clip (PIL)."""
    if not os.path.isfile(path):
        raise EditError(f"input not found: {path}")
    try:
        if path.lower().endswith(IMAGE_EXTS):
            from PIL import Image

            with Image.open(path) as img:
                frames = [np.asarray(img.convert("RGB"))]
        else:
            from vidsift.model.data import read_video

            return Clip(*read_video(path))
    except Exception as e:  # noqa: BLE001 - PyAV and PIL raise many types; all mean "not a readable clip"
        raise EditError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    video = torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1.0
    return Clip(video, None)


def resize(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[3, F, H, W] -> [3, F, height, width] (bilinear, antialiased when shrinking)."""
    if video.shape[2:] == (height, width):
        return video
    frames = video.transpose(0, 1)  # frames as the batch
    out = F.interpolate(frames, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return out.transpose(0, 1).clamp(-1, 1)


def check_size(model, vae, frames: int, height: int, width: int, where: str) -> tuple[int, ...]:
    """The model-input shape [C, T, H, W] for a clip, or an EditError naming sizes that work: the VAE
    compresses (ft, fh, fw) with 1 + ft k frames, and the patch (pt, ph, pw) must divide what it gives."""
    pt, ph, pw = model.cfg.patch
    ft, fh, fw = (1, 1, 1) if vae is None else getattr(getattr(vae, "cfg", None), "factors", (4, 8, 8))

    def frames_fit(n: int) -> bool:
        if vae is None:
            return n % pt == 0
        return (n - 1) % ft == 0 and (1 + (n - 1) // ft) % pt == 0

    hint = []
    if not frames_fit(frames):
        below = [n for n in range(frames - 1, 0, -1) if frames_fit(n)][:1]
        above = [n for n in range(frames + 1, frames + ft * pt + 1) if frames_fit(n)][:1]
        near = below + above
        rule = f"1 + {ft}k frames" if vae is not None else f"a multiple of {pt} frames"
        hint.append(f"{rule} (e.g. {' or '.join(map(str, near))}: --frames N edits the first N)")
    hs, ws = ph * fh, pw * fw
    if height % hs or width % ws:
        h2, w2 = max(hs, round(height / hs) * hs), max(ws, round(width / ws) * ws)
        rule = f"multiples of {hs}" if hs == ws else f"heights of multiples of {hs}, widths of {ws}"
        hint.append(f"sides that are {rule} (e.g. --width {w2} --height {h2}: resized there and back)")
    if hint:
        raise EditError(
            f"{where} is {frames} frames of {width}x{height}; this checkpoint needs {' and '.join(hint)}"
        )
    shape = vae.latent_shape(frames, height, width) if vae is not None else (3, frames, height, width)
    model.grid(shape)
    return shape


def check_output(path: str, frames: int, height: int, width: int) -> None:
    """An image path takes one frame; an MP4 (H.264, yuv420p) needs even sides."""
    if path.lower().endswith(IMAGE_EXTS):
        if frames != 1:
            raise EditError(f"{path} is an image path but the clip has {frames} frames: write an .mp4")
    elif height % 2 or width % 2:
        raise EditError(
            f"H.264 needs even sides, the clip is {width}x{height}: write an image (.png) instead"
        )


# ---------------------------------------------------------------------------------------------------------
# the partial rectified-flow integration


def strength_schedule(strength: float, steps: int, x_shape, cfg) -> torch.Tensor:
    """Decreasing timesteps from shift(strength) to 0: the last ceil(strength * steps) intervals of the
    text-to-video schedule's spacing. strength 1 gives exactly flow.sampling_schedule(steps, ...)."""
    from vidsift.model.flow import shift_t, time_shift

    n = math.ceil(strength * steps - 1e-9)
    if n == 0:
        return torch.zeros(1)
    return shift_t(torch.linspace(strength, 0.0, n + 1), time_shift(x_shape, cfg))


@torch.no_grad()
def edit_latent(
    model,
    x0: torch.Tensor,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    cfg,
    strength: float,
    steps: int = 30,
    guidance: float = 4.0,
    seed: int = 0,
    keep_first_frame: bool = False,
) -> torch.Tensor:
    """SDEdit on a model-input latent x0 [B, C, T, H, W]: noise it to t0 = shift(strength) and integrate
    dx/dt = v from t0 to 0 under the text. Same noise draw as model.sample.generate for the same seed."""
    if not 0.0 <= strength <= 1.0:
        raise EditError(f"--strength must be in [0, 1], got {strength}")
    from vidsift.model.flow import guided_velocity

    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(x0.device, x0.dtype)
    ts = strength_schedule(strength, steps, x0.shape, cfg).to(x0.device)
    x = (1 - ts[0]) * x0 + ts[0] * noise
    for i in range(len(ts) - 1):
        t, t_next = ts[i], ts[i + 1]
        x = x + (t_next - t) * guided_velocity(model, x, t, text, text_mask, guidance)
        if keep_first_frame:  # back onto the input's own path, at the noise level of the next step
            x[:, :, :1] = (1 - t_next) * x0[:, :, :1] + t_next * noise[:, :, :1]
    if keep_first_frame:
        x[:, :, :1] = x0[:, :, :1]  # exactly clean, whatever the last t was (also strength 0)
    return x


# ---------------------------------------------------------------------------------------------------------
# end to end


@torch.no_grad()
def edit_clip(
    ckpt: str,
    clip: Clip | str,
    prompt: str,
    strength: float = DEFAULT_STRENGTH,
    steps: int = 30,
    guidance: float = 4.0,
    seed: int = 0,
    keep_first_frame: bool = False,
    frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    device: str = "cpu",
    out_path: str | None = None,
) -> tuple[torch.Tensor, Clip, dict]:
    """(edited video [3, F, H, W] in [-1, 1] at the input's size, the input clip, info). ``frames`` keeps the
    first frames only; ``height``/``width`` set the size the model works at (the result is resized back).
    ``out_path``, when given, is checked before any work (see write_edit)."""
    from vidsift.model.flow import FlowConfig
    from vidsift.model.sample import load_checkpoint_vae, load_dit
    from vidsift.pipeline.text_encoder import TextEncoder

    if not 0.0 <= strength <= 1.0:
        raise EditError(f"--strength must be in [0, 1], got {strength}")
    name = clip if isinstance(clip, str) else "the input"
    clip = read_clip(clip) if isinstance(clip, str) else clip
    video = clip.video
    if frames:
        if frames > video.shape[1]:
            raise EditError(f"{name} has {video.shape[1]} frames, fewer than --frames {frames}")
        video = video[:, :frames]
    f, in_h, in_w = video.shape[1:]
    h, w = height or in_h, width or in_w
    if out_path:
        check_output(out_path, f, in_h, in_w)

    model, meta = load_dit(ckpt, device)
    vae = load_checkpoint_vae(meta, device)
    check_size(model, vae, f, h, w, name if (h, w) == (in_h, in_w) else f"the working size for {name}")

    x = resize(video, h, w)[None].to(device)
    x0 = vae.encode(x) if vae is not None else x
    text, mask = TextEncoder(meta["text_model"], meta["text_tokens"], device)([prompt])
    cfg = FlowConfig(**{k: v for k, v in meta["flow"].items() if k in FlowConfig.__dataclass_fields__})
    z = edit_latent(model, x0, text, mask, cfg, strength, steps, guidance, seed, keep_first_frame)
    out = (vae.decode(z) if vae is not None else z).clamp(-1, 1)[0].cpu()
    ts = strength_schedule(strength, steps, x0.shape, cfg)
    info = {"t_start": float(ts[0]), "steps": len(ts) - 1, "fps": clip.fps or meta.get("fps", 12.0)}
    return resize(out, in_h, in_w), Clip(video, clip.fps), info


def write_edit(video: torch.Tensor, path: str, fps: float) -> None:
    """An image for an image path (one-frame clips only), else an MP4 (H.264, so even sides) and a GIF
    beside it."""
    from vidsift.model.sample import to_uint8, write_video

    check_output(path, *video.shape[1:])
    if path.lower().endswith(IMAGE_EXTS):
        from PIL import Image

        Image.fromarray(to_uint8(video)[0]).save(path)
    else:
        write_video(video, path, fps=fps)
