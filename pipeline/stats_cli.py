"""``vidsift stats OUT [--json] [--html report.html] [--compare OUT_B]``: what a curation run produced.

The statistics come from ``pipeline.stats`` (streaming DuckDB aggregates), the HTML report from
``pipeline.report``; this module parses arguments and prints rich tables. Heavy imports happen
inside the handler so ``vidsift --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vidsift.pipeline.formatting import fmt, hours, top_values

EXIT_USAGE = 2
DEFAULT_GALLERY = 120


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stats",
        help="statistics of a run folder: funnel, rejections, scores, captions, sources; HTML report",
        description="Statistics of a curation run folder, streamed from its Parquet files.",
    )
    p.add_argument("output", metavar="OUT", help="run folder written by `vidsift curate`")
    p.add_argument("--json", action="store_true", help="print every statistic as one JSON document")
    p.add_argument(
        "--html", metavar="REPORT.html", help="also write a self-contained HTML report (charts, clip gallery)"
    )
    p.add_argument("--compare", metavar="OUT_B", help="show what changed from OUT to the run folder OUT_B")
    p.add_argument(
        "--gallery",
        type=int,
        default=DEFAULT_GALLERY,
        metavar="N",
        help="HTML gallery: at most N accepted clips and N/4 per rejection reason "
        f"(default {DEFAULT_GALLERY})",
    )
    p.set_defaults(func=cmd_stats)


def _fail(message: str) -> int:
    # library messages can hold newlines and control bytes: the error stays one printable line
    message = " ".join("".join(ch if ch.isprintable() else " " for ch in message).split())
    print(f"vidsift: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def cmd_stats(args: argparse.Namespace) -> int:
    from vidsift.pipeline.stats import RunError, compare_stats, compute_stats

    if args.gallery < 0:
        return _fail("--gallery must be >= 0")
    try:
        stats = compute_stats(args.output)
        comparison = compare_stats(stats, compute_stats(args.compare)) if args.compare else None
        if args.html:
            from vidsift.pipeline.report import write_report

            write_report(args.output, stats, args.html, comparison=comparison, gallery_size=args.gallery)
    except RunError as e:
        return _fail(str(e))
    except OSError as e:  # the report path cannot be written
        return _fail(f"cannot write {args.html}: {e.strerror or e}")
    if args.json:
        doc = stats if comparison is None else {**stats, "compare": comparison}
        print(json.dumps(doc, indent=1, ensure_ascii=False))
    else:
        from rich.console import Console

        # a score table needs about 110 columns: narrower terminals (and pipes, 80 by default) get
        # lines that wrap rather than numbers squeezed out of their columns
        console = Console(width=max(Console().width, 110))
        print_stats(console, stats)
        if comparison is not None:
            print_comparison(console, comparison)
    if args.html:
        print(f"vidsift: wrote {args.html}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- terminal tables


def _table(title: str, headers: list[str], rows: list[list[Any]], digits: int = 4):
    from rich import box
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, padding=(0, 1))
    for i, h in enumerate(headers):
        # numbers never wrap (a number folded over two lines misreads); names and long text do
        numeric = i > 0 and all(isinstance(r[i], int | float | None) for r in rows)
        t.add_column(h, justify="left" if i == 0 else "right", overflow="fold", no_wrap=numeric)
    for r in rows:
        # Text(), not str: data may contain rich markup like "[bold]" and must print as it is
        t.add_row(*(Text(fmt(c, digits)) for c in r))
    return t


def print_stats(console, s: dict) -> None:
    r = s["run"]
    console.print(
        f"[bold]vidsift stats[/bold] {_esc(r['path'])}  schema {fmt(r['schema_version'])}  "
        f"groups done {r['groups_done']}  files {r['files']}  quantiles {r['quantiles']}"
    )
    f = s["funnel"]
    rows = [
        ["input videos", f.get("input_videos"), None, None],
        ["readable (decoded)", f.get("readable_videos"), None, hours(f.get("input_hours"))],
        ["videos with accepted clips", f.get("videos_with_clips"), None, None],
        ["candidate clips (scenes)", None, f.get("scenes", f["candidate_clips"]), None],
        ["accepted clips", None, f["accepted_clips"], hours(f.get("accepted_hours"))],
        ["rejected clips", None, f["rejected_clips"], None],
    ]
    console.print(_table("Funnel", ["stage", "videos", "clips", "duration"], rows))
    if s["checks"]:
        console.print(
            _table(
                "Checks", ["check", "ok", "detail"], [[c["check"], c["ok"], c["detail"]] for c in s["checks"]]
            )
        )
    rej = s["rejections"]
    if rej["videos"]:
        console.print(
            _table(
                "Rejected videos", ["reason", "videos"], [[x["reason"], x["videos"]] for x in rej["videos"]]
            )
        )
    if rej["clips"]:
        console.print(
            _table(
                "Rejected clips",
                ["stage / reason", "clips", "duration"],
                [[f"{x['stage']} / {x['reason']}", x["clips"], hours(x["hours"])] for x in rej["clips"]],
            )
        )
    for which in ("accepted", "rejected"):
        scores = s["scores"][which]
        if scores:
            console.print(_score_table(f"Scores of {which} clips", scores))
    _print_media(console, s["media"])
    _print_licences(console, s.get("licences") or {})
    if s["captions"]:
        rows = []
        for c, d in s["captions"].items():
            w = d["words"] or {}
            rows.append(
                [
                    c,
                    d["present"],
                    d["missing_or_empty"],
                    d["mean_chars"],
                    w.get("p5"),
                    w.get("p50"),
                    w.get("p95"),
                ]
            )
        console.print(
            _table("Captions", ["column", "present", "missing", "mean chars", "words p5", "p50", "p95"], rows)
        )
    else:
        console.print("Captions: no caption column has text in this run")
    if s["flags"]:
        rows = [[c, ", ".join(f"{k} {fmt(v)}" for k, v in d.items())] for c, d in s["flags"].items()]
        console.print(_table("Flags", ["column", "counts"], rows))
    if s["categories"]:
        rows = [[c, top_values(d["top"])] for c, d in s["categories"].items()]
        console.print(_table("Categories (top values)", ["column", "values"], rows))
    if s["duplicates"]:
        console.print(_table("Duplicates", ["kind", "count"], [[k, v] for k, v in s["duplicates"].items()]))
    src = s["sources"]
    if src.get("top"):
        console.print(
            _table(
                f"Top sources by accepted duration ({fmt(src['sources'])} sources contribute)",
                ["source", "clips", "duration"],
                [[x["source_uri"], x["clips"], hours(x["hours"])] for x in src["top"]],
            )
        )
    m = s["models"]
    rows = [[c, top_values(d["top"])] for c, d in m["columns"].items()]
    rows += [
        [f"recipe/manifest: {k}", json.dumps(v) if not isinstance(v, str) else v]
        for k, v in m["manifest"].items()
    ]
    if rows:
        console.print(_table("Models", ["column", "written by"], rows))
        if random_weights(m["manifest"]):
            console.print("[bold red]Some columns were written by random-weight test models[/bold red]")
    else:
        console.print("Models: no model wrote any column of this run")
    if s["stage_seconds"]:
        console.print(
            _table(
                "Stage seconds (sum over videos)",
                ["stage", "s"],
                [[k, v] for k, v in s["stage_seconds"].items()],
            )
        )


def random_weights(manifest_models: dict) -> bool:
    return any(k.endswith("random_weights") and v is True for k, v in manifest_models.items())


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _score_table(title: str, scores: dict):
    # p1, p99 and nulls are in --json; nine numbers fit an 80-column terminal
    cols = ["count", "mean", "min", "p5", "p25", "p50", "p75", "p95", "max"]
    rows = [[c, *(d.get(k) for k in cols)] for c, d in scores.items()]
    return _table(title, ["column", *cols], rows, digits=3)


def _print_licences(console, licences: dict) -> None:
    """Accepted clips and input videos per licence (an input list's ``licence`` column)."""
    clips, videos = licences.get("clips") or {}, licences.get("videos") or {}
    rows = [[k, clips.get(k, 0), videos.get(k, 0)] for k in sorted(set(clips) | set(videos))]
    if rows:
        console.print(_table("Licences (input list)", ["licence", "accepted clips", "videos"], rows))


def _print_media(console, media: dict) -> None:
    rows = [[k, top_values(v)] for k, v in media.items() if v]
    if rows:
        console.print(_table("Clip media (top values)", ["distribution", "values (clips)"], rows))


def print_comparison(console, c: dict) -> None:
    from vidsift.pipeline.stats import SCORE_SHIFT_HEADER, score_shift_rows

    console.print(f"[bold]compare[/bold] A = {_esc(c['a'])}  B = {_esc(c['b'])}")
    console.print(
        _table(
            "Counts",
            ["count", "A", "B", "B - A"],
            [[x["name"], x["a"], x["b"], x["delta"]] for x in c["counts"]],
        )
    )
    if c["reasons"]:
        console.print(
            _table(
                "Rejections",
                ["reason", "A", "B", "B - A"],
                [[x["reason"], x["a"], x["b"], x["delta"]] for x in c["reasons"]],
            )
        )
    if c["scores"]:
        console.print(_table("Score shifts (accepted clips)", SCORE_SHIFT_HEADER, score_shift_rows(c)))
