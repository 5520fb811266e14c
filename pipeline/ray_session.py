"""Starting or joining Ray, with a job's environment given to every worker: a base module, so the model
side (``vidsift encode``) starts Ray as ``vidsift curate`` does.

- ``init_ray``: an embedded local Ray (no dashboard), or a cluster (``RAY_ADDRESS`` or an address: ``auto``,
  ``host:port``, ``ray://``), with the job's environment (API keys, S3 settings) set in every worker by a
  setup hook, never as ``runtime_env`` ``env_vars``, whose values Ray writes to ``runtime_env_agent.log``;
- ``connect``: join a cluster, or a ``RecipeError`` saying why not (no traceback, no long hang);
- ``apply_env``: the other way to forward an environment (through Ray Client, where no setup hook can be
  installed): a reference in the object store that each task or actor fetches first.
"""

from __future__ import annotations

import os
import sys
import time

from vidsift.pipeline.config import RecipeError


def init_ray(address: str | None, env: dict[str, str] | None = None, actors: bool = True) -> bool:
    """Start or join Ray. ``env``: variables every worker of this job gets (``forwarded_env``), set by
    a worker setup hook rather than ``runtime_env`` ``env_vars``, whose values Ray writes to its logs
    (runtime_env_agent.log); the hook travels pickled in Ray's key-value store. ``actors``: the job
    starts actors (see below; a job of plain tasks, such as dedup's search, passes False). False when
    Ray was already running here (a driver inside the cluster): then nothing was set up."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return False
    runtime_env = {"worker_process_setup_hook": _set_environment(dict(env))} if env else None
    # Ray's C++ core logs straight to stderr an error-level line about every actor with constructor
    # arguments (ray-project/ray#53727) that means nothing here; failures that matter reach the driver as
    # exceptions. Setting the level costs one line of its own at start ("Set ray log level from environment
    # variable"), so only jobs with actors do, and only while Ray starts: the driver's core and the local
    # Ray processes read it then, and programs this process starts later (a `vidsift` subprocess, ffmpeg)
    # do not inherit it. Set RAY_BACKEND_LOG_LEVEL yourself to see more.
    quiet = actors and "RAY_BACKEND_LOG_LEVEL" not in os.environ
    if quiet:
        os.environ["RAY_BACKEND_LOG_LEVEL"] = "fatal"
    try:
        if address:
            # a cluster: "auto", "host:6379", or "ray://head:10001" (Ray Client); inside `ray job submit`
            # RAY_ADDRESS is set for us
            connect(address, runtime_env)
        else:
            # Embedded local Ray; workers import vidsift from the same environment as the driver. Their
            # output (model-loading progress bars, library warnings) stays in Ray's log files
            # (/tmp/ray/session_latest/logs): errors still reach the driver as exceptions. "local": a new
            # instance even where `ray start` runs on this machine, which a bare ray.init() would join
            # unasked (join it with --address auto).
            ray.init(
                address="local",
                include_dashboard=False,
                logging_level="ERROR",
                log_to_driver=False,
                runtime_env=runtime_env,
            )
    finally:
        if quiet:
            del os.environ["RAY_BACKEND_LOG_LEVEL"]
    return True


def _set_environment(values: dict[str, str]):
    """A Ray worker setup hook that puts ``values`` into the worker's environment."""

    def setup() -> None:
        os.environ.update(values)

    return setup


CLIENT_ATTEMPTS = 3


def connect(address: str, runtime_env: dict | None = None) -> None:
    """Join a running cluster, or raise ``RecipeError`` saying why not (no traceback, no long hang).

    A ``host:port`` or ``ray://host:port`` that nothing listens on fails at once instead of after
    Ray's own minutes of retries. Ray Client starts a server process per client on the head; when
    that start fails (it can on a loaded head) the connection is tried again, up to
    ``CLIENT_ATTEMPTS`` times.
    """
    import socket

    import ray

    if address != "auto":
        client = address.startswith("ray://")
        host, sep, port = address.removeprefix("ray://").rpartition(":")
        if not sep or "]" in port:  # no port: Ray's defaults
            host, port = address.removeprefix("ray://"), "10001" if client else "6379"
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=10):
                pass
        except (OSError, ValueError) as e:
            raise RecipeError(f"cannot reach the Ray cluster at {address}: {e}") from None
    for attempt in range(1, CLIENT_ATTEMPTS + 1):
        try:
            ray.init(address=address, logging_level="ERROR", runtime_env=runtime_env)
            return
        except ConnectionError as e:  # ConnectionAbortedError from Ray Client is one
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            transient = address.startswith("ray://") and "client server failed" in str(e)
            if not transient or attempt == CLIENT_ATTEMPTS:
                where = " (in the head node's session_latest/logs folder)" if transient else ""
                message = f"cannot connect to the Ray cluster at {address}: {reason}{where}"
                raise RecipeError(message) from None
            print(
                f"vidsift: the Ray Client server at {address} did not start ({reason}); "
                f"trying again ({attempt + 1} of {CLIENT_ATTEMPTS})",
                file=sys.stderr,
            )
            time.sleep(2 * attempt)


def apply_env(env: list | None) -> None:
    """What a task or actor does first with a job's forwarded environment: ``env`` is ``[ObjectRef]`` of the
    variables (API keys, S3 settings) the driver put in Ray's object store, or ``[None]`` / None when there
    are none or a setup hook has set them already. A list, so that Ray passes the reference through instead
    of its value, which would then travel in the task's arguments (and Ray may log those)."""
    ref = (env or [None])[0]
    if ref is not None:
        import ray

        os.environ.update(ray.get(ref))
