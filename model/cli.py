"""``vidsift train | train-vae | finetune | sample | encode``: argparse sub-commands for the trainer.

``register(subparsers)`` is called by pipeline/cli.py. Handlers import torch lazily so ``vidsift --help``
stays instant, and turn bad inputs (missing data, no clips, unreadable clips, bad checkpoints, bad recipe
keys) into a one-line ``error: ...`` and exit code 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys

EXIT_BAD_INPUT = 2


def _bad_input_types() -> tuple[type[Exception], ...]:
    from vidsift.model.data import DataError
    from vidsift.model.edit import EditError
    from vidsift.model.sample import CheckpointError, InputError
    from vidsift.pipeline.config import RecipeError

    return DataError, CheckpointError, RecipeError, EditError, InputError


def _guard(handler):
    """Run a handler; known bad-input errors become one line on stderr and exit code 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except _bad_input_types() as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT

    return run


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="a TOML path or a shipped name (tiny, small; finetune: wan_lora, ...)")
    p.add_argument("--data", required=True, help="curation run folder holding clips/*.parquet")
    p.add_argument("--out", help="run folder (default: the recipe's `out`)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in the run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar (log lines stay)")


def run_train(args: argparse.Namespace) -> int:
    from vidsift.model.train import load_recipe, train

    cfg = load_recipe(args.recipe, args.set)
    cfg.data = args.data
    if args.out:
        cfg.out = args.out
    train(cfg, resume=args.resume, quiet=args.quiet)
    return 0


def run_train_vae(args: argparse.Namespace) -> int:
    from vidsift.model.train import load_recipe
    from vidsift.model.train_vae import VAETrainConfig, train_vae

    cfg = load_recipe(args.recipe, args.set, cls=VAETrainConfig)
    cfg.data = args.data
    if args.out:
        cfg.out = args.out
    train_vae(cfg, quiet=args.quiet)
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    """``vidsift finetune``: LoRA or full fine-tuning of a diffusers video model (model/finetune/)."""
    import dataclasses

    from vidsift.model.finetune.loop import finetune, load_recipe

    cfg = load_recipe(args.recipe, args.set)
    cfg = dataclasses.replace(cfg, data=args.data, out=args.out or cfg.out)
    finetune(cfg, resume=args.resume, quiet=args.quiet)
    return 0


def check_edit_flags(args: argparse.Namespace) -> None:
    """--edit is its own conditioning mode; --strength and --keep-first-frame only mean something with it."""
    from vidsift.model.edit import EditError

    if not args.edit:
        if args.strength is not None or args.keep_first_frame:
            raise EditError("--strength and --keep-first-frame need --edit CLIP")
        return
    modes = ("image", "extend", "backward", "connect", "context_frames")
    others = ["--" + name.replace("_", "-") for name in modes if getattr(args, name, None)]
    if others:
        raise EditError(f"--edit cannot be combined with {', '.join(others)}: choose one conditioning mode")


def run_edit(args: argparse.Namespace, prompt: str) -> int:
    """``sample --edit CLIP``: SDEdit of a clip or image with the (expanded) prompt (model/edit.py)."""
    from vidsift.model.edit import DEFAULT_STRENGTH, edit_clip, write_edit

    strength = DEFAULT_STRENGTH if args.strength is None else args.strength
    video, _, info = edit_clip(
        args.ckpt,
        args.edit,
        prompt,
        strength,
        args.steps,
        args.cfg,
        args.seed,
        args.keep_first_frame,
        args.frames,
        args.height,
        args.width,
        args.device,
        out_path=args.out,
    )
    fps = args.fps or info["fps"]
    write_edit(video, args.out, fps)
    f, h, w = video.shape[1:]
    print(
        f"wrote {args.out} ({f} frames, {w}x{h}, {fps:g} fps; strength {strength:g}: "
        f"{info['steps']} steps from t={info['t_start']:.3f})"
    )
    return 0


def read_prompts(args: argparse.Namespace) -> list[str]:
    """--prompt, or the lines of --prompts FILE (blank lines skipped); [] when neither is given."""
    from vidsift.model.sample import InputError

    if args.prompt is not None and args.prompts:
        raise InputError("give --prompt or --prompts FILE, not both")
    if not args.prompts:
        return [] if args.prompt is None else [args.prompt]
    try:
        with open(args.prompts, encoding="utf-8") as f:
            prompts = [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--prompts {args.prompts}: {e}") from None
    if not prompts:
        raise InputError(f"--prompts {args.prompts}: no prompt in the file")
    return prompts


def run_sample_finetuned(args: argparse.Namespace, manifest: dict) -> int:
    """``sample FINETUNE_RUN``: the family's diffusers pipeline plus the run's LoRA (or full transformer)."""
    from vidsift.model.finetune.sample import run_prompts, sample_run, write_samples
    from vidsift.model.sample import InputError

    used = [f"--{n.replace('_', '-')}" for n in DIT_ONLY if getattr(args, n, None)]
    if used:
        raise InputError(f"{', '.join(used)}: not for a fine-tuned diffusers model (text-to-video only)")
    prompts = read_prompts(args) or run_prompts(manifest)
    size = (args.frames, args.height, args.width)
    guidance = manifest["recipe"]["sample_guidance"] if args.cfg is None else args.cfg
    videos = sample_run(args.ckpt, prompts, size, args.steps, guidance, args.seed, args.device, manifest)
    paths = write_samples(videos, prompts, args.out, args.fps or 16.0)
    f, h, w = videos.shape[1:4]
    print(f"wrote {', '.join(paths)} ({f} frames, {w}x{h}; {manifest['family']} {manifest['mode']})")
    return 0


# Options of the DiT path only: conditioning by frames, editing and prompt expansion.
DIT_ONLY = ("image", "extend", "backward", "connect", "context_frames", "expand", "edit", "strength",
            "keep_first_frame")  # fmt: skip


def run_sample(args: argparse.Namespace) -> int:
    from vidsift.model.finetune.sample import read_run

    manifest = read_run(args.ckpt)
    if manifest is not None:
        return run_sample_finetuned(args, manifest)
    check_edit_flags(args)
    from vidsift.model.sample import InputError, expand_prompt, generate, write_video

    prompts = read_prompts(args)
    if len(prompts) != 1:
        raise InputError("a DiT checkpoint samples one prompt: give --prompt TEXT (or a one-line --prompts)")
    prompt = args.prompt = prompts[0]
    args.cfg = 4.0 if args.cfg is None else args.cfg
    if args.expand:
        prompt, random_weights = expand_prompt(
            args.prompt,
            args.expand_model,
            args.expand_backend,
            args.expand_url,
            args.device,
            temperature=args.expand_temperature,
            seed=args.seed,
        )
        print(f"prompt:   {args.prompt}")
        note = " (random-weight test model: not a real expansion)" if random_weights else ""
        print(f"expanded{note}: {prompt}")
    if args.edit:
        return run_edit(args, prompt)
    video, meta = generate(
        args.ckpt,
        [prompt],
        args.frames,
        args.height,
        args.width,
        args.steps,
        args.cfg,
        args.seed,
        args.device,
        image=args.image,
        extend=args.extend,
        backward=args.backward,
        connect=tuple(args.connect) if args.connect else None,
        context_frames=args.context_frames,
    )
    write_video(video[0], args.out, fps=args.fps or meta.get("fps", 12.0))
    f, h, w = video.shape[2:]
    print(f"wrote {args.out} ({f} frames, {w}x{h})")
    return 0


def run_encode(args: argparse.Namespace) -> int:
    from vidsift.model.encode import encode_shards, parse_diffusers_vae
    from vidsift.model.sample import InputError
    from vidsift.pipeline.lock import output_lock

    model = parse_diffusers_vae(args.vae)
    if model is not None:
        return run_encode_diffusers(args, model)
    only = [f"--{n.replace('_', '-')}" for n in ("recipe", "dtype", "caption_column") if getattr(args, n)]
    if only or args.offline:
        raise InputError(f"{', '.join(only + ['--offline'] * args.offline)}: only with --vae diffusers:NAME")
    with output_lock(args.data, "encode"):  # it rewrites the run's shards in place
        summary = encode_shards(
            args.data,
            args.vae,
            args.text_model,
            17 if args.frames is None else args.frames,
            128 if args.height is None else args.height,
            128 if args.width is None else args.width,
            2 if args.frame_stride is None else args.frame_stride,
            32 if args.text_tokens is None else args.text_tokens,
            args.workers,
        )
    print(f"encoded {sum(s['rows'] for s in summary)} clips in {len(summary)} shard files")
    return 0


def run_encode_diffusers(args: argparse.Namespace, model: str) -> int:
    """``encode --vae diffusers:NAME``: the family's latents and caption embeddings in OUT/latents/<model>/,
    at the sizes of a finetune recipe (``--recipe``; else FinetuneConfig's defaults), flags overriding."""
    import dataclasses
    import json
    from collections import Counter

    from vidsift.model.encode import encode_family
    from vidsift.model.finetune.loop import FinetuneConfig, load_recipe
    from vidsift.model.sample import InputError
    from vidsift.pipeline.config import build_config
    from vidsift.pipeline.lock import output_lock

    if args.text_model:
        raise InputError("--text-model: a diffusers model brings its own text encoder (--vae diffusers:NAME)")
    values = dataclasses.asdict(load_recipe(args.recipe) if args.recipe else FinetuneConfig())
    keys = ("frames", "height", "width", "frame_stride", "text_tokens", "caption_column")
    given = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    if {"frames", "height", "width"} & set(given):
        values["buckets"] = []  # an explicit size is the one bucket
    cfg = build_config(FinetuneConfig, {**values, **given}, "vidsift encode")
    with output_lock(args.data, "encode"):
        done = encode_family(
            args.data, model, cfg.bucket_list, cfg.frame_stride, cfg.text_tokens, cfg.caption_column,
            args.dtype or "float16", cfg.family if args.recipe else "", args.offline or cfg.offline,
            args.workers,
        )  # fmt: skip
    dropped: Counter = Counter()
    for row in done["summary"]:
        dropped.update(json.loads(row["dropped"]))
    rows, skipped = sum(row["rows"] for row in done["summary"]), dict(sorted(dropped.items()))
    print(
        f"encoded {rows} clips of {len(done['summary'])} shard files into {done['folder']} "
        f"({done['family']}; {done['skipped']} files already done; not cached: {skipped})"
    )
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train the DiT on curated shards")
    add_train_args(p)
    p.set_defaults(func=_guard(run_train))

    p = subparsers.add_parser("train-vae", help="train the causal video VAE on curated shards")
    add_train_args(p)
    p.set_defaults(func=_guard(run_train_vae))

    p = subparsers.add_parser(
        "finetune", help="fine-tune a diffusers video model (Wan, LTX-Video, CogVideoX) with LoRA or fully"
    )
    add_train_args(p)
    p.set_defaults(func=_guard(run_finetune))

    p = subparsers.add_parser("sample", help="generate a video from a DiT checkpoint or a finetune run")
    p.add_argument(
        "ckpt", help="DiT training run folder or *.safetensors checkpoint, or a `vidsift finetune` output"
    )
    p.add_argument("--prompt", help="the prompt (required for a DiT checkpoint)")
    p.add_argument(
        "--prompts", metavar="FILE", help="one prompt per line (finetune run default: its caption_short)"
    )
    p.add_argument("--out", "--output", dest="out", default="sample.mp4", help="MP4 to write (GIF beside it)")
    p.add_argument("--frames", type=int, help="default: the training size")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--steps", type=int, default=30, help="Euler steps")
    p.add_argument(
        "--cfg", type=float, help="classifier-free guidance scale (1 = off; default 4, a finetune run's own)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=float, help="default: the training frame rate")
    p.add_argument("--device", default="cpu")
    p.add_argument("--image", metavar="PNG", help="image-to-video: this image is the first frame")
    p.add_argument("--extend", metavar="CLIP", help="continue this clip from its last frames")
    p.add_argument("--backward", action="store_true", help="--extend: generate what leads into the clip")
    p.add_argument("--connect", nargs=2, metavar=("A", "B"), help="generate the transition from clip A to B")
    p.add_argument("--context-frames", type=int, help="frames given by --extend/--connect (default F/4)")
    p.add_argument("--expand", action="store_true", help="rewrite the prompt in the long caption style first")
    p.add_argument(
        "--expand-model", default="Qwen/Qwen2.5-7B-Instruct", help="--expand: LLM (local path or cached name)"
    )
    p.add_argument("--expand-backend", default="transformers", choices=["transformers", "vllm", "openai"])
    p.add_argument("--expand-url", default="", help="--expand-backend openai: the server's base URL")
    p.add_argument("--expand-temperature", type=float, default=0.0, help="--expand: 0 = greedy")
    p.add_argument("--edit", metavar="CLIP", help="edit this video or image with the prompt (SDEdit)")
    p.add_argument("--strength", type=float, help="--edit: 0 keeps the input, 1 ignores it (default 0.5)")
    p.add_argument("--keep-first-frame", action="store_true", help="--edit: keep the first frame as it is")
    p.set_defaults(func=_guard(run_sample))

    p = subparsers.add_parser("encode", help="add cached VAE latents and text embeddings to shards (Ray)")
    p.add_argument("data", help="curation run folder holding clips/*.parquet (rewritten in place)")
    p.add_argument(
        "--vae",
        required=True,
        help="VAE checkpoint from `vidsift train-vae`, or diffusers:<hub id or folder> (Wan, LTX-Video, "
        "CogVideoX: cached in OUT/latents/<model>/ for `vidsift finetune`, shards untouched)",
    )
    p.add_argument("--text-model", default="", help="text encoder name or path (default: bundled MiniLM)")
    p.add_argument("--text-tokens", type=int, help="default 32; diffusers: the recipe's (0: the family's)")
    p.add_argument("--frames", type=int, help="frames per clip to encode (1 + 4k; default 17)")
    p.add_argument("--height", type=int, help="default 128")
    p.add_argument("--width", type=int, help="default 128")
    p.add_argument("--frame-stride", type=int, help="default 2; diffusers: the recipe's")
    p.add_argument("--workers", type=int, default=1, help="actors, each loading the models once")
    p.add_argument(
        "--recipe", help="diffusers: the finetune recipe whose buckets, stride, caption column to encode at"
    )
    p.add_argument("--caption-column", help="diffusers: the captions to embed (default: the recipe's)")
    p.add_argument("--dtype", choices=["float16", "float32"], help="diffusers: stored precision (float16)")
    p.add_argument("--offline", action="store_true", help="diffusers: local files and the HF cache only")
    p.set_defaults(func=_guard(run_encode))


def main(argv: list[str] | None = None) -> int:
    """The trainer's commands alone (``python -m vidsift.model``, what torchrun launches)."""
    parser = argparse.ArgumentParser(prog="vidsift")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
