"""Curation ablation: does a model trained on vidsift's output beat the same model trained on the raw pool?

    python bench/curation_ablation.py --quick --jobs 3 --threads 1  # 3 seeds x 2 arms, 1,500 steps
    python bench/curation_ablation.py  # 3 seeds x 2 arms, 5,000 steps (as the learning check)
    python bench/curation_ablation.py --toy  # plumbing only (the smoke test): seconds of training

1. Raw pool (model.synthetic.write_raw_pool): synthetic sources of one to four shots of a coloured shape
   moving one way, with hard cuts (to another colour, shape and direction), fades to black, black and frozen
   stretches, static shots, burned-in text, letterbox bars and near-duplicate copies, at recorded rates;
   ground truth per shot in a sidecar. Two pools from different generator seeds: ``tune`` (the curation
   recipe below was set on it) and ``check`` (the one the models train on); curation is scored on both.
2. Uncurated arm: what a naive pipeline gives: every source cut into fixed 2 s windows, each captioned with
   its source-level caption (its first shot's, as a title would be).
   Curated arm: ``vidsift curate`` with the weight-free filters and caption_from_sidecar (oracle captions
   from the per-shot ground truth), so the difference measures splitting and filtering, not captioning.
3. The same DiT recipe (recipes/train/learning.toml at stride 4), same steps and seeds, on both arms;
   every model samples the same prompts (3 colours x 4 directions x 2 shapes) with the same sample seeds.
4. Judges (model.synthetic): caption adherence (colour, direction, shape; the headline is their mean, fixed
   before any run), and the share of samples with a cut, black frames, frozen frames, a text-like overlay;
   diversity (mean pairwise difference of one prompt's samples). Per arm: mean over training seeds, the
   spread (max - min), a 95% t-interval over seeds, and every seed's value.

Prints a markdown table and writes OUT/results.json. The goals (docs/ablation.md): curated adherence higher
by more than the larger seed spread of the two arms; the share of samples with a cut or black frames at
most half the uncurated arm's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vidsift.model.synthetic import (  # noqa: E402
    COLORS,
    DIRECTIONS,
    SHAPES,
    PoolConfig,
    caption_of,
    defects_in_range,
    diversity,
    judge_sample,
    write_raw_pool,
    write_window_shards,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE_TRAIN = os.path.join(ROOT, "recipes", "train", "learning.toml")  # the learning check's DiT recipe


# The curation recipe: weight-free filters, oracle captions. Set on the tune pool (generator seed TUNE_SEED):
# min_scene_s below the shortest shot, a frozen share well under the shortest freeze, text area under the
# smallest burned-in word's ~9%; every other threshold is the default recipe's.
RECIPE = """\
[run]
group_size = 8

[[stage]]
name = "probe"

[[stage]]
name = "analyze"
detect_width = 64       # the sources are 64 px wide
sample_fps = 2.0
frames_per_clip = 4

[[stage]]
name = "split_scenes"
min_scene_s = 1.5
max_scene_s = 20.0

[[stage]]
name = "score_bars"     # letterbox: transcode crops the bars

[[stage]]
name = "score_bounds"
min_duration_s = 1.5
min_short_side = 32

[[stage]]
name = "score_brightness"
max_black_frames = 0.1

[[stage]]
name = "score_motion"
max_static = 0.8
max_frozen = 0.2

[[stage]]
name = "score_text"
max_text_area = 0.05

[[stage]]
name = "dedup"

[[stage]]
name = "transcode"
max_short_side = 64

[[stage]]
name = "caption_from_sidecar"   # oracle captions: the ground truth per shot
path = "{sidecar}"

[[stage]]
name = "write_shards"
"""

TUNE_SEED, CHECK_SEED = 5, 0
DEFECTS = ("cut", "black", "frozen", "static", "text", "duplicate", "wrong_caption")
SAMPLE_DEFECTS = ("cut", "black", "frozen", "text")
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}  # t(0.975, n-1)


def curate(pool_dir: str, out: str) -> dict:
    """``vidsift curate`` on the pool's sources (a rerun resumes); the manifest's counts."""
    recipe = os.path.join(pool_dir, "curate.toml")
    sidecar = os.path.join(pool_dir, "sidecar.json")
    with open(recipe, "w") as f:
        f.write(RECIPE.format(sidecar=sidecar))
    cmd = [
        sys.executable,
        "-m",
        "vidsift.pipeline.cli",
        "curate",
        recipe,
        "--input",
        os.path.join(pool_dir, "sources"),
        "--output",
        out,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(
            f"vidsift curate failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    with open(os.path.join(out, "manifest.json")) as f:
        return json.load(f).get("counts", {})


def training_defects(pool: dict, rows: list[dict]) -> dict:
    """Share of training clips that hold each ground-truth defect (what a model would learn from)."""
    counts = dict.fromkeys(DEFECTS, 0)
    # a duplicate: a clip of a near-duplicate copy (or of its original) while the other's same time is kept
    spans: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        spans.setdefault(os.path.basename(r["source_uri"]), []).append((r["start_s"], r["end_s"]))
    for r in rows:
        name = os.path.basename(r["source_uri"])
        truth = pool["sources"][name]
        found = defects_in_range(truth, r["start_s"], r["end_s"], r["caption"])
        twin = truth["duplicate_of"] or name.replace(".mp4", "_dup.mp4")
        found["duplicate"] = any(
            min(r["end_s"], b) - max(r["start_s"], a) > 0.5 for a, b in spans.get(twin, [])
        )
        for k in DEFECTS:
            counts[k] += found[k]
    n = max(1, len(rows))
    return {"clips": len(rows), **{k: round(v / n, 4) for k, v in counts.items()}}


def read_clips(run: str, folder: str = "clips") -> list[dict]:
    import pyarrow.parquet as pq

    path = os.path.join(run, folder)
    if not os.path.isdir(path) or not os.listdir(path):
        return []
    return pq.read_table(path, columns=["source_uri", "start_s", "end_s", "caption"]).to_pylist()


# the ground-truth defect each reject reason is meant to catch
REASON_DEFECT = {
    "near_duplicate": "duplicate",
    "black_frames": "black",
    "frozen_frames": "frozen",
    "static": "static",
    "slideshow": "static",
    "text_overlay": "text",
}


def funnel(pool: dict, run: str) -> dict:
    """Rejected candidate clips of a curation run by stage/reason, and how many of them truly hold the defect
    the reason names (ground truth; a near-duplicate counts when its source has a copy in the pool)."""
    import pyarrow.parquet as pq

    path = os.path.join(run, "rejected")
    if not os.path.isdir(path) or not os.listdir(path):
        return {}
    cols = ["reject_stage", "reject_reason", "source_uri", "start_s", "end_s"]
    copied = {t["duplicate_of"] for t in pool["sources"].values() if t["duplicate_of"]}
    out: dict[str, dict] = {}
    for r in pq.read_table(path, columns=cols).to_pylist():
        entry = out.setdefault(f"{r['reject_stage']}/{r['reject_reason']}", {"rejected": 0, "truly": 0})
        entry["rejected"] += 1
        name = os.path.basename(r["source_uri"])
        defect = REASON_DEFECT.get(r["reject_reason"])
        if defect == "duplicate":
            entry["truly"] += bool(pool["sources"][name]["duplicate_of"]) or name in copied
        elif defect and r["start_s"] is not None:
            entry["truly"] += defects_in_range(pool["sources"][name], r["start_s"], r["end_s"])[defect]
        else:
            entry.pop("truly", None)
    return dict(sorted(out.items()))


def evaluate(
    ckpt: str, prompts: list[tuple[str, str, str]], frames: int, size: int, sample_seeds, steps, cfg
):
    """Judge every prompt's samples over the sample seeds: accuracies, defect shares, diversity."""
    from vidsift.model.sample import generate

    texts = [caption_of(c, d, s) for c, d, s in prompts]
    by_prompt: list[list] = [[] for _ in prompts]
    judged = []
    for seed in sample_seeds:
        videos, _ = generate(ckpt, texts, frames, size, size, steps, cfg, seed)
        for k, (video, want) in enumerate(zip(videos, prompts, strict=True)):
            v = video.float().numpy()
            by_prompt[k].append(v)
            judged.append((judge_sample(v), want))
    n = len(judged)
    colour = sum(j["colour"] == c for j, (c, _, _) in judged) / n
    direction = sum(j["direction"] == d for j, (_, d, _) in judged) / n
    shape = sum(j["shape"] == s for j, (_, _, s) in judged) / n
    out = {
        "samples": n,
        "adherence": (colour + direction + shape) / 3,
        "colour": colour,
        "direction": direction,
        "shape": shape,
        "all_three": sum(
            j["colour"] == c and j["direction"] == d and j["shape"] == s for j, (c, d, s) in judged
        )
        / n,
        **{k: sum(j[k] for j, _ in judged) / n for k in SAMPLE_DEFECTS},
        "cut_or_black": sum(j["cut"] or j["black"] for j, _ in judged) / n,
        "diversity": float(np.mean([diversity(v) for v in by_prompt])),
    }
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def train_and_judge(job: dict) -> dict:
    """One training run (the DiT recipe on one arm's shards, one seed), then its judged samples. A finished
    run (OUT/judged.json) is read back instead, so an interrupted ablation resumes."""
    import torch

    from vidsift.model.train import load_recipe, train

    done = os.path.join(job["out"], "judged.json")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    torch.set_num_threads(job["threads"])
    cfg = load_recipe(RECIPE_TRAIN, job["overrides"])
    cfg.data, cfg.out = job["data"], job["out"]
    t0 = time.time()
    m = train(cfg)
    t1 = time.time()
    judged = evaluate(
        cfg.out, job["prompts"], cfg.frames, cfg.height, job["sample_seeds"], job["sample_steps"], job["cfg"]
    )
    run = {
        "seed": job["seed"],
        "val_loss": m.get("val_loss"),
        "train_s": round(t1 - t0, 1),
        "sample_s": round(time.time() - t1, 1),
        **judged,
    }
    with open(done, "w") as f:
        json.dump(run, f)
    print(f"{job['arm']} seed {job['seed']}: {json.dumps(run)}", flush=True)
    return run


def summarise(values: list[float]) -> dict:
    """Mean, spread (max - min), 95% t-interval half-width over seeds, and the values."""
    m = float(np.mean(values))
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    half = T95.get(len(values) - 1, 1.96) * sd / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {
        "mean": round(m, 4),
        "spread": round(max(values) - min(values), 4),
        "ci95": round(half, 4),
        "seeds": [round(v, 4) for v in values],
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(ROOT, "out", "curation_ablation"))
    p.add_argument("--quick", action="store_true", help="1,500 steps (16 min quiet with --jobs 2)")
    p.add_argument("--toy", action="store_true", help="plumbing only: tiny pool, a few steps, few samples")
    p.add_argument("--steps", type=int, default=0, help="training steps (default: 5000, --quick 1500)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per arm")
    p.add_argument("--sources", type=int, default=0, help="check-pool sources (default 48; --toy 4)")
    p.add_argument("--tune-sources", type=int, default=-1, help="tune-pool sources (default 12; 0 skips)")
    p.add_argument("--sample-seeds", type=int, default=2, help="samples per prompt")
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (1 on a busy box)")
    p.add_argument("--jobs", type=int, default=1, help="training runs side by side (each --threads threads)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="DiT recipe override")
    args = p.parse_args(argv)

    steps = args.steps or (4 if args.toy else 1500 if args.quick else 5000)
    sources = args.sources or (4 if args.toy else 48)
    tune_sources = args.tune_sources if args.tune_sources >= 0 else (0 if args.toy else 12)
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()
    results: dict = {"argv": sys.argv[1:] if argv is None else argv, "steps": steps, "threads": args.threads}

    # 1-2. pools, the two arms' data, and what each arm's training clips hold
    pools = {"check": (CHECK_SEED, sources)} | ({"tune": (TUNE_SEED, tune_sources)} if tune_sources else {})
    results["pools"] = {}
    for name, (seed, n) in pools.items():
        folder = os.path.join(args.out, f"pool-{name}")
        t0 = time.time()
        if os.path.exists(os.path.join(folder, "pool.json")):
            with open(os.path.join(folder, "pool.json")) as f:
                pool = json.load(f)
        else:
            pool = write_raw_pool(folder, PoolConfig(sources=n, seed=seed))
        windows, curated = os.path.join(folder, "uncurated"), os.path.join(folder, "curated")
        info = {}
        if not os.path.isdir(os.path.join(windows, "clips")):
            info = write_window_shards(folder, windows, window_s=2.0)
        t1 = time.time()
        counts = curate(folder, curated)
        t2 = time.time()
        results["pools"][name] = {
            "generator_seed": seed,
            "rates": {k: v for k, v in pool["config"].items() if k.endswith(("_rate", "per_source"))},
            "drawn": pool["counts"],
            "windows": info,
            "curate_counts": counts,
            "curate_rejected": funnel(pool, curated),
            "train_clips_hold": {
                "uncurated": training_defects(pool, read_clips(windows)),
                "curated": training_defects(pool, read_clips(curated)),
            },
            "seconds": {"pool_and_windows": round(t1 - t0, 1), "curate": round(t2 - t1, 1)},
        }
        print(f"pool {name}: {json.dumps(results['pools'][name]['train_clips_hold'])}", flush=True)

    # 3-4. train both arms with the same recipe and seeds; sample and judge the same prompts
    check = os.path.join(args.out, "pool-check")
    arms = {"uncurated": os.path.join(check, "uncurated"), "curated": os.path.join(check, "curated")}
    prompts = [(c, d, s) for s in SHAPES for c in COLORS for d in DIRECTIONS]
    if args.toy:
        prompts = prompts[:3]
    sample_seeds = list(range(args.sample_seeds))
    overrides = [f"steps={steps}", "frame_stride=4", "eval_every=0", "val_clips=4", *args.set]
    if args.toy:
        overrides += ["log_every=1", "warmup=1", "val_clips=1"]
    jobs = [
        {
            "arm": arm,
            "seed": seed,
            "data": data,
            "out": os.path.join(args.out, "runs", f"{arm}-seed{seed}"),
            "overrides": [*overrides, f"seed={seed}"],
            "prompts": prompts,
            "sample_seeds": sample_seeds,
            "sample_steps": args.sample_steps,
            "cfg": args.cfg,
            "threads": args.threads,
        }
        for seed in range(args.seeds)
        for arm, data in arms.items()
    ]
    runs: dict = {arm: [] for arm in arms}
    if args.jobs > 1:  # training runs side by side, one process each (spawned: torch is not fork-safe)
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            done = list(pool.map(train_and_judge, jobs))
    else:
        done = [train_and_judge(job) for job in jobs]
    for job, run in zip(jobs, done, strict=True):
        runs[job["arm"]].append(run)
    results["runs"] = runs
    metrics = ["adherence", "colour", "direction", "shape", "all_three", *SAMPLE_DEFECTS, "cut_or_black"]
    metrics.append("diversity")
    summary = {arm: {k: summarise([r[k] for r in rs]) for k in metrics} for arm, rs in runs.items()}
    results["summary"] = summary
    cur, raw = summary["curated"], summary["uncurated"]
    gap = cur["adherence"]["mean"] - raw["adherence"]["mean"]
    spread = max(cur["adherence"]["spread"], raw["adherence"]["spread"])
    results["goals"] = {
        "adherence_gap": round(gap, 4),
        "larger_seed_spread": spread,
        "adherence_gap_beats_spread": bool(gap > spread),
        "cut_or_black_ratio": round(cur["cut_or_black"]["mean"] / raw["cut_or_black"]["mean"], 4)
        if raw["cut_or_black"]["mean"]
        else None,
        "cut_or_black_halved": bool(cur["cut_or_black"]["mean"] <= 0.5 * raw["cut_or_black"]["mean"]),
    }
    results["seconds"] = round(time.time() - t_start, 1)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(table(results))
    return results


def table(results: dict) -> str:
    s = results["summary"]
    lines = [
        f"steps {results['steps']}, {len(results['runs']['curated'])} seeds per arm, "
        f"{results['runs']['curated'][0]['samples']} samples per model; mean +- 95% CI (spread) over seeds",
        "",
        "| metric | uncurated | curated |",
        "|---|---|---|",
    ]
    for k in s["curated"]:
        cells = [f"{s[a][k]['mean']:.3f} +- {s[a][k]['ci95']:.3f} ({s[a][k]['spread']:.3f})" for a in s]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    g = results["goals"]
    lines += [
        "",
        f"adherence gap {g['adherence_gap']:+.3f} vs larger seed spread {g['larger_seed_spread']:.3f}: "
        f"{'beats' if g['adherence_gap_beats_spread'] else 'does not beat'} it; cut-or-black ratio "
        f"curated/uncurated {g['cut_or_black_ratio']}: "
        f"{'halved' if g['cut_or_black_halved'] else 'not halved'}",
        f"total {results['seconds']:.0f} s",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
