"""Throughput of ``vidsift curate`` on 1 vs 2 Ray nodes of one CPU each, in the same run.

Starts a real local cluster (``ray start --head`` with 1 CPU), curates six short sample clips through
``ray job submit -- vidsift curate`` (the way a cluster user runs it), adds a second 1-CPU node
(``ray start --address``), and curates the same clips again into a new folder. Each is the best
of ``--repeat`` runs; the driver, Ray Data and job startup are inside the timing, as a user sees
them. Both nodes share this machine's cores, so on a 2-core machine 2.0x is the ceiling and
anything else running on the machine lowers it. The extrapolation to 100 nodes is in
docs/cluster.md.

usage: python bench/scaling.py [--videos DIR] [--files NAME ...] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.cluster.local_cluster import LocalCluster  # noqa: E402

DEFAULT_FILES = [  # short clips (2-10 s): the whole benchmark stays within a few minutes
    "cuts/test.mp4",
    "cuts/video-1080p-60fps-2s.mp4",
    "cuts/rotate-buck-bunny.mp4",
    "quality/in.mp4",
    "quality/realshort.mp4",
    "quality/video_for_blend_modes.mp4",
]
RAY = str(Path(sys.executable).parent / "ray")
VIDSIFT = str(Path(sys.executable).parent / "vidsift")


def curate(cluster: LocalCluster, src: Path, out: Path) -> tuple[float, dict]:
    # every per-video task asks for one CPU: one video per node at a time
    cmd = [RAY, "job", "submit", "--address", cluster.dashboard, "--", VIDSIFT, "curate",
           str(REPO / "recipes/curate/default.toml"), "--input", str(src), "--output", str(out),
           "--set", "run.group_size=2", "--quiet"]  # fmt: skip
    t0 = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=cluster.env())
    wall = time.perf_counter() - t0
    if result.returncode != 0:
        sys.exit(f"curate failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return wall, json.loads((out / "manifest.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=Path, default=REPO.parent / "shared" / "videos")
    ap.add_argument("--files", nargs="*", default=DEFAULT_FILES)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vidsift-scaling-"))
    src = work / "in"
    src.mkdir()
    for name in args.files:  # symlinks: the clips stay in ../shared/videos
        (src / name.replace("/", "_")).symlink_to(args.videos / name)
    cluster = LocalCluster()
    results: dict[int, tuple[float, dict]] = {}
    try:
        cluster.start_head(num_cpus=1)
        for nodes in (1, 2):
            if nodes == 2:
                cluster.add_node("second", num_cpus=1)
            runs = [curate(cluster, src, work / f"out{nodes}-{i}") for i in range(args.repeat)]
            results[nodes] = min(runs, key=lambda r: r[0])
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    counts = results[1][1]["counts"]
    minutes = counts["input_hours"] * 60
    print(f"{len(args.files)} videos, {minutes:.2f} min of input, {counts['clips_accepted']} clips accepted")
    for nodes, (wall, m) in results.items():
        spread = {k[:8]: v for k, v in m["last_run_placement"]["rows"]["video"].items()}
        print(
            f"{nodes} node(s) x 1 CPU: {wall:6.1f} s  {len(args.files) / wall:.3f} videos/s  "
            f"videos per node {spread}"
        )
    print(f"speed-up 2 nodes vs 1: {results[1][0] / results[2][0]:.2f}x (ideal 2.00x)")


if __name__ == "__main__":
    main()
