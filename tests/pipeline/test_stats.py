"""``vidsift stats``: the numbers on a run whose every value is known, on a real curated run, and the CLI."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli, vidsift_exe
from tests.pipeline.run_fixture import (
    HOSTILE_REASON,
    HOSTILE_SOURCE,
    MARKUP_CAPTION,
    N_ACCEPTED,
    synthetic_run,
)
from vidsift.pipeline import stats as stats_mod
from vidsift.pipeline.stats import RunError, aspect_name, compare_stats, compute_stats


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "run"
    rows = synthetic_run(out)
    return out, rows


def test_funnel_rejections_and_checks(syn):
    out, rows = syn
    s = compute_stats(out)
    f = s["funnel"]
    assert f["input_videos"] == 8 and f["readable_videos"] == 6 and f["videos_with_clips"] == 6
    assert f["accepted_clips"] == N_ACCEPTED and f["rejected_clips"] == 11
    assert f["scenes"] == f["candidate_clips"] == N_ACCEPTED + 11
    assert f["input_hours"] == pytest.approx(6 * 600 / 3600)
    assert f["accepted_hours"] == pytest.approx(
        sum(r["duration_s"] for r in rows["accepted"]) / 3600, rel=1e-6
    )
    assert all(c["ok"] for c in s["checks"]), s["checks"]
    assert {(x["reason"], x["videos"]) for x in s["rejections"]["videos"]} == {
        ("no_video_stream", 1),
        ("duplicate_file", 1),
    }
    clips = {(x["stage"], x["reason"]): x["clips"] for x in s["rejections"]["clips"]}
    assert clips == {("split_scenes", "scene_too_short"): 8, ("filter_aesthetic", HOSTILE_REASON): 3}
    assert s["duplicates"]["duplicate_files"] == 1 and s["duplicates"]["clips_with_dup_of"] == 3


def test_quantiles_and_histograms_match_numpy(syn):
    out, rows = syn
    s = compute_stats(out)
    assert s["run"]["quantiles"] == "exact"
    acc = s["scores"]["accepted"]
    for col in ("luma_mean", "sharpness", "duration_s", "width"):
        values = np.array([r[col] for r in rows["accepted"]], dtype=np.float64)
        d = acc[col]
        assert d["count"] == len(values) and d["nulls"] == 0
        for p in (1, 5, 25, 50, 75, 95, 99):
            assert d[f"p{p}"] == pytest.approx(np.quantile(values, p / 100), rel=1e-5), (col, p)
        assert d["mean"] == pytest.approx(values.mean(), rel=1e-5)
        assert sum(d["hist"]["counts"]) == len(values)
    # a column only the second group has: counted there, null in the first
    a = acc["aesthetic_score"]
    assert a["count"] == N_ACCEPTED // 2 and a["nulls"] == N_ACCEPTED // 2
    assert a["max"] == pytest.approx((N_ACCEPTED - 1) / 10)
    # rejected clips have no media columns: only the analysis scores are summarised
    assert "luma_mean" in s["scores"]["rejected"] and "width" not in s["scores"]["rejected"]


def test_approximate_quantiles_above_the_threshold(syn, monkeypatch):
    out, rows = syn
    monkeypatch.setattr(stats_mod, "EXACT_QUANTILE_ROWS", 10)
    s = compute_stats(out)
    assert s["run"]["quantiles"] == "approx"
    # the log-bucket sketch on 60 values 0..59: within 0.1% of the exact quantiles
    acc = s["scores"]["accepted"]
    assert acc["luma_mean"]["p50"] == pytest.approx(29.5, rel=1e-3)
    # integers fall in buckets of their own: exact; a histogram still counts every clip
    assert acc["width"]["p50"] == np.median([r["width"] for r in rows["accepted"]])
    assert sum(acc["luma_mean"]["hist"]["counts"]) == acc["luma_mean"]["count"]


def test_sketch_quantiles_within_relative_error():
    """The sketch against numpy on a heavy-tailed sample with zeros, negatives and repeated values."""
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.lognormal(3.0, 2.0, 50_000), -rng.lognormal(0.0, 1.0, 5_000), np.zeros(300)])
    values = np.concatenate([values, np.full(2_000, 854.0)])
    sketch = stats_mod._LogSketch()
    for chunk in np.array_split(rng.permutation(values), 7):
        sketch.add(chunk)
    assert sketch.n == len(values) and sketch.min == values.min() and sketch.max == values.max()
    assert sketch.sum == pytest.approx(values.sum())
    qs = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999)
    got = stats_mod._quantiles(*sketch.points(), qs)
    want = np.quantile(values, qs)
    assert np.allclose(got, want, rtol=stats_mod.SKETCH_GAMMA - 1, atol=1e-12), (got, want)
    # the exact path is quantile_cont itself
    exact = stats_mod._ExactValues()
    exact.add(values)
    assert np.allclose(stats_mod._quantiles(*exact.points(), qs), want, rtol=1e-12)


def test_captions_media_flags_models_sources(syn):
    out, rows = syn
    s = compute_stats(out)
    cap = s["captions"]["caption"]
    assert cap["present"] == N_ACCEPTED - 1 and cap["missing_or_empty"] == 1
    words = [len(r["caption"].split()) for r in rows["accepted"] if r["caption"] is not None]
    assert cap["words"]["p50"] == pytest.approx(np.median(words))
    assert cap["words"]["p95"] == pytest.approx(np.quantile(words, 0.95))
    assert cap["words"]["max"] == max(words)
    media = s["media"]
    assert {x["value"]: x["clips"] for x in media["aspect"]} == {"16:9": 15, "9:16": 15, "4:3": 15, "1:1": 15}
    assert {x["value"]: x["clips"] for x in media["fps"]} == {24.0: 20, 25.0: 20, 30.0: 20}
    assert s["flags"]["is_watermarked"] == {"true": 10, "false": 20, "null": 30}
    assert s["flags"]["qa_flags"] == {"hallucination": 6}
    assert s["categories"]["cut_kind_start"]["distinct"] == 2
    assert s["models"]["columns"]["caption_model"]["top"] == [{"value": "tiny-random-vlm", "clips": 30}]
    assert s["models"]["manifest"]["caption_vlm.model"] == "tiny/vlm"
    assert s["models"]["manifest"]["caption"]["random_weights"] is True
    assert s["sources"]["sources"] == 6
    assert HOSTILE_SOURCE in {x["source_uri"] for x in s["sources"]["top"]}
    hours = [x["hours"] for x in s["sources"]["top"]]
    assert hours == sorted(hours, reverse=True)


def test_aspect_names():
    assert aspect_name(1920, 1080) == "16:9" and aspect_name(1080, 1920) == "9:16"
    assert aspect_name(1440, 1080) == "4:3" and aspect_name(1000, 1000) == "1:1"
    assert aspect_name(1000, 400) == "2.50:1"


def test_missing_columns_are_skipped(tmp_path):
    """A run whose files hold only a few columns (older or partial): no crash, nothing invented."""
    out = tmp_path / "run"
    for table in ("clips", "rejected", "videos"):
        (out / table).mkdir(parents=True)
    pq.write_table(pa.table({"clip_id": ["a", "b"], "source_uri": ["x", "y"]}), out / "clips/g0.parquet")
    pq.write_table(pa.table({"source_uri": ["x", "y"]}), out / "videos/g0.parquet")
    (out / "_run.json").write_text("{}")
    s = compute_stats(out)
    assert s["funnel"]["accepted_clips"] == 2 and s["funnel"]["input_videos"] == 2
    assert s["scores"] == {"accepted": {}, "rejected": {}} and s["captions"] == {} and s["media"] == {}
    assert s["rejections"] == {"videos": [], "clips": []}
    assert s["sources"]["sources"] == 2


def test_compare(syn, tmp_path):
    out, _ = syn
    other = tmp_path / "b"
    synthetic_run(other, n_accepted=40)
    c = compare_stats(compute_stats(out), compute_stats(other))
    counts = {x["name"]: x for x in c["counts"]}
    assert (
        counts["accepted_clips"]["a"] == N_ACCEPTED and counts["accepted_clips"]["delta"] == 40 - N_ACCEPTED
    )
    shifts = {x["column"]: x for x in c["scores"]}
    # luma_mean is the clip index: medians 29.5 and 19.5
    assert shifts["luma_mean"]["median_shift"] == pytest.approx(-10.0)
    reasons = {x["reason"]: x["delta"] for x in c["reasons"]}
    assert reasons["clip/split_scenes/scene_too_short"] == 0


def test_cli_json_terminal_and_compare(syn):
    out, _ = syn
    r = run_cli("stats", str(out), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["funnel"]["accepted_clips"] == N_ACCEPTED
    r = run_cli("stats", str(out), "--compare", str(out))
    assert r.returncode == 0, r.stderr
    for title in (
        "Funnel",
        "Rejected clips",
        "Scores of accepted clips",
        "Captions",
        "Top sources",
        "Counts",
    ):
        assert title in r.stdout
    r = run_cli("stats", str(out), "--compare", str(out), "--json")
    assert json.loads(r.stdout)["compare"]["scores"][0]["median_shift"] == 0


def test_cli_prints_data_verbatim(tmp_path):
    """Rich markup in data is text, not markup (and malformed markup must not crash the table)."""
    out = tmp_path / "run"
    (out / "clips").mkdir(parents=True)
    uri = MARKUP_CAPTION + " [/unclosed]"
    pq.write_table(
        pa.table({"clip_id": ["a"], "source_uri": [uri], "duration_s": [1.0]}), out / "clips/g.parquet"
    )
    (out / "_run.json").write_text("{}")
    env = {**os.environ, "COLUMNS": "300"}
    r = subprocess.run(
        [vidsift_exe(), "stats", str(out)], capture_output=True, text=True, env=env, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert uri in r.stdout


@pytest.mark.parametrize("case", ["missing", "not_a_run", "corrupt", "corrupt_manifest"])
def test_bad_run_folder_is_a_one_line_error(tmp_path, syn, case):
    out = tmp_path / "run"
    if case == "not_a_run":
        out.mkdir()
        (out / "notes.txt").write_text("hello")
    elif case in ("corrupt", "corrupt_manifest"):
        synthetic_run(out, n_accepted=4)
        if case == "corrupt":
            (out / "clips" / "g000000.parquet").write_bytes(b"PAR1 this is not parquet")
        else:
            (out / "manifest.json").write_text("{not json")
    r = run_cli("stats", str(out))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("vidsift: error: ")


def test_truncated_parquet_data_is_a_one_line_error(tmp_path):
    """A file whose footer reads but whose data pages are damaged fails in the scan, still cleanly."""
    out = tmp_path / "run"
    synthetic_run(out, n_accepted=4)
    path = out / "clips" / "g000000.parquet"
    data = bytearray(path.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little")
    for i in range(8, len(data) - 8 - footer):  # scribble over the column chunks, keep the footer
        data[i] = 0xFF
    path.write_bytes(bytes(data))
    r = run_cli("stats", str(out), "--json")
    assert r.returncode == 2, r.stdout[-500:]
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_real_run_counts_add_up(bad_run):
    src, out, _ = bad_run  # bad/ and hostile names, curated by the CLI once per session (conftest.py)
    s = compute_stats(out)
    manifest = json.loads((out / "manifest.json").read_text())["counts"]
    assert all(c["ok"] for c in s["checks"]), s["checks"]
    f = s["funnel"]
    assert f["input_videos"] == manifest["input_files"] == len(list(src.iterdir())) > 20
    assert f["accepted_clips"] == manifest["clips_accepted"] > 0
    assert f["input_hours"] == pytest.approx(manifest["input_hours"], abs=1e-5)
    reasons = {x["reason"] for x in s["rejections"]["videos"]}
    assert {"no_video_stream", "empty_file", "no_clip_accepted"} <= reasons
    assert {"luma_mean", "sharpness", "duration_s"} <= set(s["scores"]["accepted"])
    assert all(Path(x["source_uri"]).exists() for x in s["sources"]["top"])


def test_bad_path_is_a_run_error(tmp_path):
    with pytest.raises(RunError, match="no such run folder"):
        compute_stats(tmp_path / "nope")


def test_caption_words_are_spaces_plus_one_of_the_trimmed_text():
    import duckdb

    texts = ["two words", "  lead", "trail  ", " both ends ", "", "   ", "one", "é ü x", None]
    con = duckdb.connect()
    con.execute("CREATE TABLE t (c VARCHAR)")
    con.executemany("INSERT INTO t VALUES (?)", [[x] for x in texts])
    got = [r[0] for r in con.execute(f"SELECT {stats_mod._words_sql('c')} FROM t").fetchall()]
    assert got == [2, 1, 1, 2, 0, 0, 1, 3, None]


def test_duckdb_file_handle_keeps_one_read_position_per_thread():
    """DuckDB's threads share one handle and each calls seek() then read(): every thread must read the
    bytes at its own position (the bridge that lets ``vidsift stats`` read s3:// runs)."""
    import threading
    import time

    import pyarrow as pa

    from vidsift.pipeline.storage import _PositionalFile

    data = bytes(range(256)) * 4096  # 1 MiB
    f = _PositionalFile(pa.BufferReader(data))
    wrong = []

    def reader(k: int) -> None:
        for i in range(300):
            at = (k * 7919 + i * 104729) % (len(data) - 4096)
            f.seek(at)
            time.sleep(0)  # another thread runs between the two calls, as DuckDB's threads do
            if f.read(4096) != data[at : at + 4096] or f.tell() != at + 4096:
                wrong.append((k, at))

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong
    f.seek(-10, 2)
    assert f.read() == data[-10:] and f.read(5) == b""
