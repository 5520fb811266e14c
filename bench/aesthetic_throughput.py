"""Aesthetic scoring throughput: the score_aesthetic stage against open_clip's own encode_image.

    python bench/aesthetic_throughput.py [--arch ViT-B-32] [--frames 128] [--per-pass 32] [--repeats 5]

Frames are the real ``frames_jpeg`` of the sample clips in ../shared/videos/quality (the analysis
pass's sampled frames, short side 256), four per clip row, as the stage gets them in a run.

- baseline: the frames decoded and preprocessed *before* the clock starts, then
  ``model.encode_image`` + L2 normalisation + the aesthetic head, ``--per-pass`` frames per call;
- stage: ``ScoreAesthetic(rows)`` on the same frames with the same ``frames_per_pass``, which also
  decodes the JPEGs, preprocesses them, spreads frames across clips and reduces per clip.

The ratio of the two rates is the pipeline's overhead; the goal is <= 10%. The model has random
weights (``tests/make_tiny_clip.py --arch``): a ``ViT-B-32``-sized model by default, since ViT-L-14 is
about 15-20x slower per frame on a CPU (its overhead share is smaller still, the model's being
larger); ``--arch ViT-L-14-quickgelu`` measures the real architecture. The two paths alternate
forward pass by forward pass, ``--repeats`` times over all frames, so load from other processes
hits both alike; it prints the ratio of the median totals, the median of the back-to-back pass
pairs, and (for reference: noisy on a shared machine) the ratio of each path's fastest pass. It
also times the preprocessing alone: open_clip's transform frame by frame, and the stage's.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VIDEOS = REPO.parent / "shared" / "videos" / "quality"


def sample_rows(n_frames: int, per_clip: int = 4) -> list[dict]:
    """Clip rows carrying the analysis pass's frames_jpeg, cycling over the sample clips."""
    from vidsift.pipeline.process import scan_video
    from vidsift.pipeline.recipe import build_recipe
    from vidsift.pipeline.registry import STAGES
    from vidsift.pipeline.stages.analyze import clip_statistics

    recipe = build_recipe({"stage": [{"name": n} for n, s in STAGES.items() if s.required]})
    frames: list[bytes] = []
    for path in sorted(p for p in VIDEOS.iterdir() if p.is_file()):
        scan = scan_video(str(path), recipe)
        if scan.analysis is None or not scan.analysis.num_frames:
            continue
        stats = clip_statistics(scan.analysis, 0, scan.analysis.num_frames, 64)
        frames += stats["frames_jpeg"]
        if len(frames) >= n_frames:
            break
    frames = (frames * (n_frames // max(1, len(frames)) + 1))[:n_frames]
    return [
        {"clip_id": f"{i:04d}", "frames_jpeg": frames[i : i + per_clip]} for i in range(0, n_frames, per_clip)
    ]


def run_direct(stage, batches) -> float:
    """open_clip's encode_image + normalisation + head on preprocessed batches; no vidsift code."""
    import torch

    model, head = stage.clip.model, stage.head
    t0 = time.perf_counter()
    with torch.inference_mode():
        for x in batches:
            feats = model.encode_image(x.to(stage.clip.device, stage.clip.dtype)).float()
            scores = head(feats / feats.norm(dim=-1, keepdim=True))
            scores.cpu()
    return time.perf_counter() - t0


def run_stage(stage, rows, rows_per_call: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(rows), rows_per_call):
        stage(rows[i : i + rows_per_call])
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="ViT-B-32", help="open_clip architecture (random weights)")
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--per-pass", type=int, default=32, help="frames per forward pass, both paths")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch
    from PIL import Image

    from tests.make_tiny_clip import build
    from vidsift.pipeline.stages.score_aesthetic import ScoreAesthetic, ScoreAestheticConfig

    rows = sample_rows(args.frames)
    jpegs = [f for r in rows for f in r["frames_jpeg"]]
    with tempfile.TemporaryDirectory() as tmp:
        settings = build(Path(tmp), arch=args.arch)
        config = ScoreAestheticConfig(
            **settings,
            min_score=0,
            device=args.device,
            frames_per_pass=args.per_pass,
            batch_size=max(1, args.per_pass // 4),  # a Ray batch of clip rows fills one forward pass
        )
        stage = ScoreAesthetic(config)
    pre = stage.clip.preprocess
    t0 = time.perf_counter()
    tensors = [pre(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs]
    prep_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, len(jpegs), args.per_pass):
        stage.clip.model_input(stage.clip.decode_jpegs(jpegs[i : i + args.per_pass]))
    stage_prep_s = time.perf_counter() - t0
    batches = [torch.stack(tensors[i : i + args.per_pass]) for i in range(0, len(tensors), args.per_pass)]

    rows_per_call = config.batch_size
    calls = [rows[i : i + rows_per_call] for i in range(0, len(rows), rows_per_call)]
    assert len(calls) == len(batches)  # each stage call is one forward pass, as each direct batch is
    run_direct(stage, batches[:1]), run_stage(stage, calls[0], rows_per_call)  # warm-up
    direct, staged, pairs = [], [], []
    for _ in range(args.repeats):
        # alternate pass by pass, so a busy machine slows both paths alike
        d = s = 0.0
        for batch, call in zip(batches, calls, strict=True):
            dt, st = run_direct(stage, [batch]), run_stage(stage, call, rows_per_call)
            pairs.append((dt, st))
            d, s = d + dt, s + st
        direct.append(d)
        staged.append(s)
    d, s = statistics.median(direct), statistics.median(staged)
    n = len(jpegs)
    print(
        f"model: {args.arch} (random weights), device {args.device}, torch threads {torch.get_num_threads()}"
    )
    print(f"frames: {n} real sampled frames in {len(rows)} clip rows, {args.per_pass} frames per pass")
    print(f"open_clip encode_image + head (preprocessed): {n / d:8.1f} frames/s  (median of {args.repeats})")
    print(f"score_aesthetic stage (JPEG -> scores):       {n / s:8.1f} frames/s")
    print(f"JPEG decode + open_clip preprocess per frame: {n / prep_s:8.1f} frames/s")
    print(f"JPEG decode + the stage's batched preprocess: {n / stage_prep_s:8.1f} frames/s (same tensors)")
    print(f"stage / direct rate: {d / s:.3f}  -> pipeline overhead {s / d - 1:+.1%} (goal <= +10%)")
    paired = statistics.median(st / dt for dt, st in pairs)
    fastest = min(st for _, st in pairs) / min(dt for dt, _ in pairs)
    print(f"median of {len(pairs)} back-to-back pass pairs: overhead {paired - 1:+.1%}")
    print(f"fastest pass of each path: overhead {fastest - 1:+.1%}")


if __name__ == "__main__":
    main()
