"""The run-wide half of ``dedup``: after the last group of ``vidsift curate``, and ``vidsift dedup OUT
[--against RUN ...]`` on a finished run.

``dedup_run`` reads the hash columns of the run (and of earlier runs), searches them with the index of
``pipeline/dedup_index.py``, then moves the near-duplicate accepted clips of the run to its rejected table
in place, group by group (whole group files rewritten: temporary file, then rename, in
``write_shards.TABLES`` order, as ``vidsift select`` writes them), and the manifest is recounted from
column scans. Each phase (files read, index tables, verification chunks, groups rewritten) shows the
shared progress bar of ``pipeline/progress.py``; what the search did is printed and counted after it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console

from vidsift.pipeline import storage
from vidsift.pipeline.schema import REJECTED_SCHEMA
from vidsift.pipeline.select import (
    SelectError,
    conform,
    is_run,
    read_group_tables,
    recount,
    with_reason,
    write_group_tables,
)
from vidsift.pipeline.stages.write_shards import WriteShardsConfig, write_manifest
from vidsift.pipeline.storage import Location


class DedupError(SelectError):
    """A bad run folder or dedup setting, with a message for the user."""


# phase -> (unit, counters): one bar each, in this order
PHASES = {
    "read": ("files", "{task.fields[clips]} clips read"),
    "index": ("hash tables", "{task.fields[compared]} hash pairs compared"),
    "verify": ("parts of pairs", "{task.fields[verified]} of {task.fields[candidates]} candidates verified"),
    "rewrite": ("groups", "{task.fields[moved]} clips moved"),
}


class PhaseBars:
    """The progress of the pass as one bar per phase (``pipeline/progress.py``), shown in turn.

    Called as ``bars(phase, done, total, **counters)``; a new phase ends the bar of the one before.
    Without a console (or with a quiet one) nothing shows.
    """

    def __init__(self, console: Console | None) -> None:
        self.console = console
        self.phase: str | None = None
        self.bar = None
        self.task = None

    def __call__(self, phase: str, done: int, total: int, **counters: int) -> None:
        if self.console is None:
            return
        if phase != self.phase:
            from vidsift.pipeline.progress import progress_bar

            self.close()
            unit, template = PHASES[phase]
            self.bar = progress_bar(f"dedup {phase}", unit, template, console=self.console)
            self.bar.start()
            self.task = self.bar.add_task(phase, total=total, **{k: 0 for k in _fields(template)})
            self.phase = phase
        self.bar.update(self.task, completed=done, total=total, **counters)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        self.bar, self.phase = None, None


def _fields(template: str) -> list[str]:
    return [part.split("]", 1)[0] for part in template.split("{task.fields[")[1:]]


def move_duplicates(
    out: Location,
    moves: pa.Table,
    config: WriteShardsConfig,
    progress: Callable[..., None] | None = None,
) -> int:
    """Move accepted clips of ``out`` to its rejected table as ``dedup/near_duplicate``; returns how many.

    ``moves`` has ``group``, ``clip_id``, ``dup_of`` and ``reject_detail``. Rows already moved by an
    interrupted pass are merged by ``clip_id`` (never twice). ``progress`` is called as
    ``progress("rewrite", groups_done, groups, moved=...)``.
    """
    moved_total = 0
    groups = sorted(set(moves.column("group").to_pylist()))
    if progress:
        progress("rewrite", 0, len(groups), moved=0)
    for k, group in enumerate(groups, 1):
        mine = moves.filter(pc.equal(moves.column("group"), group))
        t = read_group_tables(out, group)
        clips, rejected = t["clips"], t["rejected"]
        ids = mine.column("clip_id")
        in_moves = pc.is_in(clips.column("clip_id"), value_set=ids)
        moved = conform(clips.filter(in_moves), REJECTED_SCHEMA)
        at = pc.index_in(moved.column("clip_id"), value_set=ids)
        moved = moved.set_column(
            moved.schema.get_field_index("dup_of"),
            REJECTED_SCHEMA.field("dup_of"),
            mine.column("dup_of").take(at),
        )
        moved = with_reason(
            moved, "dedup", "near_duplicate", mine.column("reject_detail").combine_chunks().take(at)
        )
        earlier = rejected.filter(
            pc.invert(pc.is_in(rejected.column("clip_id"), value_set=moved.column("clip_id")))
        )
        keep = clips.filter(pc.invert(in_moves))
        write_group_tables(out, group, keep, pa.concat_tables([earlier, moved]), t["videos"], config)
        moved_total += moved.num_rows
        if progress:
            progress("rewrite", k, len(groups), moved=moved_total)
    return moved_total


def dedup_run(
    out: Location,
    config,
    write_config: WriteShardsConfig,
    against: Sequence[Location] = (),
    log: Callable[[str], None] = print,
    console: Console | None = None,
) -> dict:
    """The run-wide near-duplicate pass over ``out`` (and against earlier runs); returns what it did.

    Only ``out`` is rewritten: a clip of ``out`` that duplicates a clip of an ``against`` run is rejected
    with ``dup_of`` set to that clip and the run named in ``reject_detail``; clips of ``against`` runs
    are always the ones kept.

    The phases show progress bars on ``console`` (``Console(quiet=True)``: none). Without one, a ``log``
    that is a rich console's ``print`` lends its console (so ``vidsift curate --quiet`` stays quiet);
    otherwise no bar shows. ``log`` gets the counted summary lines.
    """
    from vidsift.pipeline.dedup_index import (
        UnreadableShard,
        count_clips,
        find_near_duplicates,
        load_hash_table,
        moves_table,
        search_files,
    )

    if console is None and isinstance(getattr(log, "__self__", None), Console):
        console = log.__self__
    bars = PhaseBars(console)
    runs = [out, *against]
    try:
        files = [storage.parquet_files(storage.join(r, "clips")) for r in runs]
        try:
            if count_clips(files, config.distribute_above)[1]:  # Ray tasks read the run: none of it here
                moves, stats = search_files(runs, config, progress=bars)
            else:
                table = load_hash_table(runs, progress=bars)
                duplicates, stats = find_near_duplicates(table, config, progress=bars)
                moves = moves_table(table, duplicates, [str(r) for r in runs])
        except UnreadableShard as e:  # from a Ray task too: its error is an UnreadableShard with a cause
            raise DedupError(str(getattr(e, "cause", None) or e)) from None
        if moves.num_rows:
            moved = move_duplicates(out, moves, write_config, progress=bars)
        else:
            moved = 0
            bars("rewrite", 0, 0, moved=0)  # nothing to rewrite: shown as 0/0, not left out
    finally:
        bars.close()
    result = {**stats.as_dict(), "moved": moved, "against": [str(a) for a in against]}
    log(
        f"dedup: {stats.clips} clips of {len(runs)} run(s), {stats.hashes} distinct hashes; "
        f"{stats.candidate_pairs} candidate pairs from {stats.hash_pairs_compared} hash comparisons "
        f"in {stats.tables} tables of {stats.key_bits} bits; {stats.verified_pairs} verified; "
        f"{moved} near-duplicate clips moved to the rejected table"
    )
    if stats.clips_without_hashes:
        log(f"dedup: {stats.clips_without_hashes} clips have no hash (only flat frames): not compared")
    if stats.split_buckets:
        log(f"dedup: {stats.split_buckets} crowded buckets ({stats.split_entries} hashes) split by more bits")
    return result


def apply_dedup(
    out: Location, find: Callable[[list[dict]], dict[str, str]], config: WriteShardsConfig
) -> int:
    """Move the duplicates ``find`` names (``{clip_id: kept clip_id}``) over the run's rows; returns how many.

    For small runs and tests: ``find`` gets the hash columns as dicts. ``dedup_run`` is the scalable pass.
    """
    from vidsift.pipeline.dedup_index import read_clip_columns

    rows = read_clip_columns(out).to_pylist()
    duplicates = find(rows)
    if not duplicates:
        return 0
    source_of = {r["clip_id"]: r["source_uri"] for r in rows}
    dup = [r for r in rows if r["clip_id"] in duplicates]
    moves = pa.table(
        {
            "group": pa.array([r["group"] for r in dup], pa.string()),
            "clip_id": pa.array([r["clip_id"] for r in dup], pa.string()),
            "dup_of": pa.array([duplicates[r["clip_id"]] for r in dup], pa.string()),
            "reject_detail": pa.array(
                [
                    f"duplicates {duplicates[r['clip_id']]} from {source_of[duplicates[r['clip_id']]]}"
                    for r in dup
                ],
                pa.string(),
            ),
        }
    )
    return move_duplicates(out, moves, config)


def dedup_finished_run(
    out: str, against: Sequence[str] = (), overrides: Sequence[str] = (), quiet: bool = True
) -> dict:
    """``vidsift dedup OUT [--against RUN ...] [--set dedup.KEY=VALUE]``: the pass on a finished run.

    The dedup settings are the run's own recipe's (from its manifest) with ``overrides`` applied; the
    manifest is recounted afterwards and records what the pass did under ``dedup``. Progress bars and
    the summary lines go to stderr (stdout carries the command's JSON result); ``quiet``: neither.
    """
    from vidsift.pipeline.config import RecipeError
    from vidsift.pipeline.recipe import build_recipe

    for run in (out, *against):
        if not is_run(run):
            raise DedupError(f"{run} is not a finished vidsift run (no manifest.json)")
    manifest = json.loads(storage.read_text(storage.join(out, "manifest.json")))
    sets = [s if s.startswith("dedup.") or "." in s.split("=", 1)[0] else f"dedup.{s}" for s in overrides]
    try:
        recipe = build_recipe(manifest.get("recipe") or {}, sets)
        config = recipe.stage("dedup")
    except RecipeError as e:
        raise DedupError(str(e)) from None
    except KeyError:
        raise DedupError(f"{out} was curated without the dedup stage: its clips have no hashes") from None
    os.environ.update(storage.s3_environment(recipe.run.s3_endpoint_url, recipe.run.s3_region))
    console = Console(stderr=True, quiet=quiet)

    def log(message: str) -> None:  # whole lines, as print wrote them (grep-able), not wrapped at 80 columns
        console.print(message, soft_wrap=True, markup=False, highlight=False)

    result = dedup_run(out, config, recipe.stage("write_shards"), against, log=log, console=console)
    manifest = recount(out, manifest)
    manifest["dedup"] = result
    write_manifest(out, manifest)
    return {"run": str(out), **result, "counts": manifest["counts"]}
