"""Deciding again over a finished run, without decoding anything.

- ``select_run``: ``vidsift select OUT --where "aesthetic_score >= 4.5 and motion_score > 0.3"
  --output OUT2`` replaces the filters' thresholds by a predicate over the stored score columns
  and writes a new run folder, with the accounting of which clips moved between accepted and
  rejected, and why.
- ``apply_dedup``: the run-wide half of ``dedup``: after the last group of ``vidsift curate``,
  near-duplicate accepted clips are moved to the rejected table in place, group by group.

Both rewrite whole group files with ``write_shards.write_group`` (temporary file, then rename).
"""

from __future__ import annotations

import ast
import json
import operator
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from vidsift.pipeline import storage
from vidsift.pipeline.process import account_group
from vidsift.pipeline.schema import CLIP_SCHEMA, REJECTED_SCHEMA
from vidsift.pipeline.stages.write_shards import WriteShardsConfig, done_groups, write_group, write_manifest
from vidsift.pipeline.storage import Location

_COMPARE = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}


class SelectError(ValueError):
    """A bad ``--where`` expression or run folder, with a message for the user."""


def parse_where(expr: str) -> Callable[[dict], bool]:
    """A predicate over a row from a small, safe expression language (never ``eval``).

    Allowed: column names, numbers, strings, ``true``/``false``, comparisons (``< <= > >= == !=``,
    chained), ``and``, ``or``, ``not`` and parentheses. A comparison with a null value is false.
    ``source_meta.KEY`` (or ``source_meta["KEY"]``) is a key of the input list's metadata.
    """
    from vidsift.pipeline.input_lists import meta_key, meta_value

    try:
        tree = ast.parse(expr.replace(" true", " True").replace(" false", " False"), mode="eval")
    except SyntaxError as e:
        raise SelectError(f"--where: not a valid expression ({e.msg}): {expr!r}") from None
    columns = set(CLIP_SCHEMA.names) | set(REJECTED_SCHEMA.names)

    def build(node: ast.AST) -> Callable[[dict], object]:
        if isinstance(node, ast.BoolOp):
            parts = [build(v) for v in node.values]
            if isinstance(node.op, ast.And):
                return lambda r: all(p(r) for p in parts)
            return lambda r: any(p(r) for p in parts)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = build(node.operand)
            return lambda r: not inner(r)
        if (
            isinstance(node, ast.UnaryOp)
            and isinstance(node.op, ast.USub)
            and isinstance(node.operand, ast.Constant)
        ):
            value = -node.operand.value
            return lambda r: value
        if isinstance(node, ast.Compare):
            terms = [build(node.left)] + [build(c) for c in node.comparators]
            ops = []
            for op in node.ops:
                if type(op) not in _COMPARE:
                    raise SelectError(f"--where: operator {type(op).__name__} is not allowed")
                ops.append(_COMPARE[type(op)])

            def compare(r: dict) -> bool:
                values = [t(r) for t in terms]
                if any(v is None for v in values):
                    return False
                return all(op(a, b) for op, a, b in zip(ops, values, values[1:], strict=False))

            return compare
        if meta_key(node) is not None:  # source_meta.KEY or source_meta["KEY"]: a key of the input list
            key = meta_key(node)
            return lambda r: meta_value(r.get("source_meta"), key)
        if isinstance(node, ast.Name):
            if node.id not in columns:
                raise SelectError(f"--where: unknown column {node.id!r}")
            name = node.id
            return lambda r: r.get(name)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str | bool):
            value = node.value
            return lambda r: value
        raise SelectError(f"--where: {type(node).__name__} is not allowed in {expr!r}")

    predicate = build(tree.body)
    return lambda row: bool(predicate(row))


def read_group(out: Location, group: str) -> tuple[list[dict], list[dict], list[dict]]:
    """One published group's rows, from a local, NFS or ``s3://`` run folder."""

    def read(table: str) -> list[dict]:
        path = storage.join(out, table, f"{group}.parquet")
        return storage.read_table(path).to_pylist() if storage.exists(path) else []

    return read("clips"), read("rejected"), read("videos")


def _publish(out: Location, group: str, clips: list[dict], rejected: list[dict], videos: list[dict],
             config: WriteShardsConfig) -> None:  # fmt: skip
    write_group(out, group, clips, rejected, account_group(videos, clips, rejected), config)


def _is_filter_reject(row: dict) -> bool:
    return (row.get("reject_stage") or "").startswith("score_") or row.get("reject_stage") == "select"


def select_run(src: Path, where: str, dst: Path, config: WriteShardsConfig | None = None) -> dict:
    """Write ``dst``: the rows of ``src`` decided again by ``where``; returns the move counts."""
    config = config or WriteShardsConfig()
    predicate = parse_where(where)
    if not (src / "manifest.json").exists():
        raise SelectError(f"{src} is not a finished vidsift run (no manifest.json)")
    if dst.exists() and any(dst.iterdir()):
        raise SelectError(f"--output {dst} exists and is not empty")
    moves: Counter = Counter()
    for group in sorted(done_groups(src)):
        clips, rejected, videos = read_group(src, group)
        new_clips, new_rejected = [], []
        for row in clips + rejected:
            was_accepted = not row.get("reject_reason")
            if not was_accepted and not _is_filter_reject(row):
                new_rejected.append(row)  # rejected by a stage select does not decide (scenes, dedup, ...)
                moves["rejected_kept"] += 1
                continue
            row = {**row, "reject_stage": None, "reject_reason": None, "reject_detail": None}
            if not predicate(row):
                row.update(
                    reject_stage="select", reject_reason="select_where", reject_detail=f"fails: {where}"
                )
                new_rejected.append(row)
                moves["accepted_to_rejected" if was_accepted else "rejected_kept"] += 1
            elif row.get("clip_mp4") is None:
                row.update(
                    reject_stage="select",
                    reject_reason="not_transcoded",
                    reject_detail="passes, but a filter rejected it before transcode: "
                    "curate again with looser thresholds to get its media",
                )
                new_rejected.append(row)
                moves["rejected_not_transcoded"] += 1
            else:
                new_clips.append({k: row.get(k) for k in CLIP_SCHEMA.names})
                moves["accepted_kept" if was_accepted else "rejected_to_accepted"] += 1
        _publish(dst, group, new_clips, new_rejected, videos, config)
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["select"] = {"source": str(src), "where": where, "moves": dict(sorted(moves.items()))}
    for name in ("recipe.resolved.toml",):
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    write_manifest(dst, manifest)
    return dict(moves)


def apply_dedup(
    out: Location, find: Callable[[list[dict]], dict[str, str]], config: WriteShardsConfig
) -> int:
    """Move near-duplicate accepted clips of a finished run to its rejected table; returns how many."""
    columns = [
        "clip_id",
        "group",
        "source_uri",
        "dedup_hashes",
        "dedup_curve",
        "width",
        "height",
        "duration_s",
    ]
    rows = []
    for f in storage.parquet_files(storage.join(out, "clips")):
        rows.extend(storage.read_table(f, columns=columns).to_pylist())
    duplicates = find(rows)
    if not duplicates:
        return 0
    source_of = {r["clip_id"]: r["source_uri"] for r in rows}
    for group in sorted({r["group"] for r in rows if r["clip_id"] in duplicates}):
        clips, rejected, videos = read_group(out, group)
        keep = [c for c in clips if c["clip_id"] not in duplicates]
        # by clip_id: a pass interrupted between the two files may already have moved a row
        moved = {r["clip_id"]: r for r in rejected}
        for c in clips:
            if c["clip_id"] in duplicates:
                rep = duplicates[c["clip_id"]]
                moved[c["clip_id"]] = {
                    **c,
                    "dup_of": rep,
                    "reject_stage": "dedup",
                    "reject_reason": "near_duplicate",
                    "reject_detail": f"duplicates {rep} from {source_of[rep]}",
                }
        _publish(out, group, keep, list(moved.values()), videos, config)
    return len(duplicates)
