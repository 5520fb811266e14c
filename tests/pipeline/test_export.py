"""``vidsift export`` of the quick-start run, read by real clients: webdataset, datasets, PyAV, ffprobe."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli
from vidsift.pipeline import storage

pytestmark = pytest.mark.slow
SHARD = 2  # clips per tar / videos subfolder / HF shard: the quick start's 3 clips make two shards


def clip_rows(run: Path) -> dict[str, dict]:
    """The run's accepted clips as the shards hold them, by clip id."""
    import pyarrow.parquet as pq

    rows = {}
    for f in sorted((run / "clips").glob("*.parquet")):
        cols = ["clip_id", "caption", "num_frames", "clip_mp4", "duration_s", "width"]
        for r in pq.read_table(f, columns=cols).to_pylist():
            rows[r["clip_id"]] = r
    return rows


def decoded_frames(mp4: bytes) -> int:
    import av

    with av.open(io.BytesIO(mp4)) as c:
        return sum(1 for _ in c.decode(video=0))


def ffprobe_frames(path: Path) -> int:
    """ffprobe counts the frames of a file by decoding it (fails loudly if it cannot read it)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames",
         "-show_entries", "stream=nb_read_frames", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return int(json.loads(out)["streams"][0]["nb_read_frames"])


@pytest.fixture(scope="module")
def run(quickstart_run) -> Path:
    out, _ = quickstart_run
    assert len(clip_rows(out)) >= 2, "the quick start should accept clips for two shards"
    return out


@pytest.fixture(scope="module")
def exports(run: Path, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("exports")
    done = {}
    for fmt in ("webdataset", "videofolder", "hf"):
        dst = base / fmt
        r = run_cli("export", str(run), "--format", fmt, "--output", str(dst), "--shard-size", str(SHARD))
        assert r.returncode == 0, r.stderr[-3000:]
        assert json.loads(r.stdout)["clips"] == len(clip_rows(run))
        assert f"export {fmt}" in r.stderr  # the rich progress line, as curate's
        done[fmt] = dst
    return done


def test_webdataset_iterates_and_every_mp4_decodes(run, exports):
    import webdataset as wds

    ref = clip_rows(run)
    tars = sorted(str(p) for p in exports["webdataset"].glob("shard-*.tar"))
    assert len(tars) == math.ceil(len(ref) / SHARD)
    seen = {}
    for sample in wds.WebDataset(tars, shardshuffle=False).decode():
        meta = sample["json"]
        key = sample["__key__"]
        assert meta["clip_id"] == key and key in ref
        assert sample["txt"] == (ref[key]["caption"] or "")
        assert meta["caption"] == ref[key]["caption"] and meta["num_frames"] == ref[key]["num_frames"]
        assert "clip_mp4" not in meta and "frames_jpeg" not in meta  # binary columns stay out of the JSON
        assert sample["mp4"] == ref[key]["clip_mp4"]
        assert decoded_frames(sample["mp4"]) == ref[key]["num_frames"]
        seen[key] = True
    assert seen.keys() == ref.keys()
    ids = (exports["webdataset"] / "clip_ids.txt").read_text().split()
    assert sorted(ids) == sorted(ref)
    # the card's loader line names exactly the shards
    import re

    from braceexpand import braceexpand

    pattern = re.search(r'WebDataset\("DIR/([^"]+)"\)', (exports["webdataset"] / "README.md").read_text())[1]
    assert sorted(str(exports["webdataset"] / p) for p in braceexpand(pattern)) == tars


def test_videofolder_loads_with_datasets_and_ffprobe_reads_every_mp4(run, exports, tmp_path):
    import datasets

    ref = clip_rows(run)
    root = exports["videofolder"]
    ds = datasets.load_dataset("videofolder", data_dir=str(root), cache_dir=str(tmp_path / "cache"))["train"]
    ds = ds.cast_column("video", datasets.Video(decode=False))  # decoding needs torchcodec
    assert len(ds) == len(ref)
    for row in ds:
        key = row["clip_id"]
        assert row["caption"] == ref[key]["caption"]
        path = Path(row["video"]["path"])
        assert path.read_bytes() == ref[key]["clip_mp4"]
        assert ffprobe_frames(path) == ref[key]["num_frames"]
    with open(root / "metadata.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [list(r) for r in table[:1]] == [["video", "caption"]]
    captions = {k: v["caption"] or "" for k, v in ref.items()}
    assert {Path(r["video"]).stem: r["caption"] for r in table} == captions
    assert all((root / r["video"]).is_file() for r in table)
    assert sorted((root / "clip_ids.txt").read_text().split()) == sorted(ref)


def test_hf_load_from_disk_and_card(run, exports):
    import datasets

    ref = clip_rows(run)
    ds = datasets.load_from_disk(str(exports["hf"] / "data"))
    assert isinstance(ds.features["video"], datasets.Video)
    ds = ds.cast_column("video", datasets.Video(decode=False))
    assert len(ds) == len(ref) and sorted(ds["clip_id"]) == sorted(ref)
    for row in ds:
        assert row["video"]["bytes"] == ref[row["clip_id"]]["clip_mp4"]
        assert row["caption"] == ref[row["clip_id"]]["caption"]
    card = (exports["hf"] / "README.md").read_text()
    assert f"| clips exported | {len(ref)} |" in card and "## Licences" in card and "[[stage]]" in card
    assert "random-weight test models" in card  # the quick start's captions are not real
    report = json.loads((exports["hf"] / "export.json").read_text())
    assert report["clips"] == len(ref) and report["licences"] == {"unknown": len(ref)}


def test_where_exports_a_subset_and_counts_the_rest(run, tmp_path):
    ref = clip_rows(run)
    frames = sorted(r["num_frames"] for r in ref.values())
    assert frames[0] < frames[-1], "the quick start's clips differ in length"
    dst = tmp_path / "long"
    where = f"num_frames > {frames[0]}"
    r = run_cli("export", str(run), "--format", "webdataset", "--output", str(dst), "--where", where)
    assert r.returncode == 0, r.stderr
    want = sorted(k for k, v in ref.items() if v["num_frames"] > frames[0])
    assert sorted((dst / "clip_ids.txt").read_text().split()) == want
    assert json.loads(r.stdout)["skipped"] == {"where": len(ref) - len(want)}
    assert f"{len(ref) - len(want)} clips not exported: where" in r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--where", "width >>> 3"], "--where: not a valid expression"),
        (["--where", "no_such_column > 1"], "unknown column"),
        (["--shard-size", "0"], "--shard-size must be >= 1"),
        (["--output", "s3://bucket/x"], "export writes to a local folder"),
    ],
)
def test_bad_options_are_one_line_errors(run, tmp_path, args, message):
    cmd = ["export", str(run), "--format", "hf", "--output", str(tmp_path / "o"), *args]
    if "--output" in args:
        cmd = ["export", str(run), "--format", "hf", *args]
    r = run_cli(*cmd)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_refuses_a_non_empty_output_and_a_folder_that_is_no_run(run, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    r = run_cli("export", str(run), "--format", "webdataset", "--output", str(full))
    assert r.returncode == 2 and "exists and is not an empty folder" in r.stderr
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    r = run_cli("export", str(tmp_path), "--format", "webdataset", "--output", str(tmp_path / "o"))
    assert r.returncode == 2 and "not a finished vidsift run" in r.stderr


@pytest.fixture
def s3_server(tmp_path):
    """moto in server mode on loopback, for this test only (tests/conftest.py ``moto_s3``)."""
    from tests.conftest import moto_s3

    with moto_s3(tmp_path) as env:
        yield env


def test_export_from_a_bucket_equals_the_local_export(run, exports, s3_server, tmp_path):
    import boto3

    boto3.client("s3").create_bucket(Bucket="runs")
    base = "s3://runs/quickstart"
    for f in run.rglob("*"):
        if f.is_file() and not f.name.startswith("."):
            storage.write_bytes_atomic(f"{base}/{f.relative_to(run).as_posix()}", f.read_bytes())
    dst = tmp_path / "from-bucket"
    env = {**os.environ, **s3_server}
    from tests.conftest import vidsift_exe

    r = subprocess.run(
        [vidsift_exe(), "export", base, "--format", "webdataset", "--output", str(dst), "--shard-size", "2"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    local = exports["webdataset"]
    tars = sorted(p.name for p in local.glob("shard-*.tar"))
    assert sorted(p.name for p in dst.glob("shard-*.tar")) == tars
    for name in tars:  # the same members, byte for byte
        assert _members(local / name) == _members(dst / name)
    assert (dst / "clip_ids.txt").read_text() == (local / "clip_ids.txt").read_text()
    shutil.rmtree(dst)


def _members(tar_path: Path) -> dict[str, bytes]:
    import tarfile

    with tarfile.open(tar_path) as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers()}


def test_keep_audio_run_exports_clips_whose_audio_lasts_as_long_as_the_video(videos, tmp_path):
    """curate with transcode.keep_audio on two sample clips with sound (Opus and AAC sources), export, and
    ffprobe every exported MP4: an AAC stream as long as the video, within one frame."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("flipping_a_pancake.mkv", "realshort.mp4"):
        shutil.copy(videos / "quality" / name, src / name)
    run_dir = tmp_path / "run"
    r = run_cli("curate", "default", "--input", str(src), "--output", str(run_dir), "--quiet",
                "--set", "transcode.keep_audio=true", "--set", "split_scenes.min_scene_s=0.5",
                "--set", "split_scenes.detector=fast")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    dst = tmp_path / "export"
    r = run_cli("export", str(run_dir), "--format", "videofolder", "--output", str(dst), "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    mp4s = sorted((dst / "train" / "videos").rglob("*.mp4"))
    assert len(mp4s) == len(clip_rows(run_dir)) >= 2
    for path in mp4s:
        entries = "stream=codec_type,codec_name,duration,avg_frame_rate"
        cmd = ["ffprobe", "-v", "error", "-show_entries", entries, "-of", "json", str(path)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        streams = {s["codec_type"]: s for s in json.loads(out)["streams"]}
        assert streams["audio"]["codec_name"] == "aac", path
        num, den = streams["video"]["avg_frame_rate"].split("/")
        frame = int(den) / int(num)
        gap = abs(float(streams["audio"]["duration"]) - float(streams["video"]["duration"]))
        assert gap <= frame, (path.name, gap, frame)
