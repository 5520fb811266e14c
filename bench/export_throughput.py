"""``vidsift export`` throughput against a plain ``tar`` of the same MP4 bytes.

The run: ``--run OUT`` (any finished run, e.g. the quick start's), or by default a synthetic run of
``--clips`` rows (``vidsift.model.synthetic`` metadata) whose ``clip_mp4`` are the bytes of the real
``.mp4`` sample files in ``../shared/videos/quality`` taken in turn (export never decodes, so what
matters is how many bytes it moves and how many clips). Then, each as a fresh subprocess:

- baseline: the same MP4 bytes, already written out as files (not timed), packed by ``tar -cf``;
- ``vidsift export OUT --format F --quiet`` for webdataset, videofolder and hf, and once with a
  ``--where`` that keeps nothing (start-up and Parquet reads alone);

and prints seconds, MB/s, the ratio export/tar (lower is better; 1.0 = as fast as tar) and each
process's peak resident memory (export streams: it should not grow with the run). Export also
reads Parquet, filters, writes JSON metadata and (hf) goes through ``datasets``' Arrow writer.

    nice .venv/bin/python bench/export_throughput.py --clips 400 --work /tmp/vidsift_export_bench
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "videos" / "quality"


def synthetic_run(out: Path, clips: int) -> Path:
    import pyarrow.parquet as pq

    from vidsift.model.synthetic import synthetic_rows
    from vidsift.pipeline.schema import CLIP_SCHEMA, table_from_rows

    if (out / "manifest.json").exists():
        return out
    mp4s = [p.read_bytes() for p in sorted(SAMPLES.glob("*.mp4"))]
    if not mp4s:
        sys.exit(f"no .mp4 sample files in {SAMPLES}; pass --run OUT")
    rows = synthetic_rows(clips, frames=4, size=32)
    for i, r in enumerate(rows):
        r["clip_mp4"] = mp4s[i % len(mp4s)]
    (out / "clips").mkdir(parents=True, exist_ok=True)
    per_file = 64
    for k in range(0, clips, per_file):
        table = table_from_rows(rows[k : k + per_file], CLIP_SCHEMA)
        path = out / "clips" / f"g{k // per_file:06d}.parquet"
        pq.write_table(table, path, compression="zstd", row_group_size=64)  # as write_shards writes
    (out / "manifest.json").write_text(json.dumps({"schema_version": 1, "counts": {"clips_accepted": clips}}))
    return out


def timed(cmd: list[str]) -> tuple[float, float]:
    """Seconds and peak resident MB of one subprocess (psutil, polled every 20 ms)."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    watched = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.02)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr.read()[-2000:]}")
    return seconds, peak / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="a finished run folder (default: build a synthetic one under --work)")
    ap.add_argument("--clips", type=int, default=400, help="clips of the synthetic run")
    ap.add_argument("--work", default="/tmp/vidsift_export_bench", help="scratch folder")
    ap.add_argument("--shard-size", type=int, default=100)
    args = ap.parse_args()
    import pyarrow.parquet as pq

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    run = Path(args.run) if args.run else synthetic_run(work / "run", args.clips)
    # the baseline's input: the same MP4 bytes as plain files, written out before timing
    files = work / "mp4s"
    shutil.rmtree(files, ignore_errors=True)
    files.mkdir()
    total = n = 0
    for f in sorted((run / "clips").glob("*.parquet")):
        for r in pq.read_table(f, columns=["clip_id", "clip_mp4"]).to_pylist():
            if r["clip_mp4"]:
                (files / f"{r['clip_id']}.mp4").write_bytes(r["clip_mp4"])
                total += len(r["clip_mp4"])
                n += 1
    mb = total / 1e6
    tar_s, tar_mb = timed(["tar", "-cf", str(work / "baseline.tar"), "-C", str(files), "."])
    exe = str(Path(sys.executable).parent / "vidsift")
    print(f"{n} clips, {mb:.1f} MB of MP4 (busy machine: rough numbers)")
    print(f"{'':14} {'seconds':>8} {'MB/s':>8} {'x tar':>7} {'peak RSS MB':>12}")
    print(f"{'tar -cf':14} {tar_s:8.2f} {mb / tar_s:8.1f} {1.0:7.2f} {tar_mb:12.0f}")
    # reading every batch but exporting none: interpreter start-up plus the Parquet reads
    out = work / "export-none"
    shutil.rmtree(out, ignore_errors=True)
    s, rss = timed([exe, "export", str(run), "--format", "webdataset", "--output", str(out), "--quiet",
                    "--where", "num_frames < 0"])  # fmt: skip
    print(f"{'read, no write':14} {s:8.2f} {mb / s:8.1f} {s / tar_s:7.2f} {rss:12.0f}")
    shutil.rmtree(out, ignore_errors=True)
    for fmt in ("webdataset", "videofolder", "hf"):
        out = work / f"export-{fmt}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [exe, "export", str(run), "--format", fmt, "--output", str(out), "--quiet"]
        s, rss = timed([*cmd, "--shard-size", str(args.shard_size)])
        print(f"{fmt:14} {s:8.2f} {mb / s:8.1f} {s / tar_s:7.2f} {rss:12.0f}")
        shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(files, ignore_errors=True)
    (work / "baseline.tar").unlink()


if __name__ == "__main__":
    main()
