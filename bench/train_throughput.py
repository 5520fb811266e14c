"""Training throughput of our DiT against diffusers' WanTransformer3DModel at matched shape, same run.

    python bench/train_throughput.py [--dim 256 --depth 4 --heads 4 --size 16 --batch 4 --threads 1]
    python bench/train_throughput.py --preset small --gpu      # ~120M preset, bf16, tokens/s and MFU

Both models get the same width, depth, heads, MLP width (4x), patch (1, 2, 2), latent channels, text tokens
and text width, and the same input, and run full training steps (forward, MSE loss, backward, AdamW).
Prints tokens/s for each and the ratio ours / Wan. Skips the comparison if diffusers is not installed.
With --floor it also times the work both models cannot avoid: the same linear layers, attention calls,
MLP activation and residual sums alone (no norms, modulation, rotary, gates), timed in the same rounds;
Wan / floor is then the most any implementation of this shape could beat Wan by.
The two models are timed in alternating rounds and each keeps its best round, so load from other processes
on a shared machine affects both alike. On CPU it also prints the ratio of process CPU time per step
(all threads), which other processes' load barely changes: the fairer number on a busy machine (best
and median round; use more --rounds there).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vidsift.model.dit import PRESETS, DiT, DiTConfig  # noqa: E402
from vidsift.model.train import flops_per_token, peak_flops  # noqa: E402


def time_steps(step, iters: int, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) per step over ``iters`` steps."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t, c = time.perf_counter(), time.process_time()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters, (time.process_time() - c) / iters


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", choices=list(PRESETS), help="take dim/depth/heads from a DiT preset")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--channels", type=int, default=16, help="latent channels")
    p.add_argument("--frames", type=int, default=4, help="latent frames")
    p.add_argument("--size", type=int, default=16, help="latent height and width")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--text-tokens", type=int, default=32)
    p.add_argument("--text-dim", type=int, default=384)
    p.add_argument("--iters", type=int, default=3, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=3, help="alternating timed rounds; the best one counts")
    p.add_argument("--gpu", action="store_true", help="CUDA + bf16 autocast")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--floor", action="store_true", help="also time the shared GEMM + attention floor")
    args = p.parse_args()
    if args.preset:
        args.dim, args.depth, args.heads = (PRESETS[args.preset][k] for k in ("dim", "depth", "heads"))
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device is visible to this PyTorch")
    device = torch.device("cuda" if args.gpu else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.gpu)
    torch.manual_seed(0)
    b, c, f, s = args.batch, args.channels, args.frames, args.size
    x = torch.randn(b, c, f, s, s, device=device)
    text = torch.randn(b, args.text_tokens, args.text_dim, device=device)
    mask = torch.ones(b, args.text_tokens, dtype=torch.bool, device=device)
    t = torch.rand(b, device=device)
    tokens = b * f * (s // 2) * (s // 2)
    print(
        f"shape: dim {args.dim}, depth {args.depth}, heads {args.heads}, batch {b}, latent {c}x{f}x{s}x{s}, "
        f"{tokens // b} tokens per clip, device {device}, threads {torch.get_num_threads()}"
    )

    ours = DiT(
        DiTConfig(
            in_channels=c,
            patch=(1, 2, 2),
            dim=args.dim,
            depth=args.depth,
            heads=args.heads,
            text_dim=args.text_dim,
        )
    ).to(device)
    run_ours = torch.compile(ours) if args.compile else ours
    opt = torch.optim.AdamW(ours.parameters(), lr=1e-4)

    def step_ours() -> None:
        with autocast:
            loss = (run_ours(x, t, text, mask) - x).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        from diffusers import WanTransformer3DModel
    except ImportError:
        print("diffusers is not installed: timing our model alone")
        step_ours()
        best = min(time_steps(step_ours, args.iters, device)[0] for _ in range(args.rounds))
        report("ours", ours.num_params(), best, tokens)
        print_mfu(ours, tokens, b, best, device)
        return
    wan = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=args.heads,
        attention_head_dim=args.dim // args.heads,
        in_channels=c,
        out_channels=c,
        text_dim=args.text_dim,
        ffn_dim=4 * args.dim,
        num_layers=args.depth,
    ).to(device)
    run_wan = torch.compile(wan) if args.compile else wan
    wopt = torch.optim.AdamW(wan.parameters(), lr=1e-4)
    timestep = (t * 1000).long()

    def step_wan() -> None:
        with autocast:
            out = run_wan(x, timestep, text, return_dict=False)[0]
            loss = (out - x).float().pow(2).mean()
        loss.backward()
        wopt.step()
        wopt.zero_grad(set_to_none=True)

    steps = {"ours": step_ours, "wan": step_wan}
    if args.floor:
        floor = Floor(args.dim, args.depth, args.heads, ours.patch_dim, args.text_dim).to(device)
        fopt = torch.optim.AdamW(floor.parameters(), lr=1e-4)
        tokens_in = ours.patchify(x)

        def step_floor() -> None:
            with autocast:
                loss = (floor(tokens_in, text) - tokens_in).float().pow(2).mean()
            loss.backward()
            fopt.step()
            fopt.zero_grad(set_to_none=True)

        steps["floor"] = step_floor
    for _ in range(2):  # warm-up (allocator, kernels, compile)
        for step in steps.values():
            step()
    times: dict[str, list] = {k: [] for k in steps}
    for _ in range(args.rounds):
        for k, step in steps.items():
            times[k].append(time_steps(step, args.iters, device))
    ours_t, wan_t = times["ours"], times["wan"]
    best_ours, best_wan = min(w for w, _ in ours_t), min(w for w, _ in wan_t)
    report("ours", ours.num_params(), best_ours, tokens)
    report("wan ", sum(p.numel() for p in wan.parameters()), best_wan, tokens)
    print(f"ratio ours / wan: {best_wan / best_ours:.2f}x tokens/s (wall clock)")
    if device.type == "cpu":
        cpu_ours, cpu_wan = min(c for _, c in ours_t), min(c for _, c in wan_t)
        # The median over rounds as well: on a machine loaded by other work the best round can be luck.
        med_ours, med_wan = statistics.median(c for _, c in ours_t), statistics.median(c for _, c in wan_t)
        print(
            f"CPU s/step: ours {cpu_ours:.2f}, wan {cpu_wan:.2f}; ratio {cpu_wan / cpu_ours:.2f}x "
            f"(best rounds), {med_wan / med_ours:.2f}x (median rounds)"
        )
    if args.floor:
        best_floor = min(w for w, _ in times["floor"])
        cpu_ratio = min(c for _, c in wan_t) / min(c for _, c in times["floor"])
        print(
            f"floor (shared GEMMs, attention, GELU, residual sums only): {best_floor * 1000:.0f} ms/step; "
            f"ceiling wan / floor {best_wan / best_floor:.2f}x wall, {cpu_ratio:.2f}x CPU; over the floor: "
            f"ours {best_ours / best_floor - 1:.0%}, wan {best_wan / best_floor - 1:.0%}"
        )
    print_mfu(ours, tokens, b, best_ours, device)


def print_mfu(model, tokens: int, batch: int, seconds: float, device: torch.device) -> None:
    """Model FLOPs utilisation of one step of ``seconds`` (GPUs whose bf16 peak model/train.py knows)."""
    peak = peak_flops(device)
    if peak:
        mfu = flops_per_token(model, tokens // batch) * tokens / seconds / peak
        print(f"ours: MFU {mfu:.1%} (peak bf16 {peak / 1e12:.0f} TFLOP/s)")


class Floor(torch.nn.Module):
    """The matrix work of a DiT of this shape with nothing else: per block the self-attention projections
    (q, kv, out) and SDPA over the tokens, the cross-attention ones over the text tokens, the MLP with its
    tanh-GELU, and plain residual sums; plus patch, text and output embeddings. Both models do at least
    this, so its step time bounds what any implementation at this shape can reach."""

    def __init__(self, dim: int, depth: int, heads: int, patch_dim: int, text_dim: int) -> None:
        super().__init__()
        nn = torch.nn
        self.heads = heads
        self.x_embed, self.out = nn.Linear(patch_dim, dim), nn.Linear(dim, patch_dim)
        self.text_embed = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU("tanh"), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                dict(
                    q=nn.Linear(dim, dim), kv=nn.Linear(dim, 2 * dim), proj=nn.Linear(dim, dim),
                    cq=nn.Linear(dim, dim), ckv=nn.Linear(dim, 2 * dim), cproj=nn.Linear(dim, dim),
                    mlp=nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU("tanh"), nn.Linear(4 * dim, dim)),
                )
            )
            for _ in range(depth)
        )  # fmt: skip

    def attend(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        b, n, d = q.shape
        k, v = kv.view(b, kv.shape[1], 2, self.heads, d // self.heads).unbind(2)
        q = q.view(b, n, self.heads, -1).transpose(1, 2)
        out = torch.nn.functional.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2).reshape(b, n, d)

    def forward(self, tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        h, ctx = self.x_embed(tokens), self.text_embed(text)
        for blk in self.blocks:
            h = h + blk["proj"](self.attend(blk["q"](h), blk["kv"](h)))
            h = h + blk["cproj"](self.attend(blk["cq"](h), blk["ckv"](ctx)))
            h = h + blk["mlp"](h)
        return self.out(h)


def report(name: str, params: int, seconds: float, tokens: int) -> None:
    ms, tps = seconds * 1000, tokens / seconds
    print(f"{name}: {params / 1e6:.1f}M params, {ms:.0f} ms/step, {tps:,.0f} tokens/s")


if __name__ == "__main__":
    main()
