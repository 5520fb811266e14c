"""Edit demo: recolour synthetic moving-shape clips by prompt with SDEdit and measure that the colour followed
the prompt while the motion stayed the input's.

    python bench/edit_demo.py [--run RUN] [--steps 250] [--strengths 0,0.4,0.5,1] [--out out/edit_demo]

1. Trains the tiny DiT in pixel space on 96 synthetic captioned clips as bench/learning_check.py does, for
   250 steps by default rather than 500 (about 40 minutes on a busy 2-core machine); skipped when
   RUN/ema.safetensors exists (``--run`` points at an existing run folder).
2. Makes fresh clips (a new random seed: positions and backgrounds never trained on) of a square of each
   colour moving in each direction (12), at the training size and frame stride, and edits each to the next
   colour (red -> green -> blue -> red; ``--all-targets``: both other colours) with the caption
   "a {new colour} square moving {same direction}", at each strength (same seed).
3. Metrics per strength, over all edits:
   - target colour share: of the foreground pixels (max channel > 100, as model.synthetic.judge), the
     fraction nearest to the prompt's colour (input: 0), next to the source colour share (input: 1); and
     colour accuracy, judge's mean foreground colour is the prompt's (chance 1/3);
   - motion kept: judge's centroid direction equals the input's (chance 1/4), and the mean distance in
     pixels between the output's and the input's foreground centroids, frame by frame (frames with no
     foreground count as the clip's half-diagonal).
   Strength 0 is the input itself, strength 1 is plain text-to-video with the same prompt and seed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vidsift.model.synthetic import COLORS, DIRECTIONS, caption_of, judge, moving_shape  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def foreground(video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels [3, F, H, W] in [0, 255] and the foreground mask [F, H, W], as model.synthetic.judge."""
    return video, video.max(axis=0) > 100


def colour_share(video: torch.Tensor, colour: str) -> float:
    v, fg = foreground((video.clamp(-1, 1).numpy() + 1) * 127.5)
    pixels = v.transpose(1, 2, 3, 0)[fg]  # [N, 3]
    if len(pixels) == 0:
        return 0.0
    palette = np.array(list(COLORS.values()), dtype=np.float32)
    nearest = ((pixels[:, None] - palette[None]) ** 2).sum(-1).argmin(1)
    return float((nearest == list(COLORS).index(colour)).mean())


def centroids(video: torch.Tensor) -> list[tuple[float, float] | None]:
    _, fg = foreground((video.clamp(-1, 1).numpy() + 1) * 127.5)
    ys, xs = np.mgrid[0 : fg.shape[1], 0 : fg.shape[2]]
    return [(ys[m].mean(), xs[m].mean()) if m.sum() else None for m in fg]


def centroid_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-frame distance (px) between the foreground centroids of two clips [3, F, H, W]."""
    miss = float(np.hypot(*a.shape[2:])) / 2
    dist = [
        miss if p is None or q is None else float(np.hypot(p[0] - q[0], p[1] - q[1]))
        for p, q in zip(centroids(a), centroids(b), strict=True)
    ]
    return float(np.mean(dist))


def train_model(run: str, data: str, clips: int, steps: int) -> None:
    from vidsift.model.synthetic import write_synthetic_shards
    from vidsift.model.train import load_recipe, train

    if not os.path.exists(os.path.join(data, "clips")):
        write_synthetic_shards(data, clips, files=2, rows_per_group=8, frames=16, size=32)
    cfg = load_recipe(
        os.path.join(ROOT, "recipes", "train", "tiny.toml"),
        [f"steps={steps}", "eval_every=50", "val_clips=8"],
    )
    cfg.data, cfg.out = data, run
    train(cfg)


def input_clips(frames: int, size: int, stride: int, seed: int) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    """Squares of every colour moving in every direction, [N, 3, F, H, W] in [-1, 1], as the trainer sees
    them (frame stride applied), from a seed the training set never used."""
    rng = np.random.default_rng(seed)
    videos, labels = [], []
    for c in COLORS:
        for d in DIRECTIONS:
            v = moving_shape(c, d, "square", (frames - 1) * stride + 1, size, rng)[::stride]
            videos.append(torch.from_numpy(v).permute(3, 0, 1, 2).float() / 127.5 - 1)
            labels.append((c, d))
    return torch.stack(videos), labels


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.path.join(ROOT, "out", "edit_demo"))
    p.add_argument("--run", help="trained run folder (default: OUT/dit, trained if missing)")
    p.add_argument("--clips", type=int, default=96)
    p.add_argument("--steps", type=int, default=250, help="training steps when the run is missing")
    p.add_argument("--strengths", default="0,0.4,0.45,0.5,0.6,0.8,1")
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--all-targets", action="store_true", help="edit every clip to both other colours")
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    from vidsift.model.edit import edit_latent, strength_schedule
    from vidsift.model.flow import FlowConfig
    from vidsift.model.sample import load_dit, save_grid
    from vidsift.pipeline.text_encoder import TextEncoder

    run = args.run or os.path.join(args.out, "dit")
    if not os.path.exists(os.path.join(run, "ema.safetensors")):
        train_model(run, os.path.join(args.out, "data"), args.clips, args.steps)
    model, meta = load_dit(run)
    if meta["vae"]:
        raise SystemExit("the demo measures colours in pixels: give it a pixel-space run")
    flow = FlowConfig(**{k: v for k, v in meta["flow"].items() if k in FlowConfig.__dataclass_fields__})
    frames, size, stride = meta["frames"], meta["height"], round(24.0 / meta["fps"])
    videos, labels = input_clips(frames, size, stride, seed=1234)

    # Every input to the next colour (red -> green -> blue -> red), same direction (or to both others).
    names = list(COLORS)
    x0, prompts, edits = [], [], []
    for v, (c, d) in zip(videos, labels, strict=True):
        k = names.index(c)
        for target in names[k + 1 :] + names[:k] if args.all_targets else [names[(k + 1) % len(names)]]:
            x0.append(v)
            prompts.append(caption_of(target, d, "square"))
            edits.append((c, d, target))
    x0 = torch.stack(x0)
    text, mask = TextEncoder(meta["text_model"], meta["text_tokens"])(prompts)

    results = {
        "run": run,
        "step": meta["step"],
        "edits": len(edits),
        "sample_steps": args.sample_steps,
        "cfg": args.cfg,
        "strengths": [],
    }
    outs = []
    for s in [float(x) for x in args.strengths.split(",")]:
        t0 = time.time()
        out = edit_latent(model, x0, text, mask, flow, s, args.sample_steps, args.cfg, args.seed).clamp(-1, 1)
        share, source, colour_hits, direction_hits, err = [], [], 0, 0, []
        for o, i, (c, d, target) in zip(out, x0, edits, strict=True):
            share.append(colour_share(o, target))
            source.append(colour_share(o, c))
            gc, gd = judge(o)
            colour_hits += gc == target
            direction_hits += gd == d
            err.append(centroid_error(o, i))
        n = len(edits)
        r = {
            "strength": s,
            "t_start": round(float(strength_schedule(s, args.sample_steps, x0.shape, flow)[0]), 3),
            "target_colour_share": round(float(np.mean(share)), 3),
            "source_colour_share": round(float(np.mean(source)), 3),
            "colour_acc": round(colour_hits / n, 3),
            "direction_kept": round(direction_hits / n, 3),
            "centroid_err_px": round(float(np.mean(err)), 2),
            "seconds": round(time.time() - t0, 1),
        }
        print(json.dumps(r))
        results["strengths"].append(r)
        outs.append(out)
    # A picture: for a few edits, the input then each strength, one row each, frames left to right.
    picks = [k for k in (0, 5, 10) if k < len(edits)]
    save_grid(
        torch.stack([v[k] for k in picks for v in (x0, *outs)]), os.path.join(args.out, "edit_grid.png")
    )
    with open(os.path.join(args.out, "edit_results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
