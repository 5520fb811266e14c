import pytest
import torch

from vidsift.model.dit import DiT, DiTConfig, apply_rope, config_from_preset, rope_3d


def tiny(**kw) -> DiT:
    torch.manual_seed(0)
    return DiT(config_from_preset("tiny", text_dim=16, **kw))


def text(b: int, L: int = 5, d: int = 16):
    return torch.randn(b, L, d), torch.ones(b, L, dtype=torch.bool)


@pytest.mark.parametrize("thw", [(1, 8, 8), (3, 8, 12), (5, 16, 8), (4, 6, 10)])
def test_output_shape_any_duration_and_size(thw):
    model = tiny()
    x = torch.randn(2, 3, *thw)
    y = model(x, torch.rand(2), *text(2))
    assert y.shape == x.shape


def test_patch_in_time_and_latent_channels():
    model = tiny(patch=(2, 2, 2), in_channels=4)
    x = torch.randn(1, 4, 4, 8, 8)
    assert model(x, torch.rand(1), *text(1)).shape == x.shape
    with pytest.raises(ValueError, match="not divisible"):
        model(torch.randn(1, 4, 3, 8, 8), torch.rand(1), *text(1))


def test_blocks_are_identity_and_output_zero_at_init():
    model = tiny()
    h = torch.randn(2, 48, model.cfg.dim)
    mod = model.ada(torch.randn(2, model.cfg.dim)).view(2, 6, -1)
    ctx = torch.randn(2, 5, model.cfg.dim)
    mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    rope = rope_3d((3, 4, 4), model.cfg.dim // model.cfg.heads, 10000.0)
    for blk in model.blocks:
        assert torch.equal(blk(h, mod, ctx, mask, rope), h)
    y = model(torch.randn(2, 3, 3, 8, 8), torch.rand(2), *text(2))
    assert torch.count_nonzero(y) == 0


@pytest.mark.parametrize("abs_pos", [False, True])
def test_gradients_reach_every_parameter_after_three_steps(abs_pos):
    model = tiny(abs_pos=abs_pos)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(2, 3, 2, 8, 8)
    for _ in range(3):  # zero output -> zero modulation -> everything: three steps wake all layers
        opt.zero_grad()
        loss = (model(x, torch.rand(2), *text(2), torch.tensor([True, False])) - x).pow(2).mean()
        loss.backward()
        opt.step()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_text_changes_output_and_mask_hides_padding():
    model = tiny()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # leave the zero init so conditioning is visible
    x, t = torch.randn(1, 3, 2, 8, 8), torch.rand(1)
    a, m = text(1)
    b, _ = text(1)
    assert not torch.allclose(model(x, t, a, m), model(x, t, b, m))
    # Masked-out tokens must not matter.
    a2 = a.clone()
    a2[:, 3:] = 100.0
    m2 = m.clone()
    m2[:, 3:] = False
    assert torch.allclose(model(x, t, a, m2), model(x, t, a2, m2), atol=1e-5)
    # A dropped caption equals the null caption whatever the text was.
    drop = torch.tensor([True])
    assert torch.allclose(model(x, t, a, m, drop), model(x, t, b, m, drop), atol=1e-5)


def test_rope_is_a_rotation_and_relative():
    cos, sin = rope_3d((2, 3, 4), 32, 10000.0)
    assert cos.shape == (24, 16)
    q = torch.randn(24, 32)
    assert torch.allclose(apply_rope(q, cos, sin).norm(dim=-1), q.norm(dim=-1), atol=1e-5)
    # Scores depend only on relative position: the same offset gives the same score anywhere in the grid.
    cos, sin = rope_3d((3, 3, 4), 32, 10000.0)
    v, w = torch.randn(32).expand(36, 32), torch.randn(32).expand(36, 32)
    qa, ka = apply_rope(v, cos, sin), apply_rope(w, cos, sin)
    # index = 12 t + 4 h + w: (0,0,0)->(1,0,1) and (1,0,0)->(2,0,1) are both one frame and one column apart
    assert torch.allclose(qa[0] @ ka[13], qa[12] @ ka[25], atol=1e-4)
    assert not torch.allclose(qa[0] @ ka[13], qa[0] @ ka[14], atol=1e-3)
    # the time axis really rotates: a frame offset changes the score
    assert not torch.allclose(qa[0] @ ka[0], qa[0] @ ka[12], atol=1e-3)


def test_presets_parameter_counts():
    assert 1e6 <= DiT(config_from_preset("tiny")).num_params() <= 4e6
    n = DiT(config_from_preset("small")).num_params()
    assert 100e6 <= n <= 140e6


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        DiTConfig(dim=100, heads=3)
    with pytest.raises(ValueError, match="unknown DiT preset"):
        config_from_preset("huge")


def test_patch_tokens_are_time_major_like_the_rotary_grid():
    model = DiT(config_from_preset("tiny", patch=(2, 4, 4), text_dim=8))
    x = torch.randn(2, 3, 4, 16, 24)
    tokens = model.patchify(x)
    assert tokens.shape == (2, 2 * 4 * 6, 3 * 2 * 4 * 4)
    assert torch.equal(model.unpatchify(tokens, model.grid(x.shape)), x)
    # token 1 is (t=0, h=0, w=1), token 6 is (t=0, h=1, w=0), token 24 is (t=1, h=0, w=0)
    assert torch.equal(tokens[0, 1].view(3, 2, 4, 4), x[0, :, 0:2, 0:4, 4:8])
    assert torch.equal(tokens[0, 6].view(3, 2, 4, 4), x[0, :, 0:2, 4:8, 0:4])
    assert torch.equal(tokens[0, 24].view(3, 2, 4, 4), x[0, :, 2:4, 0:4, 0:4])


def test_absolute_positions_tell_tokens_apart_where_rotary_cannot():
    """On uniform input every token of the relative-only model computes the same thing (rotary attention
    averages identical values), so it cannot put content at a place; with abs_pos the tokens differ by
    where they are, the same way at any grid size (positions are fractions of the clip)."""
    outs = {}
    for abs_pos in (False, True):
        model = tiny(abs_pos=abs_pos, patch=(1, 2, 2))
        with torch.no_grad():
            for p in model.parameters():  # wake the zero-initialised layers
                if p.abs().sum() == 0:
                    p.normal_(0, 0.05)
            for size in (8, 16):
                x = torch.zeros(1, 3, 2, size, size)
                outs[abs_pos, size] = model.patchify(model(x, torch.tensor([0.5]), *text(1)))[0]
    for size in (8, 16):
        same = outs[False, size]
        torch.testing.assert_close(same, same[:1].expand_as(same), rtol=0, atol=1e-5)
        assert (outs[True, size] - outs[True, size][:1]).abs().max() > 1e-2
    # the first frame's top-left and bottom-right tokens differ, at both sizes
    a, b = outs[True, 8], outs[True, 16]
    assert (a[0] - a[15]).abs().max() > 1e-2 and (b[0] - b[63]).abs().max() > 1e-2
