import pytest
import torch

from vidsift.model.vae import VAEConfig, VideoVAE, load_vae, psnr, save_vae, ssim, vae_loss


def tiny() -> VideoVAE:
    torch.manual_seed(0)
    return VideoVAE(VAEConfig(base=8, mults=(1, 2, 2, 2), z_channels=4)).eval()


@pytest.mark.parametrize("frames,lt", [(1, 1), (5, 2), (9, 3), (17, 5)])
def test_encode_decode_shapes(frames, lt):
    vae = tiny()
    x = torch.rand(2, 3, frames, 32, 48) * 2 - 1
    z = vae.encode(x)
    assert z.shape == (2, 4, lt, 4, 6) == (2, *vae.latent_shape(frames, 32, 48))
    assert vae.decode(z).shape == x.shape


def test_frames_must_be_one_plus_4k():
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        tiny().encode(torch.zeros(1, 3, 4, 16, 16))


def test_encoder_and_decoder_are_causal_and_first_frame_is_alone():
    vae = tiny()
    x = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    z = vae.encode(x)
    y = x.clone()
    y[:, :, 5:] = torch.rand_like(y[:, :, 5:])  # change frames 5..8 -> latent frames >= 2 only
    zy = vae.encode(y)
    assert torch.equal(z[:, :, :2], zy[:, :, :2])
    assert not torch.allclose(z[:, :, 2], zy[:, :, 2])
    y[:, :, 1:] = 0  # only the first frame left as it was -> latent frame 0 unchanged
    assert torch.equal(vae.encode(y)[:, :, 0], z[:, :, 0])
    # The image latent is the first latent frame of the video.
    assert torch.allclose(vae.encode(x[:, :, :1])[:, :, 0], z[:, :, 0], atol=1e-6)
    # Decoder: video frame 0 depends only on latent frame 0.
    z2 = z.clone()
    z2[:, :, 1:] += 1.0
    assert torch.equal(vae.decode(z)[:, :, 0], vae.decode(z2)[:, :, 0])


def test_checkpoint_roundtrip_and_a_few_steps_reduce_loss(tmp_path):
    vae = tiny().train()
    # Compressible content the starting point (block average, bilinear upsampling) gets wrong: still frames of
    # random 2x2 colour blocks blown up to 16x16, whose sharp block edges the decoder must learn to restore.
    x = torch.rand(2, 3, 1, 2, 2).repeat_interleave(8, dim=3).repeat_interleave(8, dim=4) * 2 - 1
    x = x.expand(-1, -1, 5, -1, -1)
    opt = torch.optim.AdamW(vae.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    first = vae_loss(vae, x, 1e-6, g)[0].item()
    for _ in range(40):
        loss, _ = vae_loss(vae, x, 1e-6, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first * 0.6
    vae.latent_std.fill_(2.0)
    path = tmp_path / "vae.safetensors"
    save_vae(vae.eval(), str(path))
    again = load_vae(str(path))
    assert torch.equal(again.encode(x), vae.encode(x))
    assert again.latent_std[0] == 2.0


def test_psnr_and_ssim():
    x = torch.rand(1, 3, 2, 32, 32) * 2 - 1
    assert psnr(x, x) == float("inf")
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-4)
    noisy = (x + 0.1 * torch.randn_like(x)).clamp(-1, 1)
    assert 20 < psnr(x, noisy) < 30
    assert ssim(x, noisy) < ssim(x, (x + 0.02 * torch.randn_like(x)).clamp(-1, 1)) < 1


def test_baseline_compresses_at_the_vae_factors():
    from vidsift.model.train_vae import baseline_recon

    ramp = torch.arange(9.0).view(1, 1, 9, 1, 1).expand(1, 1, 9, 8, 8)
    # First frame alone, then groups of 4 frames, like the causal latent frames.
    assert baseline_recon(ramp, (4, 8, 8))[0, 0, :, 0, 0].tolist() == [
        0,
        2.5,
        2.5,
        2.5,
        2.5,
        6.5,
        6.5,
        6.5,
        6.5,
    ]
    x = torch.rand(1, 3, 5, 16, 16)
    assert torch.equal(baseline_recon(x, (1, 1, 1)), x)
    assert baseline_recon(x, (4, 8, 8)).unique().numel() <= 3 * 2 * 2 * 2


def test_untrained_vae_is_the_average_pool_compressor_and_old_checkpoints_are_refused(tmp_path):
    """The skip paths make training start from the trivial compressor: before any step, decode(encode(x))
    is exactly the block average upsampled (repeated in time, bilinear in space)."""
    from safetensors.torch import save_file

    from vidsift.model.train_vae import baseline_recon

    torch.manual_seed(0)
    vae = VideoVAE(VAEConfig(base=8, mults=(1, 2, 2, 2), z_channels=4)).eval()
    x = torch.rand(2, 3, 9, 16, 24) * 2 - 1
    assert torch.allclose(vae.decode(vae.encode(x)), baseline_recon(x, (4, 8, 8), bilinear=True), atol=1e-5)
    # Training starts there too: the posterior noise starts small (std e^-4), so the first training step's
    # sampled reconstruction is the baseline up to that noise (~41 dB), not a random image.
    recon, _ = vae.train()(x)
    assert psnr(recon, baseline_recon(x, (4, 8, 8), bilinear=True)) > 35
    path = tmp_path / "old.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"kind": "vidsift-vae", "config": "{}"})
    with pytest.raises(ValueError, match="format-1 .* retrain"):
        load_vae(str(path))
