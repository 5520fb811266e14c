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


@torch.no_grad()
def sample_euler(
    model,
    noise: torch.Tensor,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    cfg: FlowConfig,
    steps: int = 30,
    guidance: float = 5.0,
) -> torch.Tensor:
    """Integrate from noise (t=1) to data (t=0). With guidance g the velocity is
    v_uncond + g (v_cond - v_uncond); g = 1 is plain conditional sampling (one forward per step)."""
    x = noise
    b = x.shape[0]
    ts = sampling_schedule(steps, x.shape, cfg).to(x.device)
    keep = torch.zeros(b, dtype=torch.bool, device=x.device)
    for i in range(steps):
        t, t_next = ts[i], ts[i + 1]
        tt = t.expand(b)
        if guidance == 1.0:
            v = model(x, tt, text, text_mask, keep)
        else:
            both = model(
                torch.cat([x, x]),
                torch.cat([tt, tt]),
                torch.cat([text, text]),
                torch.cat([text_mask, text_mask]),
                torch.cat([keep, ~keep]),
            )
            v_cond, v_uncond = both.chunk(2)
            v = v_uncond + guidance * (v_cond - v_uncond)
        x = x + (t_next - t) * v
    return x
