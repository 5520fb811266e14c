"""Contact sheets and difference peaks for labelling scene cuts by eye.

usage:
  python bench/scene_eval/sheet.py VIDEO --peaks [--top 30]
      prints frame count and the frames with the largest mean absolute difference to the frame
      before (candidates to look at; labels are decided by looking, never by this number)
  python bench/scene_eval/sheet.py VIDEO --around F [F ...] [--span 3] --png OUT.png
      one row per F: frames F-span .. F+span, each captioned with its 0-based PyAV index
  python bench/scene_eval/sheet.py VIDEO --every N --png OUT.png
      every N-th frame of the whole video (overview for gradual transitions and missed cuts)

Frame indices are 0-based presentation indices in PyAV decode order (the ground-truth convention
of ../shared/videos/README.md).
"""

import argparse
import sys

import av
import numpy as np
from PIL import Image, ImageDraw

THUMB_W = 160


def frames(path):
    with av.open(path) as c:
        yield from enumerate(c.decode(video=0))


def thumb(frame):
    im = frame.to_image()
    h = max(1, round(im.height * THUMB_W / im.width))
    if h > 2 * THUMB_W:
        h = 2 * THUMB_W
    return im.resize((THUMB_W, h))


def grid(cells, cols):
    """cells: list of (caption, image or None), laid out cols per row."""
    h = max((im.height for _, im in cells if im is not None), default=90)
    rows = (len(cells) + cols - 1) // cols
    out = Image.new("RGB", (cols * (THUMB_W + 2), rows * (h + 14)), (40, 40, 40))
    d = ImageDraw.Draw(out)
    for k, (cap, im) in enumerate(cells):
        x, y = (k % cols) * (THUMB_W + 2), (k // cols) * (h + 14)
        if im is not None:
            out.paste(im, (x, y + 14))
        d.text((x + 2, y + 1), cap, fill=(255, 255, 0))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("video")
    ap.add_argument("--peaks", action="store_true")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--around", type=int, nargs="*")
    ap.add_argument("--span", type=int, default=3)
    ap.add_argument("--every", type=int)
    ap.add_argument("--png")
    a = ap.parse_args()
    if a.peaks:
        prev, diffs, n = None, [], 0
        for i, f in frames(a.video):
            g = np.asarray(f.to_ndarray(format="gray"), dtype=np.float32)[::4, ::4]
            diffs.append(0.0 if prev is None else float(np.abs(g - prev).mean()))
            prev, n = g, i + 1
        d = np.array(diffs)
        med = float(np.median(d)) if n else 0.0
        print(f"frames {n} median_diff {med:.2f}")
        for i in np.argsort(-d)[: a.top]:
            print(f"  {int(i):6d} diff {d[i]:7.2f}  ratio {d[i] / max(med, 0.1):6.1f}")
        return 0
    if a.around is not None:
        want = {}
        for r, c in enumerate(a.around):
            for j in range(c - a.span, c + a.span + 1):
                want.setdefault(j, []).append((r, j - (c - a.span)))
        cols = 2 * a.span + 1
        cells = [("", None)] * (cols * len(a.around))
        last = max(want)
        for i, f in frames(a.video):
            if i in want:
                t = thumb(f)
                for r, k in want[i]:
                    cells[r * cols + k] = (str(i), t)
            if i > last:
                break
        grid(cells, cols).save(a.png)
        return 0
    if a.every:
        cells = [(str(i), thumb(f)) for i, f in frames(a.video) if i % a.every == 0]
        grid(cells, 10).save(a.png)
        return 0
    ap.error("one of --peaks, --around, --every")


if __name__ == "__main__":
    sys.exit(main())
