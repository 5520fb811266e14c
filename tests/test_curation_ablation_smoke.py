"""bench/curation_ablation.py end to end at toy size: pools, `vidsift curate` with caption_from_sidecar, the
uncurated windows, training both arms, sampling and judging. It checks the plumbing, not the result."""

import json

import pyarrow.parquet as pq
import torch

from tests.conftest import REPO, load_script


def test_curation_ablation_toy(tmp_path):
    bench = load_script(REPO / "bench" / "curation_ablation.py")
    out = tmp_path / "ablation"
    argv = [
        "--toy",
        "--out",
        str(out),
        "--seeds",
        "2",
        "--steps",
        "2",
        "--sample-steps",
        "2",
        "--threads",
        "1",
    ]
    threads = torch.get_num_threads()
    try:
        results = bench.main(argv)
    finally:
        torch.set_num_threads(threads)  # main() sets it for the process

    assert json.loads((out / "results.json").read_text()) == results
    pool = results["pools"]["check"]
    assert pool["drawn"]["sources"] >= 4 and set(pool["rates"]) >= {"cuts_per_source", "text_rate"}
    # the curated arm is the real curate run: every clip captioned by caption_from_sidecar from the truth
    clips = pq.read_table(out / "pool-check" / "curated" / "clips").to_pylist()
    assert clips and all(c["caption_model"].startswith("sidecar:") for c in clips)
    truth = json.loads((out / "pool-check" / "pool.json").read_text())["sources"]
    for c in clips:
        shots = truth[c["source_uri"].rsplit("/", 1)[-1]]["shots"]
        assert c["caption"] in {s["caption"] for s in shots}
    held = pool["train_clips_hold"]
    assert held["curated"]["clips"] == len(clips) and held["uncurated"]["clips"] == pool["windows"]["windows"]
    for arm in ("uncurated", "curated"):
        runs = results["runs"][arm]
        assert [r["seed"] for r in runs] == [0, 1]
        assert all(r["samples"] == 3 * 2 and 0 <= r["adherence"] <= 1 for r in runs)
        assert (out / "runs" / f"{arm}-seed1").is_dir()
        assert results["summary"][arm]["adherence"]["seeds"] == [r["adherence"] for r in runs]
    assert set(results["goals"]) >= {"adherence_gap_beats_spread", "cut_or_black_halved"}
