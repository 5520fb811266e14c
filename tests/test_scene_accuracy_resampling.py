"""bench/scene_accuracy.py's F1 intervals over resampled files: what they say about a split's figures."""

import numpy as np

from tests.conftest import REPO, load_script


def _bench():
    return load_script(REPO / "bench" / "scene_accuracy.py")


def _row(bench, **by_method):
    """One file's scores: every method tp/fp/fn = (1, 0, 0) unless given."""
    scores = {}
    for m in bench.METHODS:
        tp, fp, fn = by_method.get(m.replace("-", "_"), (1, 0, 0))
        scores[m] = {"tp": tp, "fp": fp, "fn": fn}
    return scores


def test_identical_files_give_the_pooled_f1_in_every_resample():
    bench = _bench()
    rows = [_row(bench, fast=(2, 1, 1)) for _ in range(5)]
    f1 = bench._resampled_f1(rows, 300)
    assert np.allclose(f1["fast"], 2 * 2 / (2 * 2 + 1 + 1)) and np.allclose(f1["fused"], 1.0)
    assert len(f1["fast"]) == 300


def test_one_bad_file_among_few_spreads_the_interval_and_pairs_the_methods():
    bench = _bench()
    # four files where fused and the package agree, one where fused has three false cuts
    rows = [_row(bench) for _ in range(4)] + [_row(bench, fused=(1, 3, 0))]
    f1 = bench._resampled_f1(rows, 2000, seed=1)
    pooled = 2 * 5 / (2 * 5 + 3)
    lo, hi = np.percentile(f1["fused"], [2.5, 97.5])
    assert lo < pooled < hi and hi == 1.0 and lo < 0.7  # resamples without the bad file, and with it twice
    # resampled together: the package is never below fused, and level exactly when the bad file is left out
    above = f1["fused"] > f1["TransNetV2-package"]
    level = f1["fused"] == f1["TransNetV2-package"]
    assert not above.any() and abs(level.mean() - (4 / 5) ** 5) < 0.04
    # the same seed gives the same resamples
    assert np.array_equal(bench._resampled_f1(rows, 2000, seed=1)["fused"], f1["fused"])


def test_resamples_of_clean_negatives_alone_have_no_f1_and_are_left_out():
    bench = _bench()
    clean = dict.fromkeys(("fast", "transnetv2", "fused", "fused_everywhere"), (0, 0, 0))
    rows = [
        _row(
            bench,
            **clean,
            ContentDetector=(0, 2, 0),
            AdaptiveDetector=(0, 0, 0),
            TransNetV2_package=(0, 0, 0),
        )
    ]
    rows.append(_row(bench))  # one boundary, found by every method
    f1 = bench._resampled_f1(rows, 1000, seed=2)
    alone = np.isnan(f1["fused"])  # both draws the clean file: about a quarter of the resamples
    assert 0.15 < alone.mean() < 0.35
    assert np.all(f1["fused"][~alone] == 1.0)
    # false cuts on clean negatives are an F1 of 0, not a missing one
    assert not np.isnan(f1["ContentDetector"]).any() and np.all(f1["ContentDetector"][alone] == 0.0)
    assert bench._share(f1["fused"], f1["fast"], np.equal) == 1.0  # the clean-only resamples do not count
    # fused is above ContentDetector when a resample holds both files (about 2 in 3 of those that count),
    # level when it holds the found boundary twice; left-out resamples would pull "above" to 1 in 2
    assert abs(bench._share(f1["fused"], f1["ContentDetector"], np.greater) - 2 / 3) < 0.06
    assert abs(bench._share(f1["fused"], f1["ContentDetector"], np.equal) - 1 / 3) < 0.06
