"""OCR scoring throughput: the score_ocr stage against rapidocr's own text detector on the same frames.

    python bench/ocr_throughput.py [--frames 96] [--per-pass 32] [--repeats 3] [--device cpu]

Frames are the real ``frames_jpeg`` of the sample clips in ../shared/videos/quality (short side 256),
four per clip row, as the stage gets them in a run (``aesthetic_throughput.sample_rows``).

- baseline: ``rapidocr_onnxruntime``'s ``TextDetector`` (the same PP-OCRv4 det ONNX file, its config
  with ``limit_side_len`` 256 so both run the model at the same size), called frame by frame on
  frames decoded *before* the clock starts; it returns boxes;
- stage: ``ScoreOcr(rows)``, which also decodes the JPEGs, batches same-size frames
  ``--per-pass`` at a time, post-processes, measures the covered area and reduces per clip.

The two paths alternate, ``--repeats`` times over all frames, so load from other processes hits both
alike; the script prints frames/s of each, the ratio of the median totals (stage / baseline: above
1 means the stage is faster), and checks that both found the same number of boxes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--per-pass", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import cv2
    import numpy as np
    import onnxruntime as ort
    import yaml
    from aesthetic_throughput import sample_rows
    from rapidocr_onnxruntime.ch_ppocr_det import TextDetector

    from vidsift.pipeline.stages.score_ocr import DET_WEIGHTS, ScoreOcr, ScoreOcrConfig, weights_path

    rows = sample_rows(args.frames)
    jpegs = [j for r in rows for j in r["frames_jpeg"]]
    stage = ScoreOcr(ScoreOcrConfig(device=args.device, frames_per_pass=args.per_pass))
    cfg = yaml.safe_load(weights_path("", "config.yaml", "bench").read_text())["Det"]
    cfg.update(model_path=str(weights_path("", DET_WEIGHTS, "bench")), limit_side_len=256)
    cfg["use_cuda"] = args.device.startswith("cuda")
    theirs = TextDetector(cfg)
    images = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in jpegs]
    shapes = {i.shape for i in images}

    def baseline() -> int:
        return sum(0 if b is None else len(b) for b, _ in (theirs(img) for img in images))

    def ours() -> int:
        return sum(int(n) for _, n in stage.frame_boxes(jpegs))  # boxes per frame, as the baseline

    # warm-up: onnxruntime plans each input shape on first sight
    boxes_theirs, boxes_ours = baseline(), ours()
    stage(rows)
    t_base, t_stage = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        baseline()
        t_base.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        stage(rows)
        t_stage.append(time.perf_counter() - t0)
    n = len(jpegs)
    base, st = statistics.median(t_base), statistics.median(t_stage)
    print(
        f"onnxruntime {ort.__version__}, {stage.det.get_providers()[0]}, {n} frames, shapes {sorted(shapes)}"
    )
    print(f"rapidocr TextDetector, frame by frame, pre-decoded: {n / base:7.1f} frames/s, median")
    print(f"score_ocr stage (decode + batch {args.per_pass} + area):  {n / st:7.1f} frames/s")
    print(f"ratio stage/baseline throughput: {base / st:.2f}")
    print(f"boxes found: rapidocr {boxes_theirs}, stage {boxes_ours}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
