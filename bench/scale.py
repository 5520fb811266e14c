"""Run-wide steps at dataset scale: dedup, select, stats and the manifest over 100k-3M clip rows.

    .venv/bin/python bench/scale.py --sizes 100000 1000000 [--work out/bench-scale] [--baseline-clips 1000]

1. **Planted copies from real clips.** Sample clips of ``../shared/videos`` and their re-encoded, cropped,
   time-reversed and sped-up copies (ffmpeg) go through the real analysis and hashing code
   (``process_video`` with ``recipes/curate/default.toml``); their rows are cached in ``WORK/real.parquet``.
   The truth is the frame-and-level rule (``min_step_corr = -1``: the rule before the step test, fixed so
   the truth does not move with the rule measured) applied to *every* pair of these rows (no index),
   within the source they came from: 62 pairs of 35 rows.
2. **Background rows.** Each size gets a run folder of that many accepted clip rows (plus 10% rejected
   rows and one video row per 5 clips, in groups of ``--group-size``), schema-valid, with tiny media
   (64 bytes per clip), written with the shard contract (``write_shards`` defaults, or ``--shard-rows`` /
   ``--shard-mib``, recorded in the folder's recipe so select and dedup write alike). Their hashes
   follow the real hashes' per-bit frequencies (each clip: three crop-scale base hashes drifting a few
   bits from sample to sample, as frames of one shot do), their curves are smooth random walks; the real
   rows are mixed in at random groups. ``--seed`` draws the background (tune thresholds on one seed,
   report another: the run folder's name carries the seed).
   ``--distinct`` instead measures how often unrelated *real* clips (``../shared/videos`` and the scene
   evaluation media, hashed by the real code) pass each part of the rule, beside this background: how
   faithful it is (docs/benchmarks.md, issue 16). ``--heldout`` runs the rule on copies of other sources;
   ``--unseen`` on copies made by eight transforms no threshold was chosen on (``UNSEEN_COPIES``: other
   crops and frame rates, letterbox bars, colour grading, a logo, noise, speed changes), with and without
   the near-limit motion test.
3. **Steps, each in a fresh process** (peak RSS of the process and of every process it started, i.e. Ray
   workers, sampled every 0.2 s): ``dedup`` (``vidsift dedup``'s code), ``select`` (``--where``) beside a
   DuckDB ``COPY (SELECT ... WHERE ...) TO`` of the same rows and beside ``shard_copy`` (every group file
   read and written again unchanged with the shard contract's writer settings: the part of select's cost
   that byte-identical shards cannot lose; select writes fewer, merged groups, so it can pass it) and
   ``select_each`` (select keeping every group, ``--merge-mib 0``), ``stats`` (``compute_stats``) and the
   manifest recount.
   Recall and precision are on the planted pairs: a pair counts as found when the two real clips end in
   one duplicate group; any duplicate involving a background row is a false positive.
4. The growth exponent between consecutive sizes: ``log(t2/t1) / log(n2/n1)``.

``--reuse`` keeps a hard-linked copy of each run folder it writes (``WORK/pristine/``, no extra disk) with a
fingerprint of everything that shapes the folder (this script, the real rows, the schema and shard writer
code, the size, seed and writer settings); a later ``--reuse`` call with the same fingerprint starts from
that copy instead of writing the folder again (4-5 min at 3M). Steps only ever replace files (write to a
temporary name, then rename), so the copy keeps the folder as written; its files' sizes and times are
checked before use, and a folder that differs is written again.

``--no-dictionary`` (an experiment, not the shard contract) writes the run folder and every step's tables
without Parquet dictionary pages, for select's cost against DuckDB's (docs/benchmarks.md).

``--baseline-clips N`` also times the banded search this replaced (``git show 7a38e5a:pipeline/stages/
dedup.py``) on N background clips, for the ratio. Timings on a shared machine are rough.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
VIDEOS = REPO.parent / "shared" / "videos"
SOURCES = [  # distinct content (no two cuts of one film): a cross-source duplicate would be a real one
    "quality/Big_Buck_Bunny_180_10s.webm",
    "quality/flipping_a_pancake.mkv",
    "quality/video2.mp4",
    "cuts/test1.mp4",
    "quality/traffic_camera.mp4",
    "cuts/video1.mp4",
    "quality/in.mp4",
    "quality/video_for_blend_modes.mp4",
]
COPIES = {
    "reencoded": [],
    "cropped": ["crop=iw*0.8:ih*0.8"],
    "reversed": ["reverse"],
    "sped_up": ["setpts=PTS/1.25"],
}
REAL_COLUMNS = ["clip_id", "source_uri", "dedup_hashes", "dedup_curve", "width", "height", "duration_s"]
WHERE = "motion_score > 0.5 and aesthetic_score >= 4.0"
SQL_WHERE = "motion_score > 0.5 AND aesthetic_score >= 4.0"


# ------------------------------------------------------------------------------------ real planted rows


HELDOUT = [  # copies made the same way from other sources: recall on data no threshold was chosen on
    "scene_eval_media/raw/car-detection.mp4",
    "scene_eval_media/raw/mixed-content.webm",
    "scene_eval_media/raw/chrome.webm",
    "scene_eval_media/raw/asl_book.mkv",
    "shared/videos/quality/video3.mp4",
    "shared/videos/quality/video4.mp4",
    "shared/videos/quality/tests_data_test.mp4",
]


def real_rows(
    work: Path,
    sources: list[str] = SOURCES,
    root: Path = VIDEOS,
    name: str = "real",
    copies_made: dict = COPIES,
) -> pa.Table:
    """Accepted clip rows of the sources (paths under ``root``) and their copies (``copies_made``: kind ->
    ffmpeg filters), through the real hashing code (cached in ``WORK/NAME.parquet``)."""
    cache = work / f"{name}.parquet"
    if cache.exists():
        return pq.read_table(cache)
    from vidsift.pipeline.process import process_video
    from vidsift.pipeline.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes/curate/default.toml")
    copies = work / "copies"
    copies.mkdir(parents=True, exist_ok=True)
    rows = []
    for src in sources:
        versions = {"original": root / src}
        for kind, vf in copies_made.items():
            dst = copies / f"{Path(src).stem}_{kind}.mp4"
            if not dst.exists():
                cmd = ["ffmpeg", "-v", "error", "-y", "-i", str(root / src)]
                cmd += (["-vf", ",".join(vf)] if vf else []) + [
                    "-an",
                    "-c:v",
                    "libx264",
                    "-crf",
                    "30",
                    str(dst),
                ]
                subprocess.run(cmd, check=True)
            versions[kind] = dst
        for kind, path in versions.items():
            for c in process_video(str(path), "g", recipe)[1]:
                if not c.get("reject_reason"):
                    rows.append({**{k: c.get(k) for k in REAL_COLUMNS}, "family": src, "kind": kind})
        print(f"  real clips: {src} done ({len(rows)} rows)", flush=True)
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, cache)
    return table


MEDIA_DIRS = [VIDEOS, REPO.parent / "scene_eval_media" / "raw", REPO.parent / "scene_eval_media" / "set"]
VIDEO_EXT = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".ts", ".ivf", ".gif"}


def distinct_rows(work: Path) -> pa.Table:
    """Every accepted clip of every readable video in ``MEDIA_DIRS`` (``../shared/videos`` and the scene
    evaluation media), through the real hashing code with the default recipe (cached in
    ``WORK/distinct.parquet``): what real hashes and curves of *different* clips look like."""
    cache = work / "distinct.parquet"
    if cache.exists():
        return pq.read_table(cache)
    from vidsift.pipeline.process import process_video
    from vidsift.pipeline.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes/curate/default.toml", ["split_scenes.detector=fast"])
    rows = []
    files = sorted(p for d in MEDIA_DIRS if d.exists() for p in d.rglob("*") if p.suffix.lower() in VIDEO_EXT)
    for path in files:
        for c in process_video(str(path), "g", recipe)[1]:
            if not c.get("reject_reason") and c.get("dedup_hashes"):
                rows.append(
                    {**{k: c.get(k) for k in REAL_COLUMNS}, "family": str(path.relative_to(REPO.parent))}
                )
    table = pa.Table.from_pylist(rows)
    work.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, cache)
    return table


# one content under several file names: the scene evaluation set keeps its sources in raw/, set/ and
# set/sources/; these sample files are cuts of one film
SAME_CONTENT = {"big_buck_bunny_0_30.webm": "bunny", "Big_Buck_Bunny_180_10s.webm": "bunny",
                "rotate-buck-bunny.mp4": "bunny", "fucked-keyframes.mp4": "bunny"}  # fmt: skip


def content_key(family: str) -> str | None:
    """What a distinct-set file shows; None for the composed scene-evaluation clips (``set/cNN_*``), which
    are cut from the sources and so share content with them (left out of both distinct and copy pairs)."""
    name = Path(family).name
    if "scene_eval_media/set/" in family and name[:1] == "c" and name[1:3].isdigit():
        return None
    return SAME_CONTENT.get(name, name)


def _brightness(curves: np.ndarray, i: np.ndarray, j: np.ndarray, step_min: float) -> tuple[np.ndarray, ...]:
    """Per pair: both brightness curves vary, levels correlate >= 0.9 (either direction), and levels and
    steps both (in one direction, steps >= ``step_min``)."""
    from vidsift.pipeline.stages.dedup import FLAT_LUMA_STD, _step_corr_many

    def corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        zx = (x - x.mean(1, keepdims=True)) / np.maximum(x.std(1), 1e-12)[:, None]
        zy = (y - y.mean(1, keepdims=True)) / np.maximum(y.std(1), 1e-12)[:, None]
        return (zx * zy).mean(1)

    x, y = curves[i, :32].astype(np.float64), curves[j, :32].astype(np.float64)
    vary = (x.std(1) >= FLAT_LUMA_STD) & (y.std(1) >= FLAT_LUMA_STD)
    level = np.zeros(len(i), bool)
    both = np.zeros(len(i), bool)
    for z in (y, y[:, ::-1]):
        ok = corr(x, z) >= 0.9
        level |= ok
        both |= ok & (_step_corr_many(x, z) >= step_min)
    return vary, level & vary, both & vary


def distinct_report(work: Path, real: pa.Table, seed: int) -> dict:
    """How often unrelated *real* clips pass each part of the rule, beside the synthetic background.

    Real: ``distinct_rows`` (every pair of files of different content; composed clips left out) and, as
    held-out copies, pairs of files of one content. Background: ``background_hashes`` and random-walk
    curves exactly as ``make_run`` draws them (``seed``), pairs at random.
    """
    from vidsift.pipeline.dedup_index import table_from_arrow, verify_pairs
    from vidsift.pipeline.stages.dedup import DedupConfig, _matches

    d = distinct_rows(work)
    t = table_from_arrow(d)
    duration = d.column("duration_s").to_numpy()
    keys = [content_key(f) for f in d.column("family").to_pylist()]
    files = d.column("family").to_pylist()
    n = len(keys)
    i, j = np.triu_indices(n, 1)
    known = np.array([keys[a] is not None and keys[b] is not None for a, b in zip(i, j, strict=True)], bool)
    same = np.array([keys[a] == keys[b] for a, b in zip(i, j, strict=True)], bool)
    other_file = np.array([files[a] != files[b] for a, b in zip(i, j, strict=True)], bool)
    distinct = known & ~same
    copies = known & same & other_file & (np.abs(duration[i] - duration[j]) < 0.1)  # the same scene
    config_old, config_new = DedupConfig(min_step_corr=-1), DedupConfig()
    signed = t.hashes.view(np.int64)

    def frames(a: np.ndarray, b: np.ndarray, h: np.ndarray, off: np.ndarray) -> np.ndarray:
        out = np.zeros(len(a), bool)
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            hx, hy = h[off[x] : off[x + 1]].reshape(-1, 3), h[off[y] : off[y + 1]].reshape(-1, 3)
            out[k] = len(hx) > 0 and len(hy) > 0 and _matches(hx, hy, config_old)
        return out

    def rule(a: np.ndarray, b: np.ndarray, config) -> np.ndarray:
        pairs = (a.astype(np.uint64) << np.uint64(32)) | b.astype(np.uint64)
        return verify_pairs(pairs, t.offsets, t.hashes, t.curves, t.has_curve, config)

    di, dj = i[distinct], j[distinct]
    clip = np.repeat(np.arange(n), np.diff(t.offsets))
    rng = np.random.default_rng(seed)
    ha, hb = rng.integers(0, len(t.hashes), (2, 2_000_000))
    ka, kb = np.array(keys, object)[clip[ha]], np.array(keys, object)[clip[hb]]
    keep = (ka != kb) & (ka != None) & (kb != None)  # noqa: E711 - elementwise on an object array
    real_hash = np.bitwise_count(t.hashes[ha[keep]] ^ t.hashes[hb[keep]])
    # the background exactly as make_run draws it
    m = 20_000
    offsets, hashes = background_hashes(m, rng, bit_frequencies(real))
    curves = np.cumsum(rng.normal(0, 3, (m, 64)), axis=1).astype(np.float32) + 100
    ba, bb = rng.integers(0, len(hashes), (2, 2_000_000))
    bg_clip = np.repeat(np.arange(m), np.diff(offsets))
    ok = bg_clip[ba] != bg_clip[bb]
    bg_hash = np.bitwise_count(hashes[ba[ok]] ^ hashes[bb[ok]])
    pa_, pb_ = rng.integers(0, m, (2, 200_000))
    pa_, pb_ = pa_[pa_ != pb_], pb_[pa_ != pb_]
    step = config_new.min_step_corr
    r_vary, r_level, r_both = _brightness(t.curves, di, dj, step)
    b_vary, b_level, b_both = _brightness(curves, pa_, pb_, step)
    bg_frames = frames(pa_[:20_000], pb_[:20_000], hashes.view(np.int64), offsets)
    real_frames = frames(di, dj, signed, t.offsets)
    old, new = rule(di, dj, config_old), rule(di, dj, config_new)
    ci, cj = i[copies], j[copies]

    def share(hit: np.ndarray, of: np.ndarray | None = None) -> float:
        return float(hit.sum() / max(1, hit.size if of is None else of.sum()))

    def names(a: np.ndarray, b: np.ndarray) -> list:
        return sorted({tuple(sorted((files[x], files[y]))) for x, y in zip(a, b, strict=True)})

    report = {
        "real_rows": n,
        "real_files": len(set(files)),
        "distinct_pairs": int(distinct.sum()),
        "hash_pairs_within_10_bits": {"real": share(real_hash <= 10), "background": share(bg_hash <= 10)},
        "hash_distance_mean_sd": {
            "real": [float(real_hash.mean()), float(real_hash.std())],
            "background": [float(bg_hash.mean()), float(bg_hash.std())],
        },
        "clip_pairs_frames_match": {
            "real": share(real_frames),
            "background": share(bg_frames),
            "background_pairs": len(bg_frames),
        },
        "brightness_level_ge_0.9": {"real": share(r_level, r_vary), "background": share(b_level, b_vary)},
        f"brightness_level_and_steps_ge_{step}": {
            "real": share(r_both, r_vary),
            "background": share(b_both, b_vary),
        },
        "rule_passes_distinct": {"old": int(old.sum()), "new": int(new.sum())},
        "old_rule_false_pairs": names(di[old], dj[old]),
        "new_rule_false_pairs": names(di[new], dj[new]),
        "copy_pairs": int(copies.sum()),
        "copy_pairs_found": {
            "old": int(rule(ci, cj, config_old).sum()),
            "new": int(rule(ci, cj, config_new).sum()),
        },
    }
    print(json.dumps(report, indent=1))
    return report


UNSEEN_COPIES = {  # transforms no threshold of the rule was chosen on (session 10)
    "crop90_fps24": ["crop=iw*0.9:ih*0.9", "fps=24"],
    "letterbox": ["scale=iw:trunc(ih*0.75/2)*2", "pad=iw:trunc(ih/0.75/2)*2:0:(oh-ih)/2"],
    "graded": ["eq=contrast=1.3:brightness=0.06:saturation=1.4"],
    "half_fps15": ["scale=trunc(iw/4)*2:-2", "fps=15"],
    "fast_fps20": ["setpts=PTS/1.5", "fps=20"],
    "slow": ["setpts=PTS*1.3"],
    "logo": ["drawbox=x=10:y=10:w=iw/5:h=ih/8:color=white@0.8:t=fill"],
    "noise": ["noise=alls=12:allf=t"],
}


def unseen_report(work: Path) -> dict:
    """Copies of the planted and held-out sources made by ``UNSEEN_COPIES``: per kind, how many copy clips
    the rule matches to an original clip of their source, with the near-limit motion test (the default) and
    without it (``edge_diff_corr = -1``). Scene splits of a copy need not line up with the original's, so a
    copy clip may have no original clip of its span: the counts compare the two rules, they are not recall."""
    from vidsift.pipeline.dedup_index import table_from_arrow, verify_pairs
    from vidsift.pipeline.stages.dedup import DedupConfig

    report: dict = {}
    for name, sources, root in (("unseen_tune", SOURCES, VIDEOS), ("unseen_heldout", HELDOUT, REPO.parent)):
        t = real_rows(work, sources, root, name, UNSEEN_COPIES)
        h = table_from_arrow(t)
        family, kind = t.column("family").to_pylist(), t.column("kind").to_pylist()
        originals = [i for i, k in enumerate(kind) if k == "original"]
        pairs = [
            (i, j) for j, k in enumerate(kind) if k != "original" for i in originals if family[i] == family[j]
        ]
        packed = np.array([(min(i, j) << 32) | max(i, j) for i, j in pairs], np.uint64)
        counts: dict = {}
        for label, config in (
            ("without_motion_test", DedupConfig(edge_diff_corr=-1)),
            ("default", DedupConfig()),
        ):
            ok = verify_pairs(packed, h.offsets, h.hashes, h.curves, h.has_curve, config)
            matched: dict[int, bool] = {}
            for (_, j), hit in zip(pairs, ok, strict=True):
                matched[j] = matched.get(j, False) or bool(hit)
            for j, hit in matched.items():
                counts.setdefault(kind[j], {}).setdefault(label, [0, 0])
                counts[kind[j]][label][0] += hit
                counts[kind[j]][label][1] += 1
        report[name] = counts
    print(json.dumps(report, indent=1))
    return report


def heldout_report(work: Path) -> dict:
    """The rule on copies of ``HELDOUT`` sources, every pair compared (no index, no background): planted
    pairs (the truth as ``truth_pairs`` defines it) found directly and through their group, and pairs of
    different sources taken as copies, by the rule before the step test and by the default rule."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from vidsift.pipeline.dedup_index import table_from_arrow, verify_pairs
    from vidsift.pipeline.stages.dedup import DedupConfig

    real = real_rows(work, HELDOUT, REPO.parent, "heldout")
    truth, _ = truth_pairs(real)
    t = table_from_arrow(real)
    family = real.column("family").to_pylist()
    n = len(t)
    i, j = np.triu_indices(n, 1)
    pairs = (i.astype(np.uint64) << np.uint64(32)) | j.astype(np.uint64)
    report: dict = {"rows": n, "planted_pairs": len(truth)}
    for label, config in (("old", DedupConfig(min_step_corr=-1)), ("new", DedupConfig())):
        ok = verify_pairs(pairs, t.offsets, t.hashes, t.curves, t.has_curve, config)
        graph = coo_matrix((np.ones(int(ok.sum())), (i[ok], j[ok])), shape=(n, n))
        _, comp = connected_components(graph, directed=False)
        direct = {(a, b) for a, b in zip(i[ok].tolist(), j[ok].tolist(), strict=True)}
        cross = [(family[a], family[b]) for a, b in direct if family[a] != family[b]]
        report[label] = {
            "direct": len(truth & direct),
            "grouped": sum(1 for a, b in truth if comp[a] == comp[b]),
            "cross_source_pairs": len(cross),
        }
    print(json.dumps(report, indent=1))
    return report


def truth_pairs(real: pa.Table) -> tuple[set[tuple[int, int]], int]:
    """The planted pairs: duplicate pairs by the frame-and-level rule (``min_step_corr = -1``, the rule before
    the step test, so the truth does not move with the rule measured) over every pair of real rows (no
    index), within one source family; and how many cross-family pairs it calls duplicates (reported, not
    planted)."""
    from vidsift.pipeline.dedup_index import table_from_arrow, verify_pairs
    from vidsift.pipeline.stages.dedup import DedupConfig

    t = table_from_arrow(real)
    n = len(t)
    i, j = np.triu_indices(n, 1)
    pairs = (i.astype(np.uint64) << np.uint64(32)) | j.astype(np.uint64)
    ok = verify_pairs(pairs, t.offsets, t.hashes, t.curves, t.has_curve, DedupConfig(min_step_corr=-1))
    family = real.column("family").to_pylist()
    same = {
        (a, b)
        for a, b, k in zip(i.tolist(), j.tolist(), ok.tolist(), strict=True)
        if k and family[a] == family[b]
    }
    cross = int(
        sum(
            1
            for a, b, k in zip(i.tolist(), j.tolist(), ok.tolist(), strict=True)
            if k and family[a] != family[b]
        )
    )
    return same, cross


# ------------------------------------------------------------------------------------- background rows


def bit_frequencies(real: pa.Table) -> np.ndarray:
    """P(bit set) for each of the 64 bits, over every real hash."""
    values = pa.compute.list_flatten(real.column("dedup_hashes")).to_numpy().astype(np.int64).view(np.uint64)
    bits = (values[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    return bits.mean(axis=0).astype(np.float64)


def background_hashes(n: int, rng: np.random.Generator, p_bit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per clip 1-20 samples (1 per second) x 3 scales: offsets and flat uint64 hashes."""
    samples = rng.integers(1, 21, n)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(samples * 3, out=offsets[1:])
    weights = np.uint64(1) << np.arange(64, dtype=np.uint64)
    total = int(offsets[-1])
    out = np.empty(total, np.uint64)
    chunk = 200_000
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        bases = (rng.random((e - s, 3, 64)) < p_bit).astype(np.uint64) @ weights  # clip x scale
        lo, hi = offsets[s], offsets[e]
        m = int(hi - lo)
        clip = np.repeat(np.arange(e - s), samples[s:e] * 3)
        scale = np.tile(np.arange(3), int(samples[s:e].sum()))
        h = bases[clip, scale]
        flips = rng.integers(0, 4, m)  # a few bits drift from sample to sample within a shot
        for k in range(3):
            bit = rng.integers(0, 64, m).astype(np.uint64)
            h ^= np.where(flips > k, np.uint64(1) << bit, np.uint64(0))
        out[lo:hi] = h
    return offsets, out


def _list(offsets: np.ndarray, values: np.ndarray, type_: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type_.value_type))


NO_DICTIONARY = "VIDSIFT_BENCH_NO_DICTIONARY"  # set: an experiment, Parquet written without dictionary pages


def _writer_options() -> dict:
    """Extra Parquet writer options of the ``--no-dictionary`` experiment (the run folder and every step's
    writes), else none: the shard contract's writer."""
    return {"use_dictionary": False} if os.environ.get(NO_DICTIONARY) else {}


def _no_dictionary() -> None:
    """The ``--no-dictionary`` experiment: the shard writer in this process writes without dictionaries."""
    from vidsift.pipeline import storage

    plain = storage.write_shard_table
    storage.write_shard_table = lambda t, loc, **o: plain(t, loc, **o, **_writer_options())


def make_run(
    out: Path,
    n: int,
    real: pa.Table,
    seed: int,
    group_size: int,
    media_bytes: int = 64,
    shards: dict | None = None,
) -> dict:
    """Write a finished run folder of ``n`` accepted background clips plus the real rows; returns where
    the real rows went (``real_index -> clip_id``). ``shards``: ``write_shards`` settings (else the
    defaults), used to write the folder and recorded in its recipe, so select and dedup write alike."""
    from vidsift.pipeline.schema import CLIP_SCHEMA, REJECTED_SCHEMA, VIDEO_SCHEMA
    from vidsift.pipeline.select import conform
    from vidsift.pipeline.stages.write_shards import WriteShardsConfig

    contract = WriteShardsConfig(**(shards or {}))

    rng = np.random.default_rng(seed)
    p_bit = bit_frequencies(real)
    shutil.rmtree(out, ignore_errors=True)
    for d in ("clips", "rejected", "videos", "_done"):
        (out / d).mkdir(parents=True)
    n_rej = n // 10
    total = n + n_rej
    offsets, hashes = background_hashes(total, rng, p_bit)
    curve = np.cumsum(rng.normal(0, 3, (total, 64)), axis=1).astype(np.float32) + 100
    clip_ids = np.array([f"{seed:04x}{i:028x}" for i in range(total)])
    video_of = np.arange(total) // 5
    sources = np.array([f"s3://raw/videos/{v:09d}.mp4" for v in range(int(video_of[-1]) + 1)])
    dims = np.array([(1280, 720), (1920, 1080), (720, 1280), (640, 480)])[rng.integers(0, 4, total)]
    duration = np.diff(offsets) / 3.0
    accepted = np.zeros(total, bool)
    accepted[rng.permutation(total)[:n]] = True
    n_groups = max(1, math.ceil(total / group_size))
    group_of_video = rng.integers(0, n_groups, len(sources))
    cols = {
        "clip_id": pa.array(clip_ids),
        "video_id": pa.array([f"{v:016x}" for v in video_of]),
        "source_uri": pa.array(sources[video_of]),
        "group": pa.array([f"g{g:06d}" for g in group_of_video[video_of]]),
        "scene_index": pa.array(np.arange(total) % 5, pa.int32()),
        "start_frame": pa.array((np.arange(total) % 5) * 600, pa.int64()),
        "end_frame": pa.array((np.arange(total) % 5) * 600 + (duration * 30).astype(np.int64), pa.int64()),
        "start_s": pa.array((np.arange(total) % 5) * 20.0),
        "end_s": pa.array((np.arange(total) % 5) * 20.0 + duration),
        "width": pa.array(dims[:, 0], pa.int32()),
        "height": pa.array(dims[:, 1], pa.int32()),
        "fps": pa.array(np.full(total, 30.0)),
        "num_frames": pa.array((duration * 30).astype(np.int64)),
        "duration_s": pa.array(duration),
        "motion_score": pa.array(rng.gamma(2.0, 0.5, total).astype(np.float32)),
        "aesthetic_score": pa.array(rng.normal(4.5, 0.8, total).astype(np.float32)),
        "sharpness_score": pa.array(rng.random(total).astype(np.float32)),
        "caption": pa.array(
            np.where(rng.random(total) < 0.5, "a dog runs on a beach", "a city street at night")
        ),
        "clip_mp4": pa.array(
            [rng.bytes(media_bytes) for _ in range(1000)] * (total // 1000 + 1), pa.binary()
        ).slice(0, total),
        "dedup_hashes": pa.ListArray.from_arrays(pa.array(offsets), pa.array(hashes.view(np.int64))).cast(
            pa.list_(pa.int64())
        ),
        "dedup_curve": pa.FixedSizeListArray.from_arrays(pa.array(curve.ravel()), 64).cast(
            pa.list_(pa.float32())
        ),
        "reject_stage": pa.array(np.where(accepted, None, "score_motion")),
        "reject_reason": pa.array(np.where(accepted, None, "low_motion")),
        "reject_detail": pa.array(np.where(accepted, None, "motion_score 0.01 < 0.05")),
    }
    rows = pa.table(cols)
    # the real rows, each in a random group, as accepted clips of their own sources
    r = real.num_rows
    real_groups = rng.integers(0, n_groups, r)
    real_ids = [f"real{i:028x}" for i in range(r)]
    real_src = [
        f"s3://raw/real/{i:04d}/{Path(s).name}" for i, s in enumerate(real.column("source_uri").to_pylist())
    ]
    extra = pa.table(
        {
            "clip_id": pa.array(real_ids),
            "video_id": pa.array([f"r{i:015x}" for i in range(r)]),
            "source_uri": pa.array(real_src),
            "group": pa.array([f"g{g:06d}" for g in real_groups]),
            "start_frame": pa.array(np.zeros(r, np.int64)),
            "width": real.column("width"),
            "height": real.column("height"),
            "duration_s": real.column("duration_s"),
            "motion_score": pa.array(np.ones(r, np.float32)),
            "aesthetic_score": pa.array(np.full(r, 5.0, np.float32)),
            "caption": pa.array(["a real clip"] * r),
            "clip_mp4": pa.array([b"\0" * media_bytes] * r, pa.binary()),
            "dedup_hashes": real.column("dedup_hashes").cast(pa.list_(pa.int64())),
            "dedup_curve": real.column("dedup_curve").cast(pa.list_(pa.float32())),
        }
    )
    rows = pa.concat_tables([conform(rows, REJECTED_SCHEMA), conform(extra, REJECTED_SCHEMA)])
    videos = pa.table(
        {
            "source_uri": pa.array(list(sources) + real_src),
            "video_id": pa.array(
                [f"{v:016x}" for v in range(len(sources))] + [f"r{i:015x}" for i in range(r)]
            ),
            "group": pa.array([f"g{g:06d}" for g in group_of_video] + [f"g{g:06d}" for g in real_groups]),
            "status": pa.array(["ok"] * (len(sources) + r)),
            "duration_s": pa.array(np.full(len(sources) + r, 100.0)),
            "analysis_decode_passes": pa.array(np.ones(len(sources) + r, np.int32)),
            "num_scenes": pa.array(np.full(len(sources) + r, 5, np.int32)),
        }
    )
    videos = conform(videos, VIDEO_SCHEMA)
    groups = rows.column("group").to_numpy(zero_copy_only=False)
    vgroups = videos.column("group").to_numpy(zero_copy_only=False)
    order = np.argsort(groups, kind="stable")
    vorder = np.argsort(vgroups, kind="stable")
    names = [f"g{g:06d}" for g in range(n_groups)]
    bounds = np.searchsorted(groups[order], names + ["~"])
    vbounds = np.searchsorted(vgroups[vorder], names + ["~"])
    rows = rows.take(order).combine_chunks()  # one gather, then zero-copy slices per group
    videos = videos.take(vorder).combine_chunks()
    for k, name in enumerate(names):
        part = rows.slice(bounds[k], bounds[k + 1] - bounds[k])
        acc = pa.compute.is_null(part.column("reject_reason"))
        clips = conform(part.filter(acc), CLIP_SCHEMA)
        rej = part.filter(pa.compute.invert(acc))
        vids = videos.slice(vbounds[k], vbounds[k + 1] - vbounds[k])
        n_acc = pa.compute.value_counts(clips.column("source_uri")).to_pylist()
        per = {d["values"]: d["counts"] for d in n_acc}
        vids = vids.set_column(
            vids.schema.get_field_index("num_clips_accepted"),
            VIDEO_SCHEMA.field("num_clips_accepted"),
            pa.array([per.get(u, 0) for u in vids.column("source_uri").to_pylist()], pa.int32()),
        )
        for table, t in (("rejected", rej), ("videos", vids), ("clips", clips)):
            contract.write(t, out / table / f"{name}.parquet")  # as curate writes
        (out / "_done" / name).touch()
    from vidsift.pipeline.recipe import build_recipe

    stages = ("probe", "analyze", "split_scenes", "dedup", "transcode", "write_shards")
    recipe = build_recipe(
        {"stage": [{"name": s, **(shards or {} if s == "write_shards" else {})} for s in stages]}
    )
    manifest = {
        "schema_version": 1,
        "recipe": recipe.to_dict(),
        "counts": {"input_files": len(videos), "groups": n_groups},
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return {"real_ids": real_ids, "groups": n_groups, "rows": rows.num_rows}


# ------------------------------------------------------------------------------------- folder reuse

SHAPES_FOLDER = [  # files whose code decides what a run folder holds, beside this script
    "pipeline/schema.py",
    "pipeline/storage.py",
    "pipeline/select.py",
    "pipeline/stages/write_shards.py",
]


def folder_fingerprint(work: Path, params: dict) -> str:
    """A hash of what makes a run folder: ``params``, the real rows, this script and ``SHAPES_FOLDER``."""
    import hashlib

    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for path in [Path(__file__), work / "real.parquet", *(REPO / f for f in SHAPES_FOLDER)]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _listing(folder: Path) -> list:
    """Every file under ``folder``: relative path, size and modification time (what a step that wrote into a
    hard-linked file in place would change). Empty files (``_done`` markers, which a step may touch again)
    are compared by name and size only."""
    stats = ((str(f.relative_to(folder)), f.stat()) for f in folder.rglob("*") if f.is_file())
    return sorted([name, st.st_size, st.st_mtime_ns if st.st_size else 0] for name, st in stats)


def reuse_folder(run: Path, work: Path, fingerprint: str) -> dict | None:
    """``run`` hard-linked from its pristine copy when that copy has ``fingerprint`` and is unchanged; returns
    what ``make_run`` returned for it, or None (then the folder must be written)."""
    pristine = work / "pristine" / run.name
    meta = work / "pristine" / f"{run.name}.json"
    if not meta.exists() or not pristine.is_dir():
        return None
    saved = json.loads(meta.read_text())
    if saved["fingerprint"] != fingerprint:
        print(f"  {run.name}: its pristine copy came from other code or settings: written again", flush=True)
        return None
    if saved["listing"] != _listing(pristine):
        print(f"  {run.name}: the pristine copy was changed since it was made: written again", flush=True)
        return None
    shutil.rmtree(run, ignore_errors=True)
    subprocess.run(["cp", "-al", str(pristine), str(run)], check=True)
    return saved["made"]


def keep_folder(run: Path, work: Path, fingerprint: str, made: dict) -> None:
    """A hard-linked pristine copy of the run folder just written, with its fingerprint and file listing."""
    pristine = work / "pristine" / run.name
    shutil.rmtree(pristine, ignore_errors=True)
    pristine.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-al", str(run), str(pristine)], check=True)
    meta = {"fingerprint": fingerprint, "made": made, "listing": _listing(pristine)}
    (work / "pristine" / f"{run.name}.json").write_text(json.dumps(meta))


# ------------------------------------------------------------------------------------------------ steps


def step(name: str, run: Path, scratch: Path, dedup_set: list[str] = ()) -> dict:
    """One step in this process (the parent measures time and memory); returns what it found."""
    if _writer_options():  # the experiment: every table the run folder, select, dedup and shard_copy write
        _no_dictionary()
    if name == "dedup":
        from vidsift.pipeline.dedup_run import dedup_finished_run

        return dedup_finished_run(str(run), overrides=dedup_set)
    if name == "select":
        from vidsift.pipeline.select import select_run

        shutil.rmtree(scratch, ignore_errors=True)
        return select_run(run, scratch, where=WHERE)
    if name == "select_each":  # select keeping every group as it is (--merge-mib 0): what merging saves
        from vidsift.pipeline.select import select_run

        shutil.rmtree(scratch, ignore_errors=True)
        return select_run(run, scratch, where=WHERE, merge_mib=0)
    if name == "select_sql":
        from vidsift.pipeline.select import select_run

        shutil.rmtree(scratch, ignore_errors=True)
        return select_run(run, scratch, sql=SQL_WHERE)
    if name == "duckdb_copy":  # the baseline: the same rows (clips, rejected) filtered and copied by DuckDB
        import duckdb

        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        con = duckdb.connect()
        rows = f"read_parquet(['{run}/clips/*.parquet', '{run}/rejected/*.parquet'], union_by_name=true)"
        target = f"'{scratch}/rows.parquet' (FORMAT parquet, COMPRESSION zstd)"
        con.execute(f"COPY (SELECT * FROM {rows} WHERE {SQL_WHERE}) TO {target}")
        return {"rows": con.execute(f"SELECT count(*) FROM '{scratch}/rows.parquet'").fetchone()[0]}
    if name == "shard_copy":  # what select cannot avoid: every group file read and written again unchanged,
        # with the shard contract's writer settings (the run's write_shards), as many threads as select
        from concurrent.futures import ThreadPoolExecutor

        from vidsift.pipeline.select import SELECT_THREADS, TABLES, _read_table, _run_write_config, conform
        from vidsift.pipeline.stages.write_shards import done_groups

        shutil.rmtree(scratch, ignore_errors=True)
        config = _run_write_config(run)
        for table in TABLES:
            (scratch / table).mkdir(parents=True)

        def copy(group: str) -> int:
            rows = 0
            for table, schema in TABLES.items():
                t = conform(_read_table(run / table / f"{group}.parquet"), schema)
                config.write(t, scratch / table / f"{group}.parquet")
                rows += t.num_rows
            return rows

        with ThreadPoolExecutor(SELECT_THREADS) as pool:
            return {"rows": sum(pool.map(copy, sorted(done_groups(run))))}
    if name == "stats":
        from vidsift.pipeline.stats import compute_stats

        s = compute_stats(run)
        return {"accepted": s["funnel"]["accepted_clips"]}
    if name == "manifest":
        from vidsift.pipeline.select import recount

        return recount(run, {})["counts"]
    if name == "baseline_dedup":
        return {}
    raise SystemExit(f"unknown step {name}")


def measure(name: str, run: Path, scratch: Path, dedup_set: list[str] = ()) -> dict:
    """Run ``step`` in a fresh process: wall and CPU seconds, peak RSS of it and of each process it started
    (Ray workers, select's worker processes), sampled every 0.2 s. ``cpu_s`` counts the step and the
    processes it waits for (select's workers); ``worker_cpu_s`` the Ray processes, which it does not."""
    import resource

    import psutil

    cmd = [sys.executable, __file__, "--step", name, "--run", str(run), "--scratch", str(scratch)]
    cmd += [f"--dedup-set={s}" for s in dedup_set]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak = {"driver": 0, "worker": 0, "driver_private": 0, "worker_private": 0}
    worker_cpu: dict[int, float] = {}
    done = threading.Event()

    def private(pid: int) -> int:
        """The process's own memory (smaps_rollup's ``Anonymous``: heap and arrays, not files): RSS also
        counts the pages of Ray's object store (shared memory) a process has touched, once in every
        process that touched them, though the store holds them once, within its own fixed size."""
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                return sum(int(line.split()[1]) << 10 for line in f if line.startswith("Anonymous:"))
        except OSError:
            return 0

    def sample() -> None:
        p = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                peak["driver"] = max(peak["driver"], p.memory_info().rss)
                peak["driver_private"] = max(peak["driver_private"], private(p.pid))
                for c in p.children(recursive=True):
                    try:
                        peak["worker"] = max(peak["worker"], c.memory_info().rss)
                        peak["worker_private"] = max(peak["worker_private"], private(c.pid))
                        if "vidsift.pipeline.select_worker" not in " ".join(c.cmdline()):
                            t = c.cpu_times()  # select's workers are waited for: in cpu_s already
                            worker_cpu[c.pid] = t.user + t.system
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    wall = time.time() - t0
    done.set()
    th.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"step {name} failed ({proc.returncode})")
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 2),
        "worker_cpu_s": round(sum(worker_cpu.values()), 2),
        "driver_gib": round(peak["driver"] / 2**30, 3),
        "worker_gib": round(peak["worker"] / 2**30, 3),
        "driver_private_gib": round(peak["driver_private"] / 2**30, 3),
        "worker_private_gib": round(peak["worker_private"] / 2**30, 3),
        "result": json.loads(out.strip().splitlines()[-1]),
    }


def score(run: Path, real_ids: list[str], truth: set[tuple[int, int]]) -> dict:
    """Recall and precision on the planted pairs, from the ``near_duplicate`` rows dedup left in the run.

    A planted pair is found when its two clips end in one group (``dup_of`` names the kept clip). A rejected
    clip is right when it and its kept clip are real clips of one source family (a truth pair links them,
    directly or through the group); any rejection touching a background row is wrong, counted by kind.
    """
    from vidsift.pipeline.select import _scan

    rej = _scan(run, "rejected", ["clip_id", "reject_reason", "dup_of"])
    rej = rej.filter(pa.compute.equal(rej.column("reject_reason"), "near_duplicate"))
    kept_of = dict(zip(rej.column("clip_id").to_pylist(), rej.column("dup_of").to_pylist(), strict=True))
    index = {cid: i for i, cid in enumerate(real_ids)}
    root = lambda x: kept_of.get(x, x)  # noqa: E731
    found = sum(1 for a, b in truth if root(real_ids[a]) == root(real_ids[b]))
    linked: dict[int, set[int]] = {}
    for a, b in truth:
        linked.setdefault(a, {a}).add(b)
        linked.setdefault(b, {b}).add(a)
    family = {}  # transitive closure of the truth pairs: clip -> component id
    for start in linked:
        if start in family:
            continue
        stack = [start]
        while stack:
            x = stack.pop()
            if x not in family:
                family[x] = start
                stack.extend(linked[x])
    right = sum(
        1
        for c, d in kept_of.items()
        if c in index and d in index and family.get(index[c], -1) == family.get(index[d], -2)
    )
    both_bg = sum(1 for c, d in kept_of.items() if c not in index and d not in index)
    return {
        "planted_pairs": len(truth),
        "found_pairs": found,
        "recall": round(found / len(truth), 4) if truth else 1.0,
        "rejected": len(kept_of),
        "precision": round(right / len(kept_of), 4) if kept_of else 1.0,
        "wrong_background_pairs": both_bg,
        "wrong_real_background_pairs": sum(1 for c, d in kept_of.items() if (c in index) != (d in index)),
        "wrong_real_pairs": sum(1 for c, d in kept_of.items() if c in index and d in index) - right,
    }


def baseline_dedup(n: int, real: pa.Table, seed: int) -> float:
    """The banded search this replaced, on ``n`` background clips: seconds."""
    import importlib.util

    show = ["git", "-C", str(REPO), "show", "7a38e5a:pipeline/stages/dedup.py"]
    code = subprocess.run(show, capture_output=True, text=True, check=True).stdout
    path = Path(os.environ.get("TMPDIR", "/tmp")) / "vidsift_old_dedup.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location("vidsift_old_dedup", path)
    old = importlib.util.module_from_spec(spec)
    sys.modules["vidsift_old_dedup"] = old
    spec.loader.exec_module(old)
    rng = np.random.default_rng(seed)
    offsets, hashes = background_hashes(n, rng, bit_frequencies(real))
    signed = hashes.view(np.int64)
    rows = []
    for i in range(n):
        h = signed[offsets[i] : offsets[i + 1]].tolist()
        rows.append(
            {
                "clip_id": f"{i:032x}",
                "dedup_hashes": h,
                "dedup_curve": [],
                "width": 640,
                "height": 360,
                "duration_s": 5.0,
            }
        )
    t0 = time.time()
    old.find_duplicates(rows, old.DedupConfig())
    return time.time() - t0


STEPS = ["dedup", "select", "duckdb_copy", "shard_copy", "select_sql", "select_each", "stats", "manifest"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    ap.add_argument("--work", type=Path, default=REPO / "out" / "bench-scale")
    ap.add_argument("--group-size", type=int, default=500, help="clip rows per group file")
    ap.add_argument("--media-bytes", type=int, default=64, help="bytes of clip_mp4 per clip (random)")
    ap.add_argument(
        "--no-dictionary",
        action="store_true",
        help="experiment: write the run and every step without dictionary pages",
    )
    ap.add_argument(
        "--shard-rows", type=int, help="write_shards.row_group_rows of the run folder (default: the default)"
    )
    ap.add_argument(
        "--shard-mib",
        type=float,
        help="write_shards.row_group_mib of the run folder (the older contract, 64-row groups: "
        "--shard-rows 64 --shard-mib 0)",
    )
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="start from a hard-linked pristine copy of a run folder made by the same code and settings",
    )
    ap.add_argument("--steps", nargs="+", default=STEPS, choices=STEPS)
    ap.add_argument("--baseline-clips", type=int, default=0, help="also time the old banded search on N")
    ap.add_argument("--seed", type=int, default=1, help="background seed (tune with one, report another)")
    ap.add_argument("--dedup-set", action="append", default=[], help="dedup.KEY=VALUE for the dedup step")
    ap.add_argument("--distinct", action="store_true", help="only the real distinct-clip statistics")
    ap.add_argument("--heldout", action="store_true", help="only the rule on copies of held-out real clips")
    ap.add_argument(
        "--unseen",
        action="store_true",
        help="only the rule on copies made by transforms no threshold was chosen on",
    )
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if getattr(args, "no_dictionary", False):
        os.environ[NO_DICTIONARY] = "1"  # the step processes inherit it
    if args.step:
        print(json.dumps(step(args.step, args.run, args.scratch, args.dedup_set), default=str))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    if args.distinct:
        distinct_report(args.work, real_rows(args.work), args.seed)
        return
    if args.heldout:
        heldout_report(args.work)
        return
    if args.unseen:
        unseen_report(args.work)
        return
    print("real clips and copies through the real hashing code (cached)...", flush=True)
    real = real_rows(args.work)
    truth, cross = truth_pairs(real)
    print(
        f"{real.num_rows} real clip rows; {len(truth)} duplicate pairs by the rule over all pairs "
        f"({cross} cross-source pairs, not counted)",
        flush=True,
    )
    if args.no_dictionary:
        _no_dictionary()  # the run folders written here; each step's own process patches itself
    results = []
    for n in args.sizes:
        run = args.work / (f"run-{n}" if args.media_bytes == 64 else f"run-{n}-{args.media_bytes}b")
        run = run.with_name(run.name + ("-nodict" if args.no_dictionary else ""))
        run = run.with_name(run.name + (f"-seed{args.seed}" if args.seed != 1 else ""))
        given = (("row_group_rows", args.shard_rows), ("row_group_mib", args.shard_mib))
        shards = {k: v for k, v in given if v is not None}
        run = run.with_name(run.name + "".join(f"-{k.split('_')[-1]}{v:g}" for k, v in shards.items()))
        t0 = time.time()
        params = {"n": n, "seed": args.seed, "group_size": args.group_size, "media_bytes": args.media_bytes}
        params |= {"shards": shards, "no_dictionary": args.no_dictionary}
        fingerprint = folder_fingerprint(args.work, params) if args.reuse else ""
        made = reuse_folder(run, args.work, fingerprint) if args.reuse else None
        how = "linked from its pristine copy" if made else "written"
        if made is None:
            made = make_run(run, n, real, args.seed, args.group_size, args.media_bytes, shards)
            if args.reuse:
                keep_folder(run, args.work, fingerprint, made)
        print(
            f"\n{n} clips: run folder {how} in {time.time() - t0:.0f} s ({made['groups']} groups, "
            f"{made['rows']} clip rows incl. rejected)",
            flush=True,
        )
        row: dict = {"clips": n}
        for name in args.steps:
            m = measure(name, run, args.work / "scratch", args.dedup_set)
            row[name] = m
            print(
                f"  {name:12s} wall {m['wall_s']:7.1f} s  cpu {m['cpu_s']:7.1f} s"
                f" (+workers {m['worker_cpu_s']:.1f})"
                f"  peak driver {m['driver_gib']:.2f} GiB, worker {m['worker_gib']:.2f} GiB"
                f" (private {m['driver_private_gib']:.2f}, {m['worker_private_gib']:.2f})",
                flush=True,
            )
            if name == "dedup":
                row["quality"] = score(run, made["real_ids"], truth)
                r = m["result"]
                print(
                    f"    {r['hashes']} hashes, {r['key_bits']} key bits, "
                    f"{r['hash_pairs_compared']} hash pairs "
                    f"compared, {r['candidate_pairs']} candidate clip pairs, {r['verified_pairs']} verified, "
                    f"{r['moved']} moved, split buckets {r['split_buckets']}, Ray tasks {r['distributed']}",
                    flush=True,
                )
                print(f"    planted: {row['quality']}", flush=True)
        pairs = [("select", "duckdb_copy"), ("select_sql", "duckdb_copy"), ("select", "shard_copy")]
        pairs += [("select_each", "duckdb_copy"), ("select", "select_each")]
        for a_, b_ in pairs + [("shard_copy", "duckdb_copy")]:
            if a_ in row and b_ in row:
                print(
                    f"  {a_} / {b_}: wall {row[a_]['wall_s'] / row[b_]['wall_s']:.2f}x, "
                    f"cpu {row[a_]['cpu_s'] / max(row[b_]['cpu_s'], 0.01):.2f}x"
                )
        results.append(row)
    for a, b in zip(results, results[1:], strict=False):
        ratio = math.log(b["clips"] / a["clips"])
        for name in args.steps:
            gw = math.log(b[name]["wall_s"] / a[name]["wall_s"]) / ratio
            gc = math.log(max(b[name]["cpu_s"], 0.01) / max(a[name]["cpu_s"], 0.01)) / ratio
            total = [max(x[name]["cpu_s"] + x[name]["worker_cpu_s"], 0.01) for x in (a, b)]
            ga = math.log(total[1] / total[0]) / ratio  # with the Ray processes it started
            print(
                f"growth {a['clips']} -> {b['clips']}: {name:12s} exponent wall {gw:.2f}, cpu {gc:.2f}, "
                f"cpu with its Ray processes {ga:.2f}"
            )
    if args.baseline_clips:
        s = baseline_dedup(args.baseline_clips, real, args.seed)
        print(f"\nold banded search (7a38e5a), {args.baseline_clips} background clips: {s:.1f} s")
    (args.work / f"results-{'-'.join(map(str, args.sizes))}.json").write_text(
        json.dumps(results, indent=1, default=str)
    )


if __name__ == "__main__":
    mp.set_start_method("spawn", force=True)
    main()
