"""Dataset statistics of a curation run folder, computed by streaming over its Parquet files.

Reads ``OUT/{videos,clips,rejected}/*.parquet`` and ``OUT/manifest.json``, from a local folder or an
``s3://`` prefix (``pipeline/storage.py``); writes nothing. DuckDB
reads the ``read_parquet`` views, so only the columns a query names are read, row group by row group,
and memory stays flat as the run grows. A clip table costs two scans: one streams every numeric column
(and caption word counts, booleans) into numpy, where counts, means, quantiles and histograms come from
one pass; one ``GROUP BY GROUPING SETS`` query counts every categorical value. Quantiles are exact
(every value kept, as ``quantile_cont``) up to ``EXACT_QUANTILE_ROWS`` rows and come from a log-bucket
sketch (0.1% relative error, constant memory) above.

Columns are discovered from the files, not assumed: every numeric ``*_score`` column (plus the
analysis and media columns in ``SCORE_COLUMNS``) gets quantiles and a histogram, ``caption`` and
``caption_*`` text columns get length statistics, boolean columns count as flags, ``*_model`` and
``*_backend`` columns say which model wrote what. A column a run lacks is skipped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from vidsift.pipeline import storage
from vidsift.pipeline.schema import CLIP_COLUMNS, SCHEMA_VERSION

TABLES = ("videos", "clips", "rejected")
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
# histogram range: the tails beyond these quantiles are clamped into the edge bins, so one absurd
# sharpness value does not squash every other clip into a single bar
HIST_RANGE = (0.005, 0.995)
HIST_BINS = 40
# below this many rows exact quantiles cost at most a few MB; above it a sketch keeps memory flat
EXACT_QUANTILE_ROWS = 200_000
# the sketch's buckets: neighbours differ by 0.1%, magnitudes 1e-12..1e12 (1.8 MB per column)
SKETCH_GAMMA = 1.001
SKETCH_RANGE = (1e-12, 1e12)
STREAM_BATCH_ROWS = 65_536  # rows numpy sees at once: its per-call cost is paid per batch, not per row
TOP_N = 10
MAX_CATEGORIES = 30  # a string column with more distinct values is free text, not a category

# analysis-pass signals (from the schema, so a new cheap signal shows up here) and media columns
SCORE_COLUMNS = tuple(
    c.name for c in CLIP_COLUMNS if c.stage == "analyze" and pa.types.is_floating(c.type)
) + ("duration_s", "fps", "width", "height")
IDENTITY_COLUMNS = {"clip_id", "video_id", "source_uri", "group", "dup_of"}
REJECT_TEXT_COLUMNS = {"reject_stage", "reject_reason", "reject_detail"}


class RunError(Exception):
    """The folder is not a readable vidsift run (missing, not a run, unreadable Parquet)."""


@dataclass
class RunFolder:
    path: Path | str  # a local folder, or an ``s3://`` prefix (str)
    manifest: dict | None
    files: dict[str, list[str]]  # table -> its Parquet files (local paths or s3:// URIs)
    columns: dict[str, dict[str, pa.DataType]]  # table -> column -> Arrow type, union over files
    rows: dict[str, int]
    groups_done: int
    mixed_schemas: set[str] = field(default_factory=set)  # tables whose files differ in columns

    @property
    def remote(self) -> bool:
        return storage.is_remote(self.path)


def open_run(path: str | Path) -> RunFolder:
    """Check that ``path`` (a folder, or an ``s3://`` prefix) is a vidsift run and read its Parquet
    footers (not its data)."""
    try:
        return _open_run(path)
    except OSError as e:  # S3: no credentials, endpoint down, access denied
        raise RunError(f"{path}: cannot read the run ({e})") from None


def _open_run(path: str | Path) -> RunFolder:
    remote = storage.is_remote(path)
    out: Path | str = str(path).rstrip("/") if remote else Path(path)
    if remote:
        if not storage.list_names(out) and not storage.list_names(storage.join(out, "clips")):
            raise RunError(f"{out}: no such run folder (nothing under that prefix)")
    elif not Path(out).is_dir():
        raise RunError(f"{out}: no such run folder")
    manifest = None
    manifest_path = storage.join(out, "manifest.json")
    if storage.exists(manifest_path):
        try:
            manifest = json.loads(storage.read_text(manifest_path))
        except (OSError, ValueError) as e:
            raise RunError(f"{manifest_path}: unreadable manifest ({e})") from None
        if not isinstance(manifest, dict):
            raise RunError(f"{manifest_path}: not a vidsift manifest")
    # a run still in progress has no manifest yet, but it has its fingerprint and table folders
    if manifest is None and not storage.exists(storage.join(out, "_run.json")):
        raise RunError(f"{out}: not a vidsift run folder (no manifest.json or _run.json)")
    files: dict[str, list[str]] = {}
    columns: dict[str, dict[str, pa.DataType]] = {}
    rows: dict[str, int] = {}
    mixed: set[str] = set()
    for table in TABLES:
        files[table] = storage.parquet_files(storage.join(out, table))
        columns[table], rows[table] = {}, 0
        for f in files[table]:
            try:
                meta = storage.read_parquet_metadata(f)
                schema = meta.schema.to_arrow_schema()
            except (OSError, pa.ArrowException) as e:
                raise RunError(f"{f}: unreadable Parquet file ({e})") from None
            rows[table] += meta.num_rows
            if columns[table] and list(columns[table]) != schema.names:
                mixed.add(table)
            for fld in schema:
                columns[table].setdefault(fld.name, fld.type)
    if not any(files.values()) and manifest is None:
        raise RunError(f"{out}: not a vidsift run folder (no Parquet tables and no manifest.json)")
    done = len(storage.list_names(storage.join(out, "_done")))
    return RunFolder(out, manifest, files, columns, rows, done, mixed)


# ---------------------------------------------------------------- SQL helpers


def _q(name: str) -> str:
    """A quoted SQL identifier (column names come from the files)."""
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _num(x: Any, digits: int = 6) -> float | int | None:
    """JSON-safe number: NaN and infinities become None, floats are rounded."""
    if x is None:
        return None
    if isinstance(x, bool | int):
        return int(x)
    x = float(x)
    if not math.isfinite(x):
        return None
    return round(x, digits) if abs(x) >= 1 else float(f"{x:.{digits}g}")


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _is_str(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


class RunDb:
    """One DuckDB connection with a view per non-empty table of the run."""

    def __init__(self, run: RunFolder, memory_limit: str = "1GB") -> None:
        self.run = run
        # insertion order is never needed (aggregates, and a stream into order-free sums and counts);
        # without it DuckDB hands the stream over in large batches from both threads
        self.con = duckdb.connect(config={"memory_limit": memory_limit, "preserve_insertion_order": False})
        if run.remote:  # s3:// files, read through pyarrow's S3 client (storage.duckdb_filesystem)
            self.con.register_filesystem(storage.duckdb_filesystem())
        # DuckDB's parquet_metadata_cache would parse each footer once instead of once per query
        # (about 15% faster on bench/stats_scale.py) but holds every footer of the run in memory,
        # about 0.7 GB per million clips at 64-row row groups: memory that grows with the run
        for table in TABLES:
            if run.files[table]:
                self.con.execute(f"CREATE VIEW {table} AS SELECT * FROM {self.source(table)}")

    def source(self, table: str, virtual: bool = False) -> str:
        """The ``read_parquet`` call over a table's files; ``virtual`` adds filename and file_row_number."""
        paths = ", ".join(_lit(storage.duckdb_path(p)) for p in self.run.files[table])
        extra = ", filename = true, file_row_number = true" if virtual else ""
        # union_by_name reads every file's schema at every bind: only when the files differ
        if table in self.run.mixed_schemas:
            extra += ", union_by_name = true"
        return f"read_parquet([{paths}]{extra})"

    def has(self, table: str, *cols: str) -> bool:
        return bool(self.run.files[table]) and all(c in self.run.columns[table] for c in cols)

    def rows(self, sql: str) -> list[tuple]:
        try:
            return self.con.execute(sql).fetchall()
        except duckdb.Error as e:
            raise RunError(
                f"{self.run.path}: cannot read the Parquet tables ({str(e).splitlines()[0]})"
            ) from None

    def aggregate(self, table: str, exprs: dict[str, str]) -> dict[str, Any]:
        """One scan computing every named expression; {} for an empty or missing table."""
        if not exprs or not self.run.files[table]:
            return {}
        sql = ", ".join(f"{e} AS {_q(k)}" for k, e in exprs.items())
        (row,) = self.rows(f"SELECT {sql} FROM {table}")
        return dict(zip(exprs, row, strict=True))


# ---------------------------------------------------------------- column discovery


def score_columns(types: dict[str, pa.DataType]) -> list[str]:
    """Numeric columns that get quantiles and a histogram, in a stable order."""
    named = [c for c in SCORE_COLUMNS if c in types]
    scores = sorted(c for c in types if c.endswith("_score"))
    return [c for c in scores + named if _is_numeric(types[c])]


def caption_columns(types: dict[str, pa.DataType]) -> list[str]:
    return [
        c
        for c in types
        if (c == "caption" or c.startswith("caption_"))
        and not c.endswith(("_model", "_backend"))
        and _is_str(types[c])
    ]


def model_columns(types: dict[str, pa.DataType]) -> list[str]:
    return [c for c in types if c.endswith(("_model", "_backend")) and _is_str(types[c])]


def flag_columns(types: dict[str, pa.DataType]) -> tuple[list[str], list[str]]:
    """Boolean columns (one flag each) and list-of-string columns of flags (``qa_flags`` style)."""
    bools = [c for c in types if pa.types.is_boolean(types[c])]
    lists = [c for c in types if "flag" in c and pa.types.is_list(types[c]) and _is_str(types[c].value_type)]
    return bools, lists


def category_columns(types: dict[str, pa.DataType]) -> list[str]:
    """String columns that may be categorical (cut kinds, structured caption fields, ...)."""
    skip = IDENTITY_COLUMNS | REJECT_TEXT_COLUMNS | set(caption_columns(types)) | set(model_columns(types))
    return [c for c in types if _is_str(types[c]) and c not in skip]


# ---------------------------------------------------------------- statistics


_ASPECTS = {
    "16:9": 16 / 9,
    "9:16": 9 / 16,
    "4:3": 4 / 3,
    "3:4": 3 / 4,
    "1:1": 1.0,
    "21:9": 64 / 27,
    "3:2": 1.5,
}


class _Distribution:
    """Count, sum, min and max of one numeric column, fed a batch of non-null values at a time.

    Subclasses keep what quantiles and histograms are computed from, handed out by ``points()`` as
    ascending values with a count each."""

    def __init__(self) -> None:
        self.n = 0
        self.sum = 0.0
        self.min = math.nan
        self.max = -math.inf

    def add(self, v: np.ndarray) -> None:
        if not len(v):
            return
        # DuckDB orders NaN above every number: min skips NaN (fmin), max is NaN if any value is
        self.min = float(np.fmin(self.min, np.fmin.reduce(v)))
        self.max = float(np.maximum(self.max, v.max()))
        self.n += len(v)
        self.sum += float(v.sum())
        self._keep(v)

    def _keep(self, v: np.ndarray) -> None:
        pass  # count, sum, min and max only

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError(f"{type(self).__name__} keeps no values")


class _ExactValues(_Distribution):
    """Every value: for tables up to ``EXACT_QUANTILE_ROWS`` rows (8 bytes a value, as ``quantile_cont``)."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[np.ndarray] = []

    def _keep(self, v: np.ndarray) -> None:
        self.chunks.append(v.astype(np.float64, copy=False))

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        values = np.sort(np.concatenate(self.chunks))  # NaN sorts last, as in DuckDB
        return values, np.ones(len(values), np.int64)


class _IntCounts(_Distribution):
    """Exact counts of small non-negative integers (caption word counts): one counter per value."""

    def __init__(self) -> None:
        super().__init__()
        self.counts = np.zeros(0, np.int64)

    def _keep(self, v: np.ndarray) -> None:
        c = np.bincount(v.astype(np.int64))
        if len(c) > len(self.counts):
            self.counts = np.pad(self.counts, (0, len(c) - len(self.counts)))
        self.counts[: len(c)] += c

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        (values,) = np.nonzero(self.counts)
        return values.astype(np.float64), self.counts[values]


class _LogSketch(_Distribution):
    """Counts and sums in log-spaced buckets (the DDSketch idea): constant memory, any row count.

    A value v > 0 falls in bucket ``ceil(log(v) / log(SKETCH_GAMMA))``, negatives mirror that and 0 and
    NaN have a bucket each; a bucket stands for the mean of its values, which is within
    ``SKETCH_GAMMA - 1`` (0.1%) of each of them, and exact when they are all equal (integers, repeated
    values). Magnitudes outside ``SKETCH_RANGE`` share the edge buckets."""

    _LN = math.log(SKETCH_GAMMA)
    _LO = math.floor(math.log(SKETCH_RANGE[0]) / _LN)
    _SIDE = math.ceil(math.log(SKETCH_RANGE[1]) / _LN) - _LO + 1  # buckets per sign

    def __init__(self) -> None:
        super().__init__()
        # [negatives, most negative first | 0 | positives | NaN]
        self.counts = np.zeros(2 * self._SIDE + 2, np.int64)
        self.sums = np.zeros(2 * self._SIDE + 2)

    def _keep(self, v: np.ndarray) -> None:
        with np.errstate(divide="ignore", invalid="ignore"):
            k = np.ceil(np.log(np.abs(v)) / self._LN) - self._LO
        k = np.clip(np.nan_to_num(k, nan=0.0, posinf=self._SIDE - 1, neginf=0.0), 0, self._SIDE - 1)
        k = k.astype(np.int64)
        k = np.where(v > 0, self._SIDE + 1 + k, self._SIDE - 1 - k)
        k[v == 0] = self._SIDE
        k[np.isnan(v)] = 2 * self._SIDE + 1
        self.counts += np.bincount(k, minlength=len(self.counts))
        self.sums += np.bincount(k, weights=v, minlength=len(self.sums))

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        (idx,) = np.nonzero(self.counts)
        with np.errstate(invalid="ignore"):
            return self.sums[idx] / self.counts[idx], self.counts[idx]


def _quantiles(values: np.ndarray, counts: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """``quantile_cont`` over values that each occur ``counts`` times: interpolate between the two
    values around position (n - 1) * q of the sorted data."""
    cum = np.cumsum(counts)
    pos = (cum[-1] - 1) * np.asarray(qs)
    below = np.floor(pos)
    a = values[np.searchsorted(cum, below, side="right")]
    b = values[np.searchsorted(cum, np.minimum(below + 1, cum[-1] - 1), side="right")]
    frac = pos - below
    with np.errstate(invalid="ignore"):
        return np.where(frac == 0, a, a + (b - a) * frac)


def _histogram(values: np.ndarray, counts: np.ndarray, lo: float, hi: float, bins: int) -> list[int]:
    """Counts in ``bins`` equal bins over [lo, hi]; values beyond (and NaN, last) go in the edge bins."""
    width = (hi - lo) / bins if hi > lo else 1.0
    with np.errstate(invalid="ignore"):
        b = np.floor((values - lo) / width)
    b = np.where(np.isnan(b), bins - 1, np.clip(b, 0, bins - 1)).astype(np.int64)
    return [int(x) for x in np.bincount(b, weights=counts, minlength=bins)]


def _summary(d: _Distribution, total: int, integer: bool) -> dict | None:
    """Count, nulls, mean, min, quantiles, max and histogram of a distribution; None if it is empty."""
    if not d.n:
        return None
    values, counts = d.points()
    q = _quantiles(values, counts, (HIST_RANGE[0], *QUANTILES, HIST_RANGE[1]))
    lo, hi = float(q[0]), float(q[-1])
    if hi <= lo:  # (nearly) constant: one bin over [min, max]
        lo, hi = d.min, d.max
    ext = (int(d.min), int(d.max)) if integer else (d.min, d.max)
    return {
        "count": d.n,
        "nulls": total - d.n,
        "mean": _num(d.sum / d.n),
        "min": _num(ext[0]),
        **{f"p{round(p * 100)}": _num(v) for p, v in zip(QUANTILES, q[1:-1], strict=True)},
        "max": _num(ext[1]),
        "hist": {
            "lo": _num(lo),
            "hi": _num(hi),
            "bins": HIST_BINS,
            "counts": _histogram(values, counts, lo, hi, HIST_BINS),
        },
    }


def _words_sql(col: str) -> str:
    """Words of a caption: spaces + 1 of the trimmed text (captions are single-spaced prose; far cheaper
    than a regex split). Only text with a space at either end pays for ``trim``."""
    c, t = _q(col), f"trim({_q(col)})"

    def spaces(x: str) -> str:
        return f"strlen({x}) - strlen(replace({x}, ' ', ''))"

    return (
        f"CASE WHEN {c} = '' THEN 0 "
        f"WHEN NOT (starts_with({c}, ' ') OR suffix({c}, ' ')) THEN {spaces(c)} + 1 "
        f"WHEN {t} = '' THEN 0 ELSE {spaces(t)} + 1 END"
    )


def _stream(db: RunDb, table: str, columns: dict[str, tuple[str, _Distribution | None]]) -> dict[str, int]:
    """ONE scan of ``table`` feeding every column expression to its distribution, in batches.

    ``columns``: name -> (SQL expression, distribution; None for a boolean whose true and false rows are
    counted). Returns the boolean counts as {"name:t": n, "name:f": n}."""
    if not columns:
        return {}
    names = list(columns)
    sql = ", ".join(f"{e} AS {_q(n)}" for n, (e, _) in columns.items())
    bools = {n: [0, 0] for n, (_, d) in columns.items() if d is None}
    pending: list[pa.RecordBatch] = []

    def consume() -> None:
        batch = pa.Table.from_batches(pending)
        pending.clear()
        for i, name in enumerate(names):
            col = batch.column(i)
            if col.null_count == len(col):
                continue
            v = col.drop_null().to_numpy() if col.null_count else col.to_numpy()
            d = columns[name][1]
            if d is None:
                t = int(np.count_nonzero(v))
                bools[name][0] += t
                bools[name][1] += len(v) - t
            else:
                d.add(v)

    try:
        # batches may follow the Parquet row groups (64 rows as write_shards writes them): numpy
        # gets them gathered into STREAM_BATCH_ROWS
        rows = 0
        for b in db.con.sql(f"SELECT {sql} FROM {table}").to_arrow_reader(STREAM_BATCH_ROWS):
            pending.append(b)
            rows += b.num_rows
            if rows >= STREAM_BATCH_ROWS:
                consume()
                rows = 0
        if pending:
            consume()
    except duckdb.Error as e:
        raise RunError(f"{db.run.path}: cannot read the Parquet tables ({str(e).splitlines()[0]})") from None
    return {f"{n}:{k}": c[i] for n, c in bools.items() for i, k in enumerate("tf")}


def _top(counts: dict | None, n: int = TOP_N) -> list[dict]:
    items = sorted((counts or {}).items(), key=lambda kv: (-kv[1], str(kv[0])))
    return [{"value": k, "clips": v} for k, v in items[:n]]


def _grouped_counts(
    db: RunDb, table: str, keys: dict[str, tuple[str, int, bool]], dur: str
) -> dict[str, dict]:
    """Value counts of several key expressions in ONE scan (``GROUP BY GROUPING SETS``).

    ``keys``: name -> (SQL expression, most values to return, rank by summed ``dur`` instead of rows).
    Returns name -> {"values": {value: (rows, sum of dur)}, "distinct": non-null distinct values}.
    Histograms (the key is a bin number), sources, categories and rejection reasons all come from
    this one scan: every extra scan re-parses every Parquet footer, which dominates at scale."""
    if not keys:
        return {}
    names = list(keys)
    m = len(names)
    ks = [f"k{i}" for i in range(m)]
    # grouping(k0, ..., km) has a 1 bit for every key NOT in the row's grouping set, k0 the highest
    gid = {n: (1 << m) - 1 - (1 << (m - 1 - i)) for i, n in enumerate(names)}
    name_of = {g: n for n, g in gid.items()}
    limit = " ".join(f"WHEN {gid[n]} THEN {keys[n][1]}" for n in names)
    by_dur = ", ".join(str(gid[n]) for n in names if keys[n][2]) or "-1"
    cols = ", ".join(f"{keys[n][0]} AS {k}" for n, k in zip(names, ks, strict=True))
    klist = ", ".join(ks)
    sql = (
        f"SELECT g, {klist}, n, d, count(*) OVER (PARTITION BY g) FROM ("
        f"SELECT grouping({klist}) AS g, {klist}, count(*) AS n, sum(_d) AS d "
        f"FROM (SELECT {cols}, {dur} AS _d FROM {table}) "
        f"GROUP BY GROUPING SETS ({', '.join(f'({k})' for k in ks)}) "
        f"HAVING {' OR '.join(f'{k} IS NOT NULL' for k in ks)}) "  # drop each key's group of nulls
        f"QUALIFY row_number() OVER (PARTITION BY g ORDER BY CASE WHEN g IN ({by_dur}) THEN d ELSE n END "
        f"DESC NULLS LAST, n DESC) <= CASE g {limit} END"
    )
    out: dict[str, dict] = {n: {"values": {}, "distinct": 0} for n in names}
    for row in db.rows(sql):
        name = name_of[row[0]]
        value = row[1 + names.index(name)]
        out[name]["distinct"] = row[-1]
        out[name]["values"][tuple(value) if isinstance(value, list) else value] = (row[-3], row[-2])
    return out


def _counts(grouped: dict) -> dict:
    return {k: n for k, (n, _) in grouped["values"].items()}


def _table_stats(db: RunDb, table: str, details: bool) -> dict:
    """Scores (and with ``details`` captions, flags, categories, models, media, sources) of a clip
    table, plus rejection reasons for the rejected table.

    Two scans: one stream of every numeric column, caption word and character counts and boolean into
    numpy (counts, means, quantiles, histograms: no second pass for the histograms' bins), and one
    ``_grouped_counts`` scan for every value count."""
    run = db.run
    types, total = run.columns[table], run.rows[table]
    out: dict[str, Any] = {"scores": {}, "captions": {}, "flags": {}, "categories": {}, "models": {}}
    out |= {"media": {}, "sources": {}, "reasons": []}
    if not run.files[table]:
        return out
    dist = _ExactValues if total <= EXACT_QUANTILE_ROWS else _LogSketch
    scores = {c: dist() for c in score_columns(types)}
    captions = caption_columns(types) if details else []
    bools, flag_lists = flag_columns(types) if details else ([], [])
    cats = category_columns(types) if details else []
    models = model_columns(types) if details else []
    stream: dict[str, tuple[str, _Distribution | None]] = {
        f"s:{c}": (f"{_q(c)}::DOUBLE", d) for c, d in scores.items()
    }
    words = {c: _IntCounts() for c in captions}
    chars = {c: _Distribution() for c in captions}
    for c in captions:
        stream[f"w:{c}"] = (_words_sql(c), words[c])
        stream[f"c:{c}"] = (f"length({_q(c)})", chars[c])
    for c in bools:
        stream[f"b:{c}"] = (_q(c), None)
    if "dup_of" in types:
        stream["dup_of"] = ("dup_of IS NOT NULL", None)
    if "reject_reason" in types:
        stream["dup_reason"] = ("reject_reason ILIKE '%dup%'", None)
    counted = _stream(db, table, stream)

    for c, d in scores.items():
        summary = _summary(d, total, pa.types.is_integer(types[c]))
        if summary is not None:
            out["scores"][c] = summary
    if "dup_of" in types:
        out["dup_of"] = counted["dup_of:t"]
    if "reject_reason" in types:
        out["rejected_as_duplicate"] = counted["dup_reason:t"]
    if "duration_s" in scores:
        out["hours"] = scores["duration_s"].sum / 3600

    keys: dict[str, tuple[str, int, bool]] = {}
    # every string column is grouped; only those with at most MAX_CATEGORIES values are shown
    for c in cats:
        keys[f"cat:{c}"] = (_q(c), TOP_N, False)
    for c in models:
        keys[f"model:{c}"] = (_q(c), TOP_N, False)
    for c in flag_lists:
        keys[f"flags:{c}"] = (f"list_sort({_q(c)})", 10_000, False)
    if details and "width" in types and "height" in types:
        # every resolution comes back (the aspect ratios sum over all of them); there are few in practice
        keys["res"] = ("CASE WHEN width > 0 AND height > 0 THEN [width, height] END", 100_000, False)
    if details and "fps" in types:
        keys["fps"] = ("round(fps, 3)", TOP_N, False)
    if details and "source_uri" in types:
        keys["sources"] = ("source_uri", TOP_N, True)
    if "reject_stage" in types and "reject_reason" in types:
        keys["reasons"] = ("[reject_stage, reject_reason]", 10_000, True)
    if table == "rejected" and "start_s" in types and "end_s" in types:
        dur = "end_s - start_s"
    else:
        dur = "duration_s" if "duration_s" in types else "NULL::DOUBLE"
    grouped = _grouped_counts(db, table, keys, dur)
    if "reasons" in grouped:
        out["reasons"] = [
            {"stage": k[0], "reason": k[1], "clips": n, "hours": _num((d or 0.0) / 3600)}
            for k, (n, d) in sorted(grouped["reasons"]["values"].items(), key=lambda kv: (-kv[1][0], kv[0]))
        ]
    if not details:
        return out

    for c in captions:
        present = words[c].n - int(words[c].counts[:1].sum())  # non-null, and not empty once trimmed
        out["captions"][c] = {
            "present": present,
            "missing_or_empty": total - present,
            "mean_chars": _num(chars[c].sum / chars[c].n) if chars[c].n else None,
            "words": _summary(words[c], total, integer=True),
        }
    for c in bools:
        t, f = counted[f"b:{c}:t"], counted[f"b:{c}:f"]
        out["flags"][c] = {"true": t, "false": f, "null": total - t - f}
    for c in flag_lists:
        per_flag: dict[str, int] = {}
        for flags, n in _counts(grouped[f"flags:{c}"]).items():
            for flag in flags:
                per_flag[str(flag)] = per_flag.get(str(flag), 0) + n
        out["flags"][c] = dict(sorted(per_flag.items(), key=lambda kv: (-kv[1], kv[0])))
    for prefix, dest in (("cat", "categories"), ("model", "models")):
        for c in cats if prefix == "cat" else models:
            g = grouped.get(f"{prefix}:{c}")
            if g and g["values"] and (prefix == "model" or g["distinct"] <= MAX_CATEGORIES):
                out[dest][c] = {"distinct": g["distinct"], "top": _top(_counts(g))}
    if "res" in grouped:
        out["media"] |= _resolutions(_counts(grouped["res"]))
    if "fps" in grouped:
        out["media"]["fps"] = [
            {"value": _num(x["value"], 3), "clips": x["clips"]} for x in _top(_counts(grouped["fps"]))
        ]
    if "sources" in grouped:
        g = grouped["sources"]
        top = sorted(g["values"].items(), key=lambda kv: (-(kv[1][1] or 0.0), -kv[1][0], kv[0]))
        out["sources"] = {
            "sources": g["distinct"],
            "top": [{"source_uri": s, "clips": n, "hours": _num((d or 0.0) / 3600)} for s, (n, d) in top],
        }
    return out


def aspect_name(width: int, height: int) -> str:
    """The nearest common aspect ratio within 3%, else the ratio itself."""
    r = width / height
    name, ref = min(_ASPECTS.items(), key=lambda kv: abs(math.log(r / kv[1])))
    return name if abs(math.log(r / ref)) < 0.03 else f"{r:.2f}:1"


def _resolutions(res: dict[tuple[int, int], int]) -> dict:
    out = {"resolution": [{"value": f"{w}x{h}", "clips": x} for (w, h), x in _top_items(res, TOP_N)]}
    aspects: dict[str, int] = {}
    shorts: dict[str, int] = {}
    for (w, h), n in res.items():
        a = aspect_name(w, h)
        aspects[a] = aspects.get(a, 0) + n
        s = min(w, h)
        b = next((f"<={x}p" for x in (240, 360, 480, 720, 1080, 2160) if s <= x), ">2160p")
        shorts[b] = shorts.get(b, 0) + n
    out["aspect"] = _top(aspects, len(aspects))
    out["short_side"] = _top(shorts, len(shorts))
    return out


def _top_items(counts: dict, n: int) -> list[tuple]:
    return sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[:n]


def _videos(db: RunDb, run: RunFolder) -> tuple[dict, list[dict], int | None]:
    """(funnel counts from the video table, rejected videos by reason, duplicate files): one scan."""
    v = run.columns["videos"]
    readable = "analysis_decode_passes > 0" if "analysis_decode_passes" in v else "status = 'ok'"
    exprs = {"input_videos": "count(*)"}
    if "status" in v:
        exprs["videos_with_clips"] = "count(*) FILTER (WHERE status = 'ok')"
    if "analysis_decode_passes" in v or "status" in v:
        exprs["readable_videos"] = f"count(*) FILTER (WHERE {readable})"
        if "duration_s" in v:
            exprs["input_hours"] = f"coalesce(sum(duration_s) FILTER (WHERE {readable}), 0) / 3600"
    if "num_scenes" in v:
        exprs["scenes"] = "coalesce(sum(num_scenes), 0)"
    if "num_clips_accepted" in v:
        exprs["clips_accepted_per_videos"] = "coalesce(sum(num_clips_accepted), 0)"
    if "size_bytes" in v:
        exprs["input_bytes"] = "coalesce(sum(size_bytes), 0)"
    if "status" in v and "reason" in v:
        exprs["_reasons"] = "histogram(reason) FILTER (WHERE status = 'rejected')"
    if "reason" in v:
        exprs["_duplicates"] = "count(*) FILTER (WHERE reason = 'duplicate_file')"
    agg = db.aggregate("videos", exprs)
    reasons = [{"reason": x["value"], "videos": x["clips"]} for x in _top(agg.pop("_reasons", None), 10**6)]
    dups = agg.pop("_duplicates", None)
    funnel = {k: _num(x) for k, x in agg.items()}
    funnel.setdefault("input_videos", 0)
    return funnel, reasons, dups


def _manifest_models(manifest: dict | None) -> dict:
    """Model names a run recorded: a ``models`` block and any ``*model*`` key of a recipe stage."""
    if not manifest:
        return {}
    out: dict[str, Any] = {}
    if isinstance(manifest.get("models"), dict):
        out.update({str(k): v for k, v in manifest["models"].items()})
    for k, v in manifest.items():  # e.g. "captions": {"random_weights": true, ...}
        if isinstance(v, dict) and "random_weights" in v:
            out[f"{k}.random_weights"] = v["random_weights"]
    recipe = manifest.get("recipe")
    stages = recipe.get("stage", []) if isinstance(recipe, dict) else []
    for s in stages if isinstance(stages, list) else []:
        if isinstance(s, dict):
            for k, v in s.items():
                if (k in ("model", "backend") or k.endswith(("_model", "_backend"))) and v not in (None, ""):
                    out[f"{s.get('name', '?')}.{k}"] = v
    return out


def compute_stats(path: str | Path) -> dict:
    """Every statistic ``vidsift stats`` shows, as one JSON-ready dict."""
    run = open_run(path)
    db = RunDb(run)
    try:
        funnel, video_reasons, dup_files = _videos(db, run)
        acc = _table_stats(db, "clips", details=True)
        rej = _table_stats(db, "rejected", details=False)
        licences = _licences(db)
    finally:
        db.con.close()
    funnel["candidate_clips"] = run.rows["clips"] + run.rows["rejected"]
    funnel["accepted_clips"] = run.rows["clips"]
    funnel["rejected_clips"] = run.rows["rejected"]
    funnel["accepted_hours"] = _num(acc.get("hours", 0.0))
    duplicates = {} if dup_files is None else {"duplicate_files": dup_files}
    for key, table_stats in (("clips_with_dup_of", acc), ("rejected_with_dup_of", rej)):
        if "dup_of" in table_stats:
            duplicates[key] = table_stats["dup_of"]
    if "rejected_as_duplicate" in rej:
        duplicates["rejected_as_duplicate"] = rej["rejected_as_duplicate"]
    schema_version = (run.manifest or {}).get("schema_version")
    return {
        "run": {
            "path": str(run.path),
            "schema_version": schema_version,
            "schema_version_known": schema_version in (None, SCHEMA_VERSION),
            "files": {t: len(run.files[t]) for t in TABLES},
            "rows": dict(run.rows),
            "groups_done": run.groups_done,
            "quantiles": "exact" if max(run.rows.values()) <= EXACT_QUANTILE_ROWS else "approx",
        },
        "funnel": funnel,
        "checks": _checks(run, funnel),
        "rejections": {"videos": video_reasons, "clips": rej["reasons"]},
        "scores": {"accepted": acc["scores"], "rejected": rej["scores"]},
        "media": acc["media"],
        "captions": acc["captions"],
        "flags": acc["flags"],
        "categories": acc["categories"],
        "duplicates": duplicates,
        "sources": acc["sources"],
        "licences": licences,
        "models": {"columns": acc["models"], "manifest": _manifest_models(run.manifest)},
        "stage_seconds": (run.manifest or {}).get("stage_seconds", {}),
    }


def _licences(db: RunDb) -> dict:
    """Accepted clips and input videos per ``licence`` of their input list row (``source_meta``); rows
    without one count as ``unknown``. ``{}`` for a run without ``source_meta`` (not from a list)."""
    out = {}
    # a run not made from an input list has no source_meta in any video row (every clip's comes from its
    # video's): one look at the small video table spares a scan of the clip table
    if not db.has("videos", "source_meta") or not db.rows("SELECT count(source_meta) FROM videos")[0][0]:
        return out
    spellings = ", ".join(f"json_extract_string(source_meta, '$.{k}')" for k in ("licence", "license"))
    for key, table in (("clips", "clips"), ("videos", "videos")):
        if not db.has(table, "source_meta"):
            continue
        lic = f"COALESCE({spellings}, 'unknown')"
        rows = db.rows(f"SELECT {lic} AS l, count(*) FROM {table} GROUP BY l ORDER BY l")
        out[key] = {str(k): int(n) for k, n in rows}
    return out if any(k != "unknown" for counts in out.values() for k in counts) else {}


def _checks(run: RunFolder, funnel: dict) -> list[dict]:
    """The counts must add up (DESIGN: nothing is lost); each check says whether they do."""
    checks = []
    if "scenes" in funnel:
        checks.append(
            {
                "check": "candidate clips = accepted + rejected",
                "ok": funnel["scenes"] == funnel["candidate_clips"],
                "detail": f"{funnel['scenes']} scenes in videos/, "
                f"{funnel['accepted_clips']} + {funnel['rejected_clips']} rows in clips/ + rejected/",
            }
        )
    if "clips_accepted_per_videos" in funnel:
        checks.append(
            {
                "check": "videos' num_clips_accepted = clip rows",
                "ok": funnel["clips_accepted_per_videos"] == funnel["accepted_clips"],
                "detail": f"{funnel['clips_accepted_per_videos']} vs {funnel['accepted_clips']}",
            }
        )
    counts = (run.manifest or {}).get("counts")
    if isinstance(counts, dict):
        if "groups" in counts:
            checks.append(
                {
                    "check": "every group finished",
                    "ok": run.groups_done >= counts["groups"],
                    "detail": f"{run.groups_done} of {counts['groups']} groups done",
                }
            )
        for key, ours in (("clips_accepted", "accepted_clips"), ("clips_rejected", "rejected_clips")):
            if key in counts:
                checks.append(
                    {
                        "check": f"manifest {key} = rows",
                        "ok": counts[key] == funnel[ours],
                        "detail": f"manifest {counts[key]}, tables {funnel[ours]}",
                    }
                )
    return checks


# ---------------------------------------------------------------- comparing two runs


def compare_stats(a: dict, b: dict) -> dict:
    """What changed from run A to run B: funnel counts, rejection reasons, score medians and means."""
    counts = []
    for k in dict.fromkeys([*a["funnel"], *b["funnel"]]):
        va, vb = a["funnel"].get(k), b["funnel"].get(k)
        delta = _num(vb - va) if isinstance(va, int | float) and isinstance(vb, int | float) else None
        counts.append({"name": k, "a": va, "b": vb, "delta": delta})

    def reasons(s: dict) -> dict[str, int]:
        r = {f"video/{x['reason']}": x["videos"] for x in s["rejections"]["videos"]}
        r |= {f"clip/{x['stage']}/{x['reason']}": x["clips"] for x in s["rejections"]["clips"]}
        return r

    ra, rb = reasons(a), reasons(b)
    reason_rows = [
        {"reason": k, "a": ra.get(k, 0), "b": rb.get(k, 0), "delta": rb.get(k, 0) - ra.get(k, 0)}
        for k in sorted(set(ra) | set(rb))
    ]
    sa, sb = a["scores"]["accepted"], b["scores"]["accepted"]
    score_rows = []
    for c in [*sa, *(c for c in sb if c not in sa)]:
        da, dbb = sa.get(c), sb.get(c)
        row: dict[str, Any] = {"column": c}
        for key in ("count", "p50", "mean"):
            row[f"a_{key}"] = da[key] if da else None
            row[f"b_{key}"] = dbb[key] if dbb else None
        both = da is not None and dbb is not None
        row["median_shift"] = _num(dbb["p50"] - da["p50"]) if both else None
        row["mean_shift"] = _num(dbb["mean"] - da["mean"]) if both and da["mean"] is not None else None
        score_rows.append(row)
    return {
        "a": a["run"]["path"],
        "b": b["run"]["path"],
        "counts": counts,
        "reasons": reason_rows,
        "scores": score_rows,
        "columns_only_in_a": sorted(set(sa) - set(sb)),
        "columns_only_in_b": sorted(set(sb) - set(sa)),
    }


SCORE_SHIFT_HEADER = ["score", "median A", "median B", "shift", "mean A", "mean B", "shift"]


def score_shift_rows(comparison: dict) -> list[list]:
    """Rows of the score-shift table of ``compare_stats`` (terminal and HTML show the same)."""
    keys = ("column", "a_p50", "b_p50", "median_shift", "a_mean", "b_mean", "mean_shift")
    return [[x[k] for k in keys] for x in comparison["scores"]]
