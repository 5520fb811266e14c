"""A diffusion transformer over spacetime patches (DiT / Sora-style), in one file.

Input: a video (or latent video) ``x`` of shape [B, C, T, H, W], a timestep ``t`` in [0, 1] per sample,
and text-encoder token embeddings [B, L, text_dim] with a mask [B, L]. Output: a tensor shaped like ``x``
(the rectified-flow velocity, see flow.py).

- Patches: non-overlapping (pt, ph, pw) spacetime patches, flattened and linearly embedded.
- Positions: 3D rotary embeddings on queries and keys (time, height, width each own a slice of the
  head dimension), so any duration and any height/width works without interpolating a table.
- QK-norm: RMSNorm on queries and keys per head keeps attention logits bounded (stabler at high lr).
- Conditioning: the timestep (plus pooled text) drives adaLN-Zero modulation (shift, scale, gate) of
  self-attention and MLP. As in PixArt-alpha and Wan ("adaLN-single") one shared linear layer makes the
  modulation from the conditioning vector and each block adds its own learned table: 6 d^2 parameters
  instead of 6 d^2 per block, a third of the 120M preset. Text tokens are attended to by cross-attention
  after self-attention.
- Attention is ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU).
- Every residual branch starts at zero (adaLN gates, cross-attention output, final projection),
  so each block is the identity at initialisation and the model first outputs zeros.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DiTConfig:
    in_channels: int = 3  # 3 for pixels, the VAE's latent channels otherwise
    patch: tuple[int, int, int] = (1, 2, 2)  # (pt, ph, pw) spacetime patch size
    dim: int = 128  # transformer width
    depth: int = 4  # number of blocks
    heads: int = 4  # attention heads; dim // heads must split into 3 even rotary slices
    mlp_ratio: float = 4.0  # hidden width of the MLP relative to dim
    text_dim: int = 384  # width of the text encoder's tokens (MiniLM-L6: 384, T5-XXL: 4096)
    rope_theta: float = 10000.0  # rotary base; larger keeps long videos distinguishable
    qk_norm: bool = True  # RMSNorm on q and k per head

    def __post_init__(self) -> None:
        self.patch = tuple(int(p) for p in self.patch)
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if (self.dim // self.heads) % 2:
            raise ValueError(f"head dim {self.dim // self.heads} must be even for rotary positions")


# Presets as data. Parameter counts are for text_dim=384 and pixel input; see tests/model/test_dit.py.
PRESETS: dict[str, dict] = {
    "tiny": dict(dim=128, depth=4, heads=4),  # ~1.4M: CPU tests and the learning check
    "S": dict(dim=384, depth=12, heads=6),  # ~30M
    "small": dict(dim=768, depth=12, heads=12),  # ~120M: one GPU (recipes/train/small.toml)
}


def config_from_preset(preset: str, **overrides) -> DiTConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown DiT preset {preset!r} (known: {', '.join(PRESETS)})")
    return DiTConfig(**{**PRESETS[preset], **overrides})


# ---------------------------------------------------------------------------------------------------------
# 3D rotary positions


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """How many channels of a head rotate with time, height and width (each even)."""
    hw = (head_dim // 3) // 2 * 2
    return head_dim - 2 * hw, hw, hw


def rope_3d(grid: tuple[int, int, int], head_dim: int, theta: float, device=None) -> tuple[torch.Tensor, ...]:
    """cos and sin tables [N, head_dim // 2] for a (T, H, W) patch grid flattened time-major: the first
    slice of frequencies turns with the frame index, the next with the row, the last with the column."""
    angles = []
    for size, d, axis in zip(grid, rope_split(head_dim), range(3), strict=True):
        freqs = 1.0 / theta ** (torch.arange(0, d, 2, device=device, dtype=torch.float64) / d)
        pos = torch.arange(size, device=device, dtype=torch.float64)
        a = torch.outer(pos, freqs)  # [size, d/2]
        shape = [1, 1, 1, d // 2]
        shape[axis] = size
        angles.append(a.view(shape).expand(*grid, d // 2))
    ang = torch.cat(angles, dim=-1).reshape(-1, head_dim // 2)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (x[i], x[i + d/2]) of x [..., d] by the position angles (cos, sin broadcast to
    [..., d/2]). Pairing the two halves rather than neighbours is the same rotation up to a fixed channel
    permutation, and needs only slices (no interleaving copies)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


# ---------------------------------------------------------------------------------------------------------
# layers


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (scaled to [0, 1000] so the DiT frequencies apply)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift per sample, as one fused multiply-add."""
    return torch.addcmul(shift[:, None], x, 1 + scale[:, None])


class Attention(nn.Module):
    """Multi-head attention; self-attention when ``context`` is None, else cross-attention."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, qk_norm: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, context=None, rope=None, mask=None) -> torch.Tensor:
        b, n, _ = x.shape
        ctx = x if context is None else context
        # Norm and rotate in [B, N, heads, head_dim] layout, where the head dim is contiguous (3x faster
        # on CPU than after the transpose), then hand SDPA its [B, heads, N, head_dim].
        q = self.q_norm(self.q(x).view(b, n, self.heads, self.head_dim))
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, self.heads, self.head_dim).unbind(2)
        k = self.k_norm(k)
        if rope is not None:
            cos, sin = rope[0][:, None], rope[1][:, None]  # [N, 1, head_dim / 2]: same for every head
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Block(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(d, cfg.heads, qk_norm=cfg.qk_norm)
        self.norm_cross = nn.LayerNorm(d, eps=1e-6)
        self.cross = Attention(d, cfg.heads, context_dim=d, qk_norm=cfg.qk_norm)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))
        # This block's offsets to the shared modulation (shift, scale, gate for attention and for the MLP).
        self.mod = nn.Parameter(torch.zeros(6, d))

    def forward(self, x, mod, text, text_mask, rope) -> torch.Tensor:
        """mod [B, 6, dim] is the shared modulation of the conditioning vector."""
        sh1, sc1, g1, sh2, sc2, g2 = (mod + self.mod).unbind(1)
        # x + gate * branch(x), fused (addcmul); the gates start at zero, so the block starts as identity.
        x = torch.addcmul(x, g1[:, None], self.attn(modulate(self.norm1(x), sh1, sc1), rope=rope))
        x = x + self.cross(self.norm_cross(x), context=text, mask=text_mask)
        x = torch.addcmul(x, g2[:, None], self.mlp(modulate(self.norm2(x), sh2, sc2)))
        return x


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        pt, ph, pw = cfg.patch
        self.patch_dim = cfg.in_channels * pt * ph * pw
        self.x_embed = nn.Linear(self.patch_dim, d)
        self.t_embed = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.text_embed = nn.Sequential(
            nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d)
        )
        self.pool_embed = nn.Linear(cfg.text_dim, d)  # pooled caption joins the timestep in adaLN
        # Stands in for the caption when it is dropped (classifier-free guidance) or empty.
        self.null_text = nn.Parameter(torch.randn(1, cfg.text_dim) * 0.02)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))  # adaLN-single, shared by all blocks
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.out = nn.Linear(d, self.patch_dim)
        self.init_weights()

    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.t_embed[0].weight, std=0.02)
        nn.init.normal_(self.t_embed[2].weight, std=0.02)
        # Zero every residual branch's last layer: identity blocks, zero output at init (adaLN-Zero).
        nn.init.zeros_(self.ada[-1].weight)
        nn.init.zeros_(self.ada[-1].bias)
        for blk in self.blocks:  # blk.mod starts at zero too, so every gate is zero
            nn.init.zeros_(blk.cross.proj.weight)
            nn.init.zeros_(blk.cross.proj.bias)
        nn.init.zeros_(self.ada_out[-1].weight)
        nn.init.zeros_(self.ada_out[-1].bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def grid(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        """Patch grid (T', H', W') of an input whose trailing dims are (T, H, W)."""
        t, h, w = shape[-3:]
        pt, ph, pw = self.cfg.patch
        if t % pt or h % ph or w % pw:
            raise ValueError(f"input (T, H, W) = {(t, h, w)} is not divisible by the patch {self.cfg.patch}")
        return t // pt, h // ph, w // pw

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        pt, ph, pw = self.cfg.patch
        x = x.view(b, c, t // pt, pt, h // ph, ph, w // pw, pw)
        return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, -1, self.patch_dim)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        b = x.shape[0]
        gt, gh, gw = grid
        pt, ph, pw = self.cfg.patch
        x = x.view(b, gt, gh, gw, self.cfg.in_channels, pt, ph, pw)
        return x.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, self.cfg.in_channels, gt * pt, gh * ph, gw * pw)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [B, C, T, H, W], t [B] in [0, 1], text [B, L, text_dim], text_mask [B, L] (True = real token),
        drop_text [B] (True = use the null caption instead: classifier-free guidance and empty captions)."""
        b, L = text.shape[:2]
        if text_mask is None:
            text_mask = torch.ones(b, L, dtype=torch.bool, device=text.device)
        if drop_text is not None:
            # The null caption is one token; torch.where keeps null_text in the graph even when nothing is
            # dropped, so DDP sees a gradient for every parameter on every step.
            keep = ~drop_text[:, None]
            text = torch.where(keep[..., None], text, self.null_text.to(text.dtype)[None])
            first = torch.arange(L, device=text.device)[None] == 0
            text_mask = torch.where(keep, text_mask, first)
        grid = self.grid(x.shape)
        h = self.x_embed(self.patchify(x))
        m = text_mask.to(text.dtype)[..., None]
        pooled = (text * m).sum(1) / m.sum(1).clamp(min=1)
        c = self.t_embed(timestep_embedding(t, 256)) + self.pool_embed(pooled)
        ctx = self.text_embed(text)
        rope = rope_3d(grid, self.cfg.dim // self.cfg.heads, self.cfg.rope_theta, device=x.device)
        attn_mask = text_mask[:, None, None, :]  # [B, 1, 1, L] broadcast over heads and queries
        mod = self.ada(c).view(b, 6, -1)
        for blk in self.blocks:
            h = blk(h, mod, ctx, attn_mask, rope)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        h = self.out(modulate(self.norm_out(h), shift, scale))
        return self.unpatchify(h, grid)


def config_to_dict(cfg: DiTConfig) -> dict:
    d = asdict(cfg)
    d["patch"] = list(cfg.patch)
    return d
