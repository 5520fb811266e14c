"""bench/scene_fusion_cv.py: the candidates and measurements its learned check is trained on.

On a clip made here with ffmpeg (two pictures, one hard cut), the cut is a candidate labelled 1 and
reported by ``fused``, every measurement is a finite number, and the slid-picture distance tells a
picture moved by a few pixels from a different picture.
"""

import shutil
import subprocess

import numpy as np
import pytest

from tests.conftest import REPO, load_script

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")


def _bench():
    return load_script(REPO / "bench" / "scene_fusion_cv.py")


def test_a_slid_picture_is_near_and_another_picture_is_far():
    bench = _bench()
    rng = np.random.default_rng(0)
    # a smooth random picture at the thumbnails' 16 x 24, and the same picture slid 2 rows up / 3 columns left
    big = rng.uniform(0, 255, (8, 12, 3)).repeat(2, axis=0).repeat(2, axis=1)
    big = (big + np.roll(big, 1, axis=0) + np.roll(big, 1, axis=1)) / 3
    picture = big.astype(np.float32)
    up = np.vstack([picture[2:], picture[-2:]])
    left = np.hstack([picture[:, 3:], picture[:, -3:]])
    other = rng.uniform(0, 255, picture.shape).astype(np.float32)
    assert bench.shifted_distance(picture, up, floor=8.0) < 0.05
    assert bench.shifted_distance(picture, left, floor=8.0) < 0.05
    assert bench.shifted_distance(picture, other, floor=8.0) > 0.5
    # unmoved, it is the plain contrast-normalised distance: 0 for the same picture
    assert bench.shifted_distance(picture, picture, floor=8.0) == 0.0


def test_the_cut_of_a_made_clip_is_a_labelled_candidate_with_finite_measurements(tmp_path):
    video = tmp_path / "cut.mp4"
    subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-y"),
            *("-f", "lavfi", "-i", "testsrc=s=160x90:r=25:d=2"),
            *("-f", "lavfi", "-i", "mandelbrot=s=160x90:r=25"),
            *("-filter_complex", "[1:v]trim=duration=2[m];[0:v][m]concat=n=2:v=1:a=0[v]", "-map", "[v]"),
            *("-c:v", "libx264", "-pix_fmt", "yuv420p", str(video)),
        ],
        check=True,
    )
    bench = _bench()
    from vidsift.pipeline.cli import _default_recipe

    recipe = _default_recipe(["split_scenes.detector=fused", "split_scenes.fused_gate=true"])
    signals, fps = bench.sa._analysis(video, recipe, None, "analysis-gated")
    arms, fused, fast = bench.candidates(signals, fps, recipe.stage("split_scenes"))
    rows = arms["learned"]
    assert 50 in fused and 50 in fast
    truth = {"cuts": [50], "gradual": []}
    at_cut = [r for r in rows if bench.label(r["frame"], truth, 2)]
    assert [r["frame"] for r in at_cut] == [50]
    assert at_cut[0]["in_fused"] == 1.0 and at_cut[0]["p_single"] > 0.5
    for r in rows + arms["learned-fast"]:
        assert sorted(k for k in r if k != "frame") == sorted(bench.FEATURES)
        assert all(np.isfinite(r[k]) for k in bench.FEATURES)
    # the weight-free arm reads fast's own boundaries and no measurement that needs the network
    assert [r["frame"] for r in bench._rows({"rows": arms}, "learned-fast")] == fast
    assert not set(bench.FAST_FEATURES) & {"p_single", "p_many", "in_fused", "fused_x_p", "net_ran"}
    assert bench.label(50 + 3, truth, 2) == 0
    assert bench.label(12, {"cuts": [], "gradual": [[10, 20]]}, 2) == 1
