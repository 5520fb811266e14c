"""``vidsift select --output NEW`` carries the run's cached latents (``RUN/latents/<model>/<group>.parquet``,
written by ``vidsift encode --vae diffusers:NAME``) for the clips the new run keeps, local and on S3."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.cluster.conftest import s3  # noqa: F401  (moto on loopback)
from tests.conftest import run_cli
from tests.pipeline.test_select import _rows, _upload, scored_run
from vidsift.model.finetune.latents import SCHEMA, SETTINGS_KEY, written_settings
from vidsift.pipeline import storage

SETTINGS = {"model": "tiny/wan", "buckets": [[5, 32, 32]], "frame_stride": 1, "text_tokens": 8,
            "caption_column": "caption", "dtype": "float16"}  # fmt: skip
KEY = "tiny--wan-0123abcd"


def cache_latents(run: Path) -> dict[str, pa.Table]:
    """A cache file per group as ``encode_group`` writes it (its schema, settings metadata, 4-row row groups,
    zstd): a row for every accepted clip, and one for a clip the run no longer holds."""
    rng = np.random.default_rng(3)
    written = {}
    for f in sorted((run / "clips").glob("*.parquet")):
        ids = sorted(pq.read_table(f, columns=["clip_id"]).column("clip_id").to_pylist()) + [f"gone-{f.stem}"]
        n = len(ids)
        cols = {field.name: pa.nulls(n, field.type) for field in SCHEMA}
        cols.update(
            clip_id=pa.array(ids),
            frames=pa.array([5] * n, pa.int32()),
            latent_mean=pa.array([rng.bytes(64) for _ in ids], pa.binary()),
            latent_shape=pa.array([[4, 2, 4, 4]] * n, pa.list_(pa.int32())),
            model=pa.array(["tiny/wan"] * n),
        )
        table = pa.table(cols, schema=SCHEMA).replace_schema_metadata(
            {SETTINGS_KEY: json.dumps(SETTINGS, sort_keys=True).encode()}
        )
        path = run / "latents" / KEY / f.name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, compression="zstd", row_group_size=4)
        written[f.stem] = table
    return written


def check_carried(src: Path, dst, cached: dict[str, pa.Table]) -> dict:
    """The new run's cache: per group, exactly the source rows of the clips it accepts, in the same layout;
    a group with accepted clips the source had not cached is marked for ``encode`` to redo."""
    accepted = set(_rows(dst, "clips")) if isinstance(dst, Path) else None
    before = set(_rows(src, "clips"))
    folder = storage.join(dst, "latents", KEY)
    files = storage.parquet_files(folder)
    assert [storage.name(f) for f in files] == sorted(f"{g}.parquet" for g in cached)
    totals = {"rows": 0, "incomplete": 0}
    for f in files:
        group = storage.name(f).removesuffix(".parquet")
        t = storage.read_table(f)
        assert t.schema.equals(SCHEMA)
        if accepted is None:
            continue
        ids = set(t.column("clip_id").to_pylist())
        source = cached[group]
        in_group = pq.read_table(Path(dst) / "clips" / f"{group}.parquet", columns=["clip_id"])
        group_ids = {c for c in accepted if c in set(in_group["clip_id"].to_pylist())}
        assert ids == group_ids & set(source.column("clip_id").to_pylist())
        assert t == source.filter(pa.compute.is_in(source.column("clip_id"), value_set=pa.array(sorted(ids))))
        md = pq.read_metadata(f)
        assert {md.row_group(i).num_rows for i in range(md.num_row_groups - 1)} <= {4}
        assert md.row_group(0).column(0).compression == "ZSTD"
        missing = len(group_ids - before)
        settings = written_settings(f)
        if missing:
            assert settings == {**SETTINGS, "select_missing_clips": missing}
            totals["incomplete"] += 1
        else:
            assert settings == SETTINGS  # a rerun of encode skips it
        totals["rows"] += t.num_rows
    return totals


def test_select_carries_cached_latents_of_the_kept_clips(tmp_path):
    src = scored_run(tmp_path / "run")
    cached = cache_latents(src)
    r = run_cli("select", str(src), "--where", "motion_score > 0.8", "--output", str(tmp_path / "sel"))
    assert r.returncode == 0, r.stderr
    assert "cached latents of 1 model(s) carried" in r.stderr
    totals = check_carried(src, tmp_path / "sel", cached)
    report = json.loads((tmp_path / "sel" / "manifest.json").read_text())["select"]["latents"]
    assert report["models"] == [KEY]
    assert report["latents_rows"] == totals["rows"] > 0
    assert report["latents_groups_incomplete"] == totals["incomplete"] > 0
    newly = set(_rows(tmp_path / "sel", "clips")) - set(_rows(src, "clips"))
    assert report["latents_clips_missing"] == len(newly) > 0
    source_rows = sum(t.num_rows for t in cached.values())
    assert report["latents_rows_dropped"] == source_rows - totals["rows"] > 0


def test_select_without_latents_writes_none(tmp_path):
    src = scored_run(tmp_path / "run", n=60)
    r = run_cli("select", str(src), "--where", "motion_score > 0.8", "--output", str(tmp_path / "sel"))
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "sel" / "latents").exists()
    assert "latents" not in json.loads((tmp_path / "sel" / "manifest.json").read_text())["select"]


@pytest.mark.slow
def test_select_carries_latents_on_s3(s3, tmp_path):  # noqa: F811
    import boto3

    from vidsift.pipeline.select import select_run

    boto3.client("s3").create_bucket(Bucket="select-latents")
    src = scored_run(tmp_path / "run", n=120)
    cached = cache_latents(src)
    _upload(src, "s3://select-latents/run")
    where = "motion_score > 0.8"
    assert select_run(src, tmp_path / "sel", where=where) == select_run(
        "s3://select-latents/run", "s3://select-latents/sel", where=where
    )
    check_carried(src, "s3://select-latents/sel", cached)
    for f in sorted((tmp_path / "sel" / "latents" / KEY).glob("*.parquet")):
        with storage.open_input(f"s3://select-latents/sel/latents/{KEY}/{f.name}") as remote:
            assert remote.read() == f.read_bytes(), f
