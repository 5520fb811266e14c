"""A step of ``vidsift finetune`` against a plain diffusers + peft training loop: same Wan model, same clips,
same batch, same work per step.

    python bench/finetune_throughput.py                       # tiny random-weight Wan 2.1, CPU
    python bench/finetune_throughput.py --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --data OUT --gpu \\
        --frames 49 --height 480 --width 832 --batch 1 --rounds 2 --steps 5     # a GPU: tokens/s, memory

vidsift: the real loop (``model/finetune/loop.py``: ``finetune()``), one resumed run of ``--steps`` steps per
round; its manifest reports the time of the steps after the run's first (warm-up), without loading,
evaluation and saving. It runs twice: as by default (``vidsift``), which keeps each caption's embedding
after its first use (``text_cache``: the text encoder is frozen) and, where a core or a GPU is free for it,
decodes the next micro-batch's clips in a background thread while the current one trains (``prefetch =
"auto"``); and with both off (``vidsift_plain``), decoding and encoding every caption inline as the baseline
does: that ratio is the loop's own overhead on exactly the same work.

Baseline: what the diffusers training examples do, written out here: decode the same clips from the shards,
``vae.encode(...).latent_dist.sample()`` and Wan's latent normalisation, ``pipe.encode_prompt``, 10% caption
dropout, logit-normal flow-matching timesteps, the transformer with a peft LoRA (``add_adapter``) on the same
modules, MSE, AdamW, gradient clipping; its first step is untimed too.
Both read the clips through ``vidsift.model.data.decode_clip`` (PyAV), so the comparison is of the loops.

The three are timed in alternating rounds (which one goes first rotates too: on a busy CPU the first of a
round was measurably slower) and each keeps its best round, so load from other processes on a shared
machine affects all three alike; on CPU the process CPU time per step (all threads) is printed too, which
other processes' load changes less. Ratio = baseline time / vidsift time (>= 1: vidsift is not slower).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vidsift.model.data import decode_clip  # noqa: E402
from vidsift.model.finetune.loop import FinetuneConfig, finetune  # noqa: E402
from vidsift.model.finetune.shards import index_clips  # noqa: E402
from vidsift.pipeline import storage  # noqa: E402


def vidsift_round(cfg: FinetuneConfig, steps: int, first: bool) -> tuple[float, float, FinetuneConfig]:
    """(wall, CPU) seconds per step of ``steps`` more steps of the real loop (its first step is its warm-up),
    and the config to continue from."""
    total = (0 if first else cfg.steps) + steps + 1
    cfg = dataclasses.replace(cfg, steps=total)
    m = finetune(cfg, resume=not first, log=lambda *a, **k: None)
    t = m["timing"]
    return t["seconds"] / t["steps"], t["cpu_seconds"] / t["steps"], cfg


class Baseline:
    """A plain diffusers + peft LoRA loop for Wan, as a user would write it."""

    def __init__(self, cfg: FinetuneConfig, device: torch.device) -> None:
        from diffusers import WanPipeline
        from peft import LoraConfig

        bf16 = cfg.precision == "bf16"
        self.dtype = torch.bfloat16 if bf16 else torch.float32
        self.pipe = WanPipeline.from_pretrained(cfg.model, dtype=self.dtype).to(device)
        self.t = self.pipe.transformer
        self.t.requires_grad_(False)
        self.t.add_adapter(
            LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=cfg.lora_targets)
        )
        self.params = [p for p in self.t.parameters() if p.requires_grad]
        for p in self.params:
            p.data = p.data.float()
        if cfg.gradient_checkpointing:
            self.t.enable_gradient_checkpointing()
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr)
        self.cfg, self.device = cfg, device
        # The same clips as vidsift's index, their bytes read once.
        index = index_clips(cfg.data, cfg.caption_column, cfg.bucket_list, cfg.frame_stride, "crop", 0.1)
        self.clips = []
        for clip in index.clips:
            pf = storage.open_parquet(index.files[clip.ref[0]])
            data = pf.read_row_group(clip.ref[1], columns=["clip_mp4"]).column(0)[clip.ref[2]].as_py()
            self.clips.append((data, clip.caption))
        vae = self.pipe.vae.config
        self.mean = torch.tensor(vae.latents_mean, device=device).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(vae.latents_std, device=device).view(1, -1, 1, 1, 1)
        self.tokens = cfg.text_tokens or 512

    def step(self, i: int) -> None:
        cfg, g = self.cfg, torch.Generator().manual_seed(i)
        picks = torch.randint(len(self.clips), (cfg.batch_size,), generator=g)
        pixels = torch.stack(
            [
                decode_clip(self.clips[k][0], cfg.frames, cfg.height, cfg.width, cfg.frame_stride, 0.5)
                for k in picks
            ]
        ).to(self.device, self.dtype)
        captions = [self.clips[k][1] if torch.rand(()) >= cfg.caption_dropout else "" for k in picks]
        with torch.no_grad():
            latents = self.pipe.vae.encode(pixels).latent_dist.sample().float()
            latents = (latents - self.mean) / self.std
            emb, _ = self.pipe.encode_prompt(
                captions,
                do_classifier_free_guidance=False,
                max_sequence_length=self.tokens,
                device=self.device,
            )
        sigma = torch.sigmoid(torch.randn(cfg.batch_size, device=self.device))
        noise = torch.randn_like(latents)
        s = sigma.view(-1, 1, 1, 1, 1)
        noisy = (1 - s) * latents + s * noise
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16):
            pred = self.t(noisy.to(self.dtype), timestep=sigma * 1000, encoder_hidden_states=emb).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise - latents)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        float(loss.detach())  # wait for the device, as vidsift's loop does when it logs the loss

    def round(self, steps: int) -> tuple[float, float]:
        self.step(-1)  # warm-up, untimed (vidsift's first step of a run is untimed as well)
        t, c = time.perf_counter(), time.process_time()
        for i in range(steps):
            self.step(i)
        return (time.perf_counter() - t) / steps, (time.process_time() - c) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", help="Wan model (hub id or folder); default: a tiny random-weight one built here"
    )
    p.add_argument("--data", help="curation run; default: 24 synthetic clips written here")
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--height", type=int, default=32)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--text-tokens", type=int, default=16)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best one counts")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gpu", action="store_true", help="CUDA, bf16, gradient checkpointing")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="finetune-bench-"))
    model, data = args.model, args.data
    if not model:
        from tests.make_tiny_diffusers import build_all

        model = str(build_all(work / "tiny", ["wan"])["wan"])
    if not data:
        from vidsift.model.synthetic import write_synthetic_shards

        data = str(work / "shards")
        write_synthetic_shards(data, 24, files=2, rows_per_group=4, frames=20, size=48)
    device = torch.device("cuda" if args.gpu else "cpu")
    base = FinetuneConfig(
        model=model, family="wan", mode="lora", data=data, out=str(work / "run"), frames=args.frames,
        height=args.height, width=args.width, batch_size=args.batch, text_tokens=args.text_tokens,
        lora_rank=16, lora_alpha=16.0, lr=1e-4, steps=0, log_every=10**9, device=device.type,
        precision="bf16" if args.gpu else "fp32", gradient_checkpointing=args.gpu,
    )  # fmt: skip
    # vidsift as it runs by default, and with prefetch and text_cache off: the same work as the baseline.
    configs = {
        "vidsift": dataclasses.replace(base, out=str(work / "run")),
        "vidsift_plain": dataclasses.replace(base, out=str(work / "plain"), prefetch="off", text_cache=False),
    }
    sides = [*configs, "baseline"]
    times: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
    memory = {side: 0.0 for side in [*sides, "other"]}

    def peak(side: str) -> None:
        if device.type == "cuda":
            memory[side] = max(memory[side], torch.cuda.max_memory_allocated() / 2**30)
            torch.cuda.reset_peak_memory_stats()

    def run(side: str, r: int) -> None:
        peak("other")
        if side == "baseline":
            # Loaded afresh each round, as vidsift's resumed run is: both start with cold models.
            baseline = Baseline(base, device)
            times[side].append(baseline.round(args.steps))
            del baseline
        else:
            wall, cpu, configs[side] = vidsift_round(configs[side], args.steps, first=r == 0)
            times[side].append((wall, cpu))
        peak(side)

    for r in range(args.rounds):
        # Whichever runs first in a round was measurably slower on a busy CPU: the order rotates.
        for side in sides[r % 3 :] + sides[: r % 3]:
            run(side, r)
        timed = "  ".join(f"{side} {times[side][-1][0] * 1e3:.1f}" for side in sides)
        print(f"round {r}: {timed} ms/step")
    wall = {side: min(w for w, _ in times[side]) for side in sides}
    cpu = {side: min(c for _, c in times[side]) for side in sides}
    lat_f = 1 + (args.frames - 1) // 4
    tokens = args.batch * lat_f * (args.height // 16) * (args.width // 16)
    result: dict = {"shape": f"batch {args.batch} x {args.frames} frames x {args.height}x{args.width}"}
    result["tokens_per_step"] = tokens
    result.update({f"{side}_ms_per_step": wall[side] * 1e3 for side in sides})
    result["ratio_wall"] = wall["baseline"] / wall["vidsift"]
    result["ratio_wall_plain"] = wall["baseline"] / wall["vidsift_plain"]
    result["vidsift_tokens_per_s"] = tokens / wall["vidsift"]
    if device.type == "cpu":
        result["ratio_cpu_time"] = cpu["baseline"] / cpu["vidsift"]
        result["ratio_cpu_time_plain"] = cpu["baseline"] / cpu["vidsift_plain"]
    else:
        result["peak_memory_gib"] = {k: v for k, v in memory.items() if k != "other"}
    print(json.dumps(result, indent=1))
    for side, label in (("vidsift", "vidsift"), ("vidsift_plain", "vidsift, prefetch and text_cache off")):
        print(f"ratio baseline / {label}: {wall['baseline'] / wall[side]:.2f} (wall, best round)", end="")
        cpu_ratio = f", {cpu['baseline'] / cpu[side]:.2f} (process CPU time, best round)"
        print(cpu_ratio if device.type == "cpu" else "")


if __name__ == "__main__":
    main()
