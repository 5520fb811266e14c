"""A compact causal 3D convolutional VAE that compresses video 4x in time and 8x8 in space.

Causal means a latent frame only sees the current and earlier video frames: every convolution pads
time on the left (with copies of the first frame) and never on the right, and normalisation is per
frame. The first frame is therefore encoded on its own: a clip of 1 + 4k frames gives 1 + k latent
frames, and an image is just a one-frame video (latent T = 1), the layout of MAGVIT-v2, CogVideoX and Wan.

Both halves are residual around the trivial compressor, so training starts from it rather than from noise:
the encoder's latent mean is a learned correction added to a 1x1 projection of the causally average-pooled
pixels (the first frame alone, then groups of 4 frames, 8x8 blocks), and the decoder's output is a learned
correction added to a projection of the latent upsampled back to full size (repeated in time, bilinear in
space). The corrections' last layers start at zero, so an untrained VAE is exactly that average-pool +
upsample compressor (tested) and training only has to improve on it. Without these paths the tiny VAE
plateaued at 17.5 dB PSNR, below the 20.1 dB of the trivial compressor it is compared with.

Training (``vidsift train-vae``, model/train_vae.py) is reconstruction (L1 + MSE) + a small KL term;
adversarial and perceptual losses are left out because their usual networks need pretrained weights.
``encode`` returns latents normalised to roughly zero mean and unit variance per channel (statistics
measured after training and stored as buffers), which is the scale the diffusion model expects; ``decode``
undoes it.

Pretrained diffusers video VAEs (Wan 2.1, LTX-Video, CogVideoX) are used by ``vidsift finetune``
(model/finetune/), each through its own family adapter.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class VAEConfig:
    channels: int = 3  # RGB
    base: int = 32  # width of the first (full-resolution) stage
    mults: tuple[int, ...] = (1, 2, 4, 4)  # width multiplier per stage; len - 1 spatial halvings (8x)
    temporal: tuple[bool, ...] = (False, True, True)  # which halvings also halve time (two: 4x)
    res_blocks: int = 1  # residual blocks per stage
    z_channels: int = 8  # latent channels

    def __post_init__(self) -> None:
        self.mults = tuple(int(m) for m in self.mults)
        self.temporal = tuple(bool(t) for t in self.temporal)
        if len(self.temporal) != len(self.mults) - 1:
            raise ValueError("temporal needs one flag per downsampling (len(mults) - 1)")

    @property
    def factors(self) -> tuple[int, int, int]:
        """(time, height, width) compression."""
        return 2 ** sum(self.temporal), 2 ** (len(self.mults) - 1), 2 ** (len(self.mults) - 1)


PRESETS: dict[str, dict] = {
    "tiny": dict(base=16, mults=(1, 2, 2, 4), z_channels=4),  # ~1.4M: CPU tests and the learning check
    "base": dict(base=64, mults=(1, 2, 4, 4), z_channels=16, res_blocks=2),  # ~13M: one GPU
}


# Checkpoints record this; 1 was the VAE without the pooled skip paths, whose weights no longer fit.
CHECKPOINT_FORMAT = 2


def latent_frames(frames: int, cfg: VAEConfig) -> int:
    ft = cfg.factors[0]
    if (frames - 1) % ft:
        raise ValueError(f"frames must be 1 + {ft}k for this VAE, got {frames}")
    return 1 + (frames - 1) // ft


class CausalConv3d(nn.Module):
    """3D convolution that pads time only on the left, by repeating the first frame."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: tuple[int, int, int] = (1, 1, 1)) -> None:
        super().__init__()
        self.tpad = k - 1
        self.conv = nn.Conv3d(cin, cout, k, stride=stride, padding=(0, k // 2, k // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tpad:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.tpad, -1, -1), x], dim=2)
        return self.conv(x)


class FrameNorm(nn.GroupNorm):
    """GroupNorm over each frame separately: statistics across time would leak the future."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = super().forward(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.view(b, t, c, h, w).transpose(1, 2)


def norm(c: int) -> nn.Module:
    return FrameNorm(min(32, c // 4) if c >= 8 else 1, c, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            norm(cin), nn.SiLU(), CausalConv3d(cin, cout), norm(cout), nn.SiLU(), CausalConv3d(cout, cout)
        )
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class Downsample(nn.Module):
    """Stride-2 causal conv. In time, left padding of 2 maps 1 + 2m frames to 1 + m: output frame j sees
    input frames 2j-2..2j, so output frame 0 sees only input frame 0."""

    def __init__(self, c: int, temporal: bool) -> None:
        super().__init__()
        self.conv = CausalConv3d(c, c, 3, stride=(2 if temporal else 1, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest 2x in space and, if temporal, 1 + m -> 1 + 2m frames in time (every latent frame but the
    first becomes two), followed by a causal conv."""

    def __init__(self, c: int, temporal: bool) -> None:
        super().__init__()
        self.temporal = temporal
        self.conv = CausalConv3d(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.temporal:
            x = x.repeat_interleave(2, dim=2)[:, :, 1:]
        b, c, t, h, w = x.shape
        x = F.interpolate(x.transpose(1, 2).reshape(b * t, c, h, w), scale_factor=2, mode="nearest")
        return self.conv(x.view(b, t, c, 2 * h, 2 * w).transpose(1, 2))


def pool_frames(x: torch.Tensor, factors: tuple[int, int, int]) -> torch.Tensor:
    """Causal block average at the VAE's factors: latent frame 0 is frame 0 alone, latent frame j >= 1 the
    mean of frames ft(j-1)+1 .. ft j; fh x fw pixels in space. Padding time on the left with ft - 1 copies
    of the first frame makes that one strided average pool."""
    ft, fh, fw = factors
    x = torch.cat([x[:, :, :1].expand(-1, -1, ft - 1, -1, -1), x], dim=2)
    return F.avg_pool3d(x, (ft, fh, fw))


def upsample_frames(z: torch.Tensor, factors: tuple[int, int, int]) -> torch.Tensor:
    """Back to pool_frames' input size: in time by repetition (latent frame 0 -> frame 0, j -> ft frames;
    interpolating would need the next latent frame, which causality forbids), in space bilinearly (smoother
    than repeating each value over an fh x fw block, and worth ~0.3 dB on its own)."""
    ft, fh, fw = factors
    z = torch.cat([z[:, :, :1], z[:, :, 1:].repeat_interleave(ft, dim=2)], dim=2)
    b, c, t, h, w = z.shape
    z = F.interpolate(z.transpose(1, 2).reshape(b * t, c, h, w), scale_factor=(fh, fw), mode="bilinear")
    return z.view(b, t, c, h * fh, w * fw).transpose(1, 2)


def identity_1x1(conv: nn.Conv3d) -> None:
    """Initialise a 1x1x1 conv to copy its first min(cin, cout) channels (and zero the rest)."""
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    with torch.no_grad():
        for i in range(min(conv.in_channels, conv.out_channels)):
            conv.weight[i, i] = 1.0


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        widths = [cfg.base * m for m in cfg.mults]
        layers: list[nn.Module] = [CausalConv3d(cfg.channels, widths[0])]
        cin = widths[0]
        for i, w in enumerate(widths):
            for _ in range(cfg.res_blocks):
                layers.append(ResBlock(cin, w))
                cin = w
            if i < len(widths) - 1:
                layers.append(Downsample(w, cfg.temporal[i]))
        head = CausalConv3d(cin, 2 * cfg.z_channels)
        layers += [ResBlock(cin, cin), norm(cin), nn.SiLU(), head]
        self.net = nn.Sequential(*layers)
        self.factors = cfg.factors
        # The latent mean starts as the pooled pixels (the first 3 channels); the net learns a correction.
        self.skip = nn.Conv3d(cfg.channels, cfg.z_channels, 1)
        identity_1x1(self.skip)
        nn.init.zeros_(head.conv.weight)
        nn.init.zeros_(head.conv.bias)
        # Posterior std starts small (e^-4): unit noise on latents that are pixel averages would drown them.
        nn.init.constant_(head.conv.bias[cfg.z_channels :], -8.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean and log-variance of q(z | x), concatenated on the channel axis."""
        mean, logvar = self.net(x).chunk(2, dim=1)
        return torch.cat([mean + self.skip(pool_frames(x, self.factors)), logvar], dim=1)


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        widths = [cfg.base * m for m in cfg.mults][::-1]
        temporal = cfg.temporal[::-1]
        cin = widths[0]
        layers: list[nn.Module] = [CausalConv3d(cfg.z_channels, cin), ResBlock(cin, cin)]
        for i, w in enumerate(widths):
            for _ in range(cfg.res_blocks):
                layers.append(ResBlock(cin, w))
                cin = w
            if i < len(widths) - 1:
                layers.append(Upsample(w, temporal[i]))
        head = CausalConv3d(cin, cfg.channels)
        layers += [norm(cin), nn.SiLU(), head]
        self.net = nn.Sequential(*layers)
        self.factors = cfg.factors
        # Pixels start as the latent's first 3 channels repeated back to full size; the net adds detail.
        self.skip = nn.Conv3d(cfg.z_channels, cfg.channels, 1)
        identity_1x1(self.skip)
        nn.init.zeros_(head.conv.weight)
        nn.init.zeros_(head.conv.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z) + upsample_frames(self.skip(z), self.factors)


class VideoVAE(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        # Per-channel latent statistics, measured after training (see train_vae.py); identity until then.
        self.register_buffer("latent_mean", torch.zeros(cfg.z_channels))
        self.register_buffer("latent_std", torch.ones(cfg.z_channels))

    @property
    def z_channels(self) -> int:
        return self.cfg.z_channels

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        _, fh, fw = self.cfg.factors
        if height % fh or width % fw:
            raise ValueError(f"height and width must be multiples of {fh}, got {height}x{width}")
        return self.cfg.z_channels, latent_frames(frames, self.cfg), height // fh, width // fw

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z | x) for x in [-1, 1], [B, 3, 1 + 4k, H, W]."""
        latent_frames(x.shape[2], self.cfg)
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def _stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1, 1)
        return self.latent_mean.view(shape).to(z.dtype), self.latent_std.view(shape).to(z.dtype)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised latent (posterior mean) of pixels x in [-1, 1]."""
        mean, _ = self.posterior(x)
        m, s = self._stats(mean)
        return (mean - m) / s

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] from a normalised latent."""
        m, s = self._stats(z)
        return self.decoder(z * s + m).clamp(-1, 1)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Training pass: reconstruction and the KL divergence to N(0, I) per latent element."""
        mean, logvar = self.posterior(x)
        eps = torch.randn(mean.shape, generator=generator).to(mean)
        z = mean + torch.exp(0.5 * logvar) * eps
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        return self.decoder(z), kl


def vae_loss(model: VideoVAE, x: torch.Tensor, kl_weight: float, generator=None):
    """L1 + MSE reconstruction (MSE is what PSNR measures; L1 keeps edges sharp) + weighted KL."""
    recon, kl = model(x, generator)
    l1 = (recon - x).abs().mean()
    mse = (recon - x).pow(2).mean()
    return l1 + mse + kl_weight * kl, {"l1": l1.item(), "mse": mse.item(), "kl": kl.item()}


# ---------------------------------------------------------------------------------------------------------
# checkpoints: one safetensors file whose metadata rebuilds the model


def save_vae(model: VideoVAE, path: str, extra: dict | None = None) -> None:
    from safetensors.torch import save_file

    meta = {
        "kind": "vidsift-vae",
        "format": str(CHECKPOINT_FORMAT),
        "config": json.dumps(asdict(model.cfg)),
        **(extra or {}),
    }
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path, metadata=meta)


def load_vae(path: str, device: str | torch.device = "cpu") -> VideoVAE:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("kind") != "vidsift-vae":
        raise ValueError(f"{path} is not a vidsift VAE checkpoint (metadata kind={meta.get('kind')!r})")
    version = int(meta.get("format", 1))
    if version != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is a format-{version} vidsift VAE checkpoint; this version reads format "
            f"{CHECKPOINT_FORMAT} (the VAE gained pooled skip paths): retrain it with `vidsift train-vae`"
        )
    model = VideoVAE(VAEConfig(**json.loads(meta["config"])))
    model.load_state_dict(load_file(path, device=str(device)))
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------------------------
# metrics, on videos in [-1, 1] shaped [B, C, T, H, W]


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB over the whole batch (data range 2)."""
    mse = ((x.float() - y.float()) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)


def ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5) over channels and frames."""
    b, c, t, h, w = x.shape
    x = (x.float().transpose(1, 2).reshape(b * t * c, 1, h, w) + 1) / 2
    y = (y.float().transpose(1, 2).reshape(b * t * c, 1, h, w) + 1) / 2
    size = min(11, h, w) // 2 * 2 + 1
    g = torch.exp(-((torch.arange(size) - size // 2) ** 2) / (2 * 1.5**2))
    win = (g[:, None] * g[None]) / g.sum() ** 2
    win = win[None, None].to(x)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, win)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.mean().item()
