"""``vidsift select`` in Arrow and DuckDB: the same decisions as the row language, hostile SQL, S3 runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from tests.cluster.conftest import s3  # noqa: F401  (moto on loopback)
from tests.conftest import run_cli
from tests.pipeline.test_dedup import _planted_copy, synthetic, write_run
from vidsift.pipeline import storage
from vidsift.pipeline.dedup_run import dedup_finished_run
from vidsift.pipeline.select import SelectError, parse_where, select_run
from vidsift.pipeline.stages.write_shards import WriteShardsConfig, write_group
from vidsift.pipeline.stats import compute_stats


def _reason(stage: str, reason: str) -> dict:
    return {"reject_stage": stage, "reject_reason": reason, "reject_detail": f"{reason} (test)"}


def scored_run(out: Path, n: int = 400) -> Path:
    """Accepted clips with scores and captions, filter-rejected ones with and without media, and rows
    rejected by split_scenes (select never decides those), in 3 groups."""
    rng = np.random.default_rng(11)
    rows = synthetic(n, seed=12)
    for k, r in enumerate(rows):
        r["motion_score"] = float(rng.gamma(2.0, 0.5)) if k % 9 else None  # some nulls
        r["aesthetic_score"] = float(rng.normal(4.5, 0.8))
        r["caption"] = ["a dog runs on a beach", "a city street at night", None][k % 3]
        r["clip_mp4"] = rng.bytes(int(rng.integers(10, 200)))
    write_run(out, rows, groups=3)
    # rewrite each group with a share of its rows rejected, as curate leaves them
    for f in sorted((out / "clips").glob("*.parquet")):
        g = f.stem
        clips = ds.dataset(f).to_table().to_pylist()
        videos = ds.dataset(out / "videos" / f.name).to_table().to_pylist()
        accepted, rejected = [], []
        for k, c in enumerate(clips):
            if k % 4 == 1:
                rejected.append({**c, **_reason("score_motion", "low_motion")})
            elif k % 4 == 2:  # rejected before transcode: no media
                rejected.append({**c, "clip_mp4": None, **_reason("score_aesthetic", "low_aesthetic")})
            elif k % 8 == 3:
                rejected.append({**c, "clip_mp4": None, **_reason("split_scenes", "scene_too_short")})
            else:
                accepted.append(c)
        write_group(out, g, accepted, rejected, videos, WriteShardsConfig())
    return out


def _rows(out, table: str) -> dict[str, dict]:
    return {r["clip_id"]: r for r in ds.dataset(Path(out) / table, format="parquet").to_table().to_pylist()}


def _reference(src: Path, where: str) -> set[str]:
    """Accepted clip ids after select, by the row-dict language (the semantics select always had)."""
    predicate = parse_where(where)
    rows = list(_rows(src, "clips").values()) + list(_rows(src, "rejected").values())
    keep = set()
    for r in rows:
        decidable = not r.get("reject_reason") or r["reject_stage"].startswith("score_")
        if decidable and predicate(r) and r["clip_mp4"] is not None:
            keep.add(r["clip_id"])
    return keep


def test_select_where_and_sql_agree_with_the_row_language(tmp_path):
    src = scored_run(tmp_path / "run")
    where = "motion_score > 0.8 and not aesthetic_score < 4.0"
    sql = "motion_score > 0.8 AND NOT aesthetic_score < 4.0"
    a = run_cli("select", str(src), "--where", where, "--output", str(tmp_path / "a"))
    b = run_cli("select", str(src), "--sql", sql, "--output", str(tmp_path / "b"), "--merge-mib", "0")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    # small groups are written as one unless --merge-mib 0 says otherwise
    assert [len(list((tmp_path / d / "_done").iterdir())) for d in "ab"] == [1, 3]
    assert "3 groups written as 1" in a.stderr
    bad = run_cli("select", str(src), "--sql", sql, "--output", str(tmp_path / "x"), "--merge-mib", "-1")
    assert bad.returncode == 2 and "--merge-mib: must be a finite number >= 0" in bad.stderr
    expected = _reference(src, where)
    assert 0 < len(expected) < len(_rows(src, "clips")) + len(_rows(src, "rejected"))
    for out in (tmp_path / "a", tmp_path / "b"):
        clips, rejected = _rows(out, "clips"), _rows(out, "rejected")
        assert set(clips) == expected
        before = {**_rows(src, "clips"), **_rows(src, "rejected")}
        assert set(clips) | set(rejected) == set(before)  # nothing lost
        for cid, r in clips.items():  # media bytes copied as bytes
            assert (
                r["clip_mp4"] == before[cid]["clip_mp4"] and r["dedup_hashes"] == before[cid]["dedup_hashes"]
            )
        # split_scenes rejections stay as they were; passing rows without media say so
        assert {r["reject_reason"] for r in rejected.values()} <= {
            "scene_too_short",
            "select_where",
            "not_transcoded",
        }
        assert all(before[c]["reject_stage"] == "split_scenes" for c, r in rejected.items()
                   if r["reject_reason"] == "scene_too_short")  # fmt: skip
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["counts"]["clips_accepted"] == len(clips)
        videos = ds.dataset(out / "videos", format="parquet").to_table().to_pylist()
        assert sum(v["num_clips_accepted"] or 0 for v in videos) == len(clips)
    moves_a, moves_b = json.loads(a.stdout)["moves"], json.loads(b.stdout)["moves"]
    assert moves_a == moves_b and moves_a["rejected_to_accepted"] > 0 and moves_a["accepted_to_rejected"] > 0
    # DuckDB's own functions are there for --sql
    c = run_cli("select", str(src), "--sql", "caption ILIKE '%dog%'", "--output", str(tmp_path / "c"))
    assert c.returncode == 0, c.stderr
    assert {r["caption"] for r in _rows(tmp_path / "c", "clips").values()} == {"a dog runs on a beach"}


def test_select_flushes_every_file_once_before_the_manifest(tmp_path, fsynced):
    """select writes its groups without a flush each, then flushes every file and folder it wrote before
    the manifest says the run is there."""
    src = scored_run(tmp_path / "run", n=120)
    synced = fsynced
    synced.clear()  # the source run's own flushes
    out = tmp_path / "sel"
    select_run(src, out, where="motion_score > 0.8", merge_mib=0)  # every group as it is
    manifest = next(i for i, p in enumerate(synced) if "manifest.json" in p)
    written = sorted(str(p) for p in out.glob("*/*.parquet"))
    assert len(written) == 9  # 3 groups x 3 tables
    for path in [*written, *(str(out / d) for d in ("clips", "rejected", "videos", "_done"))]:
        assert synced.count(path) == 1 and synced.index(path) < manifest, path
    assert not any(".tmp-" in p and "manifest" not in p for p in synced)  # no flush per file


def _mib(run: Path, groups: list[str]) -> float:
    """What ``groups``' files of all tables add up to, in MiB."""
    return sum((run / t / f"{g}.parquet").stat().st_size for t in ("clips", "rejected", "videos")
               for g in groups) / (1 << 20)  # fmt: skip


@pytest.mark.parametrize("merged", [False, True])
def test_worker_processes_write_what_threads_write(tmp_path, merged):
    """Large runs are decided in worker processes (``select_worker.py``): the same files byte for byte, the
    same moves and manifest counts as threads, with each group as it is or with small groups merged
    (here the first two into one); a bad SQL condition is refused before any worker starts."""
    import filecmp

    src = scored_run(tmp_path / "run", n=240)
    where = "motion_score > 0.8 and aesthetic_score >= 4.0"
    merge = _mib(src, ["g000000", "g000001"]) if merged else 0
    by_threads = select_run(src, tmp_path / "t", where=where, processes=0, merge_mib=merge)
    by_workers = select_run(src, tmp_path / "p", where=where, processes=2, merge_mib=merge)
    assert by_threads == by_workers and by_workers["accepted_to_rejected"] > 0
    files = sorted(p.relative_to(tmp_path / "t") for p in (tmp_path / "t").rglob("*") if p.is_file())
    groups = 2 if merged else 3
    assert len(files) == groups * 3 + groups + 1  # groups x 3 tables, their markers, the manifest
    assert {f.name for f in files if f.parent.name == "_done"} == {"g000000", "g000002", "g000001"} - (
        {"g000001"} if merged else set()
    )
    assert files == sorted(p.relative_to(tmp_path / "p") for p in (tmp_path / "p").rglob("*") if p.is_file())
    for f in files:
        if f.name != "manifest.json":
            assert filecmp.cmp(tmp_path / "t" / f, tmp_path / "p" / f, shallow=False), f
    counts = [json.loads((tmp_path / d / "manifest.json").read_text())["counts"] for d in ("t", "p")]
    assert counts[0] == counts[1]
    with pytest.raises(SelectError, match="syntax error"):
        select_run(src, tmp_path / "bad", sql="motion_score >", processes=2)


def test_small_groups_are_written_as_one_with_every_row_and_count(tmp_path):
    """Consecutive groups whose files add up to less than ``merge_mib`` become one group named after the
    first: the same rows and bytes as a select that keeps every group (only ``group`` differs, and names the
    file the row is in), the same counts; the manifest says how many groups were read and written; the
    run-wide dedup pass then finds a planted copy across the old group boundary and rewrites the right
    file."""
    rows = synthetic(60, seed=21, prefix="m")
    plant = _planted_copy(rows[5], 5)
    plant["source_uri"] = rows[5]["source_uri"].replace("/raw/", "/other/")
    src = write_run(tmp_path / "run", rows + [plant], groups=4)
    groups = sorted(p.name for p in (src / "_done").iterdir())
    source = {**_rows(src, "clips")}
    assert len(groups) >= 3 and source[plant["clip_id"]]["group"] != source[rows[5]["clip_id"]]["group"]
    where = "width >= 320"
    kept = select_run(src, tmp_path / "kept", where=where, merge_mib=0)
    merged = select_run(src, tmp_path / "merged", where=where)  # a few KiB in all: one group
    assert kept == merged
    assert sorted(p.name for p in (tmp_path / "merged" / "_done").iterdir()) == groups[:1]
    for table in ("clips", "rejected", "videos"):
        a = ds.dataset(tmp_path / "kept" / table, format="parquet").to_table()
        b = ds.dataset(tmp_path / "merged" / table, format="parquet").to_table()
        assert [p.name for p in (tmp_path / "merged" / table).iterdir()] == [f"{groups[0]}.parquet"]
        assert set(b.column("group").to_pylist()) <= {groups[0]} and b.num_rows == a.num_rows
        key = "clip_id" if table != "videos" else "source_uri"
        assert sorted(b.drop_columns(["group"]).to_pylist(), key=lambda r: r[key]) == sorted(
            a.drop_columns(["group"]).to_pylist(), key=lambda r: r[key]
        )
        if table != "videos":  # one group in the shards' order: by source, then start frame
            keys = list(
                zip(b.column("source_uri").to_pylist(), b.column("start_frame").to_pylist(), strict=True)
            )
            assert keys == sorted(keys)
    manifests = [json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("kept", "merged")]
    assert [m["select"]["groups_written"] for m in manifests] == [len(groups), 1]
    assert manifests[1]["select"]["groups_read"] == len(groups)
    drop = lambda c: {k: v for k, v in c.items() if k not in ("groups", "groups_done")}  # noqa: E731
    assert drop(manifests[0]["counts"]) == drop(manifests[1]["counts"])
    assert manifests[1]["counts"]["groups_done"] == manifests[1]["counts"]["groups"] == 1
    checks = compute_stats(tmp_path / "merged")["checks"]  # `vidsift stats` finds every group there
    assert [c["ok"] for c in checks if c["check"] == "every group finished"] == [True], checks
    found = dedup_finished_run(str(tmp_path / "merged"))
    assert found["moved"] == 1
    dup = _rows(tmp_path / "merged", "rejected")[plant["clip_id"]]
    assert dup["dup_of"] == rows[5]["clip_id"] and dup["reject_reason"] == "near_duplicate"
    assert plant["clip_id"] not in _rows(tmp_path / "merged", "clips")


def test_groups_are_planned_by_their_files_sizes(tmp_path):
    from vidsift.pipeline.select import plan_groups

    src = write_run(tmp_path / "run", synthetic(80, seed=22, prefix="p"), groups=4)
    groups = sorted(p.name for p in (src / "_done").iterdir())
    assert plan_groups(src, groups, 0) == [[g] for g in groups]
    assert plan_groups(src, groups, 1024) == [groups]
    two = _mib(src, groups[:2])  # the first two fit exactly; the third would pass the limit
    assert plan_groups(src, groups, two)[0] == groups[:2]
    assert plan_groups(src, groups, _mib(src, groups[:1]) / 2) == [[g] for g in groups]  # none fits: alone


@pytest.mark.parametrize("processes", [0, 2])
def test_an_unreadable_group_file_is_one_line_naming_it(tmp_path, processes):
    src = scored_run(tmp_path / "run", n=120)
    broken = sorted((src / "rejected").glob("*.parquet"))[1]
    broken.write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(SelectError, match=rf"{broken.name}: not a readable shard file") as e:
        select_run(src, tmp_path / "sel", where="motion_score > 0.8", processes=processes)
    assert "\n" not in str(e.value) and not (tmp_path / "sel" / "manifest.json").exists()
    r = run_cli("select", str(src), "--where", "motion_score > 0.8", "--output", str(tmp_path / "cli"))
    assert r.returncode != 0 and "not a readable shard file" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("1=1; DROP TABLE clips", "without ';'"),
        ("(SELECT count(*) FROM read_csv('/etc/passwd')) > 0", "disabled by configuration"),
        ("(SELECT count(*) FROM read_parquet('clips/*.parquet')) > 0", "disabled by configuration"),
        ("motion > 1", "motion"),
        ("motion_score >", "syntax error"),
        ("caption > 3 OR", "syntax error"),
        ("", "empty condition"),
    ],
)
def test_sql_is_one_condition_that_reads_nothing_else(tmp_path, sql, message):
    src = write_run(tmp_path / "run", synthetic(5, seed=13))
    out = tmp_path / "out"
    with pytest.raises(SelectError, match=message) as e:
        select_run(src, out, sql=sql)
    assert len(str(e.value).splitlines()) == 1
    assert not out.exists()


def test_bad_sql_is_one_line_from_the_cli(tmp_path):
    src = write_run(tmp_path / "run", synthetic(5, seed=13))
    r = run_cli(
        "select",
        str(src),
        "--sql",
        "(SELECT 1 FROM read_text('/etc/passwd')) = 1",
        "--output",
        str(tmp_path / "o"),
    )
    assert r.returncode == 2, r.stdout
    assert "disabled by configuration" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_where_type_errors_are_one_line(tmp_path):
    src = write_run(tmp_path / "run", synthetic(5, seed=14))
    for where in ("caption > 3", "motion_score"):
        r = run_cli("select", str(src), "--where", where, "--output", str(tmp_path / "o"))
        assert r.returncode == 2 and "Traceback" not in r.stderr and "--where" in r.stderr, r.stderr
    r = run_cli(
        "select", str(src), "--where", "motion_score > 1", "--sql", "1=1", "--output", str(tmp_path / "o")
    )
    assert r.returncode == 2 and "not allowed with" in r.stderr


def _upload(local: Path, prefix: str) -> None:
    for p in sorted(local.rglob("*")):
        if p.is_file():
            storage.write_bytes_atomic(f"{prefix}/{p.relative_to(local).as_posix()}", p.read_bytes())


def _remote_rows(prefix: str) -> dict[str, dict]:
    return {r["clip_id"]: r for f in storage.parquet_files(prefix) for r in storage.read_table(f).to_pylist()}


@pytest.mark.slow
def test_select_and_dedup_on_s3_match_local(s3, tmp_path):  # noqa: F811
    import boto3

    boto3.client("s3").create_bucket(Bucket="select-dedup")
    local = scored_run(tmp_path / "run")
    rows = synthetic(50, seed=15, prefix="d")
    plants = [_planted_copy(rows[k], k) for k in (3, 30)]
    write_run(tmp_path / "dups", rows + plants)
    _upload(local, "s3://select-dedup/run")
    _upload(tmp_path / "dups", "s3://select-dedup/dups")
    _upload(tmp_path / "dups", "s3://select-dedup/dups-tasks")
    where = "motion_score > 0.8"
    assert select_run(local, tmp_path / "sel", where=where) == select_run(
        "s3://select-dedup/run", "s3://select-dedup/sel", where=where, processes=2
    )  # worker processes on the bucket (they get the same AWS settings)
    remote = {r["clip_id"]: r for f in storage.parquet_files("s3://select-dedup/sel/clips")
              for r in storage.read_table(f).to_pylist()}  # fmt: skip
    assert remote == _rows(tmp_path / "sel", "clips")
    # the same bytes: local groups are read by pyarrow or DuckDB, s3:// ones by pyarrow's S3 client
    for table in ("clips", "rejected", "videos"):
        for f in sorted((tmp_path / "sel" / table).glob("*.parquet")):
            with storage.open_input(f"s3://select-dedup/sel/{table}/{f.name}") as remote_file:
                assert remote_file.read() == f.read_bytes(), f
    assert json.loads(storage.read_text("s3://select-dedup/sel/manifest.json"))["counts"][
        "clips_accepted"
    ] == len(remote)
    here = dedup_finished_run(str(tmp_path / "dups"))
    there = dedup_finished_run("s3://select-dedup/dups")
    assert here["moved"] == there["moved"] == 2
    remote_rejected = {c: r["dup_of"] for c, r in _remote_rows("s3://select-dedup/dups/rejected").items()}
    assert remote_rejected == {c: r["dup_of"] for c, r in _rows(tmp_path / "dups", "rejected").items()}
    assert set(remote_rejected) == {p["clip_id"] for p in plants}
    # past distribute_above Ray tasks read the bucket's clip files themselves: the same moves
    tasks = dedup_finished_run("s3://select-dedup/dups-tasks", overrides=["distribute_above=0"])
    assert tasks["distributed"] and tasks["moved"] == 2
    by_tasks = _remote_rows("s3://select-dedup/dups-tasks/rejected")
    assert {c: r["dup_of"] for c, r in by_tasks.items()} == remote_rejected


def _random_column(field, n: int, rng: np.random.Generator):
    """Values of ``field``'s type with nulls, empty lists, null items, NaN, unicode and empty bytes."""
    import pyarrow as pa

    def scalar(t):
        if pa.types.is_boolean(t):
            return bool(rng.integers(2))
        if pa.types.is_integer(t):
            bound = 2 ** (t.bit_width - 1)
            return int(rng.integers(-bound, bound))
        if pa.types.is_floating(t):
            return float(rng.choice([np.nan, -0.0, 1e-30, rng.normal()]))
        if pa.types.is_binary(t):
            return rng.bytes(int(rng.integers(0, 40)))
        return rng.choice(["", "é 猫 \U0001f600", "a dog", "x" * 300])

    def value(t):
        if field.nullable and rng.random() < 0.2:
            return None
        if pa.types.is_list(t):
            return [None if rng.random() < 0.1 else scalar(t.value_type) for _ in range(rng.integers(0, 5))]
        return scalar(t)

    return pa.array([value(field.type) for _ in range(n)], field.type)


def test_group_files_read_by_duckdb_equal_pyarrow_reads(tmp_path):
    # local group files of many row groups are read by DuckDB (faster on 85-column, 64-row-group shards),
    # those of one or two by pyarrow; every column type of the three tables must come back as pyarrow reads
    # it, or select would change the shards it writes
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vidsift.pipeline.select import TABLES, _read_table, conform

    rng = np.random.default_rng(17)
    # a glob character in the path: pyarrow reads it; 3 row groups of 64 rows: DuckDB; one of 150: pyarrow
    for folder, rows in (("run", 64), ("run[1]", 64), ("one-group", 150)):
        (tmp_path / folder).mkdir()
        for name, schema in TABLES.items():
            table = pa.Table.from_arrays([_random_column(f, 150, rng) for f in schema], schema=schema)
            path = tmp_path / folder / f"{name}.parquet"
            pq.write_table(table, path, compression="zstd", row_group_size=rows)
            written = []  # what select would write from each read (NaN != NaN, so compare the files)
            for read in (_read_table(path), pq.read_table(path)):
                buffer = pa.BufferOutputStream()
                pq.write_table(conform(read, schema), buffer, compression="zstd", row_group_size=rows)
                written.append(buffer.getvalue().to_pybytes())
            assert written[0] == written[1] == path.read_bytes(), (folder, name)


def test_conform_gives_exactly_the_schema_from_any_starting_point(tmp_path):
    # conform has shortcuts (a table of the schema but for list item names; columns only dropped or added
    # at the end); every path must give what a rebuild of every column by name gives, down to item names
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vidsift.pipeline.schema import CLIP_SCHEMA, REJECTED_SCHEMA
    from vidsift.pipeline.select import conform

    def rebuilt(t, schema):
        cols = [t.column(f.name).cast(f.type) if f.name in t.column_names else pa.nulls(t.num_rows, f.type)
                for f in schema]  # fmt: skip
        return pa.Table.from_arrays(cols, schema=schema)

    def as_bytes(t):  # NaN != NaN: compare what a writer makes of the tables (clips -> rejected is not
        buffer = pa.BufferOutputStream()  # writable as it is: its reasons are null until select sets them)
        pq.write_table(pa.Table.from_arrays(t.columns, names=t.column_names), buffer)
        return buffer.getvalue().to_pybytes()

    rng = np.random.default_rng(5)
    columns = [_random_column(f, 40, rng) for f in REJECTED_SCHEMA]
    rejected = pa.Table.from_arrays(columns, schema=REJECTED_SCHEMA)
    pq.write_table(rejected, tmp_path / "r.parquet")
    read_back = pq.read_table(tmp_path / "r.parquet")  # lists come back as list<element: ...>
    assert any("element" in str(f.type) for f in read_back.schema)
    shuffled = read_back.select(list(reversed(read_back.column_names[5:])))  # 5 missing, the rest reversed
    narrow = rejected.set_column(rejected.schema.get_field_index("start_frame"), "start_frame",
                                 pa.array(range(40), pa.int32()))  # fmt: skip
    extra = read_back.append_column("not_in_any_schema", pa.array(range(40)))
    cases = {
        "read back": (read_back, REJECTED_SCHEMA),
        "rejected -> clips": (read_back, CLIP_SCHEMA),
        "clips -> rejected": (conform(read_back, CLIP_SCHEMA), REJECTED_SCHEMA),
        "shuffled, missing": (shuffled, REJECTED_SCHEMA),
        "a narrower type": (narrow, REJECTED_SCHEMA),
        "an extra column": (extra, REJECTED_SCHEMA),
    }
    for name, (t, schema) in cases.items():
        out = conform(t, schema)
        assert out.schema.equals(schema, check_metadata=True), name
        assert [str(f.type) for f in out.schema] == [str(f.type) for f in schema], name
        assert as_bytes(out) == as_bytes(rebuilt(t, schema)), name


def test_tally_counts_the_same_in_pieces_and_whole():
    # a group's tally counts in Python, a whole run's scan with a group_by: the two must agree
    import pyarrow as pa

    from vidsift.pipeline.select import add_tallies, tally

    n = 10_000
    stage = ["score_motion", "split_scenes"]
    reason = ["low_motion", "scene_too_short", None]
    rejected = pa.table({"reject_stage": [stage[k % 2] for k in range(n)],
                         "reject_reason": [reason[k % 3] for k in range(n)]})  # fmt: skip
    status = ["ok", "rejected", None]
    why = ["no_clip_accepted", None, "unreadable", "duplicate_file"]
    videos = pa.table({"status": [status[k % 3] for k in range(n)], "reason": [why[k % 4] for k in range(n)]})
    clips = pa.table({"duration_s": [0.5] * n})
    whole = tally(clips, rejected, videos)
    pieces = [tally(*(t.slice(k, 1000) for t in (clips, rejected, videos))) for k in range(0, n, 1000)]
    assert whole == add_tallies(pieces)
    assert whole["rejected"][("score_motion", "low_motion")] == len(range(0, n, 6))
    assert whole["videos_ok"] == len(range(0, n, 3))
    assert whole["videos_rejected"][None] == len(range(1, n, 12))  # rejected (k % 3 == 1) without reason
