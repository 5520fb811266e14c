"""Inputs from and shards to a real S3-compatible server (moto, loopback), then resume."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from tests.cluster.jobs import clip_ids, manifest, read_rows, submit_curate
from vidsift.pipeline import storage
from vidsift.pipeline.dedup_run import apply_dedup
from vidsift.pipeline.stages.write_shards import WriteShardsConfig

pytestmark = pytest.mark.slow


def _bucket(name: str) -> str:
    import boto3

    boto3.client("s3").create_bucket(Bucket=name)  # endpoint and keys from the s3 fixture's variables
    return f"s3://{name}"


def _keys(prefix: str) -> list[str]:
    fs, path = storage.filesystem(prefix)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)


@pytest.mark.timeout(60)
def test_storage_layer_on_s3(s3, tmp_path):
    base = _bucket("layer")
    for name, data in [("raw/a.mp4", b"a" * 10), ("raw/sub/b.mp4", b"bb"), ("other/c.mp4", b"c")]:
        storage.write_bytes_atomic(f"{base}/{name}", data)
    assert storage.list_files(f"{base}/raw") == {f"{base}/raw/a.mp4": 10, f"{base}/raw/sub/b.mp4": 2}
    assert storage.list_files(f"{base}/raw/a.mp4") == {f"{base}/raw/a.mp4": 10}
    with pytest.raises(FileNotFoundError):
        storage.list_files(f"{base}/nothing")
    # a remote input is read through one local spool file, deleted afterwards
    with storage.local_file(f"{base}/raw/a.mp4", str(tmp_path)) as local:
        assert open(local, "rb").read() == b"a" * 10
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError):
        with storage.local_file(f"{base}/raw/missing.mp4", str(tmp_path)):
            pass
    # atomic writes leave no temporary keys; a killed writer's temporary key is cleaned up
    storage.write_table_atomic(pa.table({"x": [1, 2]}), f"{base}/out/t/g1.parquet")
    storage.write_bytes_atomic(f"{base}/out/t/.g2.parquet.tmp-99", b"half")
    assert storage.parquet_files(f"{base}/out/t") == [f"{base}/out/t/g1.parquet"]
    assert storage.remove_partial_files(f"{base}/out") == 1
    assert _keys(f"{base}/out") == ["layer/out/t/g1.parquet"]
    assert storage.read_table(f"{base}/out/t/g1.parquet").column("x").to_pylist() == [1, 2]


@pytest.fixture(scope="module")
def s3_inputs(s3, tiny_clips):
    base = _bucket("vidsift-in")
    for p in sorted(tiny_clips.iterdir()):
        storage.write_bytes_atomic(f"{base}/raw/{p.name}", p.read_bytes())
    return f"{base}/raw"


@pytest.mark.timeout(420)
def test_curate_from_and_to_a_bucket_then_resume(
    cluster, s3, s3_inputs, recipes, tiny_clips, embedded_run, tmp_path
):
    out = _bucket("vidsift-out") + "/runs/one"
    args = [recipes["cpu"], "--input", s3_inputs, "--output", out]
    first = submit_curate(cluster, *args, env_vars=s3)
    assert first.returncode == 0, first.stdout[-3000:]
    videos = read_rows(out, "videos")
    assert sorted(v["source_uri"] for v in videos) == sorted(
        f"{s3_inputs}/{p.name}" for p in tiny_clips.iterdir()
    )
    assert all(v["status"] == "ok" for v in videos)
    expected = clip_ids(out)
    assert len(expected) >= 6
    # the same inputs from local disk give the same clips (ids derive from content and frames): the same
    # recipe on them, run once for the cluster tests on an embedded Ray (conftest.py); read-only
    local = Path(embedded_run)
    assert clip_ids(str(local)) == expected
    keys = _keys(out)
    assert not [k for k in keys if ".tmp-" in k]
    assert sum("/_done/" in k for k in keys) == 4 and manifest(out)["counts"]["groups_done"] == 4

    # a rerun finds every group done and changes nothing
    second = submit_curate(cluster, *args, env_vars=s3)
    assert second.returncode == 0 and "4 groups already done, 0 to run" in second.stdout, second.stdout[
        -2000:
    ]
    assert clip_ids(out) == expected

    # a run that died mid-group: one group's marker and clips gone, a temporary key left behind
    fs, path = storage.filesystem(out)
    fs.delete_file(f"{path}/_done/g000002")
    fs.delete_file(f"{path}/clips/g000002.parquet")
    storage.write_bytes_atomic(f"{out}/clips/.g000002.parquet.tmp-4242", b"torn")
    third = submit_curate(cluster, *args, env_vars=s3)
    assert third.returncode == 0 and "3 groups already done, 1 to run" in third.stdout, third.stdout[-2000:]
    assert clip_ids(out) == expected  # exactly the rows of the uninterrupted run, no duplicates
    assert len({c["clip_id"] for c in read_rows(out, "clips")}) == len(expected)
    assert not [k for k in _keys(out) if ".tmp-" in k]

    # `vidsift stats` and its HTML report read the run straight from the bucket: the same numbers as the
    # local run of the same inputs, and gallery pictures from the clips' Parquet row groups on S3
    _stats_from_the_bucket(out, local, tmp_path)

    # the run-wide dedup pass rewrites groups in place on the bucket too (pipeline/dedup_run.py)
    rows = sorted(read_rows(out, "clips"), key=lambda r: r["clip_id"])
    keep, dup = rows[0]["clip_id"], rows[-1]["clip_id"]
    assert apply_dedup(out, lambda _rows: {dup: keep}, WriteShardsConfig()) == 1
    assert [c for c, _ in clip_ids(out)] == sorted(c for c, _ in expected if c != dup)
    moved = [r for r in read_rows(out, "rejected") if r["clip_id"] == dup]
    assert len(moved) == 1 and moved[0]["reject_reason"] == "near_duplicate" and moved[0]["dup_of"] == keep
    assert not [k for k in _keys(out) if ".tmp-" in k]


def _stats_from_the_bucket(out: str, local, tmp_path) -> None:
    import json

    from tests.conftest import run_cli

    html = tmp_path / "report.html"
    remote = run_cli("stats", out, "--json", "--html", str(html), timeout=300)
    assert remote.returncode == 0, remote.stderr[-3000:]
    assert "leaked" not in remote.stderr  # the DuckDB connection and its filesystem are closed
    here = run_cli("stats", str(local), "--json", timeout=300)
    assert here.returncode == 0, here.stderr[-3000:]
    a, b = json.loads(remote.stdout), json.loads(here.stdout)
    assert a["run"]["path"] == out and a["run"]["rows"] == b["run"]["rows"] and a["run"]["groups_done"] == 4
    assert a["run"]["rows"]["clips"] >= 6
    for key in ("funnel", "rejections", "scores", "media", "captions", "flags", "categories"):
        assert a[key] == b[key], key

    def by_name(sources: dict) -> list:  # the inputs' folders differ, their names and numbers do not
        return [{**t, "source_uri": t["source_uri"].rsplit("/", 1)[-1]} for t in sources["top"]]

    assert by_name(a["sources"]) == by_name(b["sources"]) and len(a["sources"]["top"]) == 4
    page = html.read_text()
    assert page.count("data:image/jpeg;base64,") >= a["run"]["rows"]["clips"]  # one picture per card
    missing = run_cli("stats", out + "-nothing", timeout=120)
    assert missing.returncode == 2 and "no such run folder" in missing.stderr, missing.stderr


@pytest.mark.timeout(600)
def test_train_and_encode_on_shards_in_a_bucket(s3, tmp_path, monkeypatch):
    """``vidsift train --data s3://...`` streams the shards from the bucket and ends with the same weights as
    training on a local copy; ``vidsift encode s3://...`` fills the cached columns in place on the bucket."""
    import torch

    from tests.conftest import run_cli
    from tests.model.test_train import FAST, TINY, weights
    from vidsift.model.synthetic import write_synthetic_shards
    from vidsift.model.train import load_recipe, train

    local = tmp_path / "local"
    write_synthetic_shards(str(local), 12, files=2, rows_per_group=4, frames=20, size=48)
    data = _bucket("vidsift-train") + "/run"
    for f in sorted((local / "clips").iterdir()):
        storage.write_bytes_atomic(f"{data}/clips/{f.name}", f.read_bytes())

    def trained(where: str, out) -> dict:
        cfg = load_recipe(TINY, [*FAST, "steps=3", "val_clips=2"])
        cfg.data, cfg.out = where, str(out)
        train(cfg)
        return weights(str(out))

    from_bucket, from_disk = trained(data, tmp_path / "bucket"), trained(str(local), tmp_path / "disk")
    assert from_bucket.keys() == from_disk.keys()
    assert all(torch.equal(from_bucket[k], from_disk[k]) for k in from_disk)

    vae = tmp_path / "vae"
    small = ["--set=height=16", "--set=width=16", "--set=frames=5"]
    vae_recipe = str(Path(TINY).with_name("vae_tiny.toml"))
    rc = run_cli("train-vae", vae_recipe, "--data", str(local), "--out", str(vae), "--set=steps=2", *small)
    assert rc.returncode == 0, rc.stderr[-2000:]
    ckpt = str(vae / "vae.safetensors")
    # the bucket's credentials reach the encode workers, and never Ray's logs (runtime_env env_vars would put
    # them in runtime_env_agent.log); the moto server takes any key, so this one is made up for the check
    secret = "encode-secret-" + secrets.token_hex(8)
    ray_tmp = Path(tempfile.mkdtemp(prefix="vs-ray-", dir="/tmp"))  # short: Ray's socket paths have a limit
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    try:
        enc = run_cli("encode", data, "--vae", ckpt, "--frames", "5", "--height", "16", "--width", "16")
        assert enc.returncode == 0, enc.stderr[-3000:]
        logs = [p for p in ray_tmp.rglob("*") if p.is_file() and not p.is_socket()]
        assert any(p.name == "runtime_env_agent.log" for p in logs)  # the log that would hold env_vars
        assert [p for p in logs if secret.encode() in p.read_bytes()] == []
        assert secret not in enc.stdout + enc.stderr
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    monkeypatch.undo()
    table = storage.read_table(f"{data}/clips/part-0.parquet")
    assert table.num_rows == 6 and table.column("latent").null_count == 0
    assert table.column("text_emb").null_count == 0 and table.column("clip_mp4").null_count == 0
    assert [k.rsplit("/", 1)[-1] for k in _keys(data)] == ["part-0.parquet", "part-1.parquet"]  # no temp keys
    run = run_cli("train", TINY, "--data", data, "--out", str(tmp_path / "latents"), f"--set=vae={ckpt}",
                  "--set=steps=2", "--set=model_args={depth = 2, patch = [1, 1, 1]}", "--set=eval_every=0",
                  "--set=batch_size=4", *small)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
