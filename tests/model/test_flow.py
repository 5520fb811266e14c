import torch

from vidsift.model.dit import DiT, config_from_preset
from vidsift.model.flow import (
    FlowConfig,
    flow_loss,
    sample_euler,
    sample_t,
    sampling_schedule,
    time_shift,
    training_loss,
)


def test_timesteps_are_in_range_and_shift_with_resolution():
    cfg = FlowConfig(shift_base_tokens=64)
    g = torch.Generator().manual_seed(0)
    small = sample_t(4000, (1, 3, 1, 8, 8), cfg, g)
    big = sample_t(4000, (1, 3, 16, 32, 32), cfg, g)
    assert 0 < small.min() and small.max() < 1
    assert abs(small.mean().item() - 0.5) < 0.03  # logit-normal(0, 1) is symmetric around 0.5
    assert big.mean() > small.mean() + 0.2  # more positions -> noisier timesteps
    assert time_shift((1, 3, 1, 8, 8), cfg) == 1.0
    assert time_shift((1, 3, 16, 32, 32), cfg) == 16.0  # sqrt(16 * 32 * 32 / 64)


def test_schedule_runs_from_noise_to_data():
    ts = sampling_schedule(10, (1, 3, 4, 16, 16), FlowConfig())
    assert ts[0] == 1 and ts[-1] == 0 and torch.all(ts[1:] < ts[:-1])


class Oracle(torch.nn.Module):
    """The exact velocity when all data is one clip x0: v = (x_t - x0) / t."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, x, t, text, mask, drop):
        return (x - self.x0) / t.view(-1, 1, 1, 1, 1).clamp(min=1e-6)


def test_loss_is_zero_for_the_true_velocity_and_euler_recovers_data():
    x0 = torch.randn(2, 3, 2, 4, 4)
    noise = torch.randn_like(x0)
    t = torch.tensor([0.3, 0.8])
    oracle = Oracle(x0)
    assert flow_loss(oracle, x0, None, None, None, t, noise).item() < 1e-10
    out = sample_euler(
        oracle,
        noise,
        torch.zeros(2, 1, 4),
        torch.ones(2, 1, dtype=torch.bool),
        FlowConfig(),
        steps=8,
        guidance=1.0,
    )
    assert torch.allclose(out, x0, atol=1e-4)


def test_training_loss_is_reproducible_from_the_generator_and_cfg_runs():
    torch.manual_seed(0)
    model = DiT(config_from_preset("tiny", text_dim=8))
    x0 = torch.randn(3, 3, 2, 8, 8)
    text, mask = torch.randn(3, 4, 8), torch.ones(3, 4, dtype=torch.bool)
    empty = torch.tensor([False, True, False])
    a = training_loss(model, x0, text, mask, empty, FlowConfig(), torch.Generator().manual_seed(5))
    b = training_loss(model, x0, text, mask, empty, FlowConfig(), torch.Generator().manual_seed(5))
    c = training_loss(model, x0, text, mask, empty, FlowConfig(), torch.Generator().manual_seed(6))
    assert a.item() == b.item() != c.item()
    out = sample_euler(
        model, torch.randn(2, 3, 2, 8, 8), text[:2], mask[:2], FlowConfig(), steps=3, guidance=4.0
    )
    assert out.shape == (2, 3, 2, 8, 8) and torch.isfinite(out).all()
