"""Deciding again over a finished run, without decoding anything, and the group-file helpers it shares
with the run-wide dedup pass (``pipeline/dedup_run.py``).

``select_run``: ``vidsift select OUT --where "aesthetic_score >= 4.5 and motion_score > 0.3"
  --output OUT2`` (or ``--sql "<DuckDB WHERE condition>"``) replaces the filters' thresholds by a
  predicate over the stored score columns and writes a new run folder, with the accounting of which
  clips moved between accepted and rejected, and why. It streams group by group in Arrow: rows never
  become Python objects and MP4 bytes are copied as bytes. Local, NFS and ``s3://`` runs. The run's
  cached latents (``latents/<model>/<group>.parquet``) go along for the clips the new run keeps
  (``carry_latents``).

It writes whole group files (temporary file, then rename, in ``write_shards.TABLES`` order; flushed to
the device once, not file by file), consecutive small groups merged into one (``plan_groups``,
``--merge-mib``), and then counts the manifest from the columns of the tables it wrote.
Runs of ``PROCESS_MIN_GROUPS`` groups or more are decided in worker processes
(``pipeline/select_worker.py``), smaller ones in threads; the output is the same byte for byte. Its cost
is reading and writing every group file (``bench/scale.py``, ``docs/benchmarks.md``).
"""

from __future__ import annotations

import ast
import json
import operator
import os
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from functools import lru_cache, reduce

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vidsift.pipeline import storage
from vidsift.pipeline.schema import (
    CLIP_SCHEMA,
    LATENTS_DIR,
    LATENTS_SETTINGS_KEY,
    REJECTED_SCHEMA,
    VIDEO_SCHEMA,
)
from vidsift.pipeline.stages.write_shards import TABLES, WriteShardsConfig, done_groups, write_manifest
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


# ------------------------------------------------------------------------------------ Arrow predicates

_ARROW_COMPARE = {
    ast.Lt: pc.less,
    ast.LtE: pc.less_equal,
    ast.Gt: pc.greater,
    ast.GtE: pc.greater_equal,
    ast.Eq: pc.equal,
    ast.NotEq: pc.not_equal,
}

Mask = Callable[[pa.Table], np.ndarray]


def where_mask(expr: str) -> Mask:
    """``parse_where``'s language evaluated on Arrow tables: a bool numpy mask per table.

    The same rules: a comparison with a null is false, ``not`` of it is true.
    """
    parse_where(expr)  # the same allowlist and error messages
    from vidsift.pipeline.input_lists import meta_array, meta_key

    tree = ast.parse(expr.replace(" true", " True").replace(" false", " False"), mode="eval")

    def condition(value, node: ast.AST):
        if isinstance(value, pa.Scalar | pa.Array | pa.ChunkedArray) and pa.types.is_boolean(value.type):
            return pc.fill_null(value, False)
        raise SelectError(f"--where: {ast.unparse(node)!r} is not a condition (compare it with a value)")

    def build(node: ast.AST) -> Callable[[pa.Table], object]:
        if isinstance(node, ast.BoolOp):
            parts = [(build(v), v) for v in node.values]
            combine = pc.and_kleene if isinstance(node.op, ast.And) else pc.or_kleene
            return lambda t: reduce(combine, [condition(p(t), v) for p, v in parts])
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = build(node.operand)
            return lambda t: pc.invert(condition(inner(t), node.operand))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            value = pa.scalar(-node.operand.value)
            return lambda t: value
        if isinstance(node, ast.Compare):
            terms = [build(node.left)] + [build(c) for c in node.comparators]
            ops = [_ARROW_COMPARE[type(op)] for op in node.ops]

            def compare(t: pa.Table):
                values = [term(t) for term in terms]
                parts = [
                    pc.fill_null(op(a, b), False) for op, a, b in zip(ops, values, values[1:], strict=False)
                ]
                return reduce(pc.and_kleene, parts)

            return compare
        if meta_key(node) is not None:  # source_meta.KEY: a key of the input list (pipeline/input_lists.py)
            key = meta_key(node)
            return lambda t: meta_array(t, key)
        if isinstance(node, ast.Name):
            name = node.id
            return lambda t: t.column(name) if name in t.column_names else pa.nulls(t.num_rows)
        value = pa.scalar(node.value)  # a constant: parse_where allowed nothing else
        return lambda t: value

    predicate = build(tree.body)

    def mask(t: pa.Table) -> np.ndarray:
        try:
            result = condition(predicate(t), tree.body)
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise SelectError(f"--where: cannot evaluate {expr!r}: {str(e).splitlines()[0]}") from None
        if isinstance(result, pa.Scalar):
            return np.full(t.num_rows, bool(result.as_py()))
        return np.asarray(result.to_numpy(zero_copy_only=False), dtype=bool)

    mask(REJECTED_SCHEMA.empty_table())  # type errors (a string column against a number) fail up front
    return mask


ROW = "__vidsift_row"
SELECT_THREADS = min(4, os.cpu_count() or 1)  # groups decided at once by select_run
# select_run decides runs of at least PROCESS_MIN_GROUPS groups in SELECT_PROCESSES worker processes
# (select_in_processes), a chunk of PROCESS_CHUNK groups at a time: two threads of one process spent 27-28
# ms CPU a group where two processes spent 22 (the GIL between the Arrow calls), 13 against 17 ms wall a
# group at 1M rows (docs/benchmarks.md, issue 16). Small runs stay in threads (a worker starts in ~1 s).
SELECT_PROCESSES = min(8, os.cpu_count() or 1)
PROCESS_MIN_GROUPS = 64
PROCESS_CHUNK = 8
# select writes consecutive groups whose files add up to no more than MERGE_MIB MiB as one group
# (``plan_groups``): every file costs about as much to create, set up and close as writing a few hundred
# rows without media (docs/benchmarks.md, issue 16); groups of clips with media are larger and stay as
# they are
MERGE_MIB = 8


def sql_mask(condition: str) -> Mask:
    """A DuckDB SQL ``WHERE`` condition as a bool mask per Arrow table.

    The text is never pasted into a statement: it is parsed by DuckDB as one expression
    (``Relation.filter``) over the table, on a connection that can read no file, reach no network
    and see no Python variable, with its settings locked. ``;`` is refused outright.
    """
    import duckdb

    if ";" in condition:
        raise SelectError("--sql: one WHERE condition only, without ';'")
    if not condition.strip():
        raise SelectError("--sql: empty condition")
    con = duckdb.connect(":memory:")
    for setting in ("enable_external_access = false", "python_enable_replacements = false"):
        con.execute(f"SET {setting}")
    con.execute("SET lock_configuration = true")

    lock = threading.Lock()  # one DuckDB connection: select_run's threads take turns

    def mask(t: pa.Table) -> np.ndarray:
        indexed = t.append_column(ROW, pa.array(np.arange(t.num_rows, dtype=np.int64)))
        try:
            with lock:
                rows = con.from_arrow(indexed).filter(condition).project(ROW).fetch_arrow_table()
        except duckdb.Error as e:
            raise SelectError(f"--sql: {str(e).splitlines()[0]}") from None
        out = np.zeros(t.num_rows, bool)
        out[rows.column(ROW).to_numpy()] = True
        return out

    mask(REJECTED_SCHEMA.empty_table())  # parse and bind errors before anything is written
    return mask


# --------------------------------------------------------------------------------------- group files


_readers = threading.local()  # one single-threaded DuckDB connection per thread of select_run


def _read_table(location: Location) -> pa.Table:
    """One whole Parquet file, single-threaded (groups run in parallel already; per-file threads only
    add overhead: 3x the CPU of ``pq.ParquetFile.read`` on small shard files).

    A local file of one or two row groups (the shard contract's byte-sized row groups without media, the
    rejected and videos tables) is read by pyarrow (without pre-buffering): 7.9 ms CPU a group's three files
    at 1M rows, where DuckDB took 12.9 ms. A file of many row groups (64-row groups of clips with media, and
    every older run's files) is read by DuckDB: 8.3 ms for a clips file of 8 row groups, where pyarrow took
    16.6 ms, and one chunk per column instead of one per row group, which the filters and sorts after it
    also pay for (docs/benchmarks.md, issue 16). ``s3://`` files (and paths DuckDB would take for a glob)
    go through pyarrow's own S3 client.
    """
    path = str(location)
    if not storage.is_remote(path) and not any(ch in path for ch in "*?[{"):
        with pq.ParquetFile(path, pre_buffer=False) as parquet:
            if parquet.metadata.num_row_groups <= 2:
                return parquet.read(use_threads=False)
        con = getattr(_readers, "con", None)
        if con is None:
            import duckdb

            con = _readers.con = duckdb.connect(":memory:", config={"threads": 1})
        rel = con.read_parquet(path)
        return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.fetch_arrow_table()

    fs, path = storage.filesystem(location)
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).read(use_threads=False)


def read_group_tables(out: Location, group: str) -> dict[str, pa.Table]:
    """One published group's tables (Arrow), empty where a file is missing; a file Arrow cannot read, or
    whose columns cannot take the shard schema's types, is a ``SelectError`` naming it."""
    tables = {}
    for name, schema in TABLES.items():
        path = storage.join(out, name, f"{group}.parquet")
        if not storage.exists(path):
            tables[name] = schema.empty_table()
            continue
        try:
            tables[name] = conform(_read_table(path), schema)
        except Exception as e:
            if not _unreadable(e):
                raise
            raise SelectError(f"{path}: not a readable shard file ({str(e).splitlines()[0]})") from None
    return tables


def read_members(out: Location, members: list[str]) -> dict[str, pa.Table]:
    """``read_group_tables`` of consecutive groups as one: each table concatenated in order, with the
    ``group`` column naming the first of them (the group ``plan_groups`` writes them as)."""
    if len(members) == 1:
        return read_group_tables(out, members[0])
    parts = [read_group_tables(out, g) for g in members]
    tables = {}
    for name in TABLES:
        t = pa.concat_tables([p[name] for p in parts])  # (joined once, by _select_group)
        i = t.schema.get_field_index("group")
        tables[name] = t.set_column(i, t.schema.field(i), pa.repeat(pa.scalar(members[0]), t.num_rows))
    return tables


def plan_groups(src: Location, groups: list[str], merge_mib: float) -> list[list[str]]:
    """The groups ``select_run`` writes, each a list of consecutive ``groups`` of ``src`` (in order): a group
    takes the next ones while its files (all tables) add up to no more than ``merge_mib`` MiB. Groups are
    named after their first member. ``merge_mib`` 0: every group as it is."""
    if merge_mib <= 0:
        return [[g] for g in groups]
    size: Counter = Counter()
    for name in TABLES:
        try:
            files = storage.list_files(storage.join(src, name))
        except FileNotFoundError:
            continue
        for path, n in files.items():
            if storage.name(path).endswith(".parquet"):
                size[storage.name(path).removesuffix(".parquet")] += n
    limit = merge_mib * (1 << 20)
    plan: list[list[str]] = []
    total = limit
    for g in groups:
        if total + size[g] > limit:
            plan.append([])
            total = 0
        plan[-1].append(g)
        total += size[g]
    return plan


def _unreadable(error: Exception) -> bool:
    """An error of reading a file (Arrow's, DuckDB's or the OS's), not of this code."""
    import duckdb

    return isinstance(error, pa.ArrowException | OSError | duckdb.Error)


def conform(t: pa.Table, schema: pa.Schema) -> pa.Table:
    """``t`` with exactly ``schema``'s columns, in order (a missing column is nulls), and exactly its
    types, down to the names of list items (``Schema.equals`` ignores those, but the Arrow schema a
    Parquet file stores keeps them: a list read back as ``list<element: ...>`` is cast to ``item``)."""
    same = _conformed(t, schema)  # the usual case, a shard file of this schema
    if same is not None:
        return same
    names = schema.names
    have = set(t.column_names)
    present = [n for n in names if n in have]
    if present == names[: len(present)]:  # columns to drop, or to add at the end (clips -> rejected)
        part = t.select(present)
        for i in range(len(present), len(names)):
            part = part.append_column(schema.field(i), pa.nulls(t.num_rows, schema.field(i).type))
        same = _conformed(part, schema)
        if same is not None:
            return same
    if t.column_names == names:
        cols = t.columns
    else:
        cols = [t.column(f.name) if f.name in have else pa.nulls(t.num_rows, f.type) for f in schema]
    cols = [c if _same_type(c.type, f.type) else c.cast(f.type) for c, f in zip(cols, schema, strict=True)]
    return pa.Table.from_arrays(cols, schema=schema)


def _conformed(t: pa.Table, schema: pa.Schema) -> pa.Table | None:
    """``conform``'s result where ``t`` has ``schema``'s fields already, but for the names of list items
    (a cast of those columns only: tens of microseconds, where rebuilding 85 columns takes 0.5 ms); None
    where it has not."""
    if not t.schema.equals(schema):
        return None
    for i in _nested_fields(schema):
        field = schema.field(i)
        if str(t.schema.field(i).type) != str(field.type):
            t = t.set_column(i, field, t.column(i).cast(field.type))
    return t if t.schema.equals(schema, check_metadata=True) else None


_NESTED: dict[int, tuple[pa.Schema, list[int]]] = {}


def _nested_fields(schema: pa.Schema) -> list[int]:
    """The indices of ``schema``'s nested fields, kept per schema object (hashing a schema of 85 fields
    costs as much as the loop; the entry holds the schema, so its id is not reused while it is kept)."""
    known = _NESTED.get(id(schema))
    if known is None or known[0] is not schema:
        if len(_NESTED) > 64:
            _NESTED.clear()
        known = _NESTED[id(schema)] = (schema, [i for i, f in enumerate(schema) if f.type.num_fields])
    return known[1]


def _same_type(a: pa.DataType, b: pa.DataType) -> bool:
    """Equal types, and for nested ones equal names of their children too."""
    return a.equals(b) and (a.num_fields == 0 or str(a) == str(b))


def read_group(out: Location, group: str) -> tuple[list[dict], list[dict], list[dict]]:
    """One published group's rows as dicts (small runs and tests; the passes here stay in Arrow)."""
    t = read_group_tables(out, group)
    return t["clips"].to_pylist(), t["rejected"].to_pylist(), t["videos"].to_pylist()


_SORT = [("source_uri", "ascending"), ("start_frame", "ascending"), ("clip_id", "ascending")]


def _account_videos(videos: pa.Table, clips: pa.Table, rejected: pa.Table) -> pa.Table:
    """``process.account_group`` (the one accounting rule) over the few columns it reads and writes: the
    videos' ids, status and counts, the accepted clips' ``source_uri``, the rejected rows' reasons. A
    group's videos are few; no media is touched, and the other video columns stay as they are."""
    from vidsift.pipeline.process import account_group  # (process imports every stage: once per process)

    videos = conform(videos, VIDEO_SCHEMA)
    own = ["source_uri", "status", "reason", "detail", "num_clips_accepted"]
    accepted = [{"source_uri": u} for u in clips.column("source_uri").to_pylist()]
    narrow = rejected.select(["source_uri", "reject_stage", "reject_reason"]).to_pylist()
    rows = account_group(videos.select(own).to_pylist(), accepted, narrow)
    for name in sorted(set().union(*rows) - {"source_uri"}) if rows else []:
        field = VIDEO_SCHEMA.field(name)
        videos = videos.set_column(
            videos.schema.get_field_index(name), field, pa.array([r.get(name) for r in rows], field.type)
        )
    return videos


def write_group_tables(
    out: Location,
    group: str,
    clips: pa.Table,
    rejected: pa.Table,
    videos: pa.Table,
    config: WriteShardsConfig,
    presorted: bool = False,
    sync: bool = True,
) -> dict[str, pa.Table]:
    """``write_shards.write_group`` for Arrow tables: same order of files, sort order and marker.

    ``presorted``: ``clips`` and ``rejected`` are in the shards' order already (``_sorted_take``).
    ``sync`` False: nothing is flushed to the device (``group_files`` names what ``storage.sync_files``
    must flush later)."""
    tables = {
        "clips": conform(clips, CLIP_SCHEMA) if presorted else conform(clips, CLIP_SCHEMA).sort_by(_SORT),
        "rejected": conform(rejected, REJECTED_SCHEMA)
        if presorted
        else conform(rejected, REJECTED_SCHEMA).sort_by(_SORT),
        "videos": _account_videos(videos, clips, rejected).sort_by([("source_uri", "ascending")]),
    }
    for name in TABLES:
        storage.makedirs(storage.join(out, name))
        config.write(tables[name], storage.join(out, name, f"{group}.parquet"), sync=sync)
    storage.makedirs(storage.join(out, "_done"))
    storage.touch(storage.join(out, "_done", group), sync=sync)
    return tables


def group_files(out: Location, group: str) -> list[Location]:
    """What ``write_group_tables`` writes for ``group``: its table files and its marker."""
    return [storage.join(out, name, f"{group}.parquet") for name in TABLES] + [
        storage.join(out, "_done", group)
    ]


def with_reason(t: pa.Table, stage: str, reason: str, detail: str | pa.Array | pa.ChunkedArray) -> pa.Table:
    n = t.num_rows
    values = {
        "reject_stage": pa.array([stage] * n, pa.string()),
        "reject_reason": pa.array([reason] * n, pa.string()),
        "reject_detail": pa.array([detail] * n, pa.string()) if isinstance(detail, str) else detail,
    }
    for name, arr in values.items():
        t = t.set_column(t.schema.get_field_index(name), REJECTED_SCHEMA.field(name), arr)
    return t


def _clear_reason(t: pa.Table) -> pa.Table:
    for name in ("reject_stage", "reject_reason", "reject_detail"):
        t = t.set_column(
            t.schema.get_field_index(name), REJECTED_SCHEMA.field(name), pa.nulls(t.num_rows, pa.string())
        )
    return t


# -------------------------------------------------------------------------------------------- select


def is_run(out: Location) -> bool:
    return storage.exists(storage.join(out, "manifest.json"))


def _is_empty(dst: Location) -> bool:
    """Nothing in ``dst`` but the output lock this command holds on it."""
    from vidsift.pipeline.lock import LOCK_NAME

    try:
        return all(str(f).rstrip("/").rsplit("/", 1)[-1] == LOCK_NAME for f in storage.list_files(dst))
    except FileNotFoundError:
        return True


def _sorted_take(t: pa.Table, idx: np.ndarray) -> pa.Table:
    """``t.take(idx).sort_by(_SORT)`` with one gather of the wide rows: the (stable) sort runs on the key
    columns only, so MP4 bytes are copied once."""
    keys = t.select([k for k, _ in _SORT]).take(idx)
    order = pc.sort_indices(keys, sort_keys=_SORT).to_numpy()
    return t.take(idx[order])


def _select_group(
    src: Location,
    dst: Location,
    members: list[str],
    mask_of: Mask,
    text: str,
    config: WriteShardsConfig,
    latents: dict[str, dict[str, Location]] | None = None,
) -> tuple[Counter, dict]:
    """One group of ``select_run`` (``members``: the groups of ``src`` it is made of, ``plan_groups``):
    decide its rows again and write them to ``dst``, with the cached latents of the clips it keeps
    (``carry_latents``; ``latents``: ``latent_files(src)``, only for one member); the move and latents
    counts and the ``tally`` of what it wrote.

    Every row gets its new reason columns in one table (kept reasons, ``select_where``,
    ``not_transcoded`` or none), then each output table is one sorted gather of it: the rows and their
    order are those of filtering, concatenating (kept, failed, not transcoded) and sorting by ``_SORT``.
    """
    moves: Counter = Counter()
    group = members[0]
    t = read_members(src, members)
    # one chunk per column: Arrow's take over two chunks of binary is 3x the cost of joining them first
    rows = pa.concat_tables([conform(t["clips"], REJECTED_SCHEMA), t["rejected"]]).combine_chunks()
    reason = rows.column("reject_reason")
    stage = pc.fill_null(rows.column("reject_stage"), "")
    was_accepted = pc.is_null(reason).to_numpy(zero_copy_only=False)
    by_filter = pc.or_(pc.starts_with(stage, "score_"), pc.equal(stage, "select")).to_numpy(
        zero_copy_only=False
    )
    decide = was_accepted | by_filter
    passed = mask_of(_clear_reason(rows))
    has_mp4 = pc.is_valid(rows.column("clip_mp4")).to_numpy(zero_copy_only=False)
    accepted = decide & passed & has_mp4
    failed = decide & ~passed
    not_transcoded = decide & passed & ~has_mp4
    new = {  # per row: (stage, reason, detail) where select decides it
        "reject_stage": ("select", "select"),
        "reject_reason": ("select_where", "not_transcoded"),
        "reject_detail": (
            f"fails: {text}",
            "passes, but a filter rejected it before transcode: "
            "curate again with looser thresholds to get its media",
        ),
    }
    for name, (if_failed, if_not_transcoded) in new.items():
        none = pa.scalar(None, pa.string())
        otherwise = pc.if_else(pa.array(not_transcoded), pa.scalar(if_not_transcoded, pa.string()), none)
        value = pc.if_else(pa.array(failed), pa.scalar(if_failed, pa.string()), otherwise)
        column = pc.if_else(pa.array(decide), value, rows.column(name))
        rows = rows.set_column(rows.schema.get_field_index(name), REJECTED_SCHEMA.field(name), column)
    rejected_order = np.concatenate(
        [np.flatnonzero(~decide), np.flatnonzero(failed), np.flatnonzero(not_transcoded)]
    )
    new_rejected = _sorted_take(rows, rejected_order)
    new_clips = _sorted_take(rows, np.flatnonzero(accepted))
    moves["accepted_kept"] += int((accepted & was_accepted).sum())
    moves["rejected_to_accepted"] += int((accepted & ~was_accepted).sum())
    moves["accepted_to_rejected"] += int((failed & was_accepted).sum())
    moves["rejected_kept"] += int((~decide).sum() + (failed & ~was_accepted).sum())
    moves["rejected_not_transcoded"] += int(not_transcoded.sum())
    written = write_group_tables(
        dst, group, new_clips, new_rejected, t["videos"], config, presorted=True, sync=False
    )
    if latents:
        newly = rows.column("clip_id").filter(pa.array(accepted & ~was_accepted))
        moves.update(carry_latents(src, dst, group, latents, new_clips.column("clip_id"), newly))
    return moves, tally(written["clips"], written["rejected"], written["videos"])


@lru_cache(maxsize=4)
def _mask_for(where: str | None, sql: str | None) -> Mask:
    """The predicate of ``--where`` or ``--sql``, built once per process (``sql_mask`` opens a connection)."""
    return where_mask(where) if where is not None else sql_mask(sql)


def select_in_processes(
    src: Location,
    dst: Location,
    groups: list[list[str]],
    where: str | None,
    sql: str | None,
    config: WriteShardsConfig,
    latents: dict[str, dict[str, Location]] | None,
    workers: list,
) -> Iterator[tuple[int, Counter, dict]]:
    """``_select_group`` for every group of ``groups`` (``plan_groups``: each the list of its members) in
    worker processes (``pipeline/select_worker.py``, from ``start_workers``), yielding ``(index in groups,
    moves, tally)`` as groups finish, in any order.

    Each worker takes the next chunk (groups of ``PROCESS_CHUNK`` members or more in all) when it is done
    with its last, so large and small groups even out. A worker's ``SelectError`` is raised here as it
    was; a worker that dies is an error naming its exit status. Workers still running when this stops (an
    error, Ctrl-C) are killed.
    """
    import pickle
    import queue
    import subprocess

    chunks: list[list[tuple[int, list[str]]]] = [[]]
    taken = 0  # members in the last chunk
    for index, members in enumerate(groups):
        if taken >= PROCESS_CHUNK:
            chunks.append([])
            taken = 0
        chunks[-1].append((index, members))
        taken += len(members)
    todo = iter(chunks if groups else [])
    lock = threading.Lock()
    results: queue.Queue = queue.Queue()
    task = {"src": src, "dst": dst, "where": where, "sql": sql, "config": config, "latents": latents}

    def feed(proc: subprocess.Popen) -> None:
        with lock:
            chunk = next(todo, None)
        if chunk is None:
            proc.stdin.close()
        else:
            pickle.dump(chunk, proc.stdin)
            proc.stdin.flush()

    def serve(proc: subprocess.Popen) -> None:  # one thread per worker: its results in, its next chunks out
        try:
            pickle.dump(task, proc.stdin)
            feed(proc)
            feed(proc)  # one chunk ahead, so the worker never waits for this thread
            while True:
                item = pickle.load(proc.stdout)
                if item[0] == "chunk":
                    if not proc.stdin.closed:
                        feed(proc)
                    continue
                results.put(item)
                if item[0] == "error":
                    return
        except (EOFError, OSError):  # the worker stopped: its exit status says why
            pass
        finally:
            results.put(("exit", proc))

    try:
        for proc in workers:
            threading.Thread(target=serve, args=(proc,), daemon=True).start()
        finished, running = 0, len(workers)
        while running:
            item = results.get()
            if item[0] == "group":
                finished += 1
                yield item[1], item[2], item[3]
            elif item[0] == "error":
                if item[1] == "select":
                    raise SelectError(item[2])
                raise RuntimeError(f"a select worker failed:\n{item[2]}")
            else:
                running -= 1
        codes = [w.wait() for w in workers]  # a worker exits once its files are flushed
        if finished != len(groups) or any(codes):
            raise RuntimeError(
                f"select workers stopped after {finished} of {len(groups)} groups (exit {codes})"
            )
    finally:
        stop_workers(workers)


def start_workers(processes: int) -> list:
    """``processes`` worker processes of ``select_in_processes``, started (they import while the caller
    gets their task ready)."""
    import subprocess

    command = [sys.executable, "-m", "vidsift.pipeline.select_worker"]
    return [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(processes)
    ]


def stop_workers(workers: list) -> None:
    """Kill the workers still running (after an error or Ctrl-C; finished ones have exited) and reap them."""
    for w in workers:
        if w.poll() is None:
            w.kill()
        w.wait()
        for stream in (w.stdin, w.stdout):
            try:
                stream.close()
            except OSError:
                pass


def _run_write_config(run: Location) -> WriteShardsConfig:
    """The ``write_shards`` settings of a run's recipe (its row group size and compression), else defaults."""
    from vidsift.pipeline.config import RecipeError
    from vidsift.pipeline.recipe import build_recipe

    try:
        manifest = json.loads(storage.read_text(storage.join(run, "manifest.json")))
        return build_recipe(manifest.get("recipe") or {}).stage("write_shards")
    except (RecipeError, KeyError, ValueError):
        return WriteShardsConfig()


def _say(line: str, log: Callable[[str], None] | None, quiet: bool) -> None:
    """A line for the user: to ``log`` if given, else on stderr unless ``quiet``."""
    if log:
        log(line)
    elif not quiet:
        print(line, file=sys.stderr)


def select_run(
    src: Location,
    dst: Location,
    where: str | None = None,
    sql: str | None = None,
    config: WriteShardsConfig | None = None,
    log: Callable[[str], None] | None = None,
    quiet: bool = True,
    processes: int | None = None,
    merge_mib: float = MERGE_MIB,
) -> dict:
    """Write ``dst``: the rows of ``src`` decided again by ``where`` (or a DuckDB ``sql`` condition).

    ``merge_mib``: consecutive groups whose files add up to no more than this are written as one group, named
    after the first (``plan_groups``; 0: each group as it is). A run with cached latents keeps its groups
    (a latents file is one group's, with that group's encode settings).

    ``log`` gets a progress line about every tenth of the groups; unless ``quiet``, a progress bar over the
    groups shows on stderr (``pipeline/progress.py``, curate's look).

    ``processes``: worker processes (``select_in_processes``; default: ``SELECT_PROCESSES`` for runs
    of at least ``PROCESS_MIN_GROUPS`` groups, else 0); 0: threads of this process. Either way each group
    is written by one worker and the results are counted in group order, so the output is the same.

    Returns the move counts. Rows rejected by a stage select does not decide (scenes, dedup, transcode,
    captioning) stay rejected as they are.
    """
    if (where is None) == (sql is None):
        raise SelectError("give one of --where or --sql")
    _mask_for(where, sql)  # a bad expression fails here, before anything is written
    text = where if where is not None else sql
    src, dst = (str(x) if storage.is_remote(str(x)) else x for x in (src, dst))
    if not is_run(src):
        raise SelectError(f"{src} is not a finished vidsift run (no manifest.json)")
    if not _is_empty(dst):
        raise SelectError(f"--output {dst} exists and is not empty")
    moves: Counter = Counter()
    carried: Counter = Counter()  # latents_* counts of carry_latents
    # groups are independent: worker processes (small runs: threads) each decide and write whole groups
    from vidsift.pipeline.progress import progress_bar

    read = sorted(done_groups(src))
    if processes is None:
        processes = SELECT_PROCESSES if len(read) >= PROCESS_MIN_GROUPS and SELECT_PROCESSES > 1 else 0
    workers = start_workers(processes)  # they start up while this reads the run's settings
    try:
        config = config or _run_write_config(src)
        latents = latent_files(src)
        groups = plan_groups(src, read, 0 if latents else merge_mib)
        tallies: list[dict] = [{}] * len(groups)  # each group's tally, in group order: counted, not re-read
        if len(groups) < len(read):
            _say(
                f"select: {len(read)} groups written as {len(groups)} "
                f"(consecutive groups of up to {merge_mib:g} MiB in all merged)",
                log,
                quiet,
            )
        bar = progress_bar("select", "groups", "{task.fields[rows]} rows decided", quiet=quiet)
        with bar, ThreadPoolExecutor(max_workers=SELECT_THREADS) as pool:
            task = bar.add_task("select", total=len(groups), rows=0)
            if processes:
                done = select_in_processes(src, dst, groups, where, sql, config, latents, workers)
            else:
                mask_of = _mask_for(where, sql)
                jobs = [
                    pool.submit(_select_group, src, dst, members, mask_of, text, config, latents)
                    for members in groups
                ]
                done = ((k, *job.result()) for k, job in enumerate(jobs))
            with closing(done):  # an error or Ctrl-C here stops the workers at once
                for finished, (k, group_moves, group_tally) in enumerate(done, 1):
                    carried.update({n: v for n, v in group_moves.items() if n.startswith("latents_")})
                    moves.update({n: v for n, v in group_moves.items() if not n.startswith("latents_")})
                    tallies[k] = group_tally
                    bar.update(task, advance=1, rows=sum(moves.values()))
                    if log and (finished == len(groups) or finished % max(1, len(groups) // 10) == 0):
                        log(f"select: {finished}/{len(groups)} groups, {sum(moves.values())} rows decided")
    finally:
        stop_workers(workers)  # (finished workers have exited; this reaps them)
    moves = Counter({k: v for k, v in moves.items() if v})
    manifest = json.loads(storage.read_text(storage.join(src, "manifest.json")))
    manifest.setdefault("counts", {})["groups"] = len(groups)  # this run's groups (merged ones count once)
    kind = "where" if where is not None else "sql"
    manifest["select"] = {
        "source": str(src),
        kind: text,
        "moves": dict(sorted(moves.items())),
        "groups_read": len(read),
        "groups_written": len(groups),
    }
    if latents:
        kinds = ("latents_rows", "latents_rows_dropped", "latents_clips_missing", "latents_groups_incomplete")
        manifest["select"]["latents"] = {"models": sorted(latents), **{k: carried[k] for k in kinds}}
        _say(
            f"select: cached latents of {len(latents)} model(s) carried: {carried['latents_rows']} rows "
            f"kept, {carried['latents_rows_dropped']} of clips not kept left behind; "
            f"{carried['latents_clips_missing']} newly accepted clips have none "
            f"({carried['latents_groups_incomplete']} group files marked for `vidsift encode` to redo)",
            log,
            quiet,
        )
    # the groups were written without a flush each (select's output is whole or of no use: a killed select
    # leaves no manifest); all is on the device before the manifest says the run is there: worker processes
    # flush their files behind them and exit when done, threads' files are flushed here in one pass
    if not processes:
        storage.sync_files([f for members in groups for f in group_files(dst, members[0])])
    recipe = storage.join(src, "recipe.resolved.toml")
    if storage.exists(recipe):
        storage.write_text_atomic(storage.join(dst, "recipe.resolved.toml"), storage.read_text(recipe))
    write_manifest(dst, recount(dst, manifest, tallies))
    return dict(moves)


# ------------------------------------------------------------------------------------ cached latents


def latent_files(run: Location) -> dict[str, dict[str, Location]]:
    """``{model key: {group: file}}`` of the run's cached latents (none: ``{}``)."""
    try:
        files = storage.list_files(storage.join(run, LATENTS_DIR))
    except FileNotFoundError:
        return {}
    out: dict[str, dict[str, Location]] = {}
    for f in files:
        parts = str(f).rsplit("/", 3)
        if len(parts) == 4 and parts[1] == LATENTS_DIR and parts[3].endswith(".parquet"):
            if not parts[3].startswith("."):  # a killed writer's partial file
                out.setdefault(parts[2], {})[parts[3].removesuffix(".parquet")] = f
    return out


def carry_latents(
    src: Location, dst: Location, group: str, latents: dict[str, dict[str, Location]], kept: pa.ChunkedArray,
    newly_accepted: pa.ChunkedArray,
) -> Counter:  # fmt: skip
    """Copy ``group``'s cached latents of every model from ``src`` to ``dst``, only the rows of the clips
    ``dst`` keeps (``kept`` clip ids), in the same layout: same columns, file metadata and row group size.

    A clip ``dst`` accepts that ``src`` had not (``newly_accepted``) has no cached row. A later ``vidsift
    encode`` skips a group file written with its settings, so such a file's settings get a
    ``select_missing_clips`` count: ``encode`` then sees other settings and encodes that group again, while
    ``vidsift finetune`` uses the carried rows (it checks each row, not the file's settings) and encodes
    the missing clips on the fly. Returns ``latents_*`` counts.
    """
    counts: Counter = Counter()
    kept_ids = kept.combine_chunks()
    for key, groups in latents.items():
        path = groups.get(group)
        if path is None:
            continue
        source = storage.open_parquet(path)
        md = source.metadata
        ids = source.read(columns=["clip_id"]).column("clip_id").combine_chunks()
        cached = pc.is_in(newly_accepted.combine_chunks(), value_set=ids)
        missing = len(newly_accepted) - int(pc.sum(cached).as_py() or 0)
        schema = source.schema_arrow
        meta = dict(schema.metadata or {})
        if missing and LATENTS_SETTINGS_KEY in meta:
            settings = json.loads(meta[LATENTS_SETTINGS_KEY])
            settings["select_missing_clips"] = missing
            meta[LATENTS_SETTINGS_KEY] = json.dumps(settings, sort_keys=True).encode()
            counts["latents_groups_incomplete"] += 1
        counts["latents_clips_missing"] += missing
        rows_per_group = max((md.row_group(i).num_rows for i in range(md.num_row_groups)), default=1) or 1
        compression = md.row_group(0).column(0).compression.lower() if md.num_row_groups else "zstd"
        target = storage.join(dst, LATENTS_DIR, key, f"{group}.parquet")
        storage.makedirs(storage.join(dst, LATENTS_DIR, key))
        # one row group at a time (a clip's latents are megabytes), repacked into the source's row group size
        with storage.parquet_writer_atomic(
            target, schema.with_metadata(meta), compression=compression
        ) as out:
            pending: list[pa.Table] = []
            for g in range(md.num_row_groups):
                t = source.read_row_group(g)
                t = t.filter(pc.is_in(t.column("clip_id"), value_set=kept_ids))
                counts["latents_rows"] += t.num_rows
                counts["latents_rows_dropped"] += md.row_group(g).num_rows - t.num_rows
                pending.append(t)
                while sum(p.num_rows for p in pending) >= rows_per_group or (
                    g == md.num_row_groups - 1 and sum(p.num_rows for p in pending)
                ):
                    whole = pa.concat_tables(pending).combine_chunks()
                    out.write_table(whole.slice(0, rows_per_group).replace_schema_metadata(meta))
                    pending = [whole.slice(rows_per_group)]
    return counts


# ----------------------------------------------------------------------------------------- counting


def _scan(out: Location, table: str, columns: list[str]) -> pa.Table:
    files = storage.parquet_files(storage.join(out, table))
    schema = TABLES[table]
    parts = [conform(storage.read_table(f, columns=columns), pa.schema([schema.field(c) for c in columns]))
             for f in files]  # fmt: skip
    return pa.concat_tables(parts) if parts else pa.schema([schema.field(c) for c in columns]).empty_table()


COUNTED = {  # the columns the manifest's counts come from, per table
    "clips": ["duration_s"],
    "rejected": ["reject_stage", "reject_reason"],
    "videos": ["status", "reason"],
}


def tally(clips: pa.Table, rejected: pa.Table, videos: pa.Table) -> dict:
    """What the manifest counts of these tables (``COUNTED`` columns at least), in a form that adds up over
    groups (``add_tallies``): a worker sends this, not the columns."""
    rejected_videos = videos.filter(pc.equal(videos.column("status"), "rejected"))
    return {
        "clips": clips.num_rows,
        "duration_s": float(pc.sum(clips.column("duration_s")).as_py() or 0.0),
        "rejected": _count(rejected, ["reject_stage", "reject_reason"]),
        "videos_ok": int(pc.sum(pc.equal(videos.column("status"), "ok")).as_py() or 0),
        "videos_rejected": Counter({why: n for (why,), n in _count(rejected_videos, ["reason"]).items()}),
    }


def _count(t: pa.Table, columns: list[str]) -> Counter:
    """How many rows of ``t`` have each combination of values of ``columns`` (a tuple each). A group's few
    hundred rows are counted in Python, a tenth of the cost of setting up a ``group_by``; a whole run's
    column scan by the ``group_by``."""
    if t.num_rows <= 4096:
        return Counter(zip(*(t.column(c).to_pylist() for c in columns), strict=True))
    rows = t.group_by(columns).aggregate([([], "count_all")]).to_pylist()
    return Counter({tuple(r[c] for c in columns): r["count_all"] for r in rows})


def add_tallies(tallies: list[dict]) -> dict:
    """The sum of ``tally``s."""
    total = {
        "clips": 0,
        "duration_s": 0.0,
        "rejected": Counter(),
        "videos_ok": 0,
        "videos_rejected": Counter(),
    }
    for t in tallies:  # in group order: the float sum comes out the same however the groups were run
        for key, value in t.items():
            total[key] += value
    return total


def recount(out: Location, manifest: dict, tallies: list[dict] | None = None) -> dict:
    """``manifest`` with its clip and video counts taken again from the run's files (column scans only).

    ``tallies``: the ``tally`` of every group as it was just written, in group order (``select_run`` keeps
    them), added up instead of reading the files back.
    """
    counts = dict(manifest.get("counts") or {})
    if tallies is None:
        tallies = [tally(*(_scan(out, name, columns) for name, columns in COUNTED.items()))]
    total = add_tallies(tallies)
    rejected = sum(total["rejected"].values())
    counts.update(
        candidate_clips=total["clips"] + rejected,
        clips_accepted=total["clips"],
        clips_rejected=rejected,
        clips_rejected_by_reason=dict(
            sorted((f"{stage}/{reason}", n) for (stage, reason), n in total["rejected"].items())
        ),
        accepted_hours=round(total["duration_s"] / 3600, 6),
        videos_ok=total["videos_ok"],
        videos_rejected=sum(total["videos_rejected"].values()),
        videos_rejected_by_reason=dict(sorted(total["videos_rejected"].items())),
        groups_done=len(done_groups(out)),
    )
    return {**manifest, "counts": counts}


# ------------------------------------------------------------------------------- moved: the dedup pass
