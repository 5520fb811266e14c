"""score_ocr: burned-in text measured by an OCR text-detection model (PP-OCR DBNet, ONNX).

Reads ``frames_jpeg`` (the few frames the analysis pass kept per clip; frames of all clips in a batch
are detected together, ``frames_per_pass`` at a time, grouped by picture size). Each frame is scaled
so its short side is ``short_side`` (sides rounded to multiples of 32, as DBNet needs), run through
the detection model with onnxruntime, and its probability map is turned into text boxes with PP-OCR's
own DB post-processing (threshold 0.3, 2x2 dilation, minimum-area rectangles, mean probability >=
``box_threshold``, boxes grown by ``unclip_ratio``). With ``verify``, every box is also read by the
PP-OCR recognition model and kept only when its CTC confidence reaches ``min_confidence`` (faces,
shirt prints and foliage that the detector alone takes for text read as nothing).

Writes ``ocr_score`` (share of the picture inside text boxes, union of the boxes, mean over the
frames), ``ocr_boxes`` (the most boxes on one frame) and ``ocr_model`` (the weights used). The
default weights are the PP-OCRv4 models that the PyPI package ``rapidocr-onnxruntime`` ships inside
its wheel; ``model`` / ``rec_model`` point at other PP-OCR ONNX exports. A clip without frames gets
null scores and is not rejected.

Rejects ``text_overlay`` (the reason score_text gives) when ``ocr_score`` exceeds ``max_text_area``
or, when ``max_boxes`` > 0, when one frame holds more boxes than that.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np

from vidsift.pipeline.rows import reject

WEIGHTS_PACKAGE = "rapidocr_onnxruntime"  # PyPI rapidocr-onnxruntime: PP-OCRv4 ONNX weights in models/
DET_WEIGHTS = "models/ch_PP-OCRv4_det_infer.onnx"
REC_WEIGHTS = "models/ch_PP-OCRv4_rec_infer.onnx"
# PP-OCR's DB post-processing constants (PaddleOCR det_db defaults, as rapidocr ships them)
PIXEL_THRESHOLD = 0.3  # a pixel is text when its probability exceeds this
MAX_CANDIDATES = 1000  # contours looked at per frame
MIN_BOX_SIDE = 3  # px of the probability map
REC_HEIGHT, REC_MIN_WIDTH = 48, 320  # recognition input: height 48, width >= 320 (PP-OCRv4 rec)


@dataclass(frozen=True, kw_only=True)
class ScoreOcrConfig:
    STAGE: ClassVar[str] = "score_ocr"

    model: str = ""  # PP-OCR detection ONNX file; "" = PP-OCRv4 det shipped in rapidocr-onnxruntime
    verify: bool = False  # also read each box with the recognition model; drop boxes it cannot read
    rec_model: str = ""  # PP-OCR recognition ONNX file for verify; "" = the shipped PP-OCRv4 rec
    min_confidence: float = 0.5  # verify: keep boxes read with CTC confidence >= this (rapidocr's cut)
    device: str = "auto"  # auto (CUDA when onnxruntime has it) | cpu | cuda | cuda:N
    threads: int = 0  # onnxruntime intra-op threads on CPU; 0 = its default (one per core)
    # frames_jpeg come at short side 256; PP-OCR's own 736 upsamples them and finds "text" in blur
    short_side: int = 256  # frames are scaled so their short side is this (px, rounded to /32)
    box_threshold: float = 0.5  # keep a box when the mean text probability inside it is >= this
    unclip_ratio: float = 1.6  # boxes grow by area * ratio / perimeter on each side (DBNet shrinks text)
    batch_size: int = 16  # clip rows per call of the stage (Ray Data batch)
    frames_per_pass: int = 32  # frames per detector run, gathered across the batch's clips
    max_text_area: float = 0.15  # reject text_overlay when ocr_score exceeds this; 1 = never
    max_boxes: int = 0  # reject text_overlay when one frame has more text boxes than this; 0 = never

    def __post_init__(self) -> None:
        s = self.STAGE
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"{s}.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if not 32 <= self.short_side <= 2048:
            raise ValueError(f"{s}.short_side must be in 32..2048, got {self.short_side}")
        if not 0 < self.box_threshold < 1 or not 0 <= self.min_confidence <= 1:
            raise ValueError(f"{s}.box_threshold must be in (0, 1) and min_confidence in [0, 1]")
        if self.unclip_ratio < 0:
            raise ValueError(f"{s}.unclip_ratio must be >= 0, got {self.unclip_ratio}")
        if self.threads < 0 or self.batch_size < 1 or self.frames_per_pass < 1:
            raise ValueError(f"{s}.threads must be >= 0, batch_size and frames_per_pass >= 1")
        if not 0 <= self.max_text_area <= 1:
            raise ValueError(f"{s}.max_text_area must be in [0, 1], got {self.max_text_area}")
        if self.max_boxes < 0:
            raise ValueError(f"{s}.max_boxes must be >= 0 (0 = no limit), got {self.max_boxes}")
        # fail at recipe validation, not once per clip on a worker
        if importlib.util.find_spec("onnxruntime") is None:
            raise ValueError(f"{s} needs onnxruntime: pip install 'vidsift[ocr]' (or onnxruntime-gpu)")
        weights_path(self.model, DET_WEIGHTS, f"{s}.model")
        if self.verify:
            weights_path(self.rec_model, REC_WEIGHTS, f"{s}.rec_model")


def weights_path(value: str, shipped: str, where: str) -> Path:
    """The ONNX file ``value`` names, or the one rapidocr-onnxruntime ships when ``value`` is empty."""
    if value:
        path = Path(value).expanduser()
        if not path.is_file():
            raise ValueError(f"{where}: no such ONNX file: {path}")
        return path
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"{where} is empty and rapidocr-onnxruntime (which ships the PP-OCRv4 weights) is not "
            f"installed: pip install 'vidsift[ocr]', or set {where} to a PP-OCR .onnx file"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / shipped
    if not path.is_file():
        raise ValueError(f"{where}: rapidocr-onnxruntime is installed but lacks {shipped}")
    return path


def providers(device: str, where: str) -> list:
    """onnxruntime execution providers for ``device``; an unavailable CUDA is an error, not a fallback."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    if device == "auto":
        device = "cuda" if "CUDAExecutionProvider" in have else "cpu"
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in have:
        raise RuntimeError(
            f"{where}.device={device}, but this onnxruntime has no CUDAExecutionProvider "
            f"(it has {', '.join(have)}): install onnxruntime-gpu, or set device = cpu"
        )
    device_id = int(device.partition(":")[2] or 0)
    return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]


def open_session(path: Path, config: ScoreOcrConfig):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    if config.threads:
        options.intra_op_num_threads = config.threads
    chosen = providers(config.device, config.STAGE)
    try:
        return ort.InferenceSession(str(path), options, providers=chosen)
    except Exception as e:  # onnxruntime raises its own untyped pybind errors for unreadable files
        raise ValueError(f"{config.STAGE}: {path} is not a loadable ONNX model: {e}") from None


def det_input(img: np.ndarray, short_side: int) -> np.ndarray:
    """A BGR uint8 frame to DBNet input [3, H, W] float32: short side scaled to ``short_side``, sides
    multiples of 32, pixels (x / 255 - 0.5) / 0.5 (PP-OCR's normalisation)."""
    h, w = img.shape[:2]
    scale = short_side / min(h, w)
    size = (max(32, round(w * scale / 32) * 32), max(32, round(h * scale / 32) * 32))
    x = cv2.resize(img, size).astype(np.float32) * (2 / 255) - 1
    return x.transpose(2, 0, 1)


def boxes_from_map(prob: np.ndarray, width: int, height: int, box_threshold: float, unclip: float):
    """PP-OCR's DB post-processing of one probability map [h, w]: text boxes as [n, 4, 2] float32
    corner points in a ``width`` x ``height`` frame."""
    mask = cv2.dilate((prob > PIXEL_THRESHOLD).astype(np.uint8), np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    h, w = prob.shape
    boxes = []
    for contour in contours[:MAX_CANDIDATES]:
        rect = cv2.minAreaRect(contour)
        if min(rect[1]) < MIN_BOX_SIDE:
            continue
        points = cv2.boxPoints(rect)
        x0, y0 = np.clip(np.floor(points.min(0)).astype(int), 0, [w - 1, h - 1])
        x1, y1 = np.clip(np.ceil(points.max(0)).astype(int), 0, [w - 1, h - 1])
        inside = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
        cv2.fillPoly(inside, [(points - [x0, y0]).astype(np.int32)], 1)
        if cv2.mean(prob[y0 : y1 + 1, x0 : x1 + 1], inside)[0] < box_threshold:
            continue
        # DBNet predicts shrunk text kernels; grow each by area * ratio / perimeter (PP-OCR's unclip,
        # whose rounded offset polygon has exactly this minimum-area rectangle)
        bw, bh = rect[1]
        grow = bw * bh * unclip / (2 * (bw + bh))
        (cx, cy), angle = rect[0], rect[2]
        if min(bw, bh) + 2 * grow < MIN_BOX_SIDE + 2:
            continue
        grown = cv2.boxPoints(((cx, cy), (bw + 2 * grow, bh + 2 * grow), angle))
        grown[:, 0] = np.clip(np.round(grown[:, 0] / w * width), 0, width - 1)
        grown[:, 1] = np.clip(np.round(grown[:, 1] / h * height), 0, height - 1)
        if min(np.linalg.norm(grown[0] - grown[1]), np.linalg.norm(grown[1] - grown[2])) <= 3:
            continue  # rapidocr drops boxes with a side of 3 px or less in the frame
        boxes.append(grown)
    return np.array(boxes, np.float32).reshape(-1, 4, 2)


def covered_share(boxes: np.ndarray, width: int, height: int) -> float:
    """Share of a ``width`` x ``height`` frame inside the union of ``boxes``."""
    if not len(boxes):
        return 0.0
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, list(np.round(boxes).astype(np.int32)), 1)
    return float(mask.mean())


def crop_box(img: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The box's pixels straightened to an upright strip (tall strips turned, as PP-OCR does)."""
    order = box[np.argsort(box[:, 0])]
    left, right = order[:2][np.argsort(order[:2, 1])], order[2:][np.argsort(order[2:, 1])]
    src = np.array([left[0], right[0], right[1], left[1]], np.float32)  # tl, tr, br, bl
    w = int(max(np.linalg.norm(src[0] - src[1]), np.linalg.norm(src[2] - src[3])))
    h = int(max(np.linalg.norm(src[0] - src[3]), np.linalg.norm(src[1] - src[2])))
    dst = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    strip = cv2.warpPerspective(
        img,
        cv2.getPerspectiveTransform(src, dst),
        (max(w, 1), max(h, 1)),
        borderMode=cv2.BORDER_REPLICATE,
        flags=cv2.INTER_CUBIC,
    )
    return np.rot90(strip) if strip.shape[0] >= 1.5 * strip.shape[1] else strip


def ctc_confidence(probs: np.ndarray) -> np.ndarray:
    """Greedy CTC confidence of each row of [n, T, classes] softmax output: the mean top probability
    over the kept steps (not blank 0, not a repeat); 0 for an empty reading."""
    best, top = probs.argmax(2), probs.max(2)
    keep = best != 0
    keep[:, 1:] &= best[:, 1:] != best[:, :-1]
    counts = keep.sum(1)
    return np.where(counts > 0, (top * keep).sum(1) / np.maximum(counts, 1), 0.0)


class ScoreOcr:
    reads: tuple[str, ...] = ("frames_jpeg",)  # the columns it is given (process.call_clip_stage)
    writes: tuple[str, ...] = ("ocr_score", "ocr_boxes", "ocr_model")

    def __init__(self, config: ScoreOcrConfig) -> None:
        self.config = config
        det = weights_path(config.model, DET_WEIGHTS, f"{config.STAGE}.model")
        self.det = open_session(det, config)
        self.det_input_name = self.det.get_inputs()[0].name
        self.label = str(det)
        self.rec = None
        if config.verify:
            rec = weights_path(config.rec_model, REC_WEIGHTS, f"{config.STAGE}.rec_model")
            self.rec = open_session(rec, config)
            self.label += f"+{rec}"

    def detect(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Text boxes of each BGR frame, frames of one size batched ``frames_per_pass`` at a time."""
        c = self.config
        inputs = [det_input(f, c.short_side) for f in frames]
        by_shape: dict[tuple, list[int]] = {}
        for i, x in enumerate(inputs):
            by_shape.setdefault(x.shape, []).append(i)
        out: list = [None] * len(frames)
        for members in by_shape.values():
            for k in range(0, len(members), c.frames_per_pass):
                part = members[k : k + c.frames_per_pass]
                maps = self.det.run(None, {self.det_input_name: np.stack([inputs[i] for i in part])})[0]
                for i, prob in zip(part, maps[:, 0], strict=True):
                    h, w = frames[i].shape[:2]
                    out[i] = boxes_from_map(prob, w, h, c.box_threshold, c.unclip_ratio)
        return out

    def readable(self, strips: list[np.ndarray]) -> np.ndarray:
        """Which text strips the recognition model reads with confidence >= min_confidence."""
        conf = np.zeros(len(strips))
        order = np.argsort([s.shape[1] / s.shape[0] for s in strips])
        for k in range(0, len(strips), self.config.frames_per_pass):
            part = order[k : k + self.config.frames_per_pass]
            ratio = max(REC_MIN_WIDTH / REC_HEIGHT, *(strips[i].shape[1] / strips[i].shape[0] for i in part))
            width = int(REC_HEIGHT * ratio)
            batch = np.zeros((len(part), 3, REC_HEIGHT, width), np.float32)
            for j, i in enumerate(part):
                s = strips[i]
                w = min(width, math.ceil(REC_HEIGHT * s.shape[1] / s.shape[0]))
                x = cv2.resize(s, (w, REC_HEIGHT)).astype(np.float32) * (2 / 255) - 1
                batch[j, :, :, :w] = x.transpose(2, 0, 1)
            conf[part] = ctc_confidence(self.rec.run(None, {self.rec.get_inputs()[0].name: batch})[0])
        return conf >= self.config.min_confidence

    def frame_boxes(self, jpegs: list[bytes]) -> list[tuple[float, int]]:
        """(share of the picture in text boxes, number of boxes) of each JPEG frame."""
        frames = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in jpegs]
        boxes = self.detect(frames) if frames else []
        if self.rec is not None:
            strips = [crop_box(f, b) for f, bs in zip(frames, boxes, strict=True) for b in bs]
            if strips:
                keep = self.readable(strips)
                ends = np.cumsum([len(b) for b in boxes])
                boxes = [bs[keep[e - len(bs) : e]] for bs, e in zip(boxes, ends, strict=True)]
        return [
            (covered_share(b, f.shape[1], f.shape[0]), len(b)) for f, b in zip(frames, boxes, strict=True)
        ]

    def __call__(self, rows: list[dict]) -> list[dict]:
        c = self.config
        out = [dict(r) for r in rows]
        counts = [len(r.get("frames_jpeg") or []) for r in out]
        measured = iter(self.frame_boxes([f for r in out for f in r.get("frames_jpeg") or []]))
        for row, n in zip(out, counts, strict=True):
            row["ocr_model"] = self.label
            mine = [next(measured) for _ in range(n)]
            if not mine:
                row["ocr_score"] = row["ocr_boxes"] = None
                continue
            row["ocr_score"] = area = float(np.mean([a for a, _ in mine]))
            row["ocr_boxes"] = most = max(b for _, b in mine)
            if area > c.max_text_area:
                reject(
                    row, c.STAGE, "text_overlay", f"OCR text boxes cover {area:.1%} > {c.max_text_area:.0%}"
                )
            elif c.max_boxes and most > c.max_boxes:
                reject(row, c.STAGE, "text_overlay", f"{most} OCR text boxes on one frame > {c.max_boxes}")
        return out
