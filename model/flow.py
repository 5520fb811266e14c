"""Rectified flow: the training objective and the Euler sampler with classifier-free guidance.

Data x0 and noise e are joined by a straight line x_t = (1 - t) x0 + t e, t in [0, 1]; the model learns
the constant velocity v = e - x0 along it (Liu et al. 2022, SD3: Esser et al. 2024). Sampling integrates
dx/dt = v from t = 1 (noise) down to t = 0 (data) with Euler steps.

- Timesteps are logit-normal: t = sigmoid(n), n ~ N(mean, std), which spends training on the middle of
  the path where the velocity is hardest to predict (SD3 section 3.1).
- Resolution-dependent shift: bigger videos keep more signal at the same t (many correlated pixels
  average out the noise), so t is shifted towards 1 by t' = s t / (1 + (s - 1) t) with
  s = sqrt(tokens / base_tokens) (SD3 section 5.3.2). The same shift warps the sampling schedule.
- Caption dropout: 10% of captions are replaced by the model's null caption so one network learns both
  the conditional and the unconditional velocity; guidance mixes them at sampling time.
- Packed batches (``packed_training_loss``): every clip draws its own timestep, shifted by its own size,
  and its own caption dropout; the loss averages over real (not padding) tokens that are generated.
- Conditioning by frames (Open-Sora style): a clip may keep its first frames, its last frames or both
  clean (x_t = x0 there, modulated as t = 0); the loss skips them. At sampling the same frames are reset to
  the given clean latent after every step, so they come back unchanged: image-to-video, extension forward
  or backward, and connecting two clips are all this one mechanism.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class FlowConfig:
    t_mean: float = 0.0  # logit-normal mean of training timesteps
    t_std: float = 1.0  # logit-normal std
    # Positions (T*H*W of the model input) at which the shift is 1. 4096 gives ~5.7 for a 480p Wan latent
    # (21x60x104), close to the 5.0 Wan samples with; a 8x32x32 pixel clip gets 1.4.
    shift_base_tokens: int = 4096
    shift: float = 0.0  # fixed shift; 0 = resolution-dependent sqrt(tokens / shift_base_tokens)
    caption_dropout: float = 0.1  # probability of training a sample without its caption
    # conditioning by frames (packed training): share of video clips trained with clean frames given
    cond_first: float = 0.0  # first frames given (image-to-video, extension forward)
    cond_last: float = 0.0  # last frames given (extension backward)
    cond_both: float = 0.0  # first and last frames given (connecting two clips)
    cond_frames: int = 1  # temporal patches given at each conditioned end (at most half the clip)


def time_shift(x_shape: tuple[int, ...], cfg: FlowConfig) -> float:
    """Shift factor for a [B, C, T, H, W] input: sqrt of its positions over the base (at least 1)."""
    if cfg.shift > 0:
        return cfg.shift
    positions = math.prod(x_shape[2:])
    return max(1.0, math.sqrt(positions / cfg.shift_base_tokens))


def shift_t(t: torch.Tensor, s: float) -> torch.Tensor:
    return s * t / (1 + (s - 1) * t)


def sample_t(n: int, x_shape, cfg: FlowConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    z = torch.randn(n, generator=generator) * cfg.t_std + cfg.t_mean
    return shift_t(torch.sigmoid(z), time_shift(x_shape, cfg))


def flow_loss(model, x0, text, text_mask, drop_text, t, noise) -> torch.Tensor:
    """Mean squared error between the predicted and the true velocity at timesteps t with given noise."""
    tb = t.to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
    xt = (1 - tb) * x0 + tb * noise
    v = model(xt, t.to(x0.device), text, text_mask, drop_text)
    return ((v.float() - (noise - x0).float()) ** 2).mean()


def training_loss(model, x0, text, text_mask, empty, cfg: FlowConfig, generator: torch.Generator):
    """One rectified-flow loss on a batch. ``empty`` [B] marks samples with no caption (always unconditional).
    All randomness comes from ``generator`` so a step is reproducible (exact resume, DDP vs one process)."""
    b = x0.shape[0]
    t = sample_t(b, x0.shape, cfg, generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
    drop = (torch.rand(b, generator=generator) < cfg.caption_dropout).to(x0.device) | empty
    return flow_loss(model, x0, text, text_mask, drop, t, noise)


def sampling_schedule(steps: int, x_shape, cfg: FlowConfig) -> torch.Tensor:
    """Decreasing timesteps from 1 to 0 (steps + 1 values), warped by the same shift as training."""
    return shift_t(torch.linspace(1.0, 0.0, steps + 1), time_shift(x_shape, cfg))


def cond_modes(n: int, cfg: FlowConfig, generator: torch.Generator) -> list[str]:
    """For n clips: "" (plain), "first", "last" or "both", drawn with the recipe's probabilities."""
    u = torch.rand(n, generator=generator).tolist()
    edges = [("first", cfg.cond_first), ("last", cfg.cond_last), ("both", cfg.cond_both)]
    out = []
    for x in u:
        mode, acc = "", 0.0
        for name, p in edges:
            acc += p
            if x < acc:
                mode = name
                break
        out.append(mode)
    return out


def cond_frames_mask(frames: int, mode: str, k: int) -> list[bool]:
    """Which of ``frames`` temporal positions are given clean under ``mode`` (k per conditioned end, at most
    what leaves one generated frame per end). One-frame clips (images) are never conditioned."""
    ends = 2 if mode == "both" else 1
    k = min(k, (frames - 1) // ends)
    if not mode or k < 1:
        return [False] * frames
    first = mode in ("first", "both")
    last = mode in ("last", "both")
    return [(first and i < k) or (last and i >= frames - k) for i in range(frames)]


def packed_flow_loss(forward, packed, text, text_mask, drop, t, noise, cond=None, attn_mask=None):
    """Mean squared velocity error over the generated real tokens of a packed batch (model/data.py
    ``Packed``). ``forward`` has ``DiT.forward_packed``'s signature (``dit.forward_packed``, or a
    ``PackedDiT`` wrapped by DDP / torch.compile). Per clip slot: t [R, K], drop [R, K]; text [R, K, L, D],
    text_mask [R, K, L]; noise [R, N, P]; cond [R, N] clean conditioning tokens (x_t = x0 there)."""
    x0 = packed.tokens
    t_tok = torch.gather(t, 1, packed.seq_id.clamp(min=0))[..., None].to(x0.dtype)
    xt = (1 - t_tok) * x0 + t_tok * noise
    if cond is not None:
        xt = torch.where(cond[..., None], x0, xt)
    v = forward(xt, packed.seq_id, packed.pos, t, text, text_mask, drop, cond, attn_mask)
    keep = packed.real if cond is None else packed.real & ~cond
    weight = keep.to(torch.float32)[..., None]
    err = (v.float() - (noise - x0).float()) ** 2
    return (err * weight).sum() / (weight.sum() * err.shape[-1]).clamp(min=1)


def packed_cond(packed, modes: list[str], frames: int) -> torch.Tensor | None:
    """Clean-token mask [R, N] for per-clip conditioning modes (list order); None when nothing is given."""
    cond = torch.zeros(packed.seq_id.shape, dtype=torch.bool)
    seq_id, pos = packed.seq_id.cpu(), packed.pos.cpu()
    for (r, k, _, grid, _), mode in zip(packed.spans, modes, strict=True):
        given = torch.tensor(cond_frames_mask(grid[0], mode, frames))
        if given.any():
            # pos[..., 0] is the temporal patch (clamped: other clips in the row may be longer)
            cond[r] |= (seq_id[r] == k) & given[pos[r, :, 0].clamp(max=grid[0] - 1)]
    return cond.to(packed.tokens.device) if cond.any() else None


def packed_training_loss(forward, packed, text, text_mask, empty, cfg: FlowConfig, generator, attn_mask=None):
    """Rectified-flow loss on a packed batch. text [R, K, L, D], text_mask [R, K, L], empty [R, K] per clip
    slot. Every clip draws its own timestep (shifted by its own size), caption dropout and conditioning
    mode; the loss is the mean over generated real tokens. All randomness comes from ``generator``."""
    n = len(packed.spans)
    device = packed.tokens.device
    t = torch.cat([sample_t(1, (1, *shape), cfg, generator) for *_, shape in packed.spans])
    drop = torch.rand(n, generator=generator) < cfg.caption_dropout
    modes = cond_modes(n, cfg, generator)
    noise = torch.randn(packed.tokens.shape, generator=generator).to(device, packed.tokens.dtype)
    t_slot = packed.per_clip(t).to(device)
    drop_slot = packed.per_clip(drop, fill=True).to(device) | empty
    cond = packed_cond(packed, modes, cfg.cond_frames)
    return packed_flow_loss(forward, packed, text, text_mask, drop_slot, t_slot, noise, cond, attn_mask)


@torch.no_grad()
def guided_velocity(model, x, t, text, text_mask, guidance: float, frame_cond=None) -> torch.Tensor:
    """The velocity at x and time t (a scalar tensor) for one Euler step: v_uncond + g (v_cond - v_uncond)
    with the null caption as the unconditional branch (both in one batched forward); g = 1 is plain
    conditional (one forward). ``frame_cond`` [B, T] marks latent frames given clean."""
    b = x.shape[0]
    tt = t.expand(b)
    keep = torch.zeros(b, dtype=torch.bool, device=x.device)
    if guidance == 1.0:
        extra = {} if frame_cond is None else {"frame_cond": frame_cond}
        return model(x, tt, text, text_mask, keep, **extra)
    extra = {} if frame_cond is None else {"frame_cond": torch.cat([frame_cond, frame_cond])}
    both = model(
        torch.cat([x, x]),
        torch.cat([tt, tt]),
        torch.cat([text, text]),
        torch.cat([text_mask, text_mask]),
        torch.cat([keep, ~keep]),
        **extra,
    )
    v_cond, v_uncond = both.chunk(2)
    return v_uncond + guidance * (v_cond - v_uncond)


def sample_euler(
    model,
    noise: torch.Tensor,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    cfg: FlowConfig,
    steps: int = 30,
    guidance: float = 5.0,
    cond: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Integrate from noise (t=1) to data (t=0). With guidance g the velocity is
    v_uncond + g (v_cond - v_uncond); g = 1 is plain conditional sampling (one forward per step).

    ``cond`` = (x_clean [B, C, T, H, W], frames [B, T] bool): those frames are given. They start clean, the
    model sees them as clean (timestep 0), and they are reset after every step, so the result holds them
    exactly (image-to-video, extension, connecting clips)."""
    x = noise
    ts = sampling_schedule(steps, x.shape, cfg).to(x.device)
    fc = None
    if cond is not None:
        clean, frames = cond
        fc = frames.to(x.device)
        given = fc[:, None, :, None, None]  # broadcast over channels, height, width
        clean = clean.to(x.device, x.dtype)
        x = torch.where(given, clean, x)
    for i in range(steps):
        t, t_next = ts[i], ts[i + 1]
        v = guided_velocity(model, x, t, text, text_mask, guidance, fc)
        x = x + (t_next - t) * v
        if cond is not None:
            x = torch.where(given, clean, x)
    return x
