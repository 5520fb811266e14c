"""``vidsift finetune``: adapt a pretrained diffusers video transformer (Wan 2.1, LTX-Video, CogVideoX) to a
curated run, with LoRA (peft) or full training. One loop for all families; families.py holds what differs.

A step: draw clips of one bucket, decode them, encode with the frozen VAE and text encoder, noise the
latents with the family's convention, regress the transformer's output on the target (MSE), AdamW. Clips
with a row in the run's latent cache (latents.py, ``vidsift encode --vae diffusers:NAME``) skip the decode
and both encoders: their stored VAE posterior is sampled with the same generator draws.

All randomness of a micro-batch (which clips, where in each clip, caption dropout, VAE posterior sample,
timesteps, noise) comes from a generator seeded by (seed, step, micro-batch), where micro-batch =
rank * grad_accum + accumulation index. So a resumed run replays exactly the batches an uninterrupted run
sees (bitwise-equal weights on the same machine), and 2 processes under torchrun see the same global batch
as 1 process accumulating 2 micro-batches. Clips are drawn with replacement.

With ``prefetch`` the clips of the next micro-batch are drawn and decoded in a background thread while this
one trains (on a GPU the CPU decodes while the GPU computes; by default only where that can overlap: on a GPU,
or when torch's threads leave a CPU core free); the draws come from that micro-batch's own generator, so the
batches, and the weights, are the same as without it.

Evaluation (``eval_clips``): the same loss at fixed timesteps and noise, on clips held out from training
("check") and on as many training clips ("tune"), before training and every ``eval_every`` steps.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vidsift.model.finetune import checkpoint as ckpt
from vidsift.model.finetune.families import FAMILIES, Components, Family, Text, nearest_frames, placement
from vidsift.model.finetune.latents import LatentCache, describe, open_cache
from vidsift.model.finetune.sample import sample_grid, write_grid
from vidsift.model.finetune.shards import Bucket, ByteLRU, Clip, ClipIndex, index_clips
from vidsift.model.logging_utils import StepBar
from vidsift.pipeline.config import RecipeError, build_config, parse_override, read_recipe, to_toml


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    model: str = ""  # hub id or local folder in the hub layout (transformer/, vae/, text_encoder/, ...)
    offline: bool = False  # model from local files or the Hugging Face cache only (no hub requests)
    family: str = "wan"  # wan | ltx | cogvideox (families.py)
    mode: str = "lora"  # lora: train peft LoRA matrices on lora_targets; full: train every transformer weight
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_targets: list = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    data: str = ""  # curation run folder (clips/*.parquet); `--data` on the command line
    out: str = "out/finetune"
    caption_column: str = "caption"  # or caption_short
    caption_dropout: float = (
        0.1  # train this share of samples on the empty caption (classifier-free guidance)
    )
    text_tokens: int = 0  # 0: the family's length (Wan 512, LTX 128; CogVideoX is fixed by the model)
    frames: int = 49  # the bucket when `buckets` is empty
    height: int = 480
    width: int = 832
    buckets: list = field(default_factory=list)  # [[frames, height, width], ...]: sizes by aspect/duration
    bucket_policy: str = "crop"  # crop: centre-crop any aspect to its bucket; drop: drop if off by more than
    max_aspect_change: float = 0.1  # ... this relative aspect change (bucket_policy = "drop")
    frame_stride: int = 1  # take every n-th source frame
    eval_clips: int = 0  # held out from training; the loss on them ("check") and on as many training clips
    batch_size: int = 1  # per micro-batch and process
    grad_accum: int = 1
    steps: int = 1000
    lr: float = 1e-4
    warmup: int = 0  # linear warm-up steps, then constant
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0: off
    timestep_sampling: str = "logit_normal"  # or uniform: u in (0, 1) per sample
    flow_shift: float = 1.0  # flow families: sigma = shift u / (1 + (shift - 1) u); > 1 favours more noise
    seed: int = 0
    precision: str = "fp32"  # bf16: frozen parts and (LoRA) the base transformer in bf16, autocast; GPU
    gradient_checkpointing: bool = False
    fsdp: bool = False  # under torchrun: FSDP2 (fully_shard per block) instead of DDP
    device: str = "auto"
    log_every: int = 10
    eval_every: int = 0  # 0: before and after training only
    save_every: int = 0  # checkpoint/state.pt every n steps (always at the end)
    sample_every: int = 0  # samples/step_N.mp4 every n steps with the family pipeline (0: never)
    sample_prompts: int = 4  # caption_short of this many clips, held-out ones first
    sample_steps: int = 30  # denoising steps of the pipeline
    sample_guidance: float = 5.0  # classifier-free guidance scale
    cached_latents: bool = True  # use RUN/latents/<model> (vidsift encode --vae diffusers:NAME) where it fits
    prefetch: str = "auto"  # on: decode the next micro-batch's clips in a background thread while this one
    # trains; auto: on where that can overlap (a GPU, or torch leaves a CPU core free); off
    text_cache: bool = True  # keep each caption's embedding in memory after its first use (up to 512 MiB)

    def __post_init__(self) -> None:
        choices = {
            "family": tuple(FAMILIES),
            "mode": ("lora", "full"),
            "bucket_policy": ("crop", "drop"),
            "timestep_sampling": ("logit_normal", "uniform"),
            "precision": ("fp32", "bf16"),
            "prefetch": ("auto", "on", "off"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        for key in ("lora_rank", "batch_size", "grad_accum", "frame_stride", "frames", "height", "width"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if min(self.steps, self.eval_clips, self.sample_every, self.save_every, self.eval_every) < 0:
            raise ValueError("steps, eval_clips, eval_every, save_every and sample_every must be >= 0")
        if self.flow_shift <= 0 or self.sample_prompts < 1 or self.sample_steps < 1 or self.log_every < 1:
            raise ValueError("flow_shift must be > 0; sample_prompts, sample_steps and log_every >= 1")
        for b in self.buckets:
            if not (isinstance(b, list) and len(b) == 3 and all(isinstance(v, int) and v > 0 for v in b)):
                raise ValueError(f"buckets holds [frames, height, width] lists of positive ints, got {b!r}")
        if not self.lora_targets or not all(isinstance(t, str) for t in self.lora_targets):
            raise ValueError("lora_targets must be a non-empty list of module names")

    @property
    def bucket_list(self) -> list[Bucket]:
        return [tuple(b) for b in self.buckets] or [(self.frames, self.height, self.width)]


def load_recipe(path: str | None, overrides: list[str] = ()) -> FinetuneConfig:
    """A fine-tuning config from a recipe (a path, or a shipped name such as ``wan_lora``) and ``--set``."""
    values: dict = {}
    if path:
        data, file = read_recipe(path, "finetune")
        build_config(FinetuneConfig, data, str(file))
        values.update(data)
    for item in overrides:
        keys, value = parse_override(item)
        if len(keys) > 1:
            raise RecipeError(f"--set {item}: fine-tuning recipes are flat (no dotted keys)")
        build_config(FinetuneConfig, {keys[0]: value}, "--set")
        values[keys[0]] = value
    return build_config(FinetuneConfig, values, str(path or "--set"))


# -------------------------------------------------------------------------------------------------------
# Set-up: processes, model, data


@dataclass
class Dist:
    on: bool  # launched by torchrun
    rank: int
    world: int
    device: torch.device

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup_distributed(cfg: FinetuneConfig) -> Dist:
    """DDP/FSDP2 only when launched by torchrun (gloo on CPU, NCCL on GPU); else one process."""
    from vidsift.model.distributed import start_processes

    if cfg.fsdp and ("RANK" not in os.environ or "WORLD_SIZE" not in os.environ):
        raise RecipeError("fsdp = true needs torchrun (several processes)")
    return Dist(*start_processes(cfg.device))


def load_model(cfg: FinetuneConfig, family: Family, device: torch.device) -> tuple[Components, object]:
    """The checkpoint's components on ``device``, the transformer made trainable (LoRA or full); returns
    the components and the peft LoraConfig (None in full mode)."""
    if not cfg.model:
        raise RecipeError("model is empty: set it to a hub id or a local folder (--set model=PATH)")
    bf16 = cfg.precision == "bf16"
    frozen = torch.bfloat16 if bf16 else torch.float32
    base = torch.bfloat16 if bf16 and cfg.mode == "lora" else torch.float32
    try:
        c = family.load(cfg.model, base, frozen, cfg.offline)
    except (OSError, ValueError) as e:
        raise RecipeError(
            f"cannot load {family.name} model {cfg.model!r}: {str(e).splitlines()[0]}"
        ) from None
    c.vae.to(device)
    c.text_encoder.to(device)
    t = c.transformer.to(device)
    lora = None
    if cfg.mode == "lora":
        from peft import LoraConfig

        t.requires_grad_(False)
        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            init_lora_weights=True,
            target_modules=cfg.lora_targets,
        )
        torch.manual_seed(cfg.seed)  # LoRA A matrices start random: same seed, same start
        try:
            t.add_adapter(lora, adapter_name=ckpt.ADAPTER)
        except ValueError as e:
            raise RecipeError(f"lora_targets {cfg.lora_targets}: {str(e).splitlines()[0]}") from None
        for p in t.parameters():  # trained in fp32 even when the base is bf16
            if p.requires_grad:
                p.data = p.data.float()
    else:
        t.requires_grad_(True)
    if cfg.gradient_checkpointing:
        t.enable_gradient_checkpointing()
    t.train()
    return c, lora


def check_buckets(family: Family, c: Components, buckets: list[Bucket]) -> None:
    """Every bucket must be a size the family takes; say the nearest valid ones if not."""
    m = family.spatial_multiple(c)
    for f, h, w in buckets:
        if not family.frames_ok(c, f):
            lo, hi = nearest_frames(family, c, f)
            raise RecipeError(f"{family.name}: {f} frames is not a valid length (nearest: {lo} or {hi})")
        if h % m or w % m:
            raise RecipeError(f"{family.name}: {h}x{w} (height x width) must be multiples of {m}")


def _distribute(cfg: FinetuneConfig, d: Dist, transformer):
    """DDP or FSDP2 around the transformer under torchrun; the transformer itself otherwise."""
    if not d.on:
        return transformer
    if cfg.fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(d.device.type, (d.world,))
        block_types = tuple(getattr(transformer, "_no_split_modules", None) or ())
        for m in transformer.modules():
            if type(m).__name__ in block_types:
                fully_shard(m, mesh=mesh)
        fully_shard(transformer, mesh=mesh)
        return transformer
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(transformer, device_ids=[d.device.index] if d.device.type == "cuda" else None)


# -------------------------------------------------------------------------------------------------------
# One micro-batch


def step_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """All randomness of one micro-batch: a function of (seed, step, micro-batch) only."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + micro)


def draw(clips: list[Clip], by_bucket: dict[int, list[Clip]], n: int, g: torch.Generator) -> list[Clip]:
    """``n`` clips of one bucket: the first at random, the rest from its bucket (with replacement)."""
    first = clips[int(torch.randint(len(clips), (1,), generator=g))]
    pool = by_bucket[first.bucket]
    return [first] + [pool[int(i)] for i in torch.randint(len(pool), (n - 1,), generator=g)]


@dataclass
class Draw:
    """A micro-batch's clips and windows, drawn from its generator, and (with prefetch) their decoding."""

    g: torch.Generator  # the rest of the micro-batch's randomness comes from here
    clips: list[Clip]
    starts: torch.Tensor  # where in each clip its window starts, in [0, 1]
    pixels: Future | None = None  # Trainer.decode of these clips, running in the background


@dataclass
class Batch:
    latent: torch.Tensor  # normalised, [B, C, T, h, w]
    text: Text
    u: torch.Tensor  # [B] in (0, 1): the timestep before the family's convention
    noise: torch.Tensor


def prefetches(cfg: FinetuneConfig, device: torch.device) -> bool:
    """Whether to decode ahead in a thread: "auto" does where it overlaps with training instead of taking a
    core from it (on a CPU whose cores torch's threads all use, it measured no faster)."""
    if cfg.prefetch != "auto":
        return cfg.prefetch == "on"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return device.type != "cpu" or torch.get_num_threads() < cores


class Trainer:
    """The model, data and conventions of one run; ``loss`` is a micro-batch's loss."""

    def __init__(self, cfg: FinetuneConfig, family: Family, c: Components, index: ClipIndex, device) -> None:
        self.cfg, self.family, self.c, self.index, self.device = cfg, family, c, index, device
        self.tokens = family.text_tokens(c, cfg.text_tokens)
        self.null = family.encode_text(c, [""], self.tokens)
        self.cache: LatentCache | None = None  # `vidsift encode --vae diffusers:NAME` rows that fit this run
        self.drawn = {"cached": 0, "encoded": 0}  # clips of training batches, by where their latent came from
        self.autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else nullcontext()
        )
        # Looked up once: diffusers' .dtype walks every submodule on each call (families.placement).
        self.vae_dtype = placement(c.vae)[1]
        self.input_dtype = c.transformer.dtype if cfg.precision == "bf16" else torch.float32
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="prefetch") if prefetches(cfg, device) else None
        self.texts = ByteLRU() if cfg.text_cache else None  # caption -> its Text, encoded alone

    def caption_text(self, caption: str) -> Text:
        """A caption's embedding, kept after its first use: the text encoder is frozen. Each caption is
        encoded alone (as ``vidsift encode`` caches it), so its value does not depend on the batch it first
        came in, nor on whether the run was resumed."""

        def encode() -> tuple[Text, int]:
            t = self.family.encode_text(self.c, [caption], self.tokens)
            return Text(t.emb[0], t.mask[0]), t.emb.nbytes + t.mask.nbytes

        return self.texts.get(caption, encode)

    def draw(self, clips: list[Clip], by_bucket: dict[int, list[Clip]], g: torch.Generator) -> Draw:
        """The clips and windows of a training micro-batch; with prefetch, their decoding starts now."""
        picked = draw(clips, by_bucket, self.cfg.batch_size, g)
        starts = torch.rand(len(picked), generator=g)
        pixels = self.pool.submit(self.decode, picked, starts) if self.pool else None
        return Draw(g, picked, starts, pixels)

    def decode(self, clips: list[Clip], starts: torch.Tensor) -> list[torch.Tensor]:
        """[3, F, H, W] pixels of the clips without a cached latent, in order."""
        cached = self.cache.refs if self.cache else {}
        todo = [(c, float(s)) for c, s in zip(clips, starts, strict=True) if c.clip_id not in cached]
        return [self.index.pixels(c, s) for c, s in todo]

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def batch(
        self,
        clips: list[Clip],
        g: torch.Generator,
        dropout: float,
        starts: torch.Tensor,
        u: torch.Tensor | None = None,
        posterior: bool = True,
        pixels: Future | None = None,
    ) -> Batch:
        """Decoded, encoded and noised clips; ``starts`` places each clip's window. ``pixels``: their decoding
        under way (Trainer.draw). Fixed ``u`` (timestep) and ``posterior=False`` (the VAE's mode, not a
        sample) make an evaluation batch."""
        cached = [self.cache.get(c) if self.cache else None for c in clips]
        todo = [i for i, e in enumerate(cached) if e is None]
        mean, std = [None] * len(clips), [None] * len(clips)
        text_parts: list[Text | None] = [None] * len(clips)
        with torch.no_grad():
            if todo:  # decode and encode the clips without a cached latent (all of them without a cache)
                decoded = pixels.result() if pixels is not None else self.decode(clips, starts)
                m, s = self.family.encode_posterior(self.c, torch.stack(decoded).to(self.device))
                if self.texts is None:
                    text = self.family.encode_text(self.c, [clips[i].caption for i in todo], self.tokens)
                for k, i in enumerate(todo):
                    mean[i], std[i] = m[k], s[k]
                    cap = clips[i].caption
                    text_parts[i] = self.caption_text(cap) if self.texts else Text(text.emb[k], text.mask[k])
            dtype = self.vae_dtype
            for i, e in enumerate(cached):  # a cached clip: its stored posterior and caption embedding
                if e is not None:
                    mean[i], std[i] = e.mean.to(self.device, dtype), e.std.to(self.device, dtype)
                    text_parts[i] = Text(e.text.to(self.device), e.mask.to(self.device))
            latent = self.family.latent_from_posterior(
                self.c, torch.stack(mean), torch.stack(std), g if posterior else None
            )
        text = Text(torch.stack([t.emb for t in text_parts]), torch.stack([t.mask for t in text_parts]))
        if posterior:  # training batches (evaluation batches have posterior=False)
            self.drawn["encoded"] += len(todo)
            self.drawn["cached"] += len(clips) - len(todo)
        keep = torch.rand(len(clips), generator=g) >= dropout
        text = text.select(keep, self.null)
        if u is None:
            if self.cfg.timestep_sampling == "logit_normal":
                u = torch.sigmoid(torch.randn(len(clips), generator=g))
            else:
                u = torch.rand(len(clips), generator=g)
        noise = torch.randn(latent.shape, generator=g).to(self.device)
        return Batch(latent, text, u.to(self.device), noise)

    def loss(self, model, b: Batch) -> torch.Tensor:
        noisy, timestep, target = self.family.noise(self.c, b.latent, b.noise, b.u, self.cfg.flow_shift)
        dtype = self.input_dtype
        with self.autocast:
            pred = self.family.predict(
                self.c, model, noisy.to(dtype), timestep, b.text.to(self.device, dtype)
            )
        return torch.nn.functional.mse_loss(pred.float(), target.float())

    @torch.no_grad()
    def evaluate(self, model, clips: list[Clip]) -> float:
        """Mean loss at fixed u in {0.1, 0.3, 0.5, 0.7, 0.9} and fixed noise: comparable across steps."""
        if not clips:
            return float("nan")
        total = 0.0
        grid = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
        n = len(grid)
        for i, clip in enumerate(clips):
            g = torch.Generator().manual_seed(self.cfg.seed + 7919 * (i + 1))
            one = self.batch([clip], g, 0.0, starts=torch.tensor([0.5]), u=grid[:1], posterior=False)
            # The clip encoded once, then noised at every u of the grid, each with its own fixed noise.
            latent = one.latent.expand(n, *one.latent.shape[1:])
            text = Text(one.text.emb.expand(n, -1, -1), one.text.mask.expand(n, -1))
            noise = torch.randn(latent.shape, generator=g).to(self.device)
            total += float(self.loss(model, Batch(latent, text, grid.to(self.device), noise)))
        return total / len(clips)


# -------------------------------------------------------------------------------------------------------
# The loop


def lr_at(step: int, cfg: FinetuneConfig) -> float:
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else cfg.lr


def finetune(cfg: FinetuneConfig, resume: bool = False, log=print, quiet: bool = False) -> dict:
    """Train; returns (and writes to OUT/manifest.json) the run summary. ``log`` gets the log lines; rank 0
    shows the shared progress bar on stderr unless ``quiet``."""
    d = setup_distributed(cfg)
    try:
        return _finetune(cfg, d, resume, log if d.master else (lambda *a, **k: None), quiet or not d.master)
    finally:
        if d.on:
            import torch.distributed as dist

            dist.destroy_process_group()


def _finetune(cfg: FinetuneConfig, d: Dist, resume: bool, log, quiet: bool) -> dict:
    family = FAMILIES[cfg.family]
    out = Path(cfg.out)
    state_path = out / "checkpoint" / "state.pt"
    saved = None
    if resume:
        if not state_path.exists():
            raise RecipeError(f"--resume: no checkpoint at {state_path}")
        saved = ckpt.load_state(state_path)
        changed = [k for k in ckpt.RESUME_KEYS if saved["config"].get(k) != getattr(cfg, k)]
        if changed:
            raise RecipeError(f"--resume: {', '.join(changed)} differ from the run in {out}")
    elif state_path.exists():
        raise RecipeError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")

    c, lora = load_model(cfg, family, d.device)
    buckets = cfg.bucket_list
    check_buckets(family, c, buckets)
    index = index_clips(
        cfg.data, cfg.caption_column, buckets, cfg.frame_stride, cfg.bucket_policy, cfg.max_aspect_change
    )
    held = index.clips[: cfg.eval_clips]
    train_clips = index.clips[cfg.eval_clips :]
    if not train_clips:
        raise RecipeError(
            f"eval_clips = {cfg.eval_clips} leaves no clip to train on ({len(index.clips)} clips)"
        )
    tune = train_clips[: cfg.eval_clips]
    by_bucket: dict[int, list[Clip]] = {}
    for clip in train_clips:
        by_bucket.setdefault(clip.bucket, []).append(clip)
    summary = index.summary()
    log(
        f"{family.name} {cfg.mode}: {len(train_clips)} training clips, {len(held)} held out; dropped "
        f"{sum(index.dropped.values())} {dict(sorted(index.dropped.items()))}; bucket_policy "
        f"{cfg.bucket_policy} ({index.cropped} cropped by more than {cfg.max_aspect_change:.0%} of their "
        "aspect); buckets "
        + ", ".join(f"{b['frames']}x{b['height']}x{b['width']}: {b['clips']}" for b in summary["buckets"])
    )

    trainer = Trainer(cfg, family, c, index, d.device)
    cache_report: dict = {"folder": None, "clips": 0, "not_used": {}}
    if cfg.cached_latents:
        trainer.cache, cache_report = open_cache(cfg.data, cfg.model, index, c, trainer.tokens)
        log(describe(cache_report))
    else:
        log("cached latents: off (cached_latents = false); encoding every clip on the fly")
    model = _distribute(cfg, d, c.transformer)
    params = [p for p in c.transformer.parameters() if p.requires_grad]
    log(f"trainable parameters: {sum(p.numel() for p in params):,} of {c.transformer.num_parameters():,}")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, history, evals = 0, [], []
    if saved is not None:
        ckpt.restore(c.transformer, opt, saved)
        step, history, evals = saved["step"], saved["history"], saved["evals"]
        log(f"resumed at step {step}")

    def evaluate() -> None:
        c.transformer.eval()
        e = {"step": step, "tune": trainer.evaluate(model, tune), "check": trainer.evaluate(model, held)}
        c.transformer.train()
        evals.append(e)
        log(f"eval step {step}: tune {e['tune']:.4f}  check (held out) {e['check']:.4f}")

    prompts = [clip.prompt for clip in (held + train_clips)[: cfg.sample_prompts]]

    def sample() -> None:
        grid = sample_grid(
            family, c, prompts, buckets[0], cfg.sample_steps, cfg.sample_guidance, trainer.tokens, cfg.seed
        )
        if d.master:
            log(f"wrote {write_grid(grid, prompts, out / 'samples', step)}")

    def save() -> dict:
        state = {
            "step": step,
            "trainable": ckpt.trainable_state(c.transformer, cfg.fsdp and d.on),
            "optimizer": ckpt.optimizer_state(c.transformer, opt, cfg.fsdp and d.on),
            "history": history,
            "evals": evals,
            "config": dataclasses.asdict(cfg),
        }
        if d.master:
            ckpt.save_state(state_path, state)
        return state

    if held and step == 0:
        evaluate()
    t0, done_at_start = time.perf_counter(), step
    # Time of the steps after this session's first (its warm-up), without evaluation, saving and sampling.
    timed_steps, timed_s, timed_cpu = 0, 0.0, 0.0
    bar = StepBar("finetune", cfg.steps, step, quiet)  # the shared rich bar on stderr (rank 0)

    def draw_micro(s: int, a: int) -> Draw | None:
        """Micro-batch ``a`` of step ``s`` (None past the last step), its generator a function of (seed, step,
        micro-batch) only: the same clips whether it is drawn ahead (prefetch) or not."""
        if a == cfg.grad_accum:
            s, a = s + 1, 0
        if s >= cfg.steps:
            return None
        return trainer.draw(train_clips, by_bucket, step_generator(cfg.seed, s, d.rank * cfg.grad_accum + a))

    following = draw_micro(step, 0)
    try:
        while step < cfg.steps:
            t_step, c_step = time.perf_counter(), time.process_time()
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            total = torch.zeros(())
            for a in range(cfg.grad_accum):
                this, following = following, draw_micro(step, a + 1)  # the next one decodes meanwhile
                b = trainer.batch(this.clips, this.g, cfg.caption_dropout, this.starts, pixels=this.pixels)
                last = a == cfg.grad_accum - 1
                if cfg.fsdp and d.on:
                    model.set_requires_gradient_sync(last)
                sync = model.no_sync() if d.on and not cfg.fsdp and not last else nullcontext()
                with sync:
                    loss = trainer.loss(model, b) / cfg.grad_accum
                    loss.backward()
                total += loss.detach().float().cpu()
            if d.on:
                import torch.distributed as dist

                total = total.to(d.device)
                dist.all_reduce(total)
                total = total.cpu() / d.world
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            history.append([step, float(total)])
            bar.update(step, loss=float(total), lr=lr_at(step - 1, cfg))
            if step > done_at_start + 1:
                timed_steps += 1
                timed_s += time.perf_counter() - t_step
                timed_cpu += time.process_time() - c_step
            if step % cfg.log_every == 0 or step == cfg.steps:
                per = (time.perf_counter() - t0) / max(1, step - done_at_start)
                lr = lr_at(step - 1, cfg)
                log(f"step {step}/{cfg.steps}  loss {float(total):.4f}  lr {lr:.2e}  {per:.2f} s/step")
            if held and cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
                evaluate()
            if cfg.save_every and step % cfg.save_every == 0 and step != cfg.steps:
                save()
            if cfg.sample_every and step % cfg.sample_every == 0 and (d.master or cfg.fsdp):
                sample()  # under FSDP every rank runs the sharded transformer; the master writes
    finally:
        trainer.close()
        bar.close()
    if held and (not evals or evals[-1]["step"] != step):
        evaluate()
    state = save()
    outputs = {"checkpoint": str(state_path)}
    if cfg.mode == "lora":
        path = out / "lora" / "pytorch_lora_weights.safetensors"
        if d.master:
            path = ckpt.save_lora(family, state["trainable"], out / "lora", lora)
        outputs["lora"] = str(path)
    else:
        target = out / "transformer"
        if cfg.fsdp and d.on:
            full = state["trainable"]
            if d.master:
                family.classes()["transformer"].from_config(c.transformer.config).save_pretrained(
                    str(target), state_dict=full
                )
        elif d.master:
            c.transformer.save_pretrained(str(target))
        outputs["transformer"] = str(target)
    manifest = {
        "family": family.name,
        "mode": cfg.mode,
        "steps": step,
        "data": summary,
        "held_out": [clip.clip_id for clip in held],
        "text_tokens": trainer.tokens,
        "cached_latents": {**cache_report, "drawn": trainer.drawn},
        "final_loss": _mean_tail(history),
        "timing": {
            "steps": timed_steps,
            "seconds": timed_s,
            "cpu_seconds": timed_cpu,
            "prefetch": trainer.pool is not None,  # prefetch = "auto" resolved
        },
        "evals": evals,
        "history": history,
        "outputs": outputs,
        "recipe": dataclasses.asdict(cfg),
    }
    if d.master:
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
        (out / "recipe.resolved.toml").write_text(to_toml(dataclasses.asdict(cfg)))
        log(f"wrote {', '.join(outputs.values())}")
    return manifest


def _mean_tail(history: list, n: int = 10) -> float:
    tail = [loss for _, loss in history[-n:]]
    return sum(tail) / len(tail) if tail else math.nan
