"""Packing vs pad-to-longest vs size buckets: share of padding tokens and useful training tokens/s.

    python bench/packing.py [--data out/quickstart] [--items 400] [--repeats 3]

Two mixes of clip sizes, each clip sized as packed training sizes it (model/data.py ``NativeSize``: native
aspect ratio and duration within a pixel area and a frame maximum) plus 20% images (one-frame clips):

- real: the clips of a curation run (``--data``, e.g. the quick start over ../shared/videos/quality);
- synthetic: ``--items`` clips with a realistic spread: durations log-normal around 5 s (1-60 s), frame
  aspect 16:9 (50%), 9:16 (20%), 4:3, 1:1 and 21:9 (10% each), 480p to 1080p sources.

Strategies, each filling about the same tokens per step (``rows`` x ``budget``):

- packing: model/data.py's packer (``PackedStream``: first-fit decreasing, left overs first next step) into
  ``rows`` rows of exactly ``budget`` tokens, block-diagonal attention (dense mask, and one SDPA per clip);
- pad-to-longest: batches of clips in stream order, each padded to the longest of its batch (key mask);
- size buckets: clips grouped by token count into buckets (upper bounds budget / sqrt(2)^k), each batch of
  one bucket, every clip padded to the bucket's bound (fixed shapes per bucket, as bucketing trainers do).

Padding is counted over every step's tensor. Throughput: forward + backward of a small DiT on CPU over the
same steps, the strategies interleaved round-robin ``--repeats`` times (this machine is shared: ratios of
medians measured side by side are what to read, not absolute numbers). Useful tokens/s counts real tokens.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vidsift.model.data import NativeSize, PackedStream, Sample, pack  # noqa: E402
from vidsift.model.dit import DiT, config_from_preset, packed_attention_mask  # noqa: E402
from vidsift.model.flow import FlowConfig, packed_training_loss  # noqa: E402

PATCH = (1, 4, 4)
SIZE = NativeSize(area=32 * 32, max_frames=16, stride=2, multiple=4, frame_multiple=1)
IMAGE_SHARE = 0.2


def real_mix(data: str, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    import pyarrow.parquet as pq

    files = sorted(glob.glob(os.path.join(data, "clips", "*.parquet")))
    if not files:
        raise SystemExit(f"no shards in {data}/clips: run the curation quick start first (README.md)")
    t = pq.read_table(files, columns=["width", "height", "num_frames"]).to_pylist()
    out = []
    for _ in range(4):  # 4 epochs of the run's clips, each item a video or (20%) one of its frames
        for r in t:
            image = rng.random() < IMAGE_SHARE
            out.append(
                SIZE.image(r["width"], r["height"])
                if image
                else SIZE.video(r["width"], r["height"], r["num_frames"])
            )
    rng.shuffle(out)
    return out


def synthetic_mix(n: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    aspects = [(16, 9), (9, 16), (4, 3), (1, 1), (21, 9)]
    out = []
    for _ in range(n):
        a = aspects[rng.choice(5, p=[0.5, 0.2, 0.1, 0.1, 0.1])]
        short = int(rng.choice([480, 720, 1080]))
        w, h = (short * a[0] // a[1], short) if a[0] >= a[1] else (short, short * a[1] // a[0])
        if rng.random() < IMAGE_SHARE:
            out.append(SIZE.image(w, h))
        else:
            seconds = float(np.clip(rng.lognormal(math.log(5), 0.9), 1, 60))
            out.append(SIZE.video(w, h, int(seconds * 24)))
    return out


def tokens(shape: tuple[int, int, int]) -> int:
    f, h, w = shape
    return (f // PATCH[0]) * (h // PATCH[1]) * (w // PATCH[2])


class SizeStream(PackedStream):
    """The real packer over a list of sizes (no decoding): draws return the next clip's index."""

    def __init__(self, shapes, rows, budget, max_clips):
        self.shapes, self.next, self.n = shapes, 0, len(shapes)
        self.rows, self.budget, self.max_clips = rows, budget, max_clips
        self.overfill, self.max_padding, self.pending = 1.25, 0.02, []
        self.tokens_of = lambda s: tokens(self.shapes[int(s.clip_id)])

    def _draw(self):
        self.next += 1
        return (self.next - 1) % self.n

    def _load(self, key):
        f = self.shapes[key][0]
        return Sample(str(key), torch.empty(3, f, 0, 0), "")

    def _shorten(self, sample, room):
        f, h, w = self.shapes[int(sample.clip_id)]
        for k in range(sample.x.shape[1] - 1, 0, -1):
            if tokens((k, h, w)) <= room:
                self.shapes.append((k, h, w))
                return Sample(str(len(self.shapes) - 1), torch.empty(3, k, 0, 0), "")
        return None


def plan_packing(shapes, rows, budget, max_clips, steps):
    s = SizeStream(list(shapes), rows, budget, max_clips)
    plans = []
    for _ in range(steps):
        samples, bins = s.next_batch()
        plans.append(("pack", [s.shapes[int(x.clip_id)] for x in samples], bins, budget))
    return plans


def plan_longest(shapes, rows, budget, steps):
    per = max(
        1, round(rows * budget / statistics.mean(map(tokens, shapes)))
    )  # same tokens per step on average
    plans, i = [], 0
    for _ in range(steps):
        batch = [shapes[(i + j) % len(shapes)] for j in range(per)]
        i += per
        plans.append(("longest", batch, [[j] for j in range(per)], max(map(tokens, batch))))
    return plans


def plan_buckets(shapes, rows, budget, steps):
    bounds = sorted({max(1, int(budget / math.sqrt(2) ** k)) for k in range(12)})
    buckets: dict[int, list] = {}
    plans, i = [], 0
    while len(plans) < steps:
        s = shapes[i % len(shapes)]
        i += 1
        b = next(b for b in bounds if b >= tokens(s))
        buckets.setdefault(b, []).append(s)
        per = max(1, rows * budget // b)  # a bucket's batch fills the same tokens per step
        if len(buckets[b]) == per:
            plans.append(("buckets", buckets.pop(b), [[j] for j in range(per)], b))
    return plans


def padding(plans) -> float:
    real = sum(tokens(s) for _, batch, _, _ in plans for s in batch)
    total = sum(len(bins) * n for _, _, bins, n in plans)
    return 1 - real / total


def run_step(model, plan, kind, gen):
    _, batch, bins, budget = plan
    clips = [torch.randn(3, *s, generator=gen) for s in batch]
    p = pack(clips, PATCH, budget, max_clips=max(map(len, bins)), bins=bins)
    k = p.max_clips
    text = torch.randn(len(bins), k, 8, 384, generator=gen)
    mask = torch.ones(len(bins), k, 8, dtype=torch.bool)
    empty = torch.zeros(len(bins), k, dtype=torch.bool)
    attn = packed_attention_mask(p.seq_id, kind)
    t0 = time.perf_counter()
    loss = packed_training_loss(model.forward_packed, p, text, mask, empty, FlowConfig(), gen, attn)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0, int(p.real.sum())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="out/quickstart", help="curation run folder (clips/*.parquet)")
    ap.add_argument("--items", type=int, default=400, help="clips in the synthetic mix")
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--budget", type=int, default=1024, help="tokens per packed row")
    ap.add_argument("--max-clips", type=int, default=24)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per strategy and repeat")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = DiT(config_from_preset("tiny", text_dim=384, patch=PATCH, depth=2))
    print(
        f"DiT tiny depth 2, patch {PATCH}; {args.rows} rows x {args.budget} tokens per step; threads "
        f"{torch.get_num_threads()}; clip size: ~{SIZE.area} px, <= {SIZE.max_frames} frames, "
        f"{IMAGE_SHARE:.0%} images"
    )
    mixes = {"real": real_mix(args.data, rng), "synthetic": synthetic_mix(args.items, rng)}
    for name, shapes in mixes.items():
        n = [tokens(s) for s in shapes]
        print(
            f"\n## {name} mix: {len(shapes)} items, tokens per item min {min(n)} "
            f"median {int(np.median(n))} max {max(n)}"
        )
        # Padding over a whole pass of the mix (every strategy sees all items once).
        steps_all = math.ceil(sum(n) / (args.rows * args.budget))
        full = {
            "packing": plan_packing(shapes, args.rows, args.budget, args.max_clips, steps_all),
            "pad-to-longest": plan_longest(shapes, args.rows, args.budget, steps_all),
            "size buckets": plan_buckets(shapes, args.rows, args.budget, steps_all),
        }
        timed = {k: v[: args.steps] for k, v in full.items()}
        runs = [
            ("packing", "dense"),
            ("packing", "segments"),
            ("pad-to-longest", "dense"),
            ("size buckets", "dense"),
        ]
        times: dict = {r: [] for r in runs}
        for rep in range(args.repeats + 1):  # the first round warms up and is not counted
            for r in runs:
                gen = torch.Generator().manual_seed(rep)
                t, real = 0.0, 0
                for plan in timed[r[0]]:
                    dt, k = run_step(model, plan, r[1], gen)
                    t, real = t + dt, real + k
                if rep:
                    times[r].append(real / t)
        base = statistics.median(times[("packing", "dense")])
        print(
            f"| strategy | attention | padding | useful tokens/s (median of {args.repeats}) "
            "| vs packing (dense) |"
        )
        print("|---|---|---|---|---|")
        for r in runs:
            tps = statistics.median(times[r])
            print(f"| {r[0]} | {r[1]} | {padding(full[r[0]]):.1%} | {tps:,.0f} | {tps / base:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
