"""The run-wide near-duplicate pass: real copies among synthetic rows, --against, crowded buckets, Ray."""

from __future__ import annotations

import json
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from tests.conftest import embedded_ray, run_cli
from vidsift.pipeline.dedup_index import VERIFY_CHUNK, find_near_duplicates, load_hash_table
from vidsift.pipeline.measures import dhashes
from vidsift.pipeline.process import process_video
from vidsift.pipeline.recipe import build_recipe
from vidsift.pipeline.stages.dedup import DedupConfig, find_duplicates
from vidsift.pipeline.stages.score_bars import frame_bars
from vidsift.pipeline.stages.write_shards import WriteShardsConfig, write_group, write_manifest

BUNNY = "quality/Big_Buck_Bunny_180_10s.webm"
STAGES = ("probe", "analyze", "split_scenes", "dedup", "transcode", "write_shards")


def _copy(ffmpeg: str, src: Path, dst: Path, *vf: str) -> Path:
    cmd = [ffmpeg, "-v", "error", "-y", "-i", str(src)] + (["-vf", ",".join(vf)] if vf else [])
    subprocess.run(cmd + ["-an", "-c:v", "libx264", "-crf", "30", str(dst)], check=True)
    return dst


@pytest.fixture(scope="module")
def real(videos, bunny_copies, processed) -> dict[str, list[dict]]:
    """Accepted clip rows of a real clip, three copies of it and another clip, by the real hashing code (the
    default recipe; the copies and the decoded rows are shared with test_filters: conftest.py)."""
    paths = {"original": videos / BUNNY, **bunny_copies, "other": videos / "quality/flipping_a_pancake.mkv"}
    rows = {k: [c for c in processed(p)[1] if not c.get("reject_reason")] for k, p in paths.items()}
    assert all(rows.values()), {k: len(v) for k, v in rows.items()}
    return rows


def synthetic(n: int, seed: int, prefix: str = "s", independent: bool = False) -> list[dict]:
    """``n`` clip rows with random hashes and curves: 1-10 samples x 3 crops drifting a bit from sample to
    sample, as frames of one shot do, or (``independent``) 10 samples of 3 unrelated random hashes."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        if independent:
            hashes = rng.integers(-(2**63), 2**63 - 1, 30, dtype=np.int64)
        else:
            samples = int(rng.integers(1, 11))
            base = rng.integers(0, 2**63, 3, dtype=np.int64)
            drift = rng.integers(0, 64, (samples, 3))
            hashes = (base[None, :] ^ (np.int64(1) << drift)).ravel()
        rows.append(
            {
                "clip_id": f"{prefix}{seed:04d}{i:027x}",
                "video_id": f"{prefix}{i:015x}",
                "source_uri": f"/raw/{prefix}{seed}/{i // 4:06d}.mp4",
                "start_frame": (i % 4) * 300,
                "end_frame": (i % 4) * 300 + 150,
                "duration_s": 5.0,
                "width": 640,
                "height": 360,
                "clip_mp4": b"\x00mp4" + i.to_bytes(4, "big"),
                "dedup_hashes": hashes.tolist(),
                "dedup_curve": (np.cumsum(rng.normal(0, 3, 64)) + 100).astype(np.float32).tolist(),
            }
        )
    return rows


def write_run(out: Path, clips: list[dict], groups: int = 4) -> Path:
    """A finished run folder holding ``clips`` (accepted), one video row per source, in ``groups`` groups."""
    by_group: dict[str, list[dict]] = {}
    for c in clips:  # a source's clips all in one group, as curate writes them
        g = f"g{zlib.crc32(c['source_uri'].encode()) % groups:06d}"
        by_group.setdefault(g, []).append({**c, "group": g})
    for g, rows in by_group.items():
        videos = {
            r["source_uri"]: {
                "source_uri": r["source_uri"],
                "group": g,
                "status": "ok",
                "video_id": r["video_id"],
            }
            for r in rows
        }
        write_group(out, g, rows, [], list(videos.values()), WriteShardsConfig())
    recipe = build_recipe({"stage": [{"name": s} for s in STAGES]})
    write_manifest(out, {"schema_version": 1, "recipe": recipe.to_dict(), "counts": {"input_files": 0}})
    return out


def _table(out: Path, name: str) -> list[dict]:
    return ds.dataset(out / name, format="parquet").to_table().to_pylist()


def _by_source(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["source_uri"], []).append(r)
    return out


def test_dedup_finds_real_copies_among_synthetic_rows(real, tmp_path):
    clips = [r for rows in real.values() for r in rows]
    out = write_run(tmp_path / "run", clips + synthetic(3000, seed=1), groups=3)
    before = _table(out, "clips")
    result = run_cli("dedup", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    kept = _table(out, "clips")
    rejected = _table(out, "rejected")
    bunny = {r["clip_id"] for k in ("original", "reencoded", "cropped", "reversed") for r in real[k]}
    assert len(bunny) == 4 and len(rejected) == 3 and {r["clip_id"] for r in rejected} < bunny
    assert all(r["reject_reason"] == "near_duplicate" and r["reject_stage"] == "dedup" for r in rejected)
    (kept_id,) = bunny - {r["clip_id"] for r in rejected}  # one representative, every copy points at it
    assert {r["dup_of"] for r in rejected} == {kept_id}
    copies = {r["clip_id"] for r in rejected}
    assert all(r["reject_detail"].startswith(f"duplicates {r['dup_of']} from ") for r in rejected)
    assert len(kept) + len(rejected) == len(before)
    # moved rows keep their media bytes and every other column
    old = {r["clip_id"]: r for r in before}
    for r in rejected:
        assert (
            r["clip_mp4"] == old[r["clip_id"]]["clip_mp4"]
            and r["dedup_hashes"] == old[r["clip_id"]]["dedup_hashes"]
        )
    # accounting: the copies' videos have no accepted clip any more; the manifest is recounted
    videos = {v["source_uri"]: v for v in _table(out, "videos")}
    for r in rejected:
        assert videos[r["source_uri"]]["status"] == "rejected"
        assert videos[r["source_uri"]]["reason"] == "no_clip_accepted"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["clips_accepted"] == len(kept)
    assert manifest["counts"]["clips_rejected_by_reason"] == {"dedup/near_duplicate": len(copies)}
    assert manifest["dedup"]["moved"] == len(copies) == report["moved"]
    assert manifest["dedup"]["clips"] == len(before)
    # a second pass finds nothing more and changes nothing
    again = run_cli("dedup", str(out), "--quiet")
    assert again.returncode == 0 and json.loads(again.stdout)["moved"] == 0
    assert again.stderr == ""  # --quiet: no bars, no lines (the counts are in the JSON and the manifest)
    assert {r["clip_id"] for r in _table(out, "rejected")} == copies


def test_dedup_against_an_earlier_run(real, tmp_path):
    earlier = write_run(tmp_path / "earlier", real["original"] + synthetic(500, seed=2))
    files = {p: p.read_bytes() for p in sorted(earlier.rglob("*")) if p.is_file()}
    batch = [r for k in ("reencoded", "reversed", "other") for r in real[k]]
    new = write_run(tmp_path / "new", batch + synthetic(500, seed=3))
    result = run_cli("dedup", str(new), "--against", str(earlier))
    assert result.returncode == 0, result.stderr
    rejected = _table(new, "rejected")
    copies = {r["clip_id"] for k in ("reencoded", "reversed") for r in real[k]}
    assert {r["clip_id"] for r in rejected} == copies
    # the kept clip is the earlier run's (never rewritten), named with its run
    original = real["original"][0]["clip_id"]
    assert {r["dup_of"] for r in rejected} == {original}
    assert all(f" in run {earlier}" in r["reject_detail"] for r in rejected)
    assert {p: p.read_bytes() for p in sorted(earlier.rglob("*")) if p.is_file()} == files
    assert {r["clip_id"] for r in real["other"]} <= {r["clip_id"] for r in _table(new, "clips")}
    assert json.loads((new / "manifest.json").read_text())["dedup"]["against"] == [str(earlier)]


@pytest.mark.slow
def test_an_unreadable_clip_file_is_one_line_naming_it(tmp_path):
    # in this process or in a Ray read task (the footer is fine, the hash columns are missing): one line
    # naming the file, nothing rewritten
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = write_run(tmp_path / "run", synthetic(200, seed=22), groups=3)
    bad = sorted((run / "clips").glob("*.parquet"))[1]
    pq.write_table(pa.table({"clip_id": ["x"]}), bad)
    files = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    for extra in ([], ["--set", "distribute_above=0"]):
        result = run_cli("dedup", str(run), "--quiet", *extra)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [
            f"vidsift: error: {bad}: cannot read the clip columns dedup needs "
            "(No match for FieldRef.Name(group) in clip_id: string)"
        ]
    bad.write_bytes(b"not parquet")
    result = run_cli("dedup", str(run), "--quiet")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"vidsift: error: {bad}: cannot read the clip columns dedup needs (")
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and p != bad} == {
        p: b for p, b in files.items() if p != bad
    }


def test_dedup_refuses_a_folder_that_is_not_a_run(tmp_path):
    r = run_cli("dedup", str(tmp_path))
    assert r.returncode == 2 and "not a finished vidsift run" in r.stderr and "Traceback" not in r.stderr
    run = write_run(tmp_path / "run", synthetic(10, seed=4))
    r = run_cli("dedup", str(run), "--set", "max_hamming=99")
    assert r.returncode == 2 and "max_hamming" in r.stderr and "Traceback" not in r.stderr


def _planted_copy(row: dict, seed: int) -> dict:
    """``row`` with 3 random bits flipped in every hash, the same curve: a re-encode."""
    rng = np.random.default_rng(seed)
    h = np.asarray(row["dedup_hashes"], np.int64).view(np.uint64)
    for _ in range(3):
        h = h ^ (np.uint64(1) << rng.integers(0, 64, len(h)).astype(np.uint64))
    return {
        **row,
        "clip_id": row["clip_id"] + "-copy",
        "width": 320,
        "dedup_hashes": h.view(np.int64).tolist(),
    }


def test_once_skipped_buckets_are_still_compared(tmp_path):
    # 10,000 clips x up to 30 hashes: every value of every 8-bit band of the old index was shared by more
    # than 1,000 clips, so the old search skipped all of them and found nothing
    rows = synthetic(12_000, seed=5, independent=True)
    plants = [_planted_copy(rows[k], k) for k in (123, 4567, 9999)]
    run = write_run(tmp_path / "run", rows + plants)
    table = load_hash_table([run])
    clip = np.repeat(np.arange(len(table)), np.diff(table.offsets))
    for band in range(8):  # clips per value of each 8-bit band of the old index
        value = ((table.hashes >> np.uint64(8 * band)) & np.uint64(0xFF)).astype(np.int64)
        clips_per_value = np.bincount(np.unique(clip * 256 + value) % 256, minlength=256)
        assert clips_per_value.min() > 1000
    duplicates, stats = find_near_duplicates(table, DedupConfig())
    ids = table.clip_id.to_pylist()
    assert {ids[d]: ids[k] for d, k in duplicates.items()} == {
        p["clip_id"]: p["clip_id"][:-5] for p in plants
    }
    assert stats.candidate_pairs >= 3 and stats.verified_pairs == 3


def test_crowded_buckets_are_split_and_counted_not_skipped(tmp_path):
    # 300 clips whose hashes agree on 48 of 64 bits: with 16-bit keys every table has one bucket of all of
    # them; buckets over max_bucket are keyed again on more bits, counted, and still searched
    rng = np.random.default_rng(6)
    common = np.int64(rng.integers(0, 2**63))
    rows = synthetic(300, seed=7)
    for r in rows:
        free = rng.integers(0, 2**16, len(r["dedup_hashes"]), dtype=np.int64)
        r["dedup_hashes"] = ((common & ~np.int64(0xFFFF)) | free).tolist()
        r["dedup_curve"] = rng.normal(100, 10, 64).tolist()  # only the copy shares a history
    copy = _planted_copy(rows[42], 1)
    run = write_run(tmp_path / "run", rows + [copy])
    config = DedupConfig(index_tables=4, index_bits=16, max_bucket=16)
    table = load_hash_table([run])
    duplicates, stats = find_near_duplicates(table, config)
    ids = table.clip_id.to_pylist()
    assert {ids[d]: ids[k] for d, k in duplicates.items()} == {copy["clip_id"]: rows[42]["clip_id"]}
    assert stats.split_buckets > 0 and stats.split_entries > 0
    result = run_cli(
        "dedup", str(run), "--set", "index_tables=4", "--set", "index_bits=16", "--set", "max_bucket=16"
    )
    assert result.returncode == 0, result.stderr
    assert "crowded buckets" in result.stderr  # printed, and counted in the manifest
    # a progress bar per phase over its real units of work, at its final count
    lines = result.stderr.splitlines()
    bars = {line.split("━")[0].strip(): line for line in lines if line.startswith("dedup ")}
    files = len(list((run / "clips").glob("*.parquet")))
    assert f"{files}/{files} files" in bars["dedup read"] and "301 clips read" in bars["dedup read"]
    assert "4/4 hash tables" in bars["dedup index"]
    assert f"{stats.hash_pairs_compared} hash pairs compared" in bars["dedup index"]
    chunks = -(-stats.candidate_pairs // VERIFY_CHUNK)
    assert f"{chunks}/{chunks} parts of pairs" in bars["dedup verify"]
    assert f"1 of {stats.candidate_pairs} candidates verified" in bars["dedup verify"]
    assert "1/1 groups" in bars["dedup rewrite"] and "1 clips moved" in bars["dedup rewrite"]
    assert json.loads((run / "manifest.json").read_text())["dedup"]["split_buckets"] == stats.split_buckets


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for this module's in-process Ray-task tests (``embedded_ray``); dedup starting and
    stopping a Ray of its own is what the ``vidsift dedup`` runs with distribute_above=0
    (test_an_unreadable_clip_file_is_one_line_naming_it) go through."""
    with embedded_ray(actors=False):
        yield


@pytest.mark.slow
def test_ray_tasks_find_the_same_duplicates(real, local_ray, tmp_path):
    clips = [r for k in ("original", "reencoded", "reversed") for r in real[k]]
    rows = synthetic(2000, seed=8)
    run = write_run(tmp_path / "run", clips + rows + [_planted_copy(rows[7], 2)])
    table = load_hash_table([run])
    local, local_stats = find_near_duplicates(table, DedupConfig())
    distributed, stats = find_near_duplicates(table, DedupConfig(distribute_above=0))
    assert stats.distributed and not local_stats.distributed
    assert distributed == local and len(local) == 3
    assert stats.candidate_pairs == local_stats.candidate_pairs


@pytest.mark.slow
def test_tasks_reading_the_shards_move_what_the_local_pass_moves(real, local_ray, tmp_path, monkeypatch):
    # past distribute_above, Ray tasks read the run in chunks of files (here 3 chunks of the new run and 2
    # of the earlier one) and nothing run-wide is held by the driver: the same clips move, with the same
    # kept clips and details, as when this process reads both runs whole
    import shutil

    from vidsift.pipeline import dedup_index
    from vidsift.pipeline.dedup_run import dedup_finished_run

    earlier = write_run(tmp_path / "earlier", real["original"] + synthetic(300, seed=20), groups=2)
    rows = synthetic(600, seed=21)
    batch = [r for k in ("reencoded", "reversed", "other") for r in real[k]]
    batch += rows + [_planted_copy(rows[9], 4)]
    new = write_run(tmp_path / "new", batch, groups=6)
    shutil.copytree(new, tmp_path / "new-local")
    monkeypatch.setattr(dedup_index, "LOAD_CLIPS", 250)  # about 2 files of ~100 clips per read task
    monkeypatch.setattr(dedup_index, "PAIR_PARTITION_ENTRIES", 2000)  # candidate pairs in ~10 partitions

    def not_here(*args, **kwargs):
        raise AssertionError("the driver read the run's hash columns")

    # the Ray workers import their own copy of the module: only this process is forbidden to read the run
    monkeypatch.setattr(dedup_index, "read_clip_columns", not_here)
    monkeypatch.setattr(dedup_index, "load_hash_table", not_here)
    tasks = dedup_finished_run(str(new), [str(earlier)], ["distribute_above=0"])
    monkeypatch.undo()
    local = dedup_finished_run(str(tmp_path / "new-local"), [str(earlier)])
    assert tasks["distributed"] and not local["distributed"]
    same = ("clips", "hashes", "tables", "key_bits", "hash_pairs_compared", "candidate_pairs",
            "verified_pairs", "duplicates", "moved", "clips_without_hashes")  # fmt: skip
    assert {k: tasks[k] for k in same} == {k: local[k] for k in same}
    assert tasks["moved"] == 3 and tasks["clips"] == len(batch) + len(real["original"]) + 300

    def moved(run: Path) -> list[tuple]:
        return sorted((r["clip_id"], r["dup_of"], r["reject_detail"]) for r in _table(run, "rejected"))

    by_tasks = moved(new)
    assert by_tasks == moved(tmp_path / "new-local")
    copies = {r["clip_id"] for k in ("reencoded", "reversed") for r in real[k]}
    assert {m[0] for m in by_tasks} == copies | {rows[9]["clip_id"] + "-copy"}
    assert {m[1] for m in by_tasks if m[0] in copies} == {real["original"][0]["clip_id"]}


def test_candidate_partitions_hold_every_pair_once_and_sorted():
    from vidsift.pipeline.dedup_index import _partition

    rng = np.random.default_rng(23)
    pairs = np.unique(rng.integers(0, 2**63, 5000, dtype=np.int64).astype(np.uint64))
    parts = _partition(pairs, 7)
    assert len(parts) == 7 and all(len(p) > 500 for p in parts)  # spread, not all in one
    assert all(np.all(p[1:] > p[:-1]) for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), pairs)
    # the same pair lands in the same partition whichever table found it
    again = _partition(pairs[::3], 7)
    assert all(np.isin(a, b).all() for a, b in zip(again, parts, strict=True))
    assert _partition(pairs, 1)[0] is pairs


def test_curve_rule_for_many_pairs_is_the_rule_for_one():
    from vidsift.pipeline.stages.dedup import _curves_agree, curves_agree_many

    rng = np.random.default_rng(9)
    n = 400
    a = np.cumsum(rng.normal(0, 3, (n, 64)), axis=1) + 100
    b = a + rng.normal(0, rng.choice([0.5, 5, 50], n)[:, None], (n, 64))  # near copies to strangers
    b[::7] = b[::7, ::-1]  # time-reversed copies
    a[::5, :32] = 80.0  # flat brightness: the frame difference decides
    b[::10, 32:] = 0.0  # flat motion in one of the two
    a[::11] = np.nan  # no curve: the frames alone decide
    for config in (DedupConfig(), DedupConfig(min_step_corr=-1)):  # with the step test and without
        one = [
            _curves_agree([] if np.isnan(x).any() else x.tolist(), y.tolist(), config)
            for x, y in zip(a, b, strict=True)
        ]
        many = curves_agree_many(a, b, config)
        assert many.tolist() == one
        assert 0 < sum(one) < n  # both outcomes occur


def _strangers_with_like_levels(rng: np.random.Generator, want: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of unrelated random-walk brightness curves whose levels correlate >= 0.9 (forwards)."""
    a = np.cumsum(rng.normal(0, 3, (20_000, 32)), axis=1) + 100
    b = np.cumsum(rng.normal(0, 3, (20_000, 32)), axis=1) + 100
    za = (a - a.mean(1, keepdims=True)) / a.std(1, keepdims=True)
    zb = (b - b.mean(1, keepdims=True)) / b.std(1, keepdims=True)
    like = np.flatnonzero((za * zb).mean(1) >= 0.9)[:want]
    assert len(like) == want
    flat_motion = np.full((want, 32), 1.0)  # steady frame difference: the brightness decides
    return np.hstack([a[like], flat_motion]), np.hstack([b[like], flat_motion])


def test_step_test_rejects_strangers_whose_levels_correlate_and_keeps_copies():
    # smooth curves of unrelated clips correlate >= 0.9 in level by chance (random walks: ~1%, real
    # brightness curves: ~1%, docs/filters.md); their steps do not: the old rule took them as copies
    rng = np.random.default_rng(10)
    a, b = _strangers_with_like_levels(rng, 40)
    old, new = DedupConfig(min_step_corr=-1), DedupConfig()
    from vidsift.pipeline.stages.dedup import curves_agree_many

    assert curves_agree_many(a, b, old).all()
    assert not curves_agree_many(a, b, new).any()
    # copies: re-encoding noise (0.3 luma levels), time-reversed, sped up (resampled), a darker crop
    noisy = a + rng.normal(0, 0.3, a.shape)
    reverse = np.hstack([a[:, 31::-1], a[:, :31:-1]]) + rng.normal(0, 0.3, a.shape)
    x = np.linspace(0, 31, 32)
    sped = np.array([np.interp(x * 0.97 + 0.5, np.arange(32), row[:32]) for row in a])
    sped = np.hstack([sped, a[:, 32:]])
    darker = np.hstack([a[:, :32] * 0.8 + 5, a[:, 32:]])
    for copy in (noisy, reverse, sped, darker):
        assert curves_agree_many(a, copy, new).all()


def test_old_runs_dedup_as_before_with_the_step_test_off():
    # the stored columns are unchanged; the rule is stricter: a pair of clips with the same frames but only
    # level-alike brightness was a duplicate before and is not now; --set dedup.min_step_corr=-1 restores it
    from vidsift.pipeline.stages.dedup import find_duplicates

    a, b = _strangers_with_like_levels(np.random.default_rng(11), 1)
    rows = synthetic(2, seed=12)
    rows[1]["dedup_hashes"] = rows[0]["dedup_hashes"]  # the same frames
    rows[0]["dedup_curve"], rows[1]["dedup_curve"] = a[0].tolist(), b[0].tolist()
    assert find_duplicates(rows, DedupConfig()) == {}
    assert find_duplicates(rows, DedupConfig(min_step_corr=-1)) == {rows[1]["clip_id"]: rows[0]["clip_id"]}


def _flip_bits(hashes: list[int], bits: int, rng: np.random.Generator) -> list[int]:
    """Each hash with ``bits`` distinct bits flipped: that many bits from its original."""
    out = []
    for h in hashes:
        for b in rng.choice(64, bits, replace=False):
            h ^= 1 << int(b)
        out.append(h - (1 << 64) if h >= 1 << 63 else h)
    return out


def test_frames_matched_only_near_the_limit_also_need_the_motion_to_agree():
    # unrelated steady shots meet within max_hamming (10) bits by chance, more often the larger the run: the 2
    # false pairs of the 3M bench run matched at 9-10 bits with brightness just past the step test and
    # frame-difference curves that disagree (docs/benchmarks.md). Frames that close, and the brightness alone,
    # no longer make a copy; near-limit frames with the motion agreeing still do, and so do close frames.
    from vidsift.pipeline.stages.dedup import find_duplicates

    rng = np.random.default_rng(31)
    rows = synthetic(2, seed=32)
    brightness = np.cumsum(rng.normal(0, 3, 32)) + 100
    motion = np.abs(np.cumsum(rng.normal(0, 1, 32))) + 2
    stranger_motion = np.abs(np.cumsum(rng.normal(0, 1, 32))) + 2
    assert np.corrcoef(motion, stranger_motion)[0, 1] < 0.8
    rows[0]["dedup_curve"] = np.hstack([brightness, motion]).tolist()
    rows[1]["dedup_curve"] = np.hstack([brightness + rng.normal(0, 0.3, 32), stranger_motion]).tolist()
    original = rows[0]["dedup_hashes"] = rows[0]["dedup_hashes"][:3]  # one sample at 3 crops: distances exact
    want = {rows[1]["clip_id"]: rows[0]["clip_id"]}

    rows[1]["dedup_hashes"] = _flip_bits(original, 9, rng)  # every sample 9 bits away: near the limit
    assert find_duplicates(rows, DedupConfig()) == {}
    assert find_duplicates(rows, DedupConfig(edge_diff_corr=-1)) == want  # the rule before this test
    assert find_duplicates(rows, DedupConfig(edge_margin=0)) == want  # no margin: nothing is near the limit
    rows[1]["dedup_hashes"] = _flip_bits(original, 3, rng)  # a re-encode: close frames, the rule as before
    assert find_duplicates(rows, DedupConfig()) == want

    # near-limit frames of a real copy: the motion agrees too, forwards or (time-reversed copies) backwards
    rows[1]["dedup_hashes"] = _flip_bits(original, 9, rng)
    rows[1]["dedup_curve"] = np.hstack([brightness, motion * 1.5 + rng.normal(0, 0.1, 32)]).tolist()
    assert find_duplicates(rows, DedupConfig()) == want
    rows[1]["dedup_curve"] = np.hstack([brightness[::-1], motion[::-1]]).tolist()
    assert find_duplicates(rows, DedupConfig()) == want
    # a steady frame difference in one says nothing more: the brightness and frames decide as before
    rows[1]["dedup_curve"] = np.hstack([brightness, np.full(32, 2.0)]).tolist()
    assert find_duplicates(rows, DedupConfig()) == want


def test_edge_settings_are_checked():
    with pytest.raises(ValueError, match="edge_margin"):
        DedupConfig(edge_margin=11)
    with pytest.raises(ValueError, match="edge_diff_corr"):
        DedupConfig(edge_diff_corr=1.5)


def test_the_curate_pass_shows_bars_on_its_console_and_stays_quiet_with_it(tmp_path):
    # vidsift curate passes log=console.print: the bars and lines follow that console (--quiet: nothing)
    import io

    from rich.console import Console

    from vidsift.pipeline.dedup_run import dedup_run

    rows = synthetic(60, seed=16)
    run = write_run(tmp_path / "run", rows + [_planted_copy(rows[5], 3)])
    shown = {}
    for quiet in (True, False):
        buffer = io.StringIO()
        console = Console(file=buffer, quiet=quiet, width=200)
        result = dedup_run(run, DedupConfig(), WriteShardsConfig(), log=console.print)
        shown[quiet] = buffer.getvalue()
        assert result["moved"] == (1 if quiet else 0)  # the second pass finds the copy already moved
    assert shown[True] == ""
    assert all(f"dedup {phase}" in shown[False] for phase in ("read", "index", "verify", "rewrite"))
    assert "0/0 groups" in shown[False] and "0 near-duplicate clips moved" in shown[False]


def test_a_recipe_without_score_bars_hashes_as_one_with_it(videos):
    # dedup measures its own flat-frame test in the decode pass (it once read score_bars' line profiles,
    # so a recipe without score_bars failed every video with internal_error)
    def candidates(stages: list[str]) -> dict[str, list[int]]:
        recipe = build_recipe(
            {"stage": [{"name": s, **({"detector": "fast"} if s == "split_scenes" else {})} for s in stages]}
        )
        video, clips = process_video(str(videos / BUNNY), "g", recipe)
        assert video["status"] == "ok", video
        return {c["clip_id"]: c["dedup_hashes"] for c in clips}

    stages = ["probe", "analyze", "split_scenes", "dedup", "transcode", "write_shards"]
    without = candidates(stages)
    with_bars = candidates(stages[:3] + ["score_bars"] + stages[3:])
    assert without and all(without.values())
    assert without == with_bars


def test_boxed_copies_meet_the_original_inside_their_bars(videos, ffmpeg, processed, tmp_path):
    # a copy squeezed into letterbox or pillarbox bars: before the crops were centred in the picture inside
    # the bars, its samples met the original only near the 10-bit limit (medians 7-10 bits), so the
    # motion test decided; now they meet it within a few bits
    src = videos / BUNNY
    boxed = {
        "letterbox": _copy(
            ffmpeg, src, tmp_path / "lb.mp4", "scale=640:360", "scale=iw:ih*3/4", "pad=iw:ih*4/3:0:(oh-ih)/2"
        ),
        "pillarbox": _copy(ffmpeg, src, tmp_path / "pb.mp4", "scale=iw*3/4:ih", "pad=iw*4/3:ih:(ow-iw)/2:0"),
    }

    def accepted(path: Path, tag: str) -> list[dict]:  # the default recipe (conftest.py)
        rows = [c for c in processed(path)[1] if not c.get("reject_reason")]
        assert rows, path
        return [{**r, "clip_id": tag + r["clip_id"]} for r in rows]

    (original,) = accepted(src, "o")
    a = np.array(original["dedup_hashes"], np.int64).view(np.uint64).reshape(-1, 3)
    for kind, path in boxed.items():
        (copy,) = accepted(path, kind)
        b = np.array(copy["dedup_hashes"], np.int64).view(np.uint64).reshape(-1, 3)
        nearest = np.bitwise_count(b[:, :, None, None] ^ a[None, None]).reshape(len(b), -1).min(axis=1)
        assert np.median(nearest) <= 3, (kind, nearest.tolist())
        pair = {copy["clip_id"], original["clip_id"]}  # the one kept is the one with more pixels
        assert [set(p) for p in find_duplicates([original, copy], DedupConfig()).items()] == [pair], kind


def test_bars_are_found_frame_by_frame_only_in_pairs_next_to_a_brighter_picture():
    rng = np.random.default_rng(0)
    picture = rng.integers(60, 200, (90, 160)).astype(np.uint8)
    boxed = np.zeros((120, 160), np.uint8)
    boxed[15:105] = picture
    assert frame_bars(boxed) == (15, 15, 0, 0)
    # the whole frame's 100% and 80% crops hash as before; the picture alone takes the 64% crop's place
    assert dhashes(boxed, (15, 15, 0, 0))[:2] == dhashes(boxed)[:2]
    assert dhashes(boxed, (15, 15, 0, 0))[2] == dhashes(picture)[0]
    # a dark band at the top only (a night sky) is not a bar, nor is a dark band above a dark picture
    sky = boxed.copy()
    sky[105:] = picture[:15]
    assert frame_bars(sky) is None
    dim = np.zeros((120, 160), np.uint8)
    dim[15:105] = 20
    assert frame_bars(dim) is None


def test_a_ray_cluster_it_cannot_reach_is_one_line_not_a_hang(tmp_path, monkeypatch):
    # past distribute_above the search runs as Ray tasks; RAY_ADDRESS naming nothing once hung in Ray's
    # retries for over 5 minutes
    import socket

    run = write_run(tmp_path / "run", synthetic(200, seed=23), groups=3)
    files = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    result = run_cli("dedup", str(run), "--quiet", "--set", "distribute_above=0", timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"vidsift: error: cannot reach the Ray cluster at 127.0.0.1:{port}: [Errno 111] Connection refused"
    ]
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == files
