"""Curation speed against plain ffmpeg on the same files, in the same run.

1. Analysis: vidsift's probe + one-pass analyze + split_scenes (what ``vidsift scenes`` runs)
   against ``ffmpeg -i X -an -f null -`` (decode only). Goal: ratio <= 1.3.
2. Transcode: vidsift's ``transcode`` of every accepted scene against a plain ffmpeg re-encode of
   the same segments (``ffmpeg -ss START -i X -frames:v N -vf scale=W:H -c:v libx264`` with the same
   preset and CRF), one ffmpeg process per segment. Goal: ratio <= 1.2.

Each measurement is the best of ``--repeat`` runs, alternating vidsift and baseline.

usage: python bench/curate_throughput.py [--videos DIR] [--files NAME ...] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vidsift.pipeline.cli import _default_recipe  # noqa: E402
from vidsift.pipeline.process import make_clip_id, scan_video  # noqa: E402
from vidsift.pipeline.stages.transcode import ClipCut, output_size, transcode_clips  # noqa: E402

DEFAULT_FILES = [
    "cuts/big_buck_bunny_0_30.webm",
    "cuts/test1.mp4",
    "cuts/tests_media_test_video.mp4",
    "cuts/video-1080p-60fps-2s.mp4",
    "cuts/video1.mp4",
    "quality/flipping_a_pancake.mkv",
    "quality/test_video_30s.mp4",
    "quality/traffic_camera.mp4",
    "quality/video2.mp4",
    "quality/video_for_blend_modes.mp4",
]


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def ffmpeg_decode(path: Path) -> None:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-an", "-f", "null", "-"], check=True
    )


def ffmpeg_segments(
    path: Path, segments: list[tuple[float, int]], size: tuple[int, int], recipe, tmp: str
) -> None:
    cfg = recipe.stage("transcode")
    for i, (start_s, frames) in enumerate(segments):
        subprocess.run(
            ["ffmpeg", "-v", "error", "-nostdin", "-y", "-ss", f"{start_s:.6f}", "-i", str(path),
             "-frames:v", str(frames), "-an", "-vf", f"scale={size[0]}:{size[1]}", "-c:v", "libx264",
             "-preset", cfg.preset, "-crf", str(cfg.crf), "-pix_fmt", "yuv420p", "-movflags", "+faststart",
             f"{tmp}/seg{i}.mp4"],
            check=True,
        )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=Path, default=REPO.parent / "shared" / "videos")
    parser.add_argument("--files", nargs="*", default=DEFAULT_FILES)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("ffmpeg"):
        raise SystemExit("ffmpeg is required for the baseline (apt-get install -y ffmpeg)")
    recipe = _default_recipe([])
    tcfg = recipe.stage("transcode")
    totals = {"ours_a": 0.0, "ffmpeg_a": 0.0, "ours_t": 0.0, "ffmpeg_t": 0.0}
    head = f"{'analysis':>9s} {'ffmpeg':>7s} {'ratio':>6s}"
    print(f"{'file':38s} {head} | {head.replace('analysis', 'transcode')}")
    for name in args.files:
        path = args.videos / name
        ours_a = best_of(args.repeat, lambda p=path: scan_video(str(p), recipe))
        base_a = best_of(args.repeat, lambda p=path: ffmpeg_decode(p))
        scan = scan_video(str(path), recipe)
        video, analysis = scan.video, scan.analysis
        cuts = [
            ClipCut(make_clip_id(video["video_id"], s.start_frame, s.end_frame), s.start_frame, s.end_frame,
                    analysis.end_time(s.end_frame) - float(analysis.times[s.start_frame]))
            for s in scan.scenes
        ]  # fmt: skip
        segments = [(float(analysis.times[c.start_frame]), c.end_frame - c.start_frame) for c in cuts]
        size = output_size(
            video["display_width"], video["display_height"], recipe.stage("transcode").max_short_side
        )
        with tempfile.TemporaryDirectory() as tmp:
            ours_t = best_of(args.repeat, lambda p=path, v=video, c=cuts: transcode_clips(str(p), v, c, tcfg))
            base_t = best_of(
                args.repeat, lambda p=path, s=segments, z=size: ffmpeg_segments(p, s, z, recipe, tmp)
            )
        for k, v in zip(totals, (ours_a, base_a, ours_t, base_t), strict=True):
            totals[k] += v
        print(f"{name:38s} {ours_a:8.2f}s {base_a:6.2f}s {ours_a / base_a:6.2f} | "
              f"{ours_t:8.2f}s {base_t:6.2f}s {ours_t / base_t:6.2f}")  # fmt: skip
    print(
        f"{'TOTAL':38s} {totals['ours_a']:8.2f}s {totals['ffmpeg_a']:6.2f}s "
        f"{totals['ours_a'] / totals['ffmpeg_a']:6.2f} | {totals['ours_t']:8.2f}s {totals['ffmpeg_t']:6.2f}s "
        f"{totals['ours_t'] / totals['ffmpeg_t']:6.2f}"
    )
    print(f"analysis ratio {totals['ours_a'] / totals['ffmpeg_a']:.2f} (goal <= 1.3); "
          f"transcode ratio {totals['ours_t'] / totals['ffmpeg_t']:.2f} (goal <= 1.2)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
