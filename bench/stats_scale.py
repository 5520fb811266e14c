"""``vidsift stats --json`` on 1,000,000 clip rows against one plain DuckDB aggregate query.

Builds (once, then reuses) a synthetic run folder: clip rows with every schema column a run fills
before captioning plus a long ``caption``, no media bytes (``clip_mp4``/``frames_jpeg`` null), written
like ``write_shards`` writes them (zstd, 64-row row groups); a rejected table of 20% as many rows and
a video table. Then times, each as a fresh subprocess so both pay interpreter start-up:

- baseline: one DuckDB query computing count, mean, min, max and approximate quantiles of every
  score column, rejections by reason, caption length and clips per source (what a person would write
  by hand to get the same numbers);
- ``vidsift stats OUT --json``;

and prints the times, their ratio and each process's peak resident memory (psutil, polled).

    nice .venv/bin/python bench/stats_scale.py --rows 1000000 --out /tmp/vidsift_stats_bench
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from vidsift.pipeline.schema import CLIP_SCHEMA, REJECTED_SCHEMA, VIDEO_SCHEMA
from vidsift.pipeline.stats import score_columns

WORDS = np.array(
    "a the person man woman dog cat car street city forest river beach camera slowly pans across "
    "sunny cloudy evening morning red blue green wide shot close up walking running talking holding "
    "table kitchen window light shadow background foreground smiling looking toward away from "
    "building tree mountain sky water field road bicycle child group crowd stage music playing".split()
)


def _column(field: pa.Field, n: int, rng: np.random.Generator, base: int, clips_per_source: int) -> pa.Array:
    """Plausible values for one schema column; media and model-output columns stay null."""
    name, t = field.name, field.type
    idx = np.arange(base, base + n)
    if name == "clip_id":
        return pa.array([f"{i:032x}" for i in idx])
    if name == "video_id":
        return pa.array([f"{i // clips_per_source:016x}" for i in idx])
    if name == "source_uri":
        return pa.array([f"s3://bucket/raw/{i // clips_per_source:08d}.mp4" for i in idx])
    if name == "group":
        return pa.array([f"g{base // 5000:06d}"] * n)
    if name in ("cut_kind_start", "cut_kind_end"):
        return pa.array(rng.choice(["cut", "fade", "dissolve", "chunk", "start", "end"], n))
    if name == "caption":
        lengths = rng.integers(30, 120, n)
        return pa.array([" ".join(rng.choice(WORDS, k)) for k in lengths])
    if name == "width":
        return pa.array(rng.choice([854, 640, 480, 720], n).astype(np.int32))
    if name == "height":
        return pa.array(rng.choice([480, 360, 854], n).astype(np.int32))
    if name == "fps":
        return pa.array(rng.choice([23.976, 24.0, 25.0, 29.97, 30.0], n))
    if name in ("duration_s", "end_s", "start_s", "duration_score"):
        return pa.array(rng.gamma(2.0, 4.0, n))
    if pa.types.is_floating(t):
        return pa.array(rng.lognormal(3.0, 1.0, n).astype(t.to_pandas_dtype()))
    if pa.types.is_integer(t):
        return pa.array(rng.integers(0, 1000, n).astype(t.to_pandas_dtype()))
    return pa.nulls(n, t)


def build(out: Path, rows: int, rows_per_file: int, row_group_rows: int) -> None:
    rng = np.random.default_rng(0)
    for table in ("clips", "rejected", "videos", "_done"):
        (out / table).mkdir(parents=True, exist_ok=True)
    nfiles = (rows + rows_per_file - 1) // rows_per_file
    for f in range(nfiles):
        base = f * rows_per_file
        n = min(rows_per_file, rows - base)
        clips = pa.table([_column(fl, n, rng, base, 10) for fl in CLIP_SCHEMA], schema=CLIP_SCHEMA)
        nrej = n // 5
        rej_cols = [_column(fl, nrej, rng, 10**9 + base, 10) for fl in CLIP_SCHEMA]
        reasons = rng.choice(["scene_too_short", "too_dark", "too_static", "text_overlay"], nrej)
        rej_cols += [
            pa.array(np.where(reasons == "scene_too_short", "split_scenes", "filter")),
            pa.array(reasons),
            pa.array([f"measured {x:.2f}" for x in rng.random(nrej)]),
        ]
        rejected = pa.table(rej_cols, schema=REJECTED_SCHEMA)
        nv = n // 10
        vids = {fl.name: _column(fl, nv, rng, base // 10, 1) for fl in VIDEO_SCHEMA}
        vids["status"] = pa.array(rng.choice(["ok", "ok", "ok", "rejected"], nv))
        ok = vids["status"].to_numpy(zero_copy_only=False) == "ok"
        vids["reason"] = pa.array(np.where(ok, None, "undecodable"))
        vids["num_scenes"] = pa.array(np.full(nv, 12, np.int32))
        vids["analysis_decode_passes"] = pa.array(np.ones(nv, np.int32))
        videos = pa.table([vids[fl.name] for fl in VIDEO_SCHEMA], schema=VIDEO_SCHEMA)
        name = f"g{f:06d}.parquet"
        for table, t in (("clips", clips), ("rejected", rejected), ("videos", videos)):
            pq.write_table(t, out / table / name, compression="zstd", row_group_size=row_group_rows)
        (out / "_done" / name[:-8]).touch()
    manifest = {"schema_version": 1, "counts": {"groups": nfiles}, "synthetic": True}
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "_run.json").write_text("{}")


def baseline_query(out: Path) -> str:
    """The hand-written DuckDB equivalent of the main numbers ``vidsift stats`` reports."""
    # the folder's own columns: it may have been built under an older schema
    schema = pq.read_schema(next((out / "clips").glob("*.parquet")))
    cols = score_columns({f.name: f.type for f in schema})
    qs = "[0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]"
    aggs = ", ".join(
        f'count("{c}"), avg("{c}"), min("{c}"), max("{c}"), approx_quantile("{c}"::DOUBLE, {qs})'
        for c in cols
    )
    clips = f"read_parquet('{out}/clips/*.parquet')"
    return (
        f"SELECT count(*), {aggs}, avg(length(caption)) FROM {clips};"
        f"SELECT reject_stage, reject_reason, count(*) FROM read_parquet('{out}/rejected/*.parquet') "
        "GROUP BY ALL;"
        f"SELECT status, reason, count(*), sum(duration_s) FROM read_parquet('{out}/videos/*.parquet') "
        "GROUP BY ALL;"
        f"SELECT source_uri, count(*), sum(duration_s) AS h FROM {clips} GROUP BY 1 ORDER BY h DESC LIMIT 10;"
    )


def timed(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MiB over the process and its children, stdout)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.01)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{cmd[:3]} failed: {stderr[-2000:]}")
    return wall, peak / 2**20, stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="clip rows")
    ap.add_argument("--rows-per-file", type=int, default=5000, help="clip rows per group file")
    ap.add_argument("--row-group-rows", type=int, default=64, help="as write_shards.row_group_rows")
    ap.add_argument("--out", type=Path, default=Path("/tmp/vidsift_stats_bench"))
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each; the best is reported")
    args = ap.parse_args()
    marker = args.out / f".built-{args.rows}-{args.rows_per_file}-{args.row_group_rows}"
    if not marker.exists():
        t = time.perf_counter()
        build(args.out, args.rows, args.rows_per_file, args.row_group_rows)
        marker.touch()
        print(f"built {args.out} in {time.perf_counter() - t:.1f} s")
    size = sum(p.stat().st_size for p in args.out.rglob("*.parquet")) / 2**20
    print(f"run folder: {args.rows:,} clip rows, {size:.0f} MiB of Parquet")
    py = sys.executable
    vidsift = str(Path(py).parent / "vidsift")
    queries = baseline_query(args.out).split(";")[:-1]
    base_cmd = [py, "-c", f"import duckdb; c = duckdb.connect(); [c.sql(q).fetchall() for q in {queries!r}]"]
    runs = {"duckdb": [], "vidsift": []}
    for _ in range(args.repeat):
        runs["duckdb"].append(timed(base_cmd))
        runs["vidsift"].append(timed([vidsift, "stats", str(args.out), "--json"]))
    best = {k: min(v, key=lambda r: r[0]) for k, v in runs.items()}
    peak = {k: max(r[1] for r in v) for k, v in runs.items()}
    doc = json.loads(best["vidsift"][2])
    assert doc["funnel"]["accepted_clips"] == args.rows
    for k in ("duckdb", "vidsift"):
        print(f"{k:8s} best of {args.repeat}: {best[k][0]:6.2f} s   peak RSS {peak[k]:7.0f} MiB")
    print(
        f"ratio vidsift / duckdb: {best['vidsift'][0] / best['duckdb'][0]:.2f}x (goal <= 2x, peak < 2048 MiB)"
    )


if __name__ == "__main__":
    main()
