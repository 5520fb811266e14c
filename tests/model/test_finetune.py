"""vidsift finetune on tiny random-weight diffusers pipelines (tests/make_tiny_diffusers.py), built offline.

Each family (Wan 2.1, LTX-Video, CogVideoX) runs the real loading code (``from_pretrained`` of a folder in
the hub layout), the real peft LoRA, and its real diffusers pipeline for loading the result.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from safetensors.torch import load_file  # noqa: E402

from tests.make_tiny_diffusers import build_all  # noqa: E402
from vidsift.model.cli import main as model_cli  # noqa: E402
from vidsift.model.data import DataError  # noqa: E402
from vidsift.model.finetune.checkpoint import ADAPTER  # noqa: E402
from vidsift.model.finetune.families import FAMILIES  # noqa: E402
from vidsift.model.finetune.loop import FinetuneConfig, finetune, load_model, load_recipe  # noqa: E402
from vidsift.model.finetune.shards import ByteLRU, choose_bucket  # noqa: E402
from vidsift.pipeline.config import RecipeError, shipped_recipes  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
# The tiny LTX VAE compresses 4x in space and its patch is 1: sizes are multiples of 4; 32 keeps 8x8 latents.
SIZE = {"wan": 16, "ltx": 32, "cogvideox": 16}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("tiny-diffusers"))


def config(tiny, shards, out, family="wan", **kw) -> FinetuneConfig:
    s = SIZE[family]
    base = dict(
        model=str(tiny[family]), family=family, data=shards, out=str(out), frames=9, height=s, width=s,
        text_tokens=16, lora_rank=4, lora_alpha=4.0, batch_size=2, lr=3e-3, steps=20, log_every=100,
        caption_dropout=0.1, device="cpu",
    )  # fmt: skip
    return FinetuneConfig(**{**base, **kw})


def pipeline_latents(pipe, family: str) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    s = SIZE[family]
    out = pipe(
        "a red square moving right", num_frames=9, height=s, width=s, num_inference_steps=2,
        max_sequence_length=16, output_type="latent", generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    return out.frames


@pytest.mark.parametrize("family", ["wan", "ltx", "cogvideox"])
def test_lora_learns_and_loads_into_the_family_pipeline(family, tiny, shards, tmp_path):
    cfg = config(tiny, shards, tmp_path / "run", family, eval_clips=4)
    m = finetune(cfg)
    before, after = m["evals"][0], m["evals"][-1]
    assert (before["step"], after["step"]) == (0, 20)
    # Fixed timesteps and noise: the loss falls on training clips and on the 4 held-out ones.
    assert after["tune"] < before["tune"], m["evals"]
    assert after["check"] < before["check"], m["evals"]
    assert m["data"]["clips"] == 24 and m["data"]["dropped"] == {}
    assert len(m["held_out"]) == 4 and m["text_tokens"] == 16

    lora_file = Path(m["outputs"]["lora"])
    weights = load_file(str(lora_file))
    assert weights and all(".lora_A." in k or ".lora_B." in k for k in weights)
    assert any(v.abs().sum() > 0 for k, v in weights.items() if ".lora_B." in k)  # B starts at zero

    pipe = FAMILIES[family].classes()["pipeline"].from_pretrained(str(tiny[family]))
    base = pipeline_latents(pipe, family)
    pipe.load_lora_weights(str(lora_file.parent))
    tuned = pipe.transformer.state_dict()
    for key, value in weights.items():  # the pipeline holds exactly the trained matrices
        name = key.removeprefix("transformer.").replace(".weight", f".{pipe.get_active_adapters()[0]}.weight")
        assert torch.equal(tuned[name], value), key
    assert not torch.allclose(pipeline_latents(pipe, family), base)


@pytest.mark.parametrize("family", ["wan", "ltx", "cogvideox"])
def test_resume_is_bitwise_equal_to_uninterrupted(family, tiny, shards, tmp_path):
    whole = finetune(config(tiny, shards, tmp_path / "whole", family, steps=6, prefetch="on"))
    finetune(config(tiny, shards, tmp_path / "parts", family, steps=3, prefetch="on"))
    parts = finetune(config(tiny, shards, tmp_path / "parts", family, steps=6, prefetch="on"), resume=True)
    assert whole["history"] == parts["history"]
    a, b = load_file(whole["outputs"]["lora"]), load_file(parts["outputs"]["lora"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa = torch.load(tmp_path / "whole/checkpoint/state.pt", weights_only=False)
    sb = torch.load(tmp_path / "parts/checkpoint/state.pt", weights_only=False)
    for name, state in sa["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], sb["optimizer"]["state"][name]["exp_avg_sq"]), name
    # Decoding the next micro-batch in a background thread (prefetch) trains on the same batches as decoding
    # each one inline, and keeping caption embeddings (text_cache) on the same embeddings.
    inline = config(tiny, shards, tmp_path / "inline", family, steps=6, prefetch="off", text_cache=False)
    inline = finetune(inline)
    assert whole["timing"]["prefetch"] and not inline["timing"]["prefetch"]
    assert inline["history"] == whole["history"]
    c = load_file(inline["outputs"]["lora"])
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_caption_dropout_trains_on_the_empty_caption(tiny, shards):
    """A dropped caption's embedding is that of "" (the pipeline's unconditional prompt under classifier-free
    guidance); a kept caption's is its own."""
    from vidsift.model.finetune.loop import Trainer
    from vidsift.model.finetune.shards import index_clips

    fam, cfg = FAMILIES["wan"], config(tiny, shards, "unused")
    c, _ = load_model(cfg, fam, torch.device("cpu"))
    index = index_clips(shards, "caption", cfg.bucket_list, 1, "crop", 0.1)
    trainer = Trainer(cfg, fam, c, index, torch.device("cpu"))
    clips, starts = index.clips[:8], torch.full((8,), 0.5)
    own = fam.encode_text(c, [clip.caption for clip in clips], trainer.tokens).emb
    kept = trainer.batch(clips, torch.Generator().manual_seed(0), 0.0, starts).text.emb
    assert torch.allclose(kept, own, atol=1e-6)
    half = trainer.batch(clips, torch.Generator().manual_seed(0), 0.5, starts).text.emb
    trainer.close()
    null = fam.encode_text(c, [""], trainer.tokens).emb[0]
    dropped = [torch.equal(e, null) for e in half]
    assert 0 < sum(dropped) < len(clips), dropped
    assert all(d or torch.allclose(e, o, atol=1e-6) for d, e, o in zip(dropped, half, own, strict=True))
    assert not any(torch.allclose(o, null) for o in own)


def test_full_finetuning_saves_a_transformer_the_pipeline_runs(tiny, shards, tmp_path):
    m = finetune(config(tiny, shards, tmp_path / "full", mode="full", steps=3, lr=1e-3))
    fam = FAMILIES["wan"]
    cls = fam.classes()
    tuned = cls["transformer"].from_pretrained(m["outputs"]["transformer"])
    original = cls["transformer"].from_pretrained(str(tiny["wan"]), subfolder="transformer")
    changed = [n for n, p in tuned.named_parameters() if not torch.equal(p, original.get_parameter(n))]
    assert len(changed) > len(list(tuned.parameters())) // 2  # every weight trains, not a few matrices
    base = pipeline_latents(cls["pipeline"].from_pretrained(str(tiny["wan"])), "wan")
    out = pipeline_latents(cls["pipeline"].from_pretrained(str(tiny["wan"]), transformer=tuned), "wan")
    assert not torch.allclose(out, base)


def test_gradient_checkpointing_keeps_the_result_and_bf16_runs(tiny, shards, tmp_path):
    ref = finetune(config(tiny, shards, tmp_path / "ref", steps=2))
    ckp = finetune(config(tiny, shards, tmp_path / "ckp", steps=2, gradient_checkpointing=True))
    a, b = load_file(ref["outputs"]["lora"]), load_file(ckp["outputs"]["lora"])
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # bf16 (meant for GPUs, runs on CPU): bf16 base and autocast; LoRA weights trained and saved in fp32.
    half = finetune(config(tiny, shards, tmp_path / "bf16", steps=2, precision="bf16"))
    c = load_file(half["outputs"]["lora"])
    assert c.keys() == a.keys() and all(v.dtype == torch.float32 for v in c.values())
    assert all(
        torch.allclose(a[k], c[k], atol=0.05) and not torch.equal(a[k], c[k]) for k in a if "lora_B" in k
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "family, fsdp, port",
    [("wan", False, 29517), ("wan", True, 29518), ("ltx", False, 29519), ("cogvideox", False, 29520)],
    ids=["wan-ddp", "wan-fsdp2", "ltx-ddp", "cogvideox-ddp"],
)
def test_two_processes_agree_with_one_process(family, fsdp, port, tiny, shards, tmp_path):
    """torchrun, 2 gloo processes of 1 clip each (DDP, or FSDP2 sharding the transformer) == 1 process
    accumulating 2 micro-batches of 1 clip."""
    one = finetune(config(tiny, shards, tmp_path / "one", family, steps=3, batch_size=1, grad_accum=2))
    size = SIZE[family]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
        str(port), "-m", "vidsift.pipeline.cli", "finetune", "tiny", "--data", shards,
        "--out", str(tmp_path / "two"), "--set", f"model={json.dumps(str(tiny[family]))}", "--set", "steps=3",
        "--set", f"family={json.dumps(family)}", "--set", f"height={size}", "--set", f"width={size}",
        "--set", "batch_size=1", "--set", "eval_clips=0", "--set", "lr=3e-3",
        "--set", f"fsdp={str(fsdp).lower()}",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two/manifest.json").read_text())
    assert [s for s, _ in two["history"]] == [1, 2, 3]
    for (_, l1), (_, l2) in zip(one["history"], two["history"], strict=True):
        assert l1 == pytest.approx(l2, rel=1e-5)
    a, b = load_file(one["outputs"]["lora"]), load_file(two["outputs"]["lora"])
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize("family", ["wan", "ltx", "cogvideox"])
def test_latents_in_fp16_decode_within_the_vae_reconstruction_error(family, tiny, shards):
    """A latent stored as float16 (the shards' latent cache format) decodes through the family's VAE as
    well as the float32 latent does: the normalisation round-trips and fp16 costs far less than the VAE."""
    from vidsift.model.finetune.shards import index_clips

    fam = FAMILIES[family]
    cfg = config(tiny, shards, "unused", family)
    c, _ = load_model(cfg, fam, torch.device("cpu"))
    index = index_clips(shards, "caption", cfg.bucket_list, 1, "crop", 0.1)
    pixels = torch.stack([index.pixels(clip, 0.5) for clip in index.clips[:2]])
    with torch.no_grad():
        latent = fam.encode_video(c, pixels, None)
        raw = c.vae.encode(pixels).latent_dist.mode()
        assert torch.allclose(fam.denormalise(c, latent), raw, atol=1e-5)
        full = fam.decode_latent(c, latent)
        cached = fam.decode_latent(c, latent.half().float())
    vae_error = (full - pixels).abs().mean()
    cache_error = (cached - full).abs().mean()
    assert full.shape == pixels.shape
    assert cache_error < 0.01 * vae_error, (float(cache_error), float(vae_error))
    assert (cached - pixels).abs().mean() <= vae_error * 1.01


def test_buckets_follow_aspect_and_duration():
    buckets = [(49, 480, 832), (49, 832, 480), (49, 624, 624), (17, 480, 832)]
    assert choose_bucket(1920, 1080, 120, buckets, "crop", 0.1) == (0, "")
    assert choose_bucket(1080, 1920, 120, buckets, "crop", 0.1) == (1, "")
    assert choose_bucket(1000, 1000, 120, buckets, "crop", 0.1) == (2, "")
    assert choose_bucket(1920, 1080, 30, buckets, "crop", 0.1) == (3, "")  # too short for 49
    assert choose_bucket(1920, 1080, 10, buckets, "crop", 0.1) == (None, "too_short")
    # 4:3 is 30% off 832x480 (its nearest) and 33% off 624x624: cropped under crop, dropped under drop.
    assert choose_bucket(1440, 1080, 120, buckets, "crop", 0.1) == (0, "cropped")
    assert choose_bucket(1440, 1080, 120, buckets, "drop", 0.1) == (None, "aspect")
    assert choose_bucket(1440, 1080, 120, buckets, "drop", 0.35) == (0, "")


def test_the_clip_cache_drops_the_least_recently_used_row_groups_beyond_its_budget():
    lru, loads = ByteLRU(budget=10), []

    def load(key: str, size: int):
        return lambda: (loads.append(key) or f"value {key}", size)

    assert lru.get("a", load("a", 4)) == "value a"
    lru.get("b", load("b", 4))
    assert lru.get("a", load("a", 4)) == "value a"  # held: not read again
    lru.get("c", load("c", 4))  # 12 bytes > 10: b, the least recently used, goes
    assert list(lru.items) == ["a", "c"] and lru.bytes == 8 and loads == ["a", "b", "c"]
    lru.get("d", load("d", 50))  # more than the whole budget: kept alone
    assert list(lru.items) == ["d"] and lru.bytes == 50


def test_shipped_recipes_are_valid():
    names = shipped_recipes("finetune")
    assert {"wan_lora", "wan_full", "ltx_lora", "cogvideox_lora", "tiny"} <= set(names)
    for name in names:
        cfg = load_recipe(name)
        assert cfg.model and cfg.family in FAMILIES
    with pytest.raises(RecipeError, match="unknown key 'lora_rnak'"):
        load_recipe("tiny", ["lora_rnak=4"])


@pytest.mark.parametrize(
    "sets, message",
    [
        (["frames=10"], re.escape("wan: 10 frames is not a valid length (nearest: 9 or 13)")),
        (["height=24"], re.escape("wan: 24x16 (height x width) must be multiples of 16")),
        (['lora_targets=["nope"]'], re.escape("lora_targets ['nope']")),
        (['model="/nonexistent/model"'], re.escape("cannot load wan model '/nonexistent/model'")),
        (['family="sora"'], re.escape("family must be one of wan, ltx, cogvideox, got 'sora'")),
        (['bucket_policy="drop"', "buckets=[[9, 16, 32]]"], r"no usable clips in .*'aspect': 24"),
        (["frames=21"], r"no usable clips in .*'too_short': 24"),
    ],
)
def test_bad_input_is_one_line(sets, message, tiny, shards, tmp_path, capsys):
    args = ["finetune", "tiny", "--data", shards, "--out", str(tmp_path / "r"), "--set", "steps=0"]
    args += ["--set", f"model={json.dumps(str(tiny['wan']))}"]
    for s in sets:
        args += ["--set", s]
    assert model_cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert re.search(message, err), err


def test_resume_needs_a_checkpoint_and_a_new_run_needs_a_new_folder(tiny, shards, tmp_path, capsys):
    args = ["finetune", "tiny", "--data", shards, "--out", str(tmp_path / "r"), "--set", "steps=1"]
    args += ["--set", f"model={json.dumps(str(tiny['wan']))}", "--set", "eval_clips=0"]
    assert model_cli([*args, "--resume"]) == 2
    assert "--resume: no checkpoint at" in capsys.readouterr().err
    assert model_cli(args) == 0
    assert model_cli(args) == 2
    assert "already holds a run: pass --resume" in capsys.readouterr().err
    assert model_cli([*args, "--resume", "--set", "lora_rank=8"]) == 2
    assert "--resume: lora_rank differ" in capsys.readouterr().err
    adapter_keys = torch.load(tmp_path / "r/checkpoint/state.pt", weights_only=False)["trainable"]
    assert all(f".{ADAPTER}." in k for k in adapter_keys)


def test_sample_every_writes_a_grid_from_the_family_pipeline(tiny, shards, tmp_path):
    import av

    cfg = config(tiny, shards, tmp_path / "s", steps=2, sample_every=2, sample_prompts=2, sample_steps=2)
    cfg = dataclasses.replace(cfg, eval_clips=2)
    m = finetune(cfg)
    with av.open(str(tmp_path / "s/samples/step_2.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 9 and frames[0].shape == (16, 32, 3)  # two 16x16 videos side by side
    prompts = (tmp_path / "s/samples/step_2.txt").read_text().splitlines()
    assert len(prompts) == 2 and all(prompts)
    assert m["held_out"] and len(m["held_out"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("family", ["wan", "ltx", "cogvideox"])
def test_lora_on_the_quickstart_shards(family, quickstart_run, tiny, tmp_path):
    """The README quick start's real clips (native sizes and aspect ratios) in three aspect buckets."""
    run, _ = quickstart_run
    s = SIZE[family]
    buckets = [[9, s, 2 * s], [9, 2 * s, s], [9, s, s]]
    cfg = config(tiny, str(run), tmp_path / "qs", family, buckets=buckets, eval_clips=1, steps=30)
    m = finetune(cfg)
    data = m["data"]
    assert data["clips"] >= 3 and sum(b["clips"] for b in data["buckets"]) == data["clips"]
    assert (data["bucket_policy"], data["max_aspect_change"]) == ("crop", 0.1)
    assert m["evals"][-1]["tune"] < m["evals"][0]["tune"], m["evals"]
    assert m["evals"][-1]["check"] < m["evals"][0]["check"], m["evals"]
    # The same clips under "drop" with a tight aspect tolerance: each clip is used or counted as dropped.
    strict = dataclasses.replace(
        cfg, out=str(tmp_path / "strict"), bucket_policy="drop", max_aspect_change=0.01
    )
    strict = dataclasses.replace(strict, steps=0, eval_clips=0)
    try:
        s = finetune(strict)["data"]
        used, aspect = s["clips"], s["dropped"].get("aspect", 0)
    except DataError as e:  # every clip dropped: the message counts them
        used, aspect = 0, int(re.search(r"'aspect': (\d+)", str(e)).group(1))
    assert aspect > 0 and used + aspect == data["clips"]
    # Under crop the same clips are used, and the manifest counts those cropped beyond the tolerance.
    cropped = finetune(dataclasses.replace(strict, out=str(tmp_path / "crop"), bucket_policy="crop"))["data"]
    assert cropped["bucket_policy"] == "crop" and cropped["clips"] == data["clips"]
    assert cropped["cropped_beyond_max_aspect_change"] == aspect
