"""Train the causal video VAE (model/vae.py) on curated shards: ``vidsift train-vae RECIPE --data OUT``.

A short loop (AdamW, warmup, grad clip; L1 + KL), reading clips with the same readers as the DiT trainer.
At the end it measures per-channel latent statistics on training clips (stored in the checkpoint so
``encode`` returns unit-scale latents) and reports PSNR/SSIM on the held-out clips next to a trivial
baseline at the same (time, height, width) factors: averages of 4 frames and 8x8 pixels, repeated back
(and, as a stronger reference, the same averages upsampled bilinearly in space, which is where an untrained
VAE starts: model/vae.py). That keeps 3 numbers per 4x8x8 block where the VAE keeps z_channels (tiny: 4,
base: 16).
Writes OUT/vae.safetensors and OUT/vae_metrics.json.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import torch


@dataclass
class VAETrainConfig:
    data: str = ""  # curation run folder (clips/*.parquet)
    out: str = "out/vae"  # run folder: vae.safetensors, vae_metrics.json
    preset: str = "tiny"  # model/vae.py PRESETS
    frames: int = 9  # 1 + 4k
    height: int = 32
    width: int = 32
    frame_stride: int = 2
    batch_size: int = 4
    shuffle_buffer: int = 64
    val_clips: int = 4
    steps: int = 500
    lr: float = 1e-3
    warmup: int = 20
    grad_clip: float = 1.0
    kl_weight: float = 1e-6  # small: the latent must stay informative; it is normalised afterwards
    seed: int = 0
    device: str = "auto"
    log_every: int = 50


def baseline_recon(x: torch.Tensor, factors: tuple[int, int, int], bilinear: bool = False) -> torch.Tensor:
    """The trivial compressor at the VAE's own (time, height, width) factors: average the first frame alone
    and then each group of ``ft`` frames, average-pool ``fh`` x ``fw`` in space, and repeat back (nearest;
    ``bilinear`` upsamples space bilinearly instead)."""
    ft, fh, fw = factors
    if bilinear:
        from vidsift.model.vae import pool_frames, upsample_frames

        return upsample_frames(pool_frames(x, factors), factors)
    b, c, t, h, w = x.shape
    groups = [x[:, :, :1]] + [x[:, :, i : i + ft] for i in range(1, t, ft)]
    pooled = [g.mean(dim=2, keepdim=True) for g in groups]  # causal groups, like the VAE's latent frames
    y = torch.cat([p.expand(-1, -1, g.shape[2], -1, -1) for p, g in zip(pooled, groups, strict=True)], 2)
    y = torch.nn.functional.avg_pool3d(y, (1, fh, fw))
    return y.repeat_interleave(fh, dim=3).repeat_interleave(fw, dim=4)


def evaluate(vae, x: torch.Tensor) -> dict:
    from vidsift.model.vae import psnr, ssim

    vae.eval()
    with torch.no_grad():
        recon = vae.decode(vae.encode(x))
    vae.train()
    base = baseline_recon(x, vae.cfg.factors)
    smooth = baseline_recon(x, vae.cfg.factors, bilinear=True)
    return {
        "psnr": psnr(recon, x),
        "ssim": ssim(recon, x),
        "baseline_psnr": psnr(base, x),
        "baseline_ssim": ssim(base, x),
        "bilinear_baseline_psnr": psnr(smooth, x),
        "bilinear_baseline_ssim": ssim(smooth, x),
    }


def train_vae(cfg: VAETrainConfig, quiet: bool = False) -> dict:
    """Train; returns the held-out metrics. ``quiet``: no progress bar (the log lines stay)."""
    from vidsift.model.data import ClipSource, ClipStream, ShardIndex, collate, load_samples
    from vidsift.model.logging_utils import StepBar
    from vidsift.model.vae import PRESETS, VAEConfig, VideoVAE, save_vae, vae_loss
    from vidsift.pipeline.config import RecipeError

    if cfg.preset not in PRESETS:
        raise RecipeError(f"unknown VAE preset {cfg.preset!r} (known: {', '.join(PRESETS)})")
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    )
    torch.manual_seed(cfg.seed)
    vae = VideoVAE(VAEConfig(**PRESETS[cfg.preset])).to(device)
    index = ShardIndex(cfg.data)
    source = ClipSource(cfg.frames, cfg.height, cfg.width, cfg.frame_stride)
    val_ids, val_refs = index.split(cfg.val_clips)
    stream = ClipStream(index, source, 0, 1, cfg.seed, cfg.shuffle_buffer, val_ids)
    val = collate(load_samples(index, source, val_refs))[0].to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(cfg.seed)
    os.makedirs(cfg.out, exist_ok=True)
    print(
        f"VAE {cfg.preset}: {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M parameters, "
        f"compression {vae.cfg.factors}, {index.num_rows} clips"
    )
    t0 = time.time()
    bar = StepBar("train-vae", cfg.steps, quiet=quiet)  # the shared rich bar, on stderr
    try:
        for step in range(cfg.steps):
            for group in opt.param_groups:
                group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
            x = collate(stream.next_batch(cfg.batch_size))[0].to(device)
            loss, parts = vae_loss(vae, x, cfg.kl_weight, g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
            opt.step()
            bar.update(step + 1, loss=loss.item(), lr=opt.param_groups[0]["lr"])
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                print(
                    f"step {step + 1}/{cfg.steps} l1 {parts['l1']:.4f} mse {parts['mse']:.5f} "
                    f"kl {parts['kl']:.3f} ({time.time() - t0:.0f}s)",
                    flush=True,
                )
    finally:
        bar.close()
    # Latent statistics over a few training batches make encode() unit-scale for the DiT.
    with torch.no_grad():
        zs = torch.cat(
            [vae.posterior(collate(stream.next_batch(cfg.batch_size))[0].to(device))[0] for _ in range(4)]
        )
        vae.latent_mean.copy_(zs.mean(dim=(0, 2, 3, 4)))
        vae.latent_std.copy_(zs.std(dim=(0, 2, 3, 4)).clamp(min=1e-4))
    metrics = {"steps": cfg.steps, **evaluate(vae, val)}
    save_vae(vae.eval(), os.path.join(cfg.out, "vae.safetensors"), {"train": json.dumps(asdict(cfg))})
    with open(os.path.join(cfg.out, "vae_metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(
        f"held-out PSNR {metrics['psnr']:.2f} dB (baseline {metrics['baseline_psnr']:.2f}, bilinear "
        f"{metrics['bilinear_baseline_psnr']:.2f}), SSIM {metrics['ssim']:.3f} (baseline "
        f"{metrics['baseline_ssim']:.3f}, bilinear {metrics['bilinear_baseline_ssim']:.3f})"
    )
    return metrics
