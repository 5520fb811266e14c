"""A diffusion transformer over spacetime patches (DiT / Sora-style), in one file.

Input: a video (or latent video) ``x`` of shape [B, C, T, H, W], a timestep ``t`` in [0, 1] per sample,
and text-encoder token embeddings [B, L, text_dim] with a mask [B, L]. Output: a tensor shaped like ``x``
(the rectified-flow velocity, see flow.py).

- Patches: non-overlapping (pt, ph, pw) spacetime patches, flattened and linearly embedded.
- Positions: 3D rotary embeddings on queries and keys (time, height, width each own a slice of the
  head dimension), so any duration and any height/width works without interpolating a table.
- Absolute positions (optional, ``abs_pos``): rotary positions are relative only, so from pure noise the model
  cannot place anything at a place in the frame or a moment of the clip ("enters from the left"): attention
  over uniform input is the same everywhere. ``abs_pos`` adds sinusoidal features of each token's position
  as a fraction of its clip's (T, H, W) through a zero-initialised linear layer, so it still works at any
  size and duration (packed clips each measure from their own size).
- QK-norm: RMSNorm on queries and keys per head keeps attention logits bounded (stabler at high lr).
- Conditioning: the timestep (plus pooled text) drives adaLN-Zero modulation (shift, scale, gate) of
  self-attention and MLP. As in PixArt-alpha and Wan ("adaLN-single") one shared linear layer makes the
  modulation from the conditioning vector and each block adds its own learned table: 6 d^2 parameters
  instead of 6 d^2 per block, a third of the 120M preset. Text tokens are attended to by cross-attention
  after self-attention.
- Attention is ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU).
- Packing (``DiT.forward_packed``): clips of different durations and sizes laid end to end in rows of a
  fixed token budget. Each token carries its clip's index (``seq_id``) and its own (t, h, w) position;
  self-attention is block-diagonal (a clip never sees another clip), cross-attention sees only the clip's
  own caption, and the adaLN modulation is gathered per token from a per-clip table, so a packed pass
  computes exactly what one pass per clip would. Same blocks, same weights as ``forward``.
- Conditioning frames: tokens marked as clean conditioning frames are modulated with timestep 0 (they are
  data, not noise), Open-Sora style; ``forward(frame_cond=...)`` and ``forward_packed(cond=...)``.
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
    abs_pos: bool = False  # also add absolute positions (fractions of the clip's T, H, W) to the tokens

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


def rope_positions(pos: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, ...]:
    """cos and sin tables [..., head_dim // 2] for integer (t, h, w) positions pos [..., 3]: the same angles
    as ``rope_3d`` (same float64 products), but per token, so every packed clip counts from its own origin."""
    angles = []
    for axis, d in enumerate(rope_split(head_dim)):
        freqs = 1.0 / theta ** (torch.arange(0, d, 2, device=pos.device, dtype=torch.float64) / d)
        angles.append(pos[..., axis, None].to(torch.float64) * freqs)
    ang = torch.cat(angles, dim=-1)
    return ang.cos().float(), ang.sin().float()


ABS_POS_FREQS = 6  # octaves per axis of the absolute position features: 3 axes x (sin, cos) x 6 = 36


def abs_position_features(pos: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Features [..., 36] of integer positions pos [..., 3] within clips of patch-grid size [..., 3]: the
    centre of each cell as a fraction of the clip along t, h and w, at 6 octaves, as sin and cos."""
    frac = (pos.float() + 0.5) / size.float()
    ang = frac[..., None] * (math.pi * 2.0 ** torch.arange(ABS_POS_FREQS, device=pos.device))
    return torch.cat([ang.sin(), ang.cos()], dim=-1).flatten(-2)


def grid_positions(grid: tuple[int, int, int], device=None) -> torch.Tensor:
    """Integer (t, h, w) positions [N, 3] of a patch grid, time-major (the token order of ``patchify``)."""
    axes = [torch.arange(n, device=device) for n in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (x[i], x[i + d/2]) of x [..., d] by the position angles (cos, sin broadcast to
    [..., d/2]). Pairing the two halves rather than neighbours is the same rotation up to a fixed channel
    permutation, and needs only slices (no interleaving copies)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


class _NormRope(torch.autograd.Function):
    """RMSNorm over the last dim (with weight), then, when cos/sin are given, the rotary rotation of
    ``apply_rope``: QK-norm and rope as one autograd node with a hand-written backward. Autograd through
    the composite ops (pow, mean, rsqrt, two products, then the rope's four products, two sums and a cat)
    keeps about a dozen intermediates per call; this saves the normalised input and the 1/rms factor and
    does the same arithmetic in about half the passes over memory: fwd + bwd of a [4, 256, 4, 64] query
    takes ~2 ms instead of ~4.5 on one CPU thread (~1 instead of ~2.5 without rope). Computed in float32
    (at least), returned in the input's dtype."""

    @staticmethod
    def forward(ctx, x, weight, cos, sin, eps):
        dtype = torch.promote_types(x.dtype, torch.float32)  # bf16/fp16 in, float32 arithmetic
        xf, w = x.to(dtype), weight.to(dtype)
        d = xf.shape[-1]
        rstd = torch.linalg.vector_norm(xf, dim=-1, keepdim=True).square_().div_(d).add_(eps).rsqrt_()
        xhat = xf * rstd
        if cos is None:
            y = xhat * w
        else:
            # y1 = w1 xh1 cos - w2 xh2 sin, y2 = w1 xh1 sin + w2 xh2 cos: the weight folds into the small
            # [N, 1, d/2] tables, so the big tensor is touched twice (one product, one fused multiply-add).
            w1, w2 = w.chunk(2)
            xh1, xh2 = xhat.chunk(2, dim=-1)
            y = torch.empty_like(xhat)
            y1, y2 = y.chunk(2, dim=-1)
            torch.mul(xh1, w1 * cos, out=y1).addcmul_(xh2, w2 * sin, value=-1)
            torch.mul(xh1, w1 * sin, out=y2).addcmul_(xh2, w2 * cos)
        ctx.save_for_backward(xhat, rstd, w, cos, sin)
        ctx.dtypes = x.dtype, weight.dtype
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, gy):
        xhat, rstd, w, cos, sin = ctx.saved_tensors
        gy = gy.to(xhat.dtype)
        d = xhat.shape[-1]
        if cos is None:
            g = gy
        else:  # rotate back: the transpose of a rotation is the rotation by the opposite angle
            gy1, gy2 = gy.chunk(2, dim=-1)
            g = torch.empty_like(gy)
            g1, g2 = g.chunk(2, dim=-1)
            torch.mul(gy1, cos, out=g1).addcmul_(gy2, sin)
            torch.mul(gy2, cos, out=g2).addcmul_(gy1, sin, value=-1)
        gxw = g * xhat  # d(out)/d(weight) per element
        gw = gxw.reshape(-1, d).sum(0)
        # dx = rstd (g w - xhat mean(g w xhat)); the mean over the last dim is one matrix-vector product
        dot = (gxw.reshape(-1, d) @ w).div_(d).view(*xhat.shape[:-1], 1)
        gx = (g * w).addcmul_(xhat, dot, value=-1).mul_(rstd)
        x_dtype, w_dtype = ctx.dtypes
        return gx.to(x_dtype), gw.to(w_dtype), None, None, None


def norm_rope(x: torch.Tensor, norm: nn.Module, cos=None, sin=None) -> torch.Tensor:
    """``apply_rope(norm(x), cos, sin)`` (or ``norm(x)`` without cos/sin) for an ``nn.RMSNorm`` or
    ``nn.Identity`` norm, in one fused autograd node when the norm is an RMSNorm."""
    if isinstance(norm, nn.RMSNorm) and norm.weight is not None and not torch.compiler.is_compiling():
        eps = norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps  # nn.RMSNorm's default
        return _NormRope.apply(x, norm.weight, cos, sin, eps)
    x = norm(x)
    return x if cos is None else apply_rope(x, cos, sin)


# ---------------------------------------------------------------------------------------------------------
# layers


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (scaled to [0, 1000] so the DiT frequencies apply)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def per_token(v: torch.Tensor) -> torch.Tensor:
    """A modulation [B, dim] per sample broadcast over tokens; [B, N, dim] is already per token (packing)."""
    return v[:, None] if v.dim() == 2 else v


class _GatedAdd(torch.autograd.Function):
    """x + gate * branch (the gated residual), one fused multiply-add forward, with its backward written
    out: addcmul's generic backward first forms ``branch * value`` (its scalar, 1 here), a full extra pass
    and copy of the branch, before multiplying by the gradient. About 0.4 of 1.1 ms per call saved at dim
    256 and 1024 tokens on one CPU thread (fwd + bwd)."""

    @staticmethod
    def forward(ctx, x, gate, branch):
        ctx.save_for_backward(gate, branch)
        return torch.addcmul(x, gate, branch)

    @staticmethod
    def backward(ctx, g):
        gate, branch = ctx.saved_tensors
        ggate = (g * branch).sum_to_size(gate.shape).to(gate.dtype) if ctx.needs_input_grad[1] else None
        gbranch = (g * gate).to(branch.dtype) if ctx.needs_input_grad[2] else None
        return g, ggate, gbranch


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift per sample (or per token), as one fused multiply-add."""
    return torch.addcmul(per_token(shift), x, 1 + per_token(scale))


def gated_add(x: torch.Tensor, gate: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """x + gate * branch, gate per sample (or per token)."""
    if torch.compiler.is_compiling():
        return torch.addcmul(x, per_token(gate), branch)
    return _GatedAdd.apply(x, per_token(gate), branch)


@dataclass
class Segments:
    """Self-attention computed one clip at a time: (row, start, end) runs that each hold one clip (or the
    row's padding). The alternative to a block-diagonal mask on CPU, where it skips the masked-out work."""

    runs: list[tuple[int, int, int]]


def _flex_attention():
    """flex_attention, compiled (eager flex_attention is a slow reference implementation); None when this
    PyTorch has none. Imported lazily: CPU runs never need it."""
    global _FLEX
    if _FLEX is None:
        try:
            from torch.nn.attention.flex_attention import flex_attention
        except ImportError:
            _FLEX = False
        else:
            _FLEX = torch.compile(flex_attention, dynamic=False)
    return _FLEX or None


_FLEX = None


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None) -> torch.Tensor:
    """q, k, v [B, heads, N, head_dim]. ``mask``: None, a boolean mask broadcastable to [B, heads, Nq, Nk]
    (True = attend), a flex_attention ``BlockMask`` (document mask on GPU), or ``Segments``."""
    if isinstance(mask, Segments):
        rows = []
        for r in range(q.shape[0]):
            runs = [(s, e) for rr, s, e in mask.runs if rr == r]
            rows.append(
                torch.cat(
                    [
                        F.scaled_dot_product_attention(q[r, :, s:e], k[r, :, s:e], v[r, :, s:e])
                        for s, e in runs
                    ],
                    1,
                )
            )
        return torch.stack(rows)
    if mask is not None and type(mask).__name__ == "BlockMask":
        return _flex_attention()(q, k, v, block_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


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
        # rope tables [N, 1, head_dim / 2] (or [B, N, 1, head_dim / 2] when packed): the same for every head
        cos, sin = (None, None) if rope is None else (rope[0].unsqueeze(-2), rope[1].unsqueeze(-2))
        # Norm and rotate in [B, N, heads, head_dim] layout, where the head dim is contiguous (3x faster
        # on CPU than after the transpose), then hand SDPA its [B, heads, N, head_dim].
        q = norm_rope(self.q(x).view(b, n, self.heads, self.head_dim), self.q_norm, cos, sin)
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, self.heads, self.head_dim).unbind(2)
        k = norm_rope(k, self.k_norm, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        out = attend(q, k, v, mask)
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

    def forward(self, x, mod, text, text_mask, rope, attn_mask=None) -> torch.Tensor:
        """mod [B, 6, dim] is the shared modulation of the conditioning vector, or [B, N, 6, dim] per token
        (packed clips, conditioning frames); attn_mask restricts self-attention (packing)."""
        sh1, sc1, g1, sh2, sc2, g2 = (mod + self.mod).unbind(-2)
        # x + gate * branch(x), fused; the gates start at zero, so the block starts as identity.
        x = gated_add(x, g1, self.attn(modulate(self.norm1(x), sh1, sc1), rope=rope, mask=attn_mask))
        x = x + self.cross(self.norm_cross(x), context=text, mask=text_mask)
        x = gated_add(x, g2, self.mlp(modulate(self.norm2(x), sh2, sc2)))
        return x


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        pt, ph, pw = cfg.patch
        self.patch_dim = cfg.in_channels * pt * ph * pw
        self.x_embed = nn.Linear(self.patch_dim, d)
        self.pos_embed = nn.Linear(6 * ABS_POS_FREQS, d) if cfg.abs_pos else None
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
        if self.pos_embed is not None:  # starts as a no-op: the relative-only model
            nn.init.zeros_(self.pos_embed.weight)

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
        return patchify(x, self.cfg.patch)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        return unpatchify(x, grid, self.cfg.patch, self.cfg.in_channels)

    def _text(self, text, text_mask, drop_text):
        """Captions with dropped ones replaced by the null caption, their mask, and the pooled caption."""
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
        m = text_mask.to(text.dtype)[..., None]
        pooled = (text * m).sum(1) / m.sum(1).clamp(min=1)
        return text, text_mask, pooled

    def _modulation_table(self, t, pooled, with_clean: bool):
        """Conditioning vectors [B, S, dim] per sample (S = 1), plus, with ``with_clean``, the same sample at
        timestep 0 (S = 2): what clean conditioning frames are modulated with."""
        c = self.t_embed(timestep_embedding(t, 256)) + self.pool_embed(pooled)
        if not with_clean:
            return c[:, None]
        c0 = self.t_embed(timestep_embedding(torch.zeros_like(t), 256)) + self.pool_embed(pooled)
        return torch.stack([c, c0], 1)

    def _run(self, h, table, index, ctx, ctx_mask, rope, attn_mask):
        """The blocks and the output layer, with the modulation of token n taken from table[b, index[b, n]]
        (one gather here, before the blocks add their own offsets: gather(a) + m == gather(a + m))."""
        b, s, d = table.shape
        mod = self.ada(table).view(b, s, 6, d)
        mod = torch.gather(mod, 1, index[..., None, None].expand(-1, -1, 6, d))  # [B, N, 6, d]
        for blk in self.blocks:
            h = blk(h, mod, ctx, ctx_mask, rope, attn_mask)
        out = torch.gather(self.ada_out(table), 1, index[..., None].expand(-1, -1, 2 * d))
        shift, scale = out.chunk(2, dim=-1)
        return self.out(modulate(self.norm_out(h), shift, scale))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
        frame_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [B, C, T, H, W], t [B] in [0, 1], text [B, L, text_dim], text_mask [B, L] (True = real token),
        drop_text [B] (True = use the null caption instead: classifier-free guidance and empty captions),
        frame_cond [B, T] (True = a clean conditioning frame, modulated as timestep 0; whole temporal
        patches)."""
        b = text.shape[0]
        text, text_mask, pooled = self._text(text, text_mask, drop_text)
        grid = self.grid(x.shape)
        h = self.x_embed(self.patchify(x))
        if self.pos_embed is not None:
            size = torch.tensor(grid, device=x.device)
            h = h + self.pos_embed(abs_position_features(grid_positions(grid, x.device), size))
        ctx = self.text_embed(text)
        rope = rope_3d(grid, self.cfg.dim // self.cfg.heads, self.cfg.rope_theta, device=x.device)
        attn_mask = text_mask[:, None, None, :]  # [B, 1, 1, L] broadcast over heads and queries
        if frame_cond is not None:
            # Per-token modulation: index 1 (timestep 0) for the tokens of conditioning frames.
            pt = self.cfg.patch[0]
            cond = frame_cond.view(b, grid[0], pt).all(-1)  # [B, T'] per temporal patch
            index = cond.long().repeat_interleave(grid[1] * grid[2], dim=1)  # time-major token order
            table = self._modulation_table(t, pooled, with_clean=True)
            return self.unpatchify(self._run(h, table, index, ctx, attn_mask, rope, None), grid)
        c = self.t_embed(timestep_embedding(t, 256)) + self.pool_embed(pooled)
        mod = self.ada(c).view(b, 6, -1)
        for blk in self.blocks:
            h = blk(h, mod, ctx, attn_mask, rope)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        h = self.out(modulate(self.norm_out(h), shift, scale))
        return self.unpatchify(h, grid)

    def forward_packed(
        self,
        tokens: torch.Tensor,
        seq_id: torch.Tensor,
        pos: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        drop_text: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        attn_mask=None,
    ) -> torch.Tensor:
        """Clips packed into rows (model/data.py ``pack``): tokens [R, N, patch_dim] (patchified clips end to
        end, then padding), seq_id [R, N] (the token's clip slot in its row, -1 = padding), pos [R, N, 3]
        (the token's (t, h, w) patch position within its clip). Per clip slot: t [R, K], text [R, K, L,
        text_dim], text_mask [R, K, L], drop_text [R, K]. cond [R, N] marks clean conditioning tokens.
        attn_mask: the self-attention mask from ``packed_attention_mask`` (built once per batch and shared
        by every block; built here when None). Returns the velocity tokens [R, N, patch_dim]."""
        r, n, _ = tokens.shape
        k, L = text.shape[1:3]
        flat_drop = None if drop_text is None else drop_text.reshape(r * k)
        text, text_mask, pooled = self._text(
            text.reshape(r * k, L, -1), text_mask.reshape(r * k, L), flat_drop
        )
        table = self._modulation_table(t.reshape(r * k), pooled, with_clean=cond is not None)  # [R*K, S, d]
        s = table.shape[1]
        # Table row of token n: slot * S + (1 if clean), within its packed row; padding borrows slot 0.
        table = table.reshape(r, k * s, -1)
        index = seq_id.clamp(min=0) * s + (cond.long() if cond is not None else 0)
        # Cross-attention: every clip's caption tokens side by side; a token sees only its own clip's.
        ctx = self.text_embed(text).reshape(r, k * L, -1)
        text_slot = torch.arange(k, device=tokens.device).repeat_interleave(L)  # [K * L]
        ctx_mask = (seq_id[:, :, None] == text_slot[None, None]) & text_mask.reshape(r, 1, k * L)
        ctx_mask = ctx_mask | (seq_id < 0)[:, :, None]  # padding attends to anything (no all-masked rows)
        if attn_mask is None:
            attn_mask = packed_attention_mask(seq_id)
        rope = rope_positions(pos, self.cfg.dim // self.cfg.heads, self.cfg.rope_theta)
        h = self.x_embed(tokens)
        if self.pos_embed is not None:
            # Each clip's own patch grid: the largest position of its tokens, plus one (padding is slot 0's).
            slot = seq_id.clamp(min=0)[..., None].expand(-1, -1, 3)
            size = torch.ones(r, k, 3, dtype=pos.dtype, device=pos.device)
            size = size.scatter_reduce(1, slot, pos + 1, reduce="amax")
            h = h + self.pos_embed(abs_position_features(pos, torch.gather(size, 1, slot)))
        return self._run(h, table, index, ctx, ctx_mask[:, None], rope, attn_mask)


class PackedDiT(nn.Module):
    """``DiT.forward_packed`` as a module's forward, so DDP (which syncs gradients through ``forward``) and
    torch.compile wrap the packed pass. Holds the DiT, adds no parameters."""

    def __init__(self, dit: DiT) -> None:
        super().__init__()
        self.dit = dit

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.dit.forward_packed(*args, **kwargs)


def patchify(x: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, N, C * pt * ph * pw] tokens, time-major (t, then h, then w)."""
    b, c, t, h, w = x.shape
    pt, ph, pw = patch
    x = x.view(b, c, t // pt, pt, h // ph, ph, w // pw, pw)
    return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, -1, c * pt * ph * pw)


def unpatchify(x: torch.Tensor, grid: tuple[int, int, int], patch: tuple[int, int, int], channels: int):
    b = x.shape[0]
    gt, gh, gw = grid
    pt, ph, pw = patch
    x = x.view(b, gt, gh, gw, channels, pt, ph, pw)
    return x.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, channels, gt * pt, gh * ph, gw * pw)


def packed_attention_mask(seq_id: torch.Tensor, kind: str = "auto"):
    """Self-attention mask of packed rows seq_id [R, N]: tokens attend within their own clip only (padding,
    seq_id -1, within the padding). Built once per batch, shared by every block.

    kind ``flex``: a flex_attention document ``BlockMask`` (GPU: whole 128x128 blocks outside the diagonal
    are skipped, never computed); ``dense``: a boolean [R, 1, N, N] mask for SDPA; ``segments``: one SDPA
    call per clip (``Segments``); ``auto``: flex on CUDA when available, else dense (faster than the
    per-clip loop on CPU for the tiny models, see bench/packing.py)."""
    if kind == "auto":
        kind = "flex" if seq_id.is_cuda and _flex_attention() is not None else "dense"
    if kind == "flex":
        from torch.nn.attention.flex_attention import create_block_mask

        def same_clip(b, h, q, kv):
            return seq_id[b, q] == seq_id[b, kv]

        r, n = seq_id.shape
        return create_block_mask(same_clip, r, None, n, n, device=seq_id.device)
    if kind == "segments":
        runs = []
        for r, row in enumerate(seq_id.tolist()):
            start = 0
            for i in range(1, len(row) + 1):
                if i == len(row) or row[i] != row[start]:
                    runs.append((r, start, i))
                    start = i
        return Segments(runs)
    if kind != "dense":
        raise ValueError(f"unknown packed attention {kind!r} (auto, flex, dense, segments)")
    return (seq_id[:, :, None] == seq_id[:, None, :])[:, None]


def config_to_dict(cfg: DiTConfig) -> dict:
    d = asdict(cfg)
    d["patch"] = list(cfg.patch)
    return d
