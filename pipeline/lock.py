"""One writer per output: ``with output_lock(out, "curate"):`` around anything that writes a run folder.

The lock is the file ``OUT/_lock.json`` naming its holder: host, pid, the process's start time, the
command, a random token and a heartbeat time that a daemon thread renews every ``heartbeat_s``. A
second ``vidsift curate``/``select``/``dedup``/``encode`` on the same output refuses at once with a
one-line ``OutputLocked`` error that names the holder. A lock is stale, and is taken over with a
warning, when its holder is a process of this host that no longer runs (the pid is gone, or now
belongs to a process that started later) or when its heartbeat is older than ``stale_after_s``
(a holder on another host that died).

- Local disks and NFS: the lock file is created with ``O_CREAT | O_EXCL`` (atomic, NFS v3 and later);
  a stale one is renamed away first, so two processes taking it over cannot both win.
- S3: conditional writes. The lock is created with ``If-None-Match: *`` and heartbeats and takeovers
  replace it with ``If-Match: <etag>``, so exactly one writer wins every race (with ``boto3``, which
  reads the usual AWS settings; without it, plain writes and a read-back, with a warning; a store that
  ignores conditional headers is not protected either).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from vidsift.pipeline import storage
from vidsift.pipeline.config import RecipeError

LOCK_NAME = "_lock.json"
HEARTBEAT_S = 15.0
STALE_AFTER_S = 120.0


class OutputLocked(RecipeError):
    """Another live process holds the output's lock (one line, for the CLI)."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: str  # the holding process's start, ISO 8601 UTC
    command: str
    token: str  # tells this lock from a later one of the same process
    heartbeat: float  # time.time() of the last renewal
    proc_start: int = 0  # /proc start time in clock ticks (Linux): tells a reused pid from the holder

    def describe(self) -> str:
        return f"vidsift {self.command} (host {self.host}, pid {self.pid}, started {self.started})"


def _proc_start(pid: int) -> int:
    """Start time of process ``pid`` in clock ticks since boot (Linux), 0 when unknown, -1 when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return -1
    except OSError:
        return 0
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return 0


def _alive(pid: int, proc_start: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, someone else's
    now = _proc_start(pid)
    if now == -1:
        return False
    return not (proc_start and now and now != proc_start)  # a reused pid is not the holder


_STARTED = datetime.now(UTC).isoformat(timespec="seconds")


def _me(command: str) -> Holder:
    return Holder(
        host=socket.gethostname(),
        pid=os.getpid(),
        started=_STARTED,
        command=command,
        token=secrets.token_hex(8),
        heartbeat=time.time(),
        proc_start=max(0, _proc_start(os.getpid())),
    )


def stale_reason(holder: Holder, stale_after_s: float, now: float | None = None) -> str | None:
    """Why ``holder``'s lock may be taken over, or None while it is live."""
    if holder.host == socket.gethostname() and not _alive(holder.pid, holder.proc_start):
        return f"its process {holder.pid} on this host is gone"
    age = (time.time() if now is None else now) - holder.heartbeat
    if age > stale_after_s:
        return f"its heartbeat is {age:.0f} s old (more than {stale_after_s:g} s)"
    return None


def _parse(data: bytes) -> Holder | None:
    try:
        raw = json.loads(data)
        return Holder(**{k: raw[k] for k in Holder.__dataclass_fields__ if k in raw})
    except (ValueError, TypeError, KeyError):
        return None  # a half-written or foreign file: treated as stale


class _LocalLock:
    def __init__(self, path: str) -> None:
        self.path = path

    # each method returns the lock's new version (here: its content) or None when it lost a race

    def create(self, data: bytes) -> str | None:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return data.decode()

    def read(self) -> tuple[bytes, str] | None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return data, data.decode(errors="replace")  # the content is its own version tag

    def replace(self, data: bytes, version: str) -> str | None:
        """Write ``data`` if the lock still reads ``version`` (the heartbeat: checked, then renamed over)."""
        current = self.read()
        if current is None or current[1] != version:
            return None
        folder, name = os.path.split(self.path)  # a temporary name that remove_partial_files knows
        tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self.path)
        return data.decode()

    def take_over(self, data: bytes, version: str) -> str | None:
        # rename the stale lock away: of two processes doing this, one rename finds nothing
        aside = f"{self.path}.stale-{secrets.token_hex(4)}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return None
        with open(aside, "rb") as f:
            moved = f.read().decode(errors="replace")
        os.unlink(aside)
        if moved != version:  # a fresh lock appeared in between; it is gone now, so the race is lost
            return None
        return self.create(data)

    def delete(self, version: str) -> None:
        current = self.read()
        if current is not None and current[1] == version:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


class _S3Lock:
    def __init__(self, uri: str) -> None:
        import boto3
        from botocore.exceptions import ClientError

        self.ClientError = ClientError
        bucket, _, key = uri.removeprefix(storage.SCHEME).partition("/")
        self.bucket, self.key = bucket, key
        self.client = boto3.client("s3")

    def _lost(self, e) -> bool:
        code = e.response.get("Error", {}).get("Code", "")
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey") or status in (
            404,
            409,
            412,
        )

    def _put(self, data: bytes, **condition: str) -> str | None:
        try:
            reply = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data, **condition)
        except self.ClientError as e:
            if self._lost(e):
                return None
            raise
        return reply["ETag"]

    def create(self, data: bytes) -> str | None:
        return self._put(data, IfNoneMatch="*")

    def read(self) -> tuple[bytes, str] | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except self.ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return obj["Body"].read(), obj["ETag"]

    def replace(self, data: bytes, version: str) -> str | None:
        return self._put(data, IfMatch=version)

    def take_over(self, data: bytes, version: str) -> str | None:
        return self._put(data, IfMatch=version)

    def delete(self, version: str) -> None:
        current = self.read()
        if current is not None and current[1] == version:
            self.client.delete_object(Bucket=self.bucket, Key=self.key)


class _PlainS3Lock:
    """Without boto3: plain writes through ``pipeline/storage.py`` and a read-back. Two processes starting
    within the same moment can both believe they hold it; ``output_lock`` warns that this is so."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def read(self) -> tuple[bytes, str] | None:
        if not storage.exists(self.uri):
            return None
        text = storage.read_text(self.uri)
        return text.encode(), text

    def _write(self, data: bytes) -> str | None:
        storage.write_text_atomic(self.uri, data.decode())
        current = self.read()
        return current[1] if current is not None and current[0] == data else None

    def create(self, data: bytes) -> str | None:
        return None if storage.exists(self.uri) else self._write(data)

    def replace(self, data: bytes, version: str) -> str | None:
        current = self.read()
        return self._write(data) if current is not None and current[1] == version else None

    def take_over(self, data: bytes, version: str) -> str | None:
        return self.replace(data, version)

    def delete(self, version: str) -> None:
        current = self.read()
        if current is not None and current[1] == version:
            fs, path = storage.filesystem(self.uri)
            fs.delete_file(path)


def _s3_lock(uri: str):
    try:
        import boto3  # noqa: F401 - conditional writes need it
    except ImportError:
        _warn("boto3 is not installed: the output lock on S3 is a plain write, not atomic (pip install it)")
        return _PlainS3Lock(uri)
    return _S3Lock(uri)


def _warn(message: str) -> None:
    print(f"vidsift: warning: {message}", file=sys.stderr)


@contextmanager
def output_lock(
    out: storage.Location,
    command: str,
    heartbeat_s: float = HEARTBEAT_S,
    stale_after_s: float = STALE_AFTER_S,
) -> Iterator[Holder]:
    """Hold ``OUT/_lock.json`` for the block; raise ``OutputLocked`` at once if a live process holds it."""
    if not storage.is_remote(out):
        storage.makedirs(out)  # on S3 folders are prefixes: nothing to make
    where = storage.join(out, LOCK_NAME)
    lock = _s3_lock(where) if storage.is_remote(where) else _LocalLock(str(where))
    me = _me(command)
    version = _acquire(lock, me, out, where, stale_after_s)
    stop = threading.Event()
    state = {"version": version, "lost": False}

    def beat() -> None:
        while not stop.wait(heartbeat_s):
            fresh = json.dumps(asdict(me) | {"heartbeat": time.time()}).encode()
            try:
                renewed = lock.replace(fresh, state["version"])
                if renewed is None:
                    state["lost"] = True
                    _warn(f"the lock on {out} was taken over by another process; this run's writes may mix")
                    return
                state["version"] = renewed
            except Exception as e:  # noqa: BLE001 - a missed heartbeat is retried, not fatal
                _warn(f"could not renew the lock on {out}: {type(e).__name__}: {e}")

    thread = threading.Thread(target=beat, name="vidsift-lock-heartbeat", daemon=True)
    thread.start()
    try:
        yield me
    finally:
        stop.set()
        thread.join(timeout=30)
        if not state["lost"]:
            lock.delete(state["version"])


def _acquire(lock, me: Holder, out: storage.Location, where: str, stale_after_s: float) -> str:
    data = json.dumps(asdict(me)).encode()
    for _ in range(5):
        version = lock.create(data)
        if version is not None:
            return version
        current = lock.read()
        if current is None:
            continue  # released in between
        holder = _parse(current[0])
        why = "it is unreadable" if holder is None else stale_reason(holder, stale_after_s)
        if why is None:
            raise OutputLocked(
                f"{out} is being written by {holder.describe()}; wait for it to finish or write to "
                f"another output (lock file: {where})"
            )
        version = lock.take_over(data, current[1])
        if version is not None:
            who = holder.describe() if holder else "an unknown process"
            _warn(f"took over the stale lock of {who} on {where}: {why}")
            return version
    raise OutputLocked(f"could not take the lock {where}: other processes keep taking it")
