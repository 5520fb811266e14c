"""Where a run's inputs and outputs live: local paths (NFS is a local path) or S3-compatible storage.

Every file a curation run lists, reads or writes goes through here, on ``pyarrow.fs``. A location
is a plain string (or ``Path``): ``s3://bucket/prefix/...`` is object storage, anything else is a
local path. S3 settings come from the standard AWS environment variables
(``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, ``AWS_REGION`` or ``AWS_DEFAULT_REGION``,
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, else the AWS SDK's usual
chain: profile, instance or pod role); a recipe's ``run.s3_endpoint_url``/``run.s3_region`` are
exported as those variables for the run (``s3_environment``). Credentials never go in a recipe:
the resolved recipe is written next to the output.

- Reading a video: PyAV and the analysis pass want a seekable local file, and a source is read
  three times (hash, analysis, transcode). ``local_file`` streams a remote object in 8 MiB
  chunks into one temporary file in ``spool_dir`` (memory stays flat whatever the size), yields
  its path and deletes it afterwards; a local input is used in place. So a worker holds at most
  one spooled source per video task on local disk, never a source in memory.
- Querying: DuckDB (``vidsift stats``) reads a run on S3 through ``duckdb_filesystem``, this
  module's pyarrow S3 filesystem behind fsspec under the ``vss3://`` scheme (``duckdb_path``), so
  it uses the same AWS settings, ranged reads and no DuckDB extension (httpfs needs a download).
- Writing: ``write_table_atomic``/``write_text_atomic`` write ``.<name>.tmp-<pid>`` next to the
  target and then move it into place. Locally that is a rename; on S3, where a PUT is never
  visible half-written, the move is a server-side copy plus delete, so the final key appears
  whole or not at all. Completion markers are written after a group's tables, so a marker
  always means "all files of this group are complete".
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

SCHEME = "s3://"
CHUNK = 8 << 20  # bytes per read when streaming an object to a local spool file
# the variables that configure S3 access; forwarded to the workers that read inputs
AWS_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
)

Location = str | Path


def is_remote(location: Location) -> bool:
    return str(location).startswith(SCHEME)


def join(base: Location, *parts: str) -> str:
    """``base/part/...`` for a path or an ``s3://`` URI."""
    if is_remote(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return str(Path(base, *parts))


def name(location: Location) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1]


@lru_cache(maxsize=8)
def _s3(endpoint: str, region: str) -> pafs.S3FileSystem:
    options: dict = {}
    if endpoint:
        options["endpoint_override"] = endpoint  # http://host:port or https://host
    if region:
        options["region"] = region
    return pafs.S3FileSystem(**options)


def filesystem(location: Location) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of ``location`` and the path inside it."""
    if is_remote(location):
        env = os.environ
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or ""
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or ""
        return _s3(endpoint, region), str(location)[len(SCHEME) :].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(location)


def s3_environment(endpoint_url: str = "", region: str = "") -> dict[str, str]:
    """The AWS variables a run's workers need: this process's, with the recipe's values on top."""
    env = {k: os.environ[k] for k in AWS_VARIABLES if os.environ.get(k)}
    if endpoint_url:
        env["AWS_ENDPOINT_URL_S3"] = endpoint_url
    if region:
        env["AWS_REGION"] = region
    return env


def list_files(location: Location) -> dict[str, int]:
    """``{uri: size}`` of every file under ``location`` (or ``location`` itself), sorted by uri.

    Local paths keep the names the user gave (absolute, symlinks not resolved). Raises
    ``FileNotFoundError`` when nothing is there.
    """
    if not is_remote(location):
        p = Path(location)
        if p.is_file():
            return {str(p.absolute()): p.stat().st_size}
        if not p.is_dir():
            raise FileNotFoundError(location)
        files = sorted(str(f.absolute()) for f in p.rglob("*") if f.is_file())
        return {f: os.path.getsize(f) for f in files}
    fs, path = filesystem(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return {SCHEME + path: info.size}
    # on object storage a "folder" is a prefix: the selector finds keys even without a folder marker
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    files = {SCHEME + i.path: i.size for i in infos if i.type == pafs.FileType.File}
    if not files and info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(str(location))
    return dict(sorted(files.items()))


def exists(location: Location) -> bool:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def size(location: Location) -> int:
    if not is_remote(location):
        return os.path.getsize(location)
    fs, path = filesystem(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(str(location))
    return info.size


@contextmanager
def open_input(location: Location) -> Iterator[BinaryIO]:
    """A seekable binary reader (a local file, or a ranged-GET reader on object storage)."""
    if not is_remote(location):
        with open(location, "rb") as f:
            yield f
        return
    fs, path = filesystem(location)
    with fs.open_input_file(path) as f:
        yield f


@contextmanager
def local_file(location: Location, spool_dir: str = "") -> Iterator[str]:
    """A local path to read ``location`` from: the path itself, or a spooled copy deleted afterwards.

    Raises ``FileNotFoundError`` for a missing object and ``OSError`` when the spool folder has
    no room for it (checked before copying, so a full disk is a clear message, not a torn file).
    """
    if not is_remote(location):
        yield str(location)
        return
    fs, path = filesystem(location)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"no such object: {location}")
    folder = spool_dir or tempfile.gettempdir()
    os.makedirs(folder, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if info.size > free:
        raise OSError(f"spool folder {folder} has {free} bytes free, the object has {info.size}")
    suffix = os.path.splitext(path)[1][:16]
    fd, tmp = tempfile.mkstemp(prefix="vidsift-spool-", suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as out, fs.open_input_stream(path) as src:
            while chunk := src.read(CHUNK):
                out.write(chunk)
        yield tmp
    finally:
        os.unlink(tmp)


def makedirs(location: Location) -> None:
    fs, path = filesystem(location)
    fs.create_dir(path, recursive=True)  # a no-op on object storage, where folders are prefixes


def _tmp(path: str) -> str:
    # hidden and not ending in .parquet: no reader (glob or pyarrow dataset) picks up a partial file
    head, _, tail = path.rpartition("/")
    return f"{head}/.{tail}.tmp-{os.getpid()}"


def _fsync_local(fs: pafs.FileSystem, path: str) -> None:
    """On a local disk (or NFS), flush a file or a folder's entries to the device: data is durable before
    the marker that says it is there (an object store's put is durable when it returns)."""
    if not isinstance(fs, pafs.LocalFileSystem):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(fs: pafs.FileSystem, tmp: str, path: str, sync: bool = True) -> None:
    """Move ``tmp`` to ``path``. ``sync`` False: without flushing either to the device (the caller flushes
    everything it wrote at once with ``sync_files`` before anything says it is there)."""
    try:
        if sync:
            _fsync_local(fs, tmp)
        fs.move(tmp, path)  # local: rename (atomic); S3: copy to the final key, then delete tmp
    except BaseException:
        fs.delete_file(tmp)
        raise
    if sync:
        _fsync_local(fs, os.path.dirname(path) or ".")  # the rename itself


def sync_files(locations: list[Location], threads: int = 4, folders: bool = True) -> int:
    """Flush files written with ``sync=False``, and (``folders``) the folders that hold them, to the device
    (local disks and NFS; an object store's put is durable already). Returns how many were flushed.

    One pass at the end of a job that writes a whole new output (``vidsift select``), or a thread that
    follows the writer, costs less than a flush after every file: the kernel has written most of the data
    back by then."""
    from concurrent.futures import ThreadPoolExecutor

    local = [str(x) for x in locations if not is_remote(str(x))]
    todo = [local, sorted({os.path.dirname(p) or "." for p in local}) if folders else []]
    fs = pafs.LocalFileSystem()
    for paths in todo:
        if threads <= 1:
            for path in paths:
                _fsync_local(fs, path)
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                list(pool.map(lambda p: _fsync_local(fs, p), paths))
    return sum(map(len, todo))


def write_table_atomic(table: pa.Table, location: Location, *, sync: bool = True, **parquet_options) -> None:
    fs, path = filesystem(location)
    tmp = _tmp(path)
    pq.write_table(table, tmp, filesystem=fs, **parquet_options)
    _publish(fs, tmp, path, sync)


_VARIABLE_WIDTH = (pa.types.is_binary, pa.types.is_string, pa.types.is_large_binary, pa.types.is_large_string)


def row_group_sizes(table: pa.Table, max_rows: int, max_bytes: int) -> list[int]:
    """Rows per Parquet row group for ``table``: consecutive rows until the next row would take the group
    past ``max_bytes`` of Arrow data (uncompressed; a clip's MP4 bytes dominate) or past ``max_rows``
    rows; a row larger than ``max_bytes`` is a group of its own. ``max_bytes`` 0: ``max_rows`` only."""
    n = table.num_rows
    if n == 0:
        return []
    # the buffers' total size (cheap) and nbytes (exact for a slice) can only overstate what the rows hold
    if max_bytes <= 0 or table.get_total_buffer_size() <= max_bytes or table.nbytes <= max_bytes:
        return [max_rows] * (n // max_rows) + ([n % max_rows] if n % max_rows else [])
    variable = np.zeros(n, np.int64)
    fixed = table.nbytes
    for column in table.columns:
        if any(is_type(column.type) for is_type in _VARIABLE_WIDTH):
            lengths = pc.fill_null(pc.binary_length(column), 0).to_numpy()
            variable += lengths
            fixed -= int(lengths.sum())
    ends = np.cumsum(variable + max(fixed, 0) / n)
    sizes, start, before = [], 0, 0.0
    while start < n:
        end = int(np.searchsorted(ends, before + max_bytes, side="right"))
        end = min(max(end, start + 1), start + max_rows, n)
        sizes.append(end - start)
        before, start = ends[end - 1], end
    return sizes


def write_shard_table(
    table: pa.Table,
    location: Location,
    *,
    compression: str,
    max_rows: int,
    max_bytes: int,
    small_compression: str | None = None,
    small_bytes: int = 0,
    sync: bool = True,
    **parquet_options,
) -> None:
    """``write_table_atomic`` with the shard contract's row groups (``row_group_sizes``): at most
    ``max_rows`` rows and about ``max_bytes`` of data each, so small rows share few row groups and a
    reader of clips with MP4 bytes holds a bounded amount.

    Dictionary pages only for text columns (names, paths, reasons repeat; hashes, curves, scores and
    media do not: a dictionary there is built, then dropped or kept at a cost in time and size).
    Column chunks of less than ``small_bytes`` of data use ``small_compression`` (``column_codecs``).
    ``sync``: as ``write_table_atomic``'s.
    """
    parquet_options.setdefault(
        "use_dictionary",
        [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)],
    )
    sizes = row_group_sizes(table, max_rows, max_bytes)
    codecs = column_codecs(table, len(sizes), compression, small_compression, small_bytes)
    write_row_groups_atomic(table, location, sizes, sync=sync, compression=codecs, **parquet_options)


def column_codecs(
    table: pa.Table, row_groups: int, compression: str, small_compression: str | None, small_bytes: int
) -> str | dict[str, str]:
    """The codec of each Parquet column of ``table``: ``compression``, except ``small_compression`` for a
    column whose data per row group (Arrow bytes, uncompressed) is under ``small_bytes``.

    Why: Arrow's zstd (and gzip) sets up a fresh compressor for every column chunk it writes, and a
    decompressor for every one it reads, about 25 us each. A group file of a few hundred rows has 85
    column chunks of a few KiB, so that setup was half the CPU of writing and reading shards
    (docs/benchmarks.md, issue 16). Snappy has no such setup; on chunks that small zstd saves little.
    """
    if small_compression in (None, compression) or small_bytes <= 0 or compression not in ("zstd", "gzip"):
        return compression
    per_group = max(1, row_groups)
    codecs: dict[str, str] = {}
    for (paths, width), column in zip(_leaf_columns(table.schema), table.columns, strict=True):
        size = table.num_rows * width if width else column.get_total_buffer_size()  # cheap; may overstate
        codec = compression if size / per_group >= small_bytes else small_compression
        for path in paths:
            codecs[path] = codec
    return codecs


@lru_cache(maxsize=32)
def _leaf_columns(schema: pa.Schema) -> list[tuple[list[str], int]]:
    """Per top-level field: its Parquet leaf column paths as pyarrow's writer names them (a list ``x`` is
    ``x.list.element``; read from an empty file of ``schema`` written once), and its bytes per value if
    that is fixed (else 0)."""
    import io

    buffer = io.BytesIO()
    pq.write_table(schema.empty_table(), buffer)
    parquet_schema = pq.ParquetFile(pa.BufferReader(buffer.getvalue())).schema
    paths: dict[str, list[str]] = {}
    for i in range(len(parquet_schema)):
        path = parquet_schema.column(i).path
        paths.setdefault(path.split(".", 1)[0], []).append(path)
    fixed = (pa.types.is_integer, pa.types.is_floating, pa.types.is_temporal)
    return [
        (
            paths.get(f.name, [f.name]),
            f.type.bit_width // 8 if any(is_type(f.type) for is_type in fixed) else 0,
        )
        for f in schema
    ]


def write_row_groups_atomic(
    table: pa.Table, location: Location, sizes: list[int], *, sync: bool = True, **parquet_options
) -> None:
    """``write_table_atomic`` with row groups of exactly ``sizes`` rows (in order; they sum to the rows)."""
    if sum(sizes) != table.num_rows:
        raise ValueError(f"row group sizes sum to {sum(sizes)}, the table has {table.num_rows} rows")
    if len(set(sizes[:-1])) <= 1 and (not sizes or sizes[-1] <= sizes[0]):  # one size: a plain write
        write_table_atomic(table, location, sync=sync, row_group_size=max(sizes or [1]), **parquet_options)
        return
    with parquet_writer_atomic(location, table.schema, sync=sync, **parquet_options) as writer:
        start = 0
        for size in sizes:
            writer.write_table(table.slice(start, size), row_group_size=size)
            start += size


@contextmanager
def parquet_writer_atomic(
    location: Location, schema: pa.Schema, *, sync: bool = True, **parquet_options
) -> Iterator[pq.ParquetWriter]:
    """A ``ParquetWriter`` on a temporary name, moved into place when the block ends without an error (the
    temporary file is removed when it raises): for files written a row group at a time."""
    fs, path = filesystem(location)
    tmp = _tmp(path)
    try:
        with pq.ParquetWriter(tmp, schema, filesystem=fs, **parquet_options) as writer:
            yield writer
    except BaseException:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_file(tmp)
        raise
    _publish(fs, tmp, path, sync)


def write_bytes_atomic(location: Location, data: bytes) -> None:
    fs, path = filesystem(location)
    tmp = _tmp(path)
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    _publish(fs, tmp, path)


def write_text_atomic(location: Location, text: str) -> None:
    write_bytes_atomic(location, text.encode())


def read_text(location: Location) -> str:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def touch(location: Location, sync: bool = True) -> None:
    """An empty file: a completion marker (on a local disk, durable when this returns, unless ``sync`` is
    False: see ``_publish``)."""
    fs, path = filesystem(location)
    with fs.open_output_stream(path):
        pass
    if sync:
        _fsync_local(fs, os.path.dirname(path) or ".")


def list_names(location: Location) -> list[str]:
    """Names of the files directly inside a folder (prefix), sorted; none if it does not exist."""
    fs, path = filesystem(location)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)


def remove_partial_files(location: Location) -> int:
    """Delete the ``.<name>.tmp-<pid>`` files a killed writer left anywhere under ``location``."""
    fs, path = filesystem(location)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    stale = [i.path for i in infos if i.type == pafs.FileType.File and _is_partial(i.base_name)]
    for p in stale:
        fs.delete_file(p)
    return len(stale)


def remove_tree(location: Location) -> None:
    """Delete a folder (every key under a prefix) and what is in it; nothing if it is not there."""
    fs, path = filesystem(location)
    try:
        fs.delete_dir(path)
    except FileNotFoundError:
        pass


def _is_partial(base_name: str) -> bool:
    return base_name.startswith(".") and ".tmp-" in base_name


def parquet_files(location: Location) -> list[str]:
    """The ``*.parquet`` files directly inside a folder (prefix), sorted, as locations."""
    return [join(location, n) for n in list_names(location) if n.endswith(".parquet")]


def read_table(location: Location, columns: list[str] | None = None) -> pa.Table:
    fs, path = filesystem(location)
    return pq.read_table(path, columns=columns, filesystem=fs)


# ---------------------------------------------------------------- DuckDB over S3

DUCKDB_SCHEME = "vss3://"


def duckdb_path(location: Location) -> str:
    """The name DuckDB reads ``location`` by: ``vss3://bucket/key`` for S3 (see ``duckdb_filesystem``)."""
    return DUCKDB_SCHEME + str(location)[len(SCHEME) :] if is_remote(location) else str(location)


def from_duckdb_path(name: str) -> str:
    """The location of a file DuckDB names (its ``filename`` column): the inverse of ``duckdb_path``."""
    return SCHEME + name[len(DUCKDB_SCHEME) :] if name.startswith(DUCKDB_SCHEME) else name


class _PositionalFile:
    """A read-only object for DuckDB's fsspec bridge. DuckDB's threads share one handle and each calls
    ``seek`` then ``read``; a shared position would let one thread's seek move another's read (wrong
    bytes: "Snappy decompression failure"). Here every thread has its own position and a read is one
    positional ``read_at``, which pyarrow allows from any thread."""

    def __init__(self, f: pa.NativeFile) -> None:
        self._f, self._pos, self.size = f, threading.local(), f.size()

    def tell(self) -> int:
        return getattr(self._pos, "at", 0)

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self.tell(), self.size)[whence]
        self._pos.at = base + offset
        return self._pos.at

    def read(self, n: int = -1) -> bytes:
        at = self.tell()
        n = self.size - at if n is None or n < 0 else min(n, self.size - at)
        data = self._f.read_at(max(n, 0), at)
        self._pos.at = at + len(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> _PositionalFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def duckdb_filesystem():
    """An fsspec filesystem, for ``duckdb.DuckDBPyConnection.register_filesystem``, that serves
    ``vss3://bucket/key`` from S3 with this module's settings (read only)."""
    from fsspec.implementations.arrow import ArrowFSWrapper

    class DuckS3(ArrowFSWrapper):
        protocol = DUCKDB_SCHEME[:-3]

        @classmethod
        def _strip_protocol(cls, path):
            if isinstance(path, list):
                return [cls._strip_protocol(p) for p in path]
            return str(path).removeprefix(DUCKDB_SCHEME).rstrip("/")

        def _open(self, path, mode="rb", **kwargs):
            if mode != "rb":
                raise OSError(f"{DUCKDB_SCHEME}{path}: read only")
            return _PositionalFile(self.fs.open_input_file(self._strip_protocol(path)))

    fs, _ = filesystem(SCHEME + "any")
    return DuckS3(fs, skip_instance_cache=True)


def open_parquet(location: Location) -> pq.ParquetFile:
    """A ``ParquetFile`` over a local or S3 file: its footer now, row groups as they are asked for."""
    fs, path = filesystem(location)
    return pq.ParquetFile(fs.open_input_file(path))


def read_parquet_metadata(location: Location) -> pq.FileMetaData:
    fs, path = filesystem(location)
    return pq.read_metadata(path, filesystem=fs)
