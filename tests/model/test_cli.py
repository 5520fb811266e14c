"""The trainer's sub-commands end to end: train, sample, train-vae, encode; bad inputs exit 2 in one line."""

import os
import shutil
import subprocess
import sys

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from vidsift.model.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "recipes", "train", "tiny.toml")
FAST = [
    "--set=model_args={depth = 2, patch = [1, 4, 4]}",
    "--set=frames=8",
    "--set=height=16",
    "--set=width=16",
    "--set=batch_size=4",
    "--set=eval_every=0",
    "--set=log_every=5",
]


@pytest.fixture(scope="module")
def run_dir(shards, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("train"))
    assert main(["train", TINY, "--data", shards, "--out", out, "--set=steps=5", *FAST]) == 0
    return out


def probe(path: str) -> tuple[int, int, int]:
    with av.open(path) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return len(frames), frames[0].shape[0], frames[0].shape[1]


def test_sample_writes_decodable_mp4_of_requested_size(run_dir, tmp_path):
    out = str(tmp_path / "s.mp4")
    rc = main(
        [
            "sample",
            run_dir,
            "--prompt",
            "a red square moving right",
            "--frames",
            "12",
            "--height",
            "24",
            "--width",
            "40",
            "--steps",
            "3",
            "--out",
            out,
        ]
    )
    assert rc == 0
    assert probe(out) == (12, 24, 40)
    assert os.path.getsize(str(tmp_path / "s.gif")) > 0
    # Default size: the training size, from the checkpoint metadata; a weights file works as well as a folder.
    rc = main(
        [
            "sample",
            os.path.join(run_dir, "model.safetensors"),
            "--prompt",
            "x",
            "--steps",
            "2",
            "--cfg",
            "1",
            "--out",
            out,
        ]
    )
    assert rc == 0 and probe(out) == (8, 16, 16)


def test_bad_inputs_exit_2_with_one_line(shards, run_dir, tmp_path, capsys):
    cases = [
        (["train", TINY, "--data", str(tmp_path / "missing")], "data folder not found"),
        (["train", TINY, "--data", shards, "--set=colour=red"], "unknown key 'colour'"),
        (["train", str(tmp_path / "nope.toml"), "--data", shards], "recipe not found"),
        (["train", TINY, "--data", shards, "--set=vae=nope.safetensors"], "VAE checkpoint not found"),
        (["sample", str(tmp_path / "nothing"), "--prompt", "x"], "checkpoint not found"),
        (["sample", os.path.join(run_dir, "recipe.toml"), "--prompt", "x"], "not a safetensors checkpoint"),
        (["sample", run_dir, "--prompt", "x", "--height", "30"], "not divisible"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_unreadable_clip_bytes_exit_2(tmp_path, capsys):
    from vidsift.model.synthetic import write_synthetic_shards

    write_synthetic_shards(str(tmp_path), 8, frames=8, size=16)
    path = tmp_path / "clips" / "part-0.parquet"
    t = pq.read_table(path)
    mp4 = t.column("clip_mp4").to_pylist()
    mp4 = [m[: len(m) // 3] for m in mp4]  # truncated files
    import pyarrow as pa

    t = t.set_column(
        t.schema.get_field_index("clip_mp4"), t.schema.field("clip_mp4"), pa.array(mp4, pa.binary())
    )
    pq.write_table(t, path)
    assert main(["train", TINY, "--data", str(tmp_path), "--out", str(tmp_path / "r"), *FAST]) == 2
    assert "unreadable clip_mp4" in capsys.readouterr().err


@pytest.mark.slow
def test_train_vae_then_encode_with_ray_then_train_on_cached_latents(shards, tmp_path):
    data = str(tmp_path / "data")
    shutil.copytree(shards, data)
    first = os.path.join(data, "clips", "part-0.parquet")
    t = pq.read_table(first)
    with pq.ParquetWriter(first, t.schema) as w:  # uneven row groups, as byte-sized ones are
        w.write_table(t.slice(0, 5))
        w.write_table(t.slice(5))
    vae_dir = str(tmp_path / "vae")
    rc = main(
        [
            "train-vae",
            os.path.join(ROOT, "recipes", "train", "vae_tiny.toml"),
            "--data",
            data,
            "--out",
            vae_dir,
            "--set=steps=4",
            "--set=height=16",
            "--set=width=16",
            "--set=frames=5",
        ]
    )
    assert rc == 0
    ckpt = os.path.join(vae_dir, "vae.safetensors")
    assert (
        main(
            [
                "encode",
                data,
                "--vae",
                ckpt,
                "--frames",
                "5",
                "--height",
                "16",
                "--width",
                "16",
                "--workers",
                "2",
            ]
        )
        == 0
    )
    t = pq.read_table(os.path.join(data, "clips", "part-0.parquet"))
    assert t.num_rows == 12 and t.column("latent").null_count == 0
    md = pq.ParquetFile(os.path.join(data, "clips", "part-0.parquet")).metadata
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [5, 7]  # the file's own
    row = t.slice(0, 1).to_pylist()[0]
    assert row["latent_shape"] == [4, 2, 2, 2]
    assert len(row["latent"]) == 2 * np.prod(row["latent_shape"])
    tokens, dim = row["text_emb_shape"]
    assert dim == 384 and 3 <= tokens <= 32 and row["text_model"] == "all-MiniLM-L6-v2"
    assert row["clip_mp4"] and row["caption"]  # everything else is kept
    assert not [f for f in os.listdir(os.path.join(data, "clips")) if ".tmp" in f]
    run = str(tmp_path / "run")
    rc = main(
        [
            "train",
            TINY,
            "--data",
            data,
            "--out",
            run,
            "--set=steps=3",
            f"--set=vae={ckpt}",
            "--set=model_args={depth = 2, patch = [1, 1, 1]}",
            "--set=frames=5",
            "--set=height=16",
            "--set=width=16",
            "--set=batch_size=4",
            "--set=eval_every=0",
        ]
    )
    assert rc == 0
    out = str(tmp_path / "s.mp4")
    assert main(["sample", run, "--prompt", "a blue circle moving up", "--steps", "2", "--out", out]) == 0
    assert probe(out) == (5, 16, 16)
    # A recipe size that the cached latents do not have is a clear error, not a silent resize.
    rc = main(
        [
            "train",
            TINY,
            "--data",
            data,
            "--out",
            str(tmp_path / "run2"),
            f"--set=vae={ckpt}",
            "--set=frames=9",
            "--set=height=16",
            "--set=width=16",
        ]
    )
    assert rc == 2


def test_register_adds_subcommands_without_importing_torch():
    code = (
        "import argparse, sys; from vidsift.model.cli import register; p = argparse.ArgumentParser(); "
        "register(p.add_subparsers()); "
        "a = p.parse_args(['train', 'r.toml', '--data', 'd', '--set', 'lr=1']); "
        "print(a.set, a.func is not None, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["['lr=1']", "True", "False"]
