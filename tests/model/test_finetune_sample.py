"""``vidsift sample FINETUNE_RUN``: a fine-tuned diffusers model sampled from the command line with the
family's own pipeline plus the run's LoRA (or full transformer), on the tiny random-weight Wan of
tests/make_tiny_diffusers.py, offline. Also: ``vidsift finetune`` shows the shared progress bar."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from tests.make_tiny_diffusers import build_all  # noqa: E402
from vidsift.model.cli import main as model_cli  # noqa: E402
from vidsift.model.data import shard_files  # noqa: E402
from vidsift.model.finetune.families import FAMILIES  # noqa: E402
from vidsift.model.finetune.sample import generate, sample_run  # noqa: E402
from vidsift.pipeline import storage  # noqa: E402

SETS = ["steps=2", "eval_clips=2", "log_every=1", "lr=3e-3"]


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory) -> Path:
    return build_all(tmp_path_factory.mktemp("tiny-diffusers"), ["wan"])["wan"]


def finetune_cli(model: Path, shards: str, out: Path, *extra: str) -> int:
    args = ["finetune", "tiny", "--data", shards, "--out", str(out)]
    args += ["--set", f"model={json.dumps(str(model))}"]
    for s in SETS:
        args += ["--set", s]
    return model_cli(args + list(extra))


def decode(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_finetune_lora_then_sample_it_from_the_command_line(tiny_wan, shards, tmp_path, capsys):
    run = tmp_path / "run"
    assert finetune_cli(tiny_wan, shards, run) == 0
    out, err = capsys.readouterr()
    bar = r"^finetune .* 2/2 steps loss \d+\.\d{4} lr 3\.00e-03 [\d.]+ steps/s eta "
    assert re.search(bar, err, re.M), err
    assert "step 2/2  loss " in out  # the log lines stay on stdout
    assert finetune_cli(tiny_wan, shards, tmp_path / "quiet", "--quiet", "--set", "steps=1") == 0
    out, err = capsys.readouterr()
    assert "steps/s" not in err and "step 1/1  loss " in out

    # Prompts from a file: one MP4 per prompt at the run's size (9 frames of 16x16), and the list beside them.
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square moving right\n\na blue circle moving up\n")
    args = ["sample", str(run), "--prompts", str(prompts), "--steps", "2", "--out", str(tmp_path / "s.mp4")]
    assert model_cli(args) == 0
    assert "wan lora" in capsys.readouterr().out
    for name in ("s_00.mp4", "s_01.mp4"):
        frames = decode(tmp_path / name)
        assert len(frames) == 9 and frames[0].shape == (16, 16, 3)
    listed = (tmp_path / "s.txt").read_text().splitlines()
    assert listed == ["a red square moving right", "a blue circle moving up"]

    # No prompts given: the run's own, caption_short (else the caption) of its first clips by clip_id, the
    # held-out ones first, as sample_every uses them (sample_prompts = 4).
    assert model_cli(["sample", str(run), "--steps", "1", "--out", str(tmp_path / "d.mp4")]) == 0
    rows = []
    for path in shard_files(shards):
        rows += storage.open_parquet(path).read(columns=["clip_id", "caption", "caption_short"]).to_pylist()
    rows.sort(key=lambda r: r["clip_id"])
    want = [r["caption_short"] or r["caption"] for r in rows[:4]]
    assert (tmp_path / "d.txt").read_text().splitlines() == want
    assert all(len(decode(tmp_path / f"d_{i:02d}.mp4")) == 9 for i in range(4))

    # What it samples is exactly the family pipeline with the saved LoRA loaded, and not the base model.
    fam = FAMILIES["wan"]
    kw = dict(size=(9, 16, 16), steps=2, guidance=5.0, tokens=16, seed=3)
    tuned = sample_run(str(run), ["a red square moving right"], kw["size"], 2, 5.0, 3)
    pipe = fam.classes()["pipeline"].from_pretrained(str(tiny_wan))
    base = generate(pipe, ["a red square moving right"], **kw)
    pipe.load_lora_weights(str(run / "lora"))
    assert np.array_equal(tuned, generate(pipe, ["a red square moving right"], **kw))
    assert not np.allclose(tuned, base)


def test_full_finetuning_samples_with_the_saved_transformer(tiny_wan, shards, tmp_path):
    run = tmp_path / "full"
    assert finetune_cli(tiny_wan, shards, run, "--quiet", "--set", 'mode="full"', "--set", "steps=1") == 0
    cls = FAMILIES["wan"].classes()
    kw = dict(size=(9, 16, 16), steps=2, guidance=5.0, tokens=16, seed=0)
    tuned = sample_run(str(run), ["a red square"], kw["size"], 2, 5.0, 0)
    transformer = cls["transformer"].from_pretrained(str(run / "transformer"))
    pipe = cls["pipeline"].from_pretrained(str(tiny_wan), transformer=transformer)
    assert np.array_equal(tuned, generate(pipe, ["a red square"], **kw))
    base = generate(cls["pipeline"].from_pretrained(str(tiny_wan)), ["a red square"], **kw)
    assert not np.allclose(tuned, base)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--image", "x.png"], "--image: not for a fine-tuned diffusers model"),
        (["--frames", "10"], "wan: 10 frames is not a valid length (nearest: 9 or 13)"),
        (["--prompt", "a", "--prompts", "p.txt"], "give --prompt or --prompts FILE, not both"),
        (["--prompts", "/nonexistent/prompts.txt"], "--prompts /nonexistent/prompts.txt: "),
    ],
)
def test_bad_sample_input_is_one_line(extra, message, tiny_wan, shards, tmp_path, capsys):
    run = tmp_path / "run"
    assert finetune_cli(tiny_wan, shards, run, "--quiet", "--set", "steps=0", "--set", "eval_clips=0") == 0
    capsys.readouterr()
    assert model_cli(["sample", str(run), "--steps", "1", "--out", str(tmp_path / "x.mp4"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err


def test_a_run_whose_base_model_is_gone_is_one_line(tiny_wan, shards, tmp_path, capsys):
    run = tmp_path / "run"
    assert finetune_cli(tiny_wan, shards, run, "--quiet", "--set", "steps=0", "--set", "eval_clips=0") == 0
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["recipe"]["model"] = str(tmp_path / "moved")
    (run / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert model_cli(["sample", str(run), "--prompt", "a", "--out", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: cannot load the fine-tuned wan model of {run}: "), err
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("family, size", [("ltx", 32), ("cogvideox", 16)])
def test_the_other_families_sample_their_lora_too(family, size, shards, tmp_path):
    model = build_all(tmp_path / "tiny", [family])[family]
    run = tmp_path / "run"
    sets = [f'family="{family}"', f"height={size}", f"width={size}", "steps=1", "eval_clips=0"]
    assert finetune_cli(model, shards, run, "--quiet", *[a for s in sets for a in ("--set", s)]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    tuned = sample_run(str(run), ["a red square"], (None, None, None), 2, 5.0, 0)
    assert tuned.shape == (1, 9, size, size, 3)
    pipe = FAMILIES[family].classes()["pipeline"].from_pretrained(str(model))
    kw = dict(size=(9, size, size), steps=2, guidance=5.0, tokens=manifest["text_tokens"], seed=0)
    base = generate(pipe, ["a red square"], **kw)
    pipe.load_lora_weights(str(run / "lora"))
    assert np.array_equal(tuned, generate(pipe, ["a red square"], **kw))
    assert not np.allclose(tuned, base)
