"""Input lists: ``--input list.csv|list.jsonl|list.parquet``, one row per video, and ``source_meta``.

A list has a ``uri`` column: a local path (a relative one is taken from the list's folder), an
``s3://`` URI, or an ``http(s)://`` URL. Every other column of a row is carried into the video's row and
every clip of that video as ``source_meta``, one JSON object in a string column (``docs/schema.md``).
A list that cannot be read, has no ``uri`` column, an empty ``uri`` or the same ``uri`` twice is a
``RecipeError`` naming the line; a listed file that is missing is a rejected video (``file_not_found``),
like any input.

A URL is fetched on the worker that processes it, into one spool file (``run.spool_dir``), deleted
afterwards, with two limits (``FetchLimits``): a body larger than ``max_bytes`` is a rejected video
``fetch_too_large``; a download that takes longer than ``timeout_s`` in all is ``fetch_timeout``; an HTTP
4xx answer or a host name that does not resolve is ``fetch_failed``. A refused, reset or unreachable
connection and a 5xx or 429 answer are ``transient_failure`` (``process.failed_video``: the group is
retried by a rerun). The rows keep the URL as ``source_uri``.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow as pa

from vidsift.pipeline import storage
from vidsift.pipeline.config import RecipeError

LIST_SUFFIXES = (".csv", ".jsonl", ".parquet")
URL_SCHEMES = ("http://", "https://")
LICENCE_KEYS = ("licence", "license")  # the British spelling is the documented one; both are counted


def licence_of(source_meta: str | None) -> str | None:
    """The ``licence`` value of a clip's ``source_meta`` JSON, or None."""
    if not source_meta:
        return None
    try:
        meta = json.loads(source_meta)
    except json.JSONDecodeError:
        return None
    if not isinstance(meta, dict):
        return None
    for key in LICENCE_KEYS:
        if meta.get(key) not in (None, ""):
            return str(meta[key])
    return None


def meta_value(source_meta: str | None, key: str) -> object:
    """``source_meta[key]`` of a clip row (None when the row has no metadata or not that key)."""
    if not source_meta:
        return None
    try:
        meta = json.loads(source_meta)
    except json.JSONDecodeError:
        return None
    return meta.get(key) if isinstance(meta, dict) else None


def meta_array(table: pa.Table, key: str) -> pa.Array:
    """``source_meta[key]`` of every row of an Arrow table, typed when the values agree (numbers stay
    numbers), else as strings; null where a row has no such key (for ``select.where_mask``)."""
    if "source_meta" not in table.column_names:
        return pa.nulls(table.num_rows)
    values = [meta_value(m, key) for m in table.column("source_meta").to_pylist()]
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types: compare as text
        return pa.array([None if v is None else v if isinstance(v, str) else json.dumps(v) for v in values])


def meta_key(node: ast.AST) -> str | None:
    """The key of a ``source_meta.KEY`` or ``source_meta["KEY"]`` expression node (for ``--where``)."""
    if not isinstance(node, ast.Attribute | ast.Subscript):
        return None
    if not isinstance(node.value, ast.Name) or node.value.id != "source_meta":
        return None
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
        return node.slice.value
    return None


def is_input_list(path: str) -> bool:
    """An ``--input`` that names a list file (by its suffix) rather than a video or a folder."""
    return str(path).lower().endswith(LIST_SUFFIXES)


def is_url(uri: str) -> bool:
    return uri.lower().startswith(URL_SCHEMES)


@dataclass(frozen=True)
class ListedInput:
    size: int  # bytes; 0 when unknown (a URL, or a listed file that is not there: probe reports it)
    source_meta: str | None  # JSON object of the row's other columns; None when it has none


def _rows(path: str, data: bytes) -> Iterator[tuple[int, dict]]:
    """``(line, row)`` of a list file's bytes (line: 1-based, the header is line 1 in a CSV)."""
    suffix = path.lower().rsplit(".", 1)[-1]
    if suffix == "parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(io.BytesIO(data)).to_pylist()):
            yield i + 1, row
        return
    text = data.decode("utf-8-sig")
    if suffix == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        for row in reader:
            # an empty cell is no value (null), not an empty string
            yield reader.line_num, {k: v for k, v in row.items() if k is not None and v not in ("", None)}
        return
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecipeError(f"{path} line {i + 1}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise RecipeError(f"{path} line {i + 1}: expected a JSON object, got {type(row).__name__}")
        yield i + 1, row


def _resolve(uri: str, base: str) -> str:
    if is_url(uri) or storage.is_remote(uri) or os.path.isabs(uri):
        return uri
    if storage.is_remote(base):
        return storage.join(base, uri)
    return os.path.abspath(os.path.join(base, uri))


def _size(uri: str) -> int:
    if is_url(uri):
        return 0
    try:
        return storage.size(uri)
    except OSError:
        return 0  # missing or unreadable: the video is rejected with its reason when it is processed


SIZE_THREADS = 16  # concurrent size look-ups (a HEAD request each for s3:// entries)


def read_input_list(path: str, sizes: bool = True) -> dict[str, ListedInput]:
    """``{uri: ListedInput}`` of a list file (local or ``s3://``), in the list's order; ``sizes=False``
    skips the size look-ups (all 0), which only the duplicate check of ``runner.find_duplicates`` needs."""
    try:
        with storage.open_input(path) as f:
            data = f.read()
    except FileNotFoundError:
        raise RecipeError(f"input list not found: {path}") from None
    except OSError as e:
        raise RecipeError(f"cannot read the input list {path}: {e}") from None
    base = path.rsplit("/", 1)[0] if storage.is_remote(path) else os.path.dirname(os.path.abspath(path))
    listed: dict[str, ListedInput] = {}
    lines: dict[str, int] = {}
    try:
        for line, row in _rows(path, data):
            uri = row.pop("uri", None)
            if not isinstance(uri, str) or not uri.strip():
                raise RecipeError(f"{path} line {line}: no uri (every row needs a non-empty `uri` column)")
            uri = _resolve(uri.strip(), base)
            if uri in listed:
                raise RecipeError(f"{path} line {line}: {uri} is listed twice (first on line {lines[uri]})")
            meta = json.dumps(row, ensure_ascii=False, sort_keys=True, default=str) if row else None
            listed[uri], lines[uri] = ListedInput(0, meta), line
    except (UnicodeDecodeError, csv.Error) as e:
        raise RecipeError(f"cannot read the input list {path}: {e}") from None
    except Exception as e:  # pyarrow's errors for a file that is not Parquet
        if isinstance(e, RecipeError):
            raise
        raise RecipeError(f"cannot read the input list {path}: {type(e).__name__}: {e}") from None
    if not listed:
        raise RecipeError(f"input list holds no rows: {path}")
    if sizes:
        with ThreadPoolExecutor(SIZE_THREADS) as pool:
            found = list(pool.map(_size, listed))
        listed = {uri: ListedInput(n, listed[uri].source_meta) for uri, n in zip(listed, found, strict=True)}
    return listed


def source_metas(path: str) -> dict[str, str | None]:
    """``{uri: source_meta}`` of an input list; ``{}`` for any other ``--input``."""
    if not is_input_list(path):
        return {}
    return {uri: entry.source_meta for uri, entry in read_input_list(path, sizes=False).items()}


# ---------------------------------------------------------------- fetching http(s) inputs

FETCH_CHUNK = 1 << 20


@dataclass(frozen=True, kw_only=True)
class FetchLimits:
    max_bytes: int = 20 << 30  # a larger body is rejected as fetch_too_large
    timeout_s: float = 600.0  # the whole download, from connecting to the last byte

    @classmethod
    def from_env(cls, max_mb: float = 0.0, timeout_s: float = 0.0) -> FetchLimits:
        """The recipe's ``run.fetch_max_mb`` / ``run.fetch_timeout_s`` when set (> 0), else
        ``VIDSIFT_FETCH_MAX_MB`` and ``VIDSIFT_FETCH_TIMEOUT_S`` of the driver, else the defaults."""
        env = os.environ
        try:
            max_mb = float(max_mb or env.get("VIDSIFT_FETCH_MAX_MB") or cls.max_bytes / 2**20)
            timeout = float(timeout_s or env.get("VIDSIFT_FETCH_TIMEOUT_S") or cls.timeout_s)
        except ValueError:
            raise RecipeError("VIDSIFT_FETCH_MAX_MB and VIDSIFT_FETCH_TIMEOUT_S must be numbers") from None
        if max_mb <= 0 or timeout <= 0:
            raise RecipeError("VIDSIFT_FETCH_MAX_MB and VIDSIFT_FETCH_TIMEOUT_S must be > 0")
        return cls(max_bytes=int(max_mb * 2**20), timeout_s=timeout)


class FetchError(Exception):
    """Why a URL could not be fetched; ``cause`` is set when a later try may succeed (the server or the
    network failed, not the request)."""

    def __init__(self, reason: str, detail: str, cause: BaseException | None = None) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.cause = reason, detail, cause


@contextmanager
def fetched(url: str, limits: FetchLimits, spool_dir: str = "") -> Iterator[str]:
    """A local spool file holding the body of ``url``, deleted afterwards; ``FetchError`` when the
    body is too large, the download too slow, or the server answers with an error."""
    deadline = time.monotonic() + limits.timeout_s
    folder = spool_dir or tempfile.gettempdir()
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="vidsift-fetch-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            _download(url, out, limits, deadline)
        yield tmp
    finally:
        os.unlink(tmp)


def _download(url: str, out, limits: FetchLimits, deadline: float) -> None:
    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise FetchError("fetch_timeout", f"download took longer than {limits.timeout_s:g} s")
        return left

    request = urllib.request.Request(url, headers={"User-Agent": "vidsift"})
    try:
        # the socket timeout bounds each wait for data; the deadline bounds the whole download
        with urllib.request.urlopen(request, timeout=remaining()) as resp:
            stated = resp.headers.get("Content-Length")
            if stated and stated.isdigit() and int(stated) > limits.max_bytes:
                raise FetchError(
                    "fetch_too_large", f"{stated} bytes stated, over the limit {limits.max_bytes}"
                )
            got = 0
            while True:
                chunk = resp.read1(FETCH_CHUNK)
                if not chunk:
                    break
                got += len(chunk)
                if got > limits.max_bytes:
                    raise FetchError("fetch_too_large", f"more than {limits.max_bytes} bytes (the limit)")
                out.write(chunk)
                remaining()
    except FetchError:
        raise
    except urllib.error.HTTPError as e:
        detail = f"HTTP {e.code} {e.reason}"
        busy = e.code >= 500 or e.code == 429  # the server's trouble, not the URL's: a rerun may succeed
        raise FetchError("fetch_failed", detail, ConnectionError(detail) if busy else None) from None
    except TimeoutError:
        raise FetchError("fetch_timeout", f"no data within {limits.timeout_s:g} s") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        cause = reason if isinstance(reason, OSError) else None
        raise FetchError("fetch_failed", f"cannot fetch: {reason}", cause) from None


def process_input(source_uri: str, group: str, recipe, duplicate_of: str | None, limits: FetchLimits):
    """``process.process_video`` for any input: a URL is fetched first (a fetch failure is a rejected
    video with its reason), and its rows keep the URL as ``source_uri``."""
    from vidsift.pipeline.process import process_video

    if not is_url(source_uri):
        return process_video(source_uri, group, recipe, duplicate_of)
    try:
        with fetched(source_uri, limits, recipe.run.spool_dir) as path:
            video, clips = process_video(path, group, recipe, duplicate_of)
    except FetchError as e:
        from vidsift.pipeline.process import failed_video, is_transient

        if e.cause is not None and is_transient(e.cause):  # a refused connection, a 5xx: retried by a rerun
            return failed_video(source_uri, group, e.cause, "cannot fetch the input"), []
        video = {"source_uri": source_uri, "group": group, "num_clips_accepted": 0, "status": "rejected",
                 "reason": e.reason, "detail": e.detail}  # fmt: skip
        return video, []
    video["source_uri"] = source_uri
    for c in clips:
        c["source_uri"] = source_uri
    return video, clips
