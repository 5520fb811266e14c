"""Train the DiT on curated shards with rectified flow: one visible loop, nanoGPT style.

    vidsift train recipes/train/tiny.toml --data OUT [--set key=value ...] [--out RUN] [--resume]
    torchrun --nproc-per-node 8 -m vidsift.model train small --data OUT

Runs on CPU or GPU; DDP (or FSDP with ``parallel = "fsdp"``) switches on only when launched by torchrun (gloo
on CPU, NCCL on GPU). A run folder
holds the resolved recipe (recipe.toml), log.csv, samples/ and the checkpoint: model.safetensors and
ema.safetensors (weights plus metadata that rebuild the model alone) and state.pt (optimizer, step, data
position, RNG). Resuming continues bit-for-bit (on CPU): every random draw of step s comes from a generator
seeded by (seed, s, reader), and the data readers replay their position.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from vidsift.pipeline.config import RecipeError, build_config, parse_override, read_recipe, to_toml


@dataclass
class TrainConfig:
    # data
    data: str = ""  # curation run folder (holds clips/*.parquet)
    out: str = "out/train"  # run folder: checkpoint, log.csv, samples/, recipe.toml
    frames: int = 9  # frames per training clip (1 + 4k when training on VAE latents)
    height: int = 32  # training size; clips are resized to cover it and centre-cropped
    width: int = 32
    fps: float = (
        0.0  # frames per second to train at, from each clip's own rate (fps column); 0 = frame_stride
    )
    frame_stride: int = 2  # with fps = 0: take every n-th source frame (24 fps source, stride 2 -> 12 fps)
    batch_size: int = 8  # clips per process per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    shuffle_buffer: int = 64  # row references held for shuffling, per reader
    val_clips: int = 4  # clips held out (first by clip_id) for validation loss and sample prompts
    # model
    model: str = "tiny"  # DiT preset (model/dit.py PRESETS)
    model_args: dict = field(default_factory=dict)  # overrides of the preset, e.g. {depth = 2}
    vae: str = ""  # "" trains in pixel space; else a VAE checkpoint (cached latents used when present)
    text_model: str = ""  # "" = bundled all-MiniLM-L6-v2; else a Hugging Face name or local path
    text_tokens: int = 32  # caption tokens the DiT attends to
    offline: bool = False  # text_model from local files or the Hugging Face cache only (no hub requests)
    # rectified flow (model/flow.py FlowConfig)
    caption_dropout: float = 0.1  # share of samples trained without their caption (for CFG)
    t_mean: float = 0.0  # logit-normal timestep mean
    t_std: float = 1.0  # logit-normal timestep std
    shift: float = 0.0  # timestep shift; 0 = resolution-dependent
    shift_base_tokens: int = 4096  # positions (T*H*W of the model input) at which the shift is 1
    # packing: native aspect ratio and duration, clips packed into rows (docs/training.md "Packing")
    pack: bool = False  # frames/height/width become a maximum and a pixel area; batch_size counts rows
    token_budget: int = 0  # tokens per packed row; 0 = twice the tokens of a clip at the full size
    max_clips: int = 16  # clips per packed row at most (the per-clip table: fixed, for one static shape)
    packed_attention: str = "auto"  # auto (flex on GPU, dense mask on CPU) | flex | dense | segments
    image_ratio: float = 0.0  # share of packed items that are images (one-frame clips)
    image_dir: str = ""  # images from this folder (captions in NAME.txt); "" = one frame of a shard clip
    # conditioning by frames (packed training): share of video clips with clean frames given, and how many
    cond_first: float = 0.0  # first frames given (image-to-video, extension forward)
    cond_last: float = 0.0  # last frames given (extension backward)
    cond_both: float = 0.0  # first and last given (connecting two clips)
    cond_frames: int = 1  # temporal patches given per conditioned end
    # optimisation
    steps: int = 300  # optimizer steps
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-4  # cosine decays to this
    warmup: int = 20  # linear warmup steps
    weight_decay: float = 0.0  # AdamW decay on matrices only
    beta2: float = 0.99
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    ema_decay: float = 0.999  # EMA of weights used for sampling
    seed: int = 0
    # system
    device: str = "auto"  # auto: cuda if available
    parallel: str = "ddp"  # under torchrun: "ddp" (weights replicated) or "fsdp" (weights, optimizer sharded)
    compile: bool = False  # torch.compile the model
    # logging and evaluation
    log_every: int = 10
    log: str = "csv"  # "csv": RUN/log.csv only; "tensorboard": also scalars in RUN/tb (logging_utils.py)
    eval_every: int = 100  # validation loss at fixed timesteps and noise; 0 = only at the end
    save_every: int = 100  # checkpoint; the last step is always saved
    sample_every: int = 0  # sample grid of validation prompts (samples/step_N.png); 0 = never
    sample_steps: int = 20
    sample_cfg: float = 4.0

    def flow(self):
        from vidsift.model.flow import FlowConfig

        return FlowConfig(
            t_mean=self.t_mean,
            t_std=self.t_std,
            shift=self.shift,
            shift_base_tokens=self.shift_base_tokens,
            caption_dropout=self.caption_dropout,
            cond_first=self.cond_first,
            cond_last=self.cond_last,
            cond_both=self.cond_both,
            cond_frames=self.cond_frames,
        )


def load_recipe(path: str | None, overrides: list[str] = (), cls=TrainConfig):
    """A training config from a recipe (a path, or a shipped name such as ``tiny``) plus ``--set``
    overrides (``lr=1``, ``model_args.depth=2``), through the one config system of curation too."""
    values: dict = {}
    if path:
        data, file = read_recipe(path, "train")
        build_config(cls, data, str(file))
        values.update(data)
    for item in overrides:
        keys, value = parse_override(item)
        for key in reversed(keys[1:]):
            value = {key: value}
        if len(keys) > 1 and isinstance(values.get(keys[0]), dict):  # model_args.depth=2 keeps the rest
            value = {**values[keys[0]], **value}
        build_config(cls, {keys[0]: value}, "--set")
        values[keys[0]] = value
    return build_config(cls, values, str(path or "--set"))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to min_lr (nanoGPT)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def step_generator(seed: int, step: int, reader: int) -> torch.Generator:
    """All randomness of one micro-batch (timesteps, noise, caption dropout): a function of
    (seed, step, reader) only, so resuming and changing the process count do not change it."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + reader)


PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def flops_per_token(model, tokens: int) -> float:
    """Training FLOPs per token: 6N for the weights plus attention scores and values (PaLM appendix B)."""
    c = model.cfg
    return 6 * model.num_params() + 12 * c.depth * c.dim * tokens


# checkpoints: model/checkpoint.py (re-exported for callers that saved weights through this module)
from vidsift.model.checkpoint import checkpoint_meta, save_weights  # noqa: E402, F401

# ---------------------------------------------------------------------------------------------------------
# setup: devices, data, model (each a plain function the loop calls once)


@dataclass
class Dist:
    ddp: bool  # launched by torchrun
    fsdp: bool  # sharded: every rank takes part in validation, samples and saving
    rank: int
    world: int
    device: torch.device

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup_distributed(cfg: TrainConfig) -> Dist:
    """DDP/FSDP only when launched by torchrun (gloo on CPU, NCCL on GPU); else one process."""
    from vidsift.model.distributed import start_processes

    if cfg.parallel not in ("ddp", "fsdp"):
        raise RecipeError(f"parallel must be ddp or fsdp, got {cfg.parallel!r}")
    ddp, rank, world, device = start_processes(cfg.device)
    return Dist(ddp, ddp and cfg.parallel == "fsdp", rank, world, device)


@dataclass
class Data:
    index: object  # ShardIndex
    vae: object | None
    text_name: str
    readers: list  # this process's grad_accum readers (ClipStream, or PackedStream when packing)
    val: list  # held-out samples (on the master, or every rank under FSDP)
    batches: object  # FixedBatches | PackedBatches
    in_channels: int
    text_dim: int


def build_data(cfg: TrainConfig, d: Dist) -> Data:
    """Shards -> world x grad_accum readers (this process owns grad_accum of them) and their batch adapter."""
    from vidsift.model.batches import FixedBatches, PackedBatches
    from vidsift.model.data import (
        ClipSource,
        ClipStream,
        DataError,
        ImageFolder,
        NativeSize,
        PackedStream,
        ShardIndex,
        clip_tokens,
        load_samples,
    )
    from vidsift.model.dit import config_from_preset
    from vidsift.pipeline.text_encoder import TextEncoder, text_model_name

    index = ShardIndex(cfg.data)
    vae = None
    if cfg.vae:
        from vidsift.model.vae import load_vae

        if not os.path.isfile(cfg.vae):
            raise RecipeError(f"VAE checkpoint not found: {cfg.vae}")
        vae = load_vae(cfg.vae, d.device)
    use_latents = vae is not None and index.num_cached_latents == index.num_rows
    text_name = text_model_name(cfg.text_model)
    use_text_emb = index.num_cached_text == index.num_rows and _first_value(index, "text_model") == text_name
    in_channels = vae.z_channels if vae is not None else 3
    patch = config_from_preset(cfg.model, in_channels=in_channels, text_dim=1, **cfg.model_args).patch
    native = None
    if cfg.pack:  # each clip at its own aspect ratio and duration: about height x width pixels, up to frames
        factors = vae.cfg.factors if vae is not None else (1, 1, 1)
        native = NativeSize(
            area=cfg.height * cfg.width, max_frames=cfg.frames, stride=cfg.frame_stride,
            multiple=patch[1] * factors[1], frame_multiple=patch[0], vae_time=factors[0],
        )  # fmt: skip
    source = ClipSource(
        cfg.frames, cfg.height, cfg.width, cfg.frame_stride, use_latents, use_text_emb, native, cfg.fps
    )
    val_ids, val_refs = index.split(cfg.val_clips)
    num_readers = d.world * cfg.grad_accum
    readers = [
        ClipStream(index, source, reader, num_readers, cfg.seed, cfg.shuffle_buffer, val_ids)
        for reader in range(d.rank * cfg.grad_accum, (d.rank + 1) * cfg.grad_accum)
    ]
    encoder = None
    if not use_text_emb:
        try:
            encoder = TextEncoder(cfg.text_model, cfg.text_tokens, d.device, offline=cfg.offline)
        except OSError as e:  # not found (offline and not cached, a wrong path or name): one line
            raise RecipeError(f"text_model: {str(e).splitlines()[0]}") from None
    if cfg.pack:
        batches = PackedBatches(cfg, d.device, vae, use_latents, encoder, patch, 0)
        full = clip_tokens(batches.full_shape(), patch)
        batches.budget = cfg.token_budget or 2 * full
        if batches.budget < full:
            raise RecipeError(f"token_budget {batches.budget} is below the {full} tokens of a full-size clip")
        if cfg.packed_attention not in ("auto", "flex", "dense", "segments"):
            raise RecipeError(
                f"packed_attention must be auto, flex, dense or segments: {cfg.packed_attention!r}"
            )
        images = ImageFolder(cfg.image_dir, native) if cfg.image_dir else None
        readers = [
            PackedStream(
                r, patch, cfg.batch_size, batches.budget, cfg.max_clips, cfg.image_ratio, images,
                tokens_of=lambda s: clip_tokens(batches.input_shape(s.x, s.is_latent), patch),
            )
            for r in readers
        ]  # fmt: skip
    else:
        batches = FixedBatches(cfg, d.device, vae, use_latents, encoder, patch)
    text_dim = encoder.dim if encoder else int(load_samples(index, source, val_refs[:1])[0].text_emb.shape[1])
    val = load_samples(index, source, val_refs) if d.master or d.fsdp else []
    if use_latents and d.master and os.path.abspath(cfg.vae) != _first_value(index, "latent_model"):
        print(f"warning: shards were encoded by {_first_value(index, 'latent_model')}, not {cfg.vae}")
    if use_latents and not cfg.pack:  # cached latents fix the training size (the checkpoint records it)
        want = tuple(vae.latent_shape(cfg.frames, cfg.height, cfg.width))
        got = tuple(load_samples(index, source, val_refs[:1])[0].x.shape)
        if got != want:
            raise DataError(
                f"cached latents are {got} but frames={cfg.frames}, height={cfg.height}, width={cfg.width} "
                f"need {want}: set those keys to the size `vidsift encode` used, or re-encode"
            )
    if cfg.fps < 0:
        raise RecipeError(f"fps must be >= 0, got {cfg.fps}")
    slow = sum(1 for f in index.fps if f and f < cfg.fps) if cfg.fps and not use_latents else 0
    if d.master:
        inputs = "cached latents" if use_latents else "VAE on the fly" if vae else "pixels"
        if cfg.fps and use_latents:
            print(f"note: fps = {cfg.fps} does not apply to cached latents (`vidsift encode` set their rate)")
        if slow:  # time-true: a clip slower than the target shows each of its frames more than once
            print(f"note: {slow} of {index.num_rows} clips are below {cfg.fps} fps; their frames repeat")
        print(
            f"data: {index.num_rows} clips in {len(index.files)} files, {len(index.groups)} row groups; "
            f"{len(val)} held out; {inputs}, {'cached' if use_text_emb else 'live'} text ({text_name})"
        )
    return Data(index, vae, text_name, readers, val, batches, in_channels, text_dim)


def make_optimizer(model, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2), fused=device.type == "cuda")


def resume_state(cfg: TrainConfig, state: dict, model, opt, readers: list, d: Dist) -> int:
    """Load optimizer, data positions and RNG from a checkpoint's state; returns its step."""
    from vidsift.model.data import DataError

    if d.fsdp or state.get("optimizer_format") == "names":  # by parameter name: DDP <-> FSDP both ways
        _load_optimizer_by_name(model, opt, state["optimizer"])
    else:
        opt.load_state_dict(state["optimizer"])
    if len(state["readers"]) != d.world * cfg.grad_accum:
        raise DataError(
            f"checkpoint has {len(state['readers'])} data readers, this launch {d.world * cfg.grad_accum}: "
            "keep processes x grad_accum the same to resume"
        )
    for r in readers:
        r.load_state_dict(state["readers"][r.reader])
    torch.set_rng_state(state["rng"])
    return state["step"]


def save_checkpoint(cfg: TrainConfig, raw, ema, opt, data: Data, step: int, d: Dist) -> None:
    """Every rank calls this (reader states and FSDP shards are gathered); rank 0 writes one step."""
    from vidsift.model.checkpoint import write_checkpoint

    reader_states = _gather_reader_states(data.readers, d.ddp)
    weights, ema_weights = _full_state(raw, d.fsdp), _full_state(ema, d.fsdp)
    optimizer = _full_optimizer_state(raw, opt) if d.fsdp else opt.state_dict()
    if not d.master:
        return
    state = {
        "step": step,
        "optimizer": optimizer,
        "optimizer_format": "names" if d.fsdp else "ids",
        "readers": reader_states,
        "rng": torch.get_rng_state(),
        "config": dataclasses.asdict(cfg),
    }
    write_checkpoint(
        cfg.out, weights, ema_weights, checkpoint_meta(raw, cfg, step, data.text_name, cfg.vae), state
    )


def save_samples(cfg: TrainConfig, ema, data: Data, step: int, autocast, d: Dist) -> None:
    """A grid of EMA samples for the validation prompts: one row per prompt, frames left to right."""
    from vidsift.model.flow import sample_euler
    from vidsift.model.sample import save_grid

    x, text, mask = data.batches.sample_inputs(data.val[:4])
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(d.device)
    with autocast:
        out = sample_euler(ema, noise, text, mask, cfg.flow(), cfg.sample_steps, cfg.sample_cfg).float()
    if data.vae is not None:
        out = data.vae.decode(out)
    os.makedirs(os.path.join(cfg.out, "samples"), exist_ok=True)
    if d.master:
        save_grid(out, os.path.join(cfg.out, "samples", f"step_{step:06d}.png"))


def validate(raw, data: Data, autocast) -> float:
    """Loss on the held-out clips at fixed timesteps and fixed noise: comparable across steps and runs."""
    raw.eval()
    with torch.no_grad(), autocast:
        loss = data.batches.val_loss(raw, data.val)
    raw.train()
    return loss


# ---------------------------------------------------------------------------------------------------------
# the loop


def train(cfg: TrainConfig, resume: bool = False, quiet: bool = False) -> dict:
    """Train; returns the final metrics ({'step', 'loss', 'val_loss', ...}). ``quiet``: no progress bar."""
    from vidsift.model import checkpoint
    from vidsift.model.dit import DiT, PackedDiT, config_from_preset
    from vidsift.model.logging_utils import TrainLog

    d = setup_distributed(cfg)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    if d.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if d.device.type == "cuda" else nullcontext()
    data = build_data(cfg, d)

    # --- model, EMA, optimizer; resume from the run folder's checkpoint
    dit_cfg = config_from_preset(
        cfg.model, in_channels=data.in_channels, text_dim=data.text_dim, **cfg.model_args
    )
    model = DiT(dit_cfg).to(d.device)
    ema = copy.deepcopy(model).requires_grad_(False)
    os.makedirs(cfg.out, exist_ok=True)
    state, step = None, 0
    if resume:
        note = checkpoint.recover(cfg.out) if d.master else None
        if note:
            print(f"{cfg.out}: {note}")
        if d.ddp:
            import torch.distributed as dist

            dist.barrier()  # every rank reads the checkpoint after rank 0 recovered it
        if checkpoint.has_checkpoint(cfg.out):
            weights, ema_weights, state = checkpoint.load_checkpoint(cfg.out, d.device)
            model.load_state_dict(weights)
            ema.load_state_dict(ema_weights)
    if d.fsdp:  # full weights loaded above; from here on each rank holds 1/world of every block
        _shard(model, ema, d.device)
    opt = make_optimizer(model, cfg, d.device)
    if state is not None:
        step = resume_state(cfg, state, model, opt, data.readers, d)
        if d.master:
            print(f"resumed from {cfg.out} at step {step}")
    elif resume and d.master:
        print(f"no checkpoint in {cfg.out}; starting from scratch")
    if d.master:
        with open(os.path.join(cfg.out, "recipe.toml"), "w") as f:
            f.write(to_toml(dataclasses.asdict(cfg)))
        print(
            f"DiT {cfg.model}: {model.num_params() / 1e6:.2f}M parameters, device {d.device}, world {d.world}"
        )
    raw = model
    if cfg.pack:
        model = PackedDiT(raw)  # forward = forward_packed, so DDP and compile see the packed pass
    if d.ddp and not d.fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    fwd = torch.compile(model) if cfg.compile else model
    flow, peak, readers = cfg.flow(), peak_flops(d.device), data.readers
    try:  # an unknown `log` kind or a missing tensorboard package: a one-line recipe error from the CLI
        log = TrainLog(cfg, step, quiet) if d.master else None
    except ValueError as e:
        raise RecipeError(str(e)) from e

    try:
        metrics = {"step": step, "loss": float("nan"), "val_loss": float("nan")}
        if (
            d.master or d.fsdp
        ) and step == 0:  # the untrained model's validation loss: what every later value beats
            metrics["val_loss_init"] = validate(raw, data, autocast)
            if d.master:
                log.initial(metrics["val_loss_init"])
        model.train()
        while step < cfg.steps:
            t0 = time.time()
            lr = lr_at(step, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            loss_sum, tokens = 0.0, 0
            for a, reader in enumerate(readers):
                gen = step_generator(cfg.seed, step, reader.reader)
                batch = data.batches.next(reader)
                tokens += batch.tokens
                last_micro = a == len(readers) - 1  # gradients are averaged across processes only on the last
                if d.fsdp:
                    raw.set_requires_gradient_sync(last_micro)  # raw: the FSDP module (model may wrap it)
                sync = nullcontext() if (not d.ddp or d.fsdp or last_micro) else model.no_sync()
                with sync, autocast:
                    loss = data.batches.loss(fwd, batch, flow, gen)
                    (loss / len(readers)).backward()
                loss_sum += loss.item() / len(readers)
            grad_norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip or float("inf"))
            grad_norm = (grad_norm.full_tensor() if d.fsdp else grad_norm).item()
            opt.step()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), raw.parameters(), strict=True):
                    pe.lerp_(p, 1 - cfg.ema_decay)
            step += 1
            if d.device.type == "cuda":
                torch.cuda.synchronize()
            tok_s = tokens * d.world / (time.time() - t0)
            per_sample = tokens // (cfg.batch_size * len(readers))
            mfu = flops_per_token(raw, per_sample) * tok_s / (peak * d.world) if peak else None
            metrics.update(step=step, loss=loss_sum, tokens_per_s=tok_s, mfu=mfu)
            last = step == cfg.steps
            val_loss = None
            if (d.master or d.fsdp) and ((cfg.eval_every and step % cfg.eval_every == 0) or last):
                val_loss = metrics["val_loss"] = validate(raw, data, autocast)
            if d.master:
                log.step(step, last, loss=loss_sum, lr=lr, grad_norm=grad_norm, tokens_per_s=tok_s, mfu=mfu,
                         val_loss=val_loss)  # fmt: skip
            if (d.master or d.fsdp) and cfg.sample_every and (step % cfg.sample_every == 0 or last):
                save_samples(cfg, ema, data, step, autocast, d)
            if (cfg.save_every and step % cfg.save_every == 0) or last:
                save_checkpoint(cfg, raw, ema, opt, data, step, d)
    finally:  # the bar stops (and a terminal gets its cursor back) on errors too
        if log is not None:
            log.close()
    if d.ddp:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return metrics


# ---------------------------------------------------------------------------------------------------------
# FSDP (parallel = "fsdp" under torchrun): FSDP2's fully_shard per block and on the whole model


def _shard(model, ema, device: torch.device) -> None:
    """Shard the weights of ``model`` and its EMA copy the same way over all ranks: each block is one unit
    (gathered just before it runs, freed after), the embeddings and output layer a root unit. The EMA is
    sharded alike, so its update stays local to each rank's shard."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for m in (model, ema):
        for blk in m.blocks:
            fully_shard(blk, mesh=mesh)
        fully_shard(m, mesh=mesh)
        register_fsdp_forward_method(m, "forward_packed")  # packed training calls it, not forward


def _full_state(module, fsdp: bool) -> dict:
    """Full (unsharded) weights; under FSDP a collective every rank calls, rank 0 gets them on the CPU."""
    if not fsdp:
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _full_optimizer_state(module, opt) -> dict:
    """The optimizer state keyed by parameter name, unsharded (collective; rank 0 gets it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(module, opt, options=options)


def _load_optimizer_by_name(module, opt, saved: dict) -> None:
    """Load an optimizer state into ``opt`` by parameter name, whichever way it was saved: keyed by name (an
    FSDP run) or by index (``opt.state_dict()`` of a DDP or single-process run, whose indices follow the
    parameter groups). Under FSDP each rank keeps its shard; every rank reads state.pt itself, so the run
    folder must be visible to all of them (one node or a shared disk)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if saved["param_groups"] and isinstance(saved["param_groups"][0]["params"][0], int):
        name_of = {id(p): n for n, p in module.named_parameters()}
        names = [name_of[id(p)] for g in opt.param_groups for p in g["params"]]  # index i -> name
        saved = {
            "state": {names[i]: v for i, v in saved["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in saved["param_groups"]],
        }
    set_optimizer_state_dict(module, opt, saved, options=StateDictOptions(full_state_dict=True))


def _gather_reader_states(readers, ddp: bool) -> list[dict]:
    states = [r.state_dict() for r in readers]
    if ddp:
        import torch.distributed as dist

        everyone: list = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, states)
        states = [s for part in everyone for s in part]
    return sorted(states, key=lambda s: s["reader"])


def _first_value(index, column: str):
    """The value of ``column`` in the first row of the first shard (None if the column is absent)."""
    from vidsift.pipeline import storage

    pf = storage.open_parquet(index.files[0])
    if column not in pf.schema_arrow.names:
        return None
    return pf.read_row_group(0, columns=[column]).column(column)[0].as_py()
