"""Train the DiT on curated shards with rectified flow: one visible loop, nanoGPT style.

    vidsift train recipes/train/tiny.toml --data OUT [--set key=value ...] [--out RUN] [--resume]
    torchrun --nproc-per-node 8 -m vidsift.model.train recipes/train/small.toml --data OUT

Runs on CPU or GPU; DDP (or FSDP with ``parallel = "fsdp"``) switches on only when launched by torchrun (gloo
on CPU, NCCL on GPU). A run folder
holds the resolved recipe (recipe.toml), log.csv, samples/ and the checkpoint: model.safetensors and
ema.safetensors (weights plus metadata that rebuild the model alone) and state.pt (optimizer, step, data
position, RNG). Resuming continues bit-for-bit (on CPU): every random draw of step s comes from a generator
seeded by (seed, s, reader), and the data readers replay their position.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
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
    frame_stride: int = 2  # take every n-th source frame (24 fps source, stride 2 -> 12 fps)
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


# ---------------------------------------------------------------------------------------------------------
# checkpoints


def save_weights(model_or_state, path: str, meta: dict) -> None:
    """A module's weights (or an already gathered state dict) as safetensors with ``meta`` as metadata."""
    from safetensors.torch import save_file

    state = model_or_state if isinstance(model_or_state, dict) else model_or_state.state_dict()
    tmp = path + ".tmp"
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in state.items()},
        tmp,
        metadata={k: json.dumps(v) for k, v in meta.items()},
    )
    os.replace(tmp, path)


def checkpoint_meta(model, cfg: TrainConfig, step: int, text_model: str, vae_path: str) -> dict:
    from vidsift.model.dit import config_to_dict

    return {
        "kind": "vidsift-dit",
        "dit": config_to_dict(model.cfg),
        "flow": dataclasses.asdict(cfg.flow()),
        "text_model": text_model,
        "text_tokens": cfg.text_tokens,
        "vae": vae_path,
        "frames": cfg.frames,
        "height": cfg.height,
        "width": cfg.width,
        "fps": 24.0 / cfg.frame_stride,
        "step": step,
    }


# ---------------------------------------------------------------------------------------------------------
# the loop


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train; returns the final metrics ({'step', 'loss', 'val_loss', ...})."""
    from safetensors.torch import load_file

    from vidsift.model.data import (
        ClipSource,
        ClipStream,
        DataError,
        ImageFolder,
        NativeSize,
        PackedStream,
        ShardIndex,
        clip_tokens,
        collate,
        load_samples,
        pack,
    )
    from vidsift.model.dit import DiT, PackedDiT, config_from_preset, packed_attention_mask
    from vidsift.model.flow import (
        flow_loss,
        packed_flow_loss,
        packed_training_loss,
        sample_euler,
        training_loss,
    )
    from vidsift.model.logging_utils import TrainProgress
    from vidsift.model.text import TextEncoder, text_model_name

    # --- distributed setup: on only under torchrun
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if cfg.parallel not in ("ddp", "fsdp"):
        raise RecipeError(f"parallel must be ddp or fsdp, got {cfg.parallel!r}")
    fsdp = ddp and cfg.parallel == "fsdp"  # sharded: every rank takes part in validation, samples, saving
    if cfg.device == "auto":
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device_type = torch.device(cfg.device).type
    if ddp:
        import torch.distributed as dist

        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", 0))
        device = torch.device(f"cuda:{local}") if device_type == "cuda" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    else:
        rank, world = 0, 1
        device = torch.device(cfg.device if cfg.device != "auto" else device_type)
    master = rank == 0
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    # --- data: world x grad_accum readers, this process owns grad_accum of them
    index = ShardIndex(cfg.data)
    vae = None
    if cfg.vae:
        from vidsift.model.vae import load_vae

        if not os.path.isfile(cfg.vae):
            raise RecipeError(f"VAE checkpoint not found: {cfg.vae}")
        vae = load_vae(cfg.vae, device)
    use_latents = vae is not None and index.num_cached_latents == index.num_rows
    text_name = text_model_name(cfg.text_model)
    use_text_emb = index.num_cached_text == index.num_rows and _first_value(index, "text_model") == text_name
    in_channels = vae.z_channels if vae is not None else 3
    dit_cfg = config_from_preset(cfg.model, in_channels=in_channels, text_dim=1, **cfg.model_args)
    patch = dit_cfg.patch
    native = None
    if cfg.pack:
        # Each clip at its own aspect ratio and duration: about height x width pixels, up to `frames`.
        factors = vae.cfg.factors if vae is not None else (1, 1, 1)
        native = NativeSize(
            area=cfg.height * cfg.width,
            max_frames=cfg.frames,
            stride=cfg.frame_stride,
            multiple=patch[1] * factors[1],
            frame_multiple=patch[0],
            vae_time=factors[0],
        )
    source = ClipSource(
        cfg.frames, cfg.height, cfg.width, cfg.frame_stride, use_latents, use_text_emb, native
    )  # fmt: skip
    val_ids, val_refs = index.split(cfg.val_clips)
    num_readers = world * cfg.grad_accum
    readers = [
        ClipStream(
            index, source, rank * cfg.grad_accum + a, num_readers, cfg.seed, cfg.shuffle_buffer, val_ids
        )
        for a in range(cfg.grad_accum)
    ]

    def input_shape(x: torch.Tensor, is_latent: bool) -> tuple[int, ...]:
        """What the DiT sees for a sample: its latent's shape when the VAE encodes on the fly."""
        if vae is not None and not is_latent:
            return tuple(vae.latent_shape(*x.shape[1:]))
        return tuple(x.shape)

    budget = cfg.token_budget
    if cfg.pack:
        full = clip_tokens(input_shape(torch.empty(3, cfg.frames, cfg.height, cfg.width), False), patch)
        budget = budget or 2 * full
        if budget < full:
            raise RecipeError(f"token_budget {budget} is below the {full} tokens of a full-size clip")
        if cfg.packed_attention not in ("auto", "flex", "dense", "segments"):
            raise RecipeError(
                f"packed_attention must be auto, flex, dense or segments: {cfg.packed_attention!r}"
            )
        images = ImageFolder(cfg.image_dir, native) if cfg.image_dir else None
        readers = [
            PackedStream(
                r, patch, cfg.batch_size, budget, cfg.max_clips, cfg.image_ratio, images,
                tokens_of=lambda s: clip_tokens(input_shape(s.x, s.is_latent), patch),
            )
            for r in readers
        ]  # fmt: skip
    encoder = None if use_text_emb else TextEncoder(cfg.text_model, cfg.text_tokens, device)
    text_dim = encoder.dim if encoder else int(load_samples(index, source, val_refs[:1])[0].text_emb.shape[1])

    def model_input(samples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x, captions, _ = collate(samples)
        x = x.to(device)
        if vae is not None and not use_latents:
            x = vae.encode(x)  # no cached latents: encode on the fly (run `vidsift encode` to skip this)
        text, mask = text_of(samples)
        empty = torch.tensor([c == "" for c in captions], device=device)
        return x, text, mask, empty

    def text_of(samples) -> tuple[torch.Tensor, torch.Tensor]:
        if encoder is not None:
            text, mask = encoder([s.caption for s in samples])
        else:
            text, mask = _pad_text([s.text_emb for s in samples], cfg.text_tokens)
        return text.to(device), mask.to(device)

    def packed_input(samples, bins=None, rows=None):
        """A Packed batch on the device; per clip slot: text [R, K, L, D], mask [R, K, L], empty [R, K]."""
        xs = []
        for s in samples:
            x = s.x.to(device)
            if vae is not None and not s.is_latent:
                x = vae.encode(x[None])[0]  # clips differ in size: one at a time
            xs.append(x)
        packed = pack(xs, patch, budget, cfg.max_clips, rows=rows, bins=bins)
        text, mask = text_of(samples)
        empty = torch.tensor([s.caption == "" for s in samples])
        return (
            packed,
            packed.per_clip(text),
            packed.per_clip(mask, fill=True),
            packed.per_clip(empty, fill=True).to(device),
        )

    val = load_samples(index, source, val_refs) if master or fsdp else []
    if use_latents and master and os.path.abspath(cfg.vae) != _first_value(index, "latent_model"):
        print(f"warning: shards were encoded by {_first_value(index, 'latent_model')}, not {cfg.vae}")
    if use_latents and not cfg.pack:
        # Cached latents fix the training size; the checkpoint records frames/height/width for sampling.
        want = tuple(vae.latent_shape(cfg.frames, cfg.height, cfg.width))
        got = tuple(load_samples(index, source, val_refs[:1])[0].x.shape)
        if got != want:
            raise DataError(
                f"cached latents are {got} but frames={cfg.frames}, height={cfg.height}, width={cfg.width} "
                f"need {want}: set those keys to the size `vidsift encode` used, or re-encode"
            )
    if master:
        inputs = "cached latents" if use_latents else "VAE on the fly" if vae else "pixels"
        print(
            f"data: {index.num_rows} clips in {len(index.files)} files, {len(index.groups)} row groups; "
            f"{len(val)} held out; {inputs}, {'cached' if use_text_emb else 'live'} text ({text_name})"
        )

    # --- model, EMA, optimizer
    model = DiT(config_from_preset(cfg.model, in_channels=in_channels, text_dim=text_dim, **cfg.model_args))
    model.to(device)
    ema = copy.deepcopy(model).requires_grad_(False)

    os.makedirs(cfg.out, exist_ok=True)
    paths = {
        k: os.path.join(cfg.out, f)
        for k, f in [("model", "model.safetensors"), ("ema", "ema.safetensors"), ("state", "state.pt")]
    }
    step = 0
    state = None
    if resume and os.path.exists(paths["state"]):
        state = torch.load(paths["state"], map_location="cpu", weights_only=False)
        model.load_state_dict(load_file(paths["model"], device=str(device)))
        ema.load_state_dict(load_file(paths["ema"], device=str(device)))
    if fsdp:  # full weights loaded above; from here on each rank holds 1/world of every block
        _shard(model, ema, device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2), fused=device.type == "cuda")
    if state is not None:
        if fsdp or state.get("optimizer_format") == "names":  # by parameter name: DDP <-> FSDP both ways
            _load_optimizer_by_name(model, opt, state["optimizer"])
        else:
            opt.load_state_dict(state["optimizer"])
        step = state["step"]
        if len(state["readers"]) != num_readers:
            raise DataError(
                f"checkpoint has {len(state['readers'])} data readers, this launch {num_readers}: "
                "keep processes x grad_accum the same to resume"
            )
        for r in readers:
            r.load_state_dict(state["readers"][r.reader])
        torch.set_rng_state(state["rng"])
        if master:
            print(f"resumed from {cfg.out} at step {step}")
    elif resume and master:
        print(f"no checkpoint in {cfg.out}; starting from scratch")
    if master:
        with open(os.path.join(cfg.out, "recipe.toml"), "w") as f:
            f.write(to_toml(dataclasses.asdict(cfg)))
        print(f"DiT {cfg.model}: {model.num_params() / 1e6:.2f}M parameters, device {device}, world {world}")

    raw = model
    if cfg.pack:
        model = PackedDiT(raw)  # forward = forward_packed, so DDP and compile see the packed pass
    if ddp and not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    fwd = torch.compile(model) if cfg.compile else model
    flow = cfg.flow()
    peak = peak_flops(device)

    log_path = os.path.join(cfg.out, "log.csv")
    log_file = open(log_path, "a" if step > 0 else "w", newline="") if master else None  # noqa: SIM115
    log = csv.writer(log_file) if master else None
    if master and step == 0:
        log.writerow(["step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "val_loss", "elapsed_s"])
    try:  # an unknown `log` kind or a missing tensorboard package: a one-line recipe error from the CLI
        progress = TrainProgress(cfg.steps, step, cfg.out, cfg.log) if master else None
    except ValueError as e:
        raise RecipeError(str(e)) from e

    def validate() -> float:
        """Loss on the held-out clips at fixed timesteps and fixed noise: comparable across steps, runs."""
        raw.eval()
        g = torch.Generator().manual_seed(1234)
        total = 0.0
        with torch.no_grad(), autocast:
            if cfg.pack:  # the held-out clips at their native sizes, packed into as many rows as needed
                packed, text, mask, empty = packed_input(val)
                attn = packed_attention_mask(packed.seq_id, cfg.packed_attention)
                for t in (0.1, 0.3, 0.5, 0.7, 0.9):
                    noise = torch.randn(packed.tokens.shape, generator=g).to(device)
                    tt = torch.full(empty.shape, t, device=device)
                    loss = packed_flow_loss(
                        raw.forward_packed, packed, text, mask, empty, tt, noise, None, attn
                    )
                    total += loss.item() / 5
                raw.train()
                return total
            x, text, mask, empty = model_input(val)
            for t in (0.1, 0.3, 0.5, 0.7, 0.9):
                noise = torch.randn(x.shape, generator=g).to(device)
                tt = torch.full((x.shape[0],), t, device=device)
                total += flow_loss(raw, x, text, mask, empty, tt, noise).item() / 5
        raw.train()
        return total

    def save_samples(step: int) -> None:
        """A grid of EMA samples for the validation prompts: one row per prompt, frames left to right."""
        from vidsift.model.sample import save_grid

        if cfg.pack:  # validation clips differ in size: sample their prompts at the full training size
            text, mask = text_of(val[:4])
            x = torch.empty(
                len(val[:4]), *input_shape(torch.empty(3, cfg.frames, cfg.height, cfg.width), False)
            )
        else:
            x, text, mask, _ = model_input(val[:4])
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(device)
        with autocast:
            out = sample_euler(ema, noise, text, mask, flow, cfg.sample_steps, cfg.sample_cfg).float()
        if vae is not None:
            out = vae.decode(out)
        os.makedirs(os.path.join(cfg.out, "samples"), exist_ok=True)
        if master:
            save_grid(out, os.path.join(cfg.out, "samples", f"step_{step:06d}.png"))

    def save_checkpoint(step: int, reader_states: list[dict]) -> None:
        """Every rank calls this (FSDP gathers the shards); rank 0 writes."""
        weights, ema_weights = _full_state(raw, fsdp), _full_state(ema, fsdp)
        if fsdp:
            optimizer = _full_optimizer_state(raw, opt)
        if not master:
            return
        meta = checkpoint_meta(raw, cfg, step, text_name, cfg.vae)
        save_weights(weights, paths["model"], meta)
        save_weights(ema_weights, paths["ema"], meta)
        state = {
            "step": step,
            "optimizer": optimizer if fsdp else opt.state_dict(),
            "optimizer_format": "names" if fsdp else "ids",
            "readers": reader_states,
            "rng": torch.get_rng_state(),
            "config": dataclasses.asdict(cfg),
        }
        torch.save(state, paths["state"] + ".tmp")
        os.replace(paths["state"] + ".tmp", paths["state"])

    metrics = {"step": step, "loss": float("nan"), "val_loss": float("nan")}
    t_start = time.time()
    if (master or fsdp) and step == 0:  # the untrained model's validation loss: what every later value beats
        metrics["val_loss_init"] = validate()
    if master and step == 0:
        log.writerow([0, "", "", "", "", "", f"{metrics['val_loss_init']:.6f}", "0.0"])
        print(f"step 0 val {metrics['val_loss_init']:.4f}")
    model.train()
    while step < cfg.steps:
        t0 = time.time()
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        loss_sum, tokens = 0.0, 0
        for a, reader in enumerate(readers):
            gen = step_generator(cfg.seed, step, reader.reader)
            if cfg.pack:
                packed, text, mask, empty = packed_input(*reader.next_batch(), rows=cfg.batch_size)
                tokens += int(packed.real.sum())  # useful tokens: padding does not count
                attn = packed_attention_mask(packed.seq_id, cfg.packed_attention)  # once for every block
            else:
                x, text, mask, empty = model_input(reader.next_batch(cfg.batch_size))
                tokens += x.shape[0] * math.prod(raw.grid(x.shape))
            # Gradients are averaged across processes only on the last micro-step.
            last_micro = a == len(readers) - 1
            if fsdp:
                raw.set_requires_gradient_sync(last_micro)  # raw: the FSDP module (model may wrap it)
            sync = nullcontext() if (not ddp or fsdp or last_micro) else model.no_sync()
            with sync, autocast:
                if cfg.pack:
                    loss = packed_training_loss(fwd, packed, text, mask, empty, flow, gen, attn)
                else:
                    loss = training_loss(fwd, x, text, mask, empty, flow, gen)
                (loss / len(readers)).backward()
            loss_sum += loss.item() / len(readers)
        grad_norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip or float("inf"))
        grad_norm = (grad_norm.full_tensor() if fsdp else grad_norm).item()
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), raw.parameters(), strict=True):
                pe.lerp_(p, 1 - cfg.ema_decay)
        step += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.time() - t0
        tok_s = tokens * world / dt
        mfu = (
            flops_per_token(raw, tokens // (cfg.batch_size * len(readers))) * tok_s / (peak * world)
            if peak
            else None
        )
        metrics.update(step=step, loss=loss_sum, tokens_per_s=tok_s, mfu=mfu)
        last = step == cfg.steps
        val_loss = None
        if (master or fsdp) and ((cfg.eval_every and step % cfg.eval_every == 0) or last):
            val_loss = validate()
            metrics["val_loss"] = val_loss
        if master:  # live progress line on a terminal; TensorBoard scalars when log = "tensorboard"
            values = dict(loss=loss_sum, lr=lr, tokens_per_s=tok_s, grad_norm=grad_norm, mfu=mfu)
            progress.update(step, **values, val_loss=val_loss)
        if master and (step % cfg.log_every == 0 or last or val_loss is not None):
            msg = f"step {step}/{cfg.steps} loss {loss_sum:.4f} lr {lr:.2e} grad {grad_norm:.3f}"
            msg += f" tok/s {tok_s:,.0f}"
            msg += f" mfu {mfu:.1%}" if mfu is not None else ""
            msg += f" val {val_loss:.4f}" if val_loss is not None else ""
            progress.write(msg)
            log.writerow(
                [
                    step,
                    f"{loss_sum:.6f}",
                    f"{lr:.6g}",
                    f"{grad_norm:.4f}",
                    f"{tok_s:.1f}",
                    "" if mfu is None else f"{mfu:.4f}",
                    "" if val_loss is None else f"{val_loss:.6f}",
                    f"{time.time() - t_start:.1f}",
                ]
            )
            log_file.flush()
        if (master or fsdp) and cfg.sample_every and (step % cfg.sample_every == 0 or last):
            save_samples(step)
        if (cfg.save_every and step % cfg.save_every == 0) or last:
            # Every rank takes part (reader states are gathered, FSDP shards too); rank 0 writes.
            save_checkpoint(step, _gather_reader_states(readers, ddp))
    if master:
        log_file.close()
        progress.close()
    if ddp:
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


def _pad_text(embs: list[torch.Tensor], tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    dim = embs[0].shape[1]
    text = torch.zeros(len(embs), tokens, dim)
    mask = torch.zeros(len(embs), tokens, dtype=torch.bool)
    for i, e in enumerate(embs):
        n = min(tokens, e.shape[0])
        text[i, :n], mask[i, :n] = e[:n], True
    mask[:, 0] = True  # an empty caption still has one (zero) token; it trains as the null caption anyway
    return text, mask


def _first_value(index, column: str):
    """The value of ``column`` in the first row of the first shard (None if the column is absent)."""
    from vidsift.pipeline import storage

    pf = storage.open_parquet(index.files[0])
    if column not in pf.schema_arrow.names:
        return None
    return pf.read_row_group(0, columns=[column]).column(column)[0].as_py()


def main(argv: list[str] | None = None) -> int:
    """``python -m vidsift.model.train RECIPE --data OUT ...`` (what torchrun launches)."""
    import argparse

    from vidsift.model.cli import add_train_args, run_train

    p = argparse.ArgumentParser(prog="vidsift.model.train")
    add_train_args(p)
    return run_train(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
