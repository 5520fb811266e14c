"""``vidsift encode RUN --vae diffusers:NAME`` caches a family's latents and caption embeddings in
RUN/latents/<model>/, and ``vidsift finetune`` trains on them exactly as on clips encoded on the fly.

On the tiny random-weight Wan 2.1 (tests/make_tiny_diffusers.py) and synthetic clips of exactly one window
(9 frames at a 9-frame bucket), so the cached middle window is the window every step would decode: the
cached run must reproduce the on-the-fly run's losses and LoRA within float tolerance.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from safetensors.torch import load_file  # noqa: E402

from tests.conftest import embedded_ray  # noqa: E402
from tests.make_tiny_diffusers import build_all  # noqa: E402
from vidsift.model.cli import main as model_cli  # noqa: E402
from vidsift.model.finetune.families import FAMILIES  # noqa: E402
from vidsift.model.finetune.latents import cache_folder, encode_group, group_settings  # noqa: E402
from vidsift.model.finetune.loop import FinetuneConfig, finetune, load_model  # noqa: E402
from vidsift.model.synthetic import write_synthetic_shards  # noqa: E402

SIZE = ["--frames", "9", "--height", "16", "--width", "16", "--text-tokens", "16"]


@pytest.fixture(scope="module")
def wan(tmp_path_factory) -> str:
    return str(build_all(tmp_path_factory.mktemp("tiny-diffusers"), ["wan"])["wan"])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> str:
    """8 captioned clips of 9 frames in 2 shard files."""
    out = tmp_path_factory.mktemp("run")
    write_synthetic_shards(str(out), 8, files=2, rows_per_group=4, frames=9, size=48)
    return str(out)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for this module's two in-process ``vidsift encode`` calls (``embedded_ray``); encode
    starting and stopping its own Ray is what tests/model/test_cli.py (in-process) and
    tests/cluster/test_s3.py (a subprocess) go through."""
    with embedded_ray():
        yield


@pytest.fixture(scope="module")
def on_the_fly(wan, run, tmp_path_factory) -> dict:
    return finetune(config(wan, run, tmp_path_factory.mktemp("fly") / "r", cached_latents=False))


def config(model: str, data: str, out, **kw) -> FinetuneConfig:
    base = dict(
        model=model, family="wan", data=data, out=str(out), frames=9, height=16, width=16, text_tokens=16,
        lora_rank=4, lora_alpha=4.0, batch_size=2, lr=3e-3, steps=3, log_every=100, caption_dropout=0.3,
        eval_clips=2, device="cpu",
    )  # fmt: skip
    return FinetuneConfig(**{**base, **kw})


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.parquet"))}


def assert_same_run(a: dict, b: dict, rel: float, weight_share: float) -> None:
    """Losses (training and the fixed evaluations after training) within ``rel``; the trained LoRA B
    matrices (zero at the start, so all of them is training's change) within ``weight_share`` in norm.
    Element-wise the weights may differ by up to lr: Adam moves a weight by about lr whatever its gradient's
    size, so a near-zero gradient that changes sign with a float rounding moves that weight the other way."""
    for (sa, la), (sb, lb) in zip(a["history"], b["history"], strict=True):
        assert sa == sb and la == pytest.approx(lb, rel=rel), (a["history"], b["history"])
    for ea, eb in zip(a["evals"], b["evals"], strict=True):
        assert (ea["tune"], ea["check"]) == pytest.approx((eb["tune"], eb["check"]), rel=rel), (ea, eb)
    wa, wb = load_file(a["outputs"]["lora"]), load_file(b["outputs"]["lora"])
    assert wa.keys() == wb.keys()
    b_keys = [k for k in wa if ".lora_B." in k]
    change = torch.cat([wa[k].flatten() for k in b_keys])
    diff = torch.cat([(wa[k] - wb[k]).flatten() for k in b_keys])
    assert float(diff.norm() / change.norm()) <= weight_share, float(diff.norm() / change.norm())


def test_encode_caches_beside_the_shards_and_finetune_trains_on_them_as_on_the_fly(
    wan, run, on_the_fly, local_ray, tmp_path, capsys
):
    data = tmp_path / "run"
    shutil.copytree(run, data)
    before = digest(data / "clips")
    assert model_cli(["encode", str(data), "--vae", f"diffusers:{wan}", *SIZE, "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    folder = Path(cache_folder(str(data), wan))
    assert f"encoded 8 clips of 2 shard files into {folder} (wan; 0 files already done" in out
    assert digest(data / "clips") == before  # the clip shards are not touched
    assert sorted(p.name for p in folder.glob("*.parquet")) == ["part-0.parquet", "part-1.parquet"]
    cache = pq.read_table(folder).to_pylist()
    shard_ids = pq.read_table(data / "clips", columns=["clip_id"]).column(0).to_pylist()
    assert sorted(r["clip_id"] for r in cache) == sorted(shard_ids)
    row = cache[0]
    # Wan's VAE: 16 channels, 4x time (9 frames -> 3), 8x space (16 -> 2); the raw posterior, float32.
    assert row["latent_shape"] == [16, 3, 2, 2] and row["dtype"] == "float32"
    assert len(row["latent_mean"]) == len(row["latent_std"]) == 4 * 16 * 3 * 2 * 2
    assert row["text_tokens"] == 16 and row["text_emb_shape"][1] == 32 and row["family"] == "wan"

    # A rerun finds every group done (no Ray, files unchanged).
    cached_files = digest(folder)
    assert model_cli(["encode", str(data), "--vae", f"diffusers:{wan}", *SIZE, "--dtype", "float32"]) == 0
    assert "2 files already done" in capsys.readouterr().out and digest(folder) == cached_files

    logs: list[str] = []
    cached = finetune(config(wan, str(data), tmp_path / "cached"), log=logs.append)
    assert f"cached latents: 8 clips from {folder}" in logs
    assert cached["cached_latents"]["drawn"] == {"cached": 6, "encoded": 0}  # 3 steps x 2 clips
    assert on_the_fly["cached_latents"]["drawn"] == {"cached": 0, "encoded": 6}
    assert_same_run(on_the_fly, cached, rel=1e-5, weight_share=0.01)


def test_float16_cache_and_mixed_batches_stay_within_tolerance(wan, run, on_the_fly, tmp_path):
    """float16 storage (the default) changes the loss by far less than a training step does; a run where
    only one shard file is cached mixes cached and decoded clips in one batch and still agrees."""
    data = tmp_path / "run"
    shutil.copytree(run, data)
    fam = FAMILIES["wan"]
    c, _ = load_model(config(wan, str(data), tmp_path / "unused"), fam, torch.device("cpu"))
    settings = group_settings(wan, [(9, 16, 16)], 1, 16, "caption", "float16")
    folder = cache_folder(str(data), wan)
    counts = encode_group(str(data / "clips/part-0.parquet"), f"{folder}/part-0.parquet", fam, c, settings)
    assert counts == {"rows": 4, "dropped": {}}
    logs: list[str] = []
    half = finetune(config(wan, str(data), tmp_path / "half"), log=logs.append)
    assert f"cached latents: 4 clips from {folder}; encoded on the fly: {{'missing': 4}}" in logs
    drawn = half["cached_latents"]["drawn"]
    assert drawn["cached"] > 0 and drawn["encoded"] > 0 and drawn["cached"] + drawn["encoded"] == 6
    assert_same_run(on_the_fly, half, rel=5e-3, weight_share=0.05)
    steps = [loss for _, loss in on_the_fly["history"]]
    assert (
        max(abs(a - b) for a, b in zip(steps, steps[1:], strict=False)) > 50 * 5e-3
    )  # the tolerance is meaningful


def test_a_cache_that_does_not_fit_the_run_is_not_used(wan, run, tmp_path):
    data = tmp_path / "run"
    shutil.copytree(run, data)
    fam = FAMILIES["wan"]
    c, _ = load_model(config(wan, str(data), tmp_path / "unused"), fam, torch.device("cpu"))
    folder = cache_folder(str(data), wan)
    for name in ("part-0", "part-1"):
        settings = group_settings(wan, [(9, 16, 16)], 1, 16, "caption", "float16")
        encode_group(str(data / f"clips/{name}.parquet"), f"{folder}/{name}.parquet", fam, c, settings)

    def revise_captions() -> None:  # the clips re-captioned after encoding
        for f in (data / "clips").glob("*.parquet"):
            t = pq.read_table(f)
            i = t.schema.get_field_index("caption")
            revised = pa.array([c + " (revised)" for c in t.column(i).to_pylist()], t.schema.field(i).type)
            pq.write_table(t.set_column(i, t.schema.field(i), revised), f)

    cases = [("size", dict(frames=5)), ("text_tokens", dict(text_tokens=8)), ("caption", {})]
    for reason, kw in cases:
        if reason == "caption":
            revise_captions()
        logs: list[str] = []
        m = finetune(config(wan, str(data), tmp_path / reason, steps=1, eval_clips=0, **kw), log=logs.append)
        assert m["cached_latents"]["clips"] == 0 and m["cached_latents"]["not_used"] == {reason: 8}, reason
        assert m["cached_latents"]["drawn"] == {"cached": 0, "encoded": 2}
        assert any(line.startswith("cached latents: none usable") for line in logs), logs


def test_bad_vae_values_and_runs_without_clips_are_one_line_errors(wan, run, tmp_path, capsys):
    other = tmp_path / "sd"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ([run, "--vae", "diffusers:"], "--vae diffusers: needs a model"),
        ([run, "--vae", f"diffusers:{tmp_path / 'nope'}"], "is not a diffusers pipeline"),
        ([run, "--vae", f"diffusers:{other}"], "StableDiffusionPipeline, not a supported family: Wan"),
        ([run, "--vae", str(tmp_path / "vae.safetensors")], "VAE checkpoint not found"),
        ([str(empty), "--vae", f"diffusers:{wan}"], "no clip shards in"),
        ([run, "--vae", f"diffusers:{wan}", "--frames", "10"], "wan: 10 frames is not a valid length"),
        ([run, "--vae", f"diffusers:{wan}", "--recipe", "ltx_lora"], "is a wan model; the recipe is for ltx"),
        ([run, "--vae", f"diffusers:{wan}", "--text-model", "x"], "brings its own text encoder"),
        ([run, "--vae", "v.safetensors", "--dtype", "float32"], "--dtype: only with --vae diffusers:NAME"),
    ]  # fmt: skip
    for args, message in cases:
        assert model_cli(["encode", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (args, err)
    assert not (Path(run) / "latents").exists()


@pytest.mark.slow
@pytest.mark.parametrize("family,size", [("ltx", 32), ("cogvideox", 16)])
def test_cached_equals_on_the_fly_for_ltx_and_cogvideox(family, size, run, tmp_path):
    """The other two adapters' conventions (LTX's latent statistics and packed tokens, CogVideoX's fixed text
    length and v-prediction) through the same cache: float32 rows reproduce the on-the-fly losses, and float16
    rows decode back through the family's VAE within its own reconstruction error."""
    model = str(build_all(tmp_path / "tiny", [family])[family])
    data = tmp_path / "run"
    shutil.copytree(run, data)
    kw = dict(family=family, height=size, width=size)
    fam = FAMILIES[family]
    c, _ = load_model(config(model, str(data), tmp_path / "unused", **kw), fam, torch.device("cpu"))
    tokens = fam.text_tokens(c, 16)
    settings = group_settings(model, [(9, size, size)], 1, tokens, "caption", "float32")
    folder = cache_folder(str(data), model)
    for name in ("part-0", "part-1"):
        encode_group(str(data / f"clips/{name}.parquet"), f"{folder}/{name}.parquet", fam, c, settings)
    fly = finetune(config(model, str(data), tmp_path / "fly", cached_latents=False, **kw), quiet=True)
    cached = finetune(config(model, str(data), tmp_path / "cached", **kw), quiet=True)
    assert cached["cached_latents"]["drawn"] == {"cached": 6, "encoded": 0}
    assert_same_run(fly, cached, rel=1e-5, weight_share=0.01)

    # float16 rows of this family decode back through its VAE within the VAE's own reconstruction error.
    from vidsift.model.finetune.latents import WINDOW, _tensor
    from vidsift.model.finetune.shards import ClipIndex, index_file

    shard, rows = str(data / "clips/part-0.parquet"), tmp_path / "fp16/part-0.parquet"
    encode_group(shard, str(rows), fam, c, {**settings, "dtype": "float16"})
    index = ClipIndex([shard], [(9, size, size)], 1)
    clips = {clip.clip_id: clip for clip in index_file(index, 0, "caption", "crop", 0.0)}
    table = pq.read_table(rows).to_pylist()
    assert len(table) == len(clips) > 0
    with torch.no_grad():
        for row in table:
            pixels = index.pixels(clips[row["clip_id"]], WINDOW)[None]
            mean = _tensor(row["latent_mean"], row["latent_shape"], row["dtype"]).float()[None]
            from_cache = fam.decode_latent(c, fam.normalise(c, mean))
            own = fam.decode_latent(c, fam.encode_video(c, pixels, None))
            err_cache, err_own = (float((x - pixels).abs().mean()) for x in (from_cache, own))
            assert err_cache <= err_own * 1.01 + 1e-3, (err_cache, err_own)


def test_cached_latents_decode_back_within_the_vaes_own_reconstruction_error(wan, run, local_ray, tmp_path):
    """A float16 cache row's posterior mean, decoded through the family's VAE, gives the clip's frames back
    as well as the VAE's own encode-decode of the same frames does (the cache adds no error of its own
    beyond float16 rounding)."""
    from vidsift.model.finetune.latents import WINDOW, _tensor
    from vidsift.model.finetune.shards import ClipIndex, index_file

    data = tmp_path / "run"
    shutil.copytree(run, data)
    assert model_cli(["encode", str(data), "--vae", f"diffusers:{wan}", *SIZE, "--dtype", "float16"]) == 0
    cache = {r["clip_id"]: r for r in pq.read_table(cache_folder(str(data), wan)).to_pylist()}
    family = FAMILIES["wan"]
    c = family.load_encoders(wan, torch.float32)
    shard = sorted((data / "clips").glob("*.parquet"))[0]
    settings = group_settings(wan, [(9, 16, 16)], 1, 16, "caption", "float16")
    index = ClipIndex([str(shard)], [tuple(b) for b in settings["buckets"]], settings["frame_stride"])
    clips = index_file(index, 0, "caption", "crop", 0.0)
    assert clips
    with torch.no_grad():
        for clip in clips:
            pixels = index.pixels(clip, WINDOW)[None].float()
            row = cache[clip.clip_id]
            cached = _tensor(row["latent_mean"], row["latent_shape"], row["dtype"]).float()[None]
            direct, _ = family.encode_posterior(c, pixels)
            from_cache = c.vae.decode(cached, return_dict=False)[0].float()
            own = c.vae.decode(direct.float(), return_dict=False)[0].float()
            err_cache = float((from_cache - pixels).abs().mean())
            err_own = float((own - pixels).abs().mean())
            assert err_cache <= err_own * 1.01 + 1e-3, (err_cache, err_own)
            assert float((from_cache - own).abs().mean()) <= 0.01 * err_own + 1e-3
