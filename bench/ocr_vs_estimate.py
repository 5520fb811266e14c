"""OCR text area (score_ocr) against the weight-free estimate (score_text) on labelled sample clips.

    python bench/ocr_vs_estimate.py [--cut 0.01] [--set stage.key=value ...]

Every candidate clip of the files below goes through the default recipe's analysis pass and
filters (``text_score``: the weight-free estimate), then through ``score_ocr`` with the detector
alone and with ``verify`` (recognition). Labels come from catalog.json's ``content`` notes: a clip
is ``text`` when its file carries burned-in text throughout (captions, subtitles, a watermark,
slides), ``clean`` when the file has none; files whose text appears on some shots only (title
cards, the countdown digits) are left out, since the catalog does not say which shots.

Prints a per-clip table, then per method: ROC AUC (threshold-free ranking: the chance a text clip
outscores a clean one) and precision / recall when ``score > --cut`` calls a clip "has text".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VIDEOS = REPO.parent / "shared" / "videos"

LABELS = {  # catalog.json "content" in brackets
    "quality/video2.mp4": "text",  # [large caption text]
    "quality/video3.mp4": "text",  # [burned-in subtitles]
    "cuts/video1.mp4": "text",  # [YOUKU watermark + vertical Chinese subtitles]
    "quality/test_video.mp4": "text",  # [screen-recorded slide presentation (text slides)]
    "quality/flipping_a_pancake.mkv": "clean",
    "quality/tests_data_test.mp4": "clean",  # [person cleaning a swimming pool]
    "quality/traffic_camera.mp4": "clean",
    "quality/video4.mp4": "clean",  # [girl brushing another girl's hair]
    "quality/Big_Buck_Bunny_180_10s.webm": "clean",
    "quality/realshort.mp4": "clean",
    "quality/video_for_blend_modes.mp4": "clean",  # [defocused bokeh lights]
    "cuts/tests_media_test_video.mp4": "clean",  # [nature montage]
    "cuts/test1.mp4": "clean",  # [people working on motorbike, letterboxed]
}


def auc(pos: list[float], neg: list[float]) -> float:
    pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
    return sum(pairs) / len(pairs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cut", type=float, default=0.01, help="score above this: 'has text'")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()

    from vidsift.pipeline.process import process_video
    from vidsift.pipeline.recipe import load_recipe
    from vidsift.pipeline.stages.score_ocr import ScoreOcr, ScoreOcrConfig

    recipe = load_recipe(REPO / "recipes/curate/default.toml", ["split_scenes.min_scene_s=1.0", *args.set])
    detect = ScoreOcr(ScoreOcrConfig(max_text_area=1.0))
    verify = ScoreOcr(ScoreOcrConfig(max_text_area=1.0, verify=True))
    methods = {"estimate (text_score)": [], "ocr det": [], "ocr det+verify": []}
    truth = []
    print("| clip | frames | label | estimate | ocr det | boxes | ocr verify |")
    print("|---|---|---|---|---|---|---|")
    for name, label in LABELS.items():
        _, clips = process_video(str(VIDEOS / name), "g", recipe)
        clips = [c for c in clips if c.get("frames_jpeg")]
        for c, d, v in zip(clips, detect(clips), verify(clips), strict=True):
            print(
                f"| {name} | {c['start_frame']}-{c['end_frame']} | {label} | {c['text_score']:.3f} "
                f"| {d['ocr_score']:.3f} | {d['ocr_boxes']} | {v['ocr_score']:.3f} |"
            )
            truth.append(label == "text")
            methods["estimate (text_score)"].append(c["text_score"])
            methods["ocr det"].append(d["ocr_score"])
            methods["ocr det+verify"].append(v["ocr_score"])
    print(
        f"\n{sum(truth)} text clips, {len(truth) - sum(truth)} clean clips; 'has text' = score > {args.cut}"
    )
    print("| method | ROC AUC | precision | recall |")
    print("|---|---|---|---|")
    for method, scores in methods.items():
        pos = [s for s, t in zip(scores, truth, strict=True) if t]
        neg = [s for s, t in zip(scores, truth, strict=True) if not t]
        called = [s > args.cut for s in scores]
        tp = sum(c and t for c, t in zip(called, truth, strict=True))
        precision = tp / max(1, sum(called))
        print(f"| {method} | {auc(pos, neg):.3f} | {precision:.2f} | {tp / len(pos):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
