"""The stall watchdog of a curation run: no progress while Ray holds a demand it cannot place is an error.

``check_fits`` (``pipeline/cluster.py``) refuses, before anything runs, recipes whose pools and per-video
task cannot be placed on the cluster as it is. A cluster can still change under a run (a node leaves,
another job takes its CPUs), so while the run goes, ``StallWatchdog`` watches it: when no row has
arrived for ``stall_s`` seconds and Ray reports a pending task or actor demand (what ``ray status``
lists) that cannot be placed, it ends the run with an error that names those demands, which stage
they belong to and what each node has free. A demand cannot be placed when no node could ever hold
it, or when the cluster has enough free in total but no single node has it (the fragmentation that
stalled issue 17's run). A backlog is not a stall: demands that wait because every node is busy
with work that will finish (the free total is short of them) never trip it, however slow the work.
``vidsift curate --stall-timeout SECONDS`` sets ``stall_s`` (0: off).

The watchdog thread interrupts the driver's main thread (``_thread.interrupt_main``); ``run_curate``
turns that interruption into the error with ``raise_if_stalled``.
"""

from __future__ import annotations

import _thread
import signal
import threading
import time
from collections.abc import Callable

from vidsift.pipeline.config import RecipeError

STALL_S = 600.0  # default of --stall-timeout
_settings = {"stall_s": STALL_S}
_fired: list[str] = []  # the message of a watchdog that interrupted the driver
_active: list[StallWatchdog] = []


def configure(stall_s: float) -> None:
    """The stall time of watchdogs created from now on (seconds; 0 turns them off)."""
    _settings["stall_s"] = stall_s
    _fired.clear()


def _describe(bundle: dict[str, float]) -> str:
    items = sorted(bundle.items(), key=lambda kv: (kv[0] not in ("CPU", "GPU", "memory"), kv[0]))
    return ", ".join(f"{k}={v / 2**30:.1f}GiB" if k == "memory" else f"{k}={v:g}" for k, v in items)


Resources = dict[str, float]


def pending_demands() -> tuple[list[tuple[Resources, int]], dict[str, Resources], dict[str, Resources]]:
    """Ray's pending task/actor demands ``[(bundle, count)]``, and each node's free and total resources."""
    import ray
    from ray.autoscaler.v2.sdk import get_cluster_status

    status = get_cluster_status(ray.get_runtime_context().gcs_address)
    demands = [
        (dict(b.bundle), b.count)
        for d in status.resource_demands.ray_task_actor_demand
        for b in d.bundles_by_count
    ]
    nodes = status.active_nodes + status.idle_nodes
    hidden = ("node:", "object_store")
    shown = [(n, [u for u in n.resource_usage.usage if not u.resource_name.startswith(hidden)])
             for n in nodes]  # fmt: skip
    free = {n.node_id[:8]: {u.resource_name: u.total - u.used for u in usage} for n, usage in shown}
    total = {n.node_id[:8]: {u.resource_name: u.total for u in usage} for n, usage in shown}
    return demands, free, total


def unplaceable(bundle: Resources, free: dict[str, Resources], total: dict[str, Resources]) -> bool:
    """True when no node could ever hold ``bundle``, or the nodes have enough free in total but no single
    node has it; False while it fits somewhere now, or waits for busy nodes (a backlog)."""

    def fits(need: Resources, have: Resources) -> bool:
        return all(have.get(k, 0.0) + 1e-9 >= v for k, v in need.items())

    if any(fits(bundle, f) for f in free.values()):
        return False
    if not any(fits(bundle, t) for t in total.values()):
        return True
    pooled = {k: sum(f.get(k, 0.0) for f in free.values()) for k in bundle}
    return fits(bundle, pooled)


class StallWatchdog:
    """``progress()`` on every arrival; ``stop()`` when the run's loop ends.

    ``names`` maps a demand (as ``_describe`` writes it) to the stage that asks for it.
    """

    def __init__(
        self,
        names: dict[str, str] | None = None,
        stall_s: float | None = None,
        probe: Callable[[], tuple[list, dict, dict]] = pending_demands,
    ) -> None:
        self.names = names or {}
        self.stall_s = _settings["stall_s"] if stall_s is None else stall_s
        self.probe = probe
        self.last = time.monotonic()
        self.done = threading.Event()
        self.message: str | None = None
        self._restore: signal.Handlers | Callable | int | None = None  # SIGINT's disposition before start()
        self.thread = threading.Thread(target=self._watch, name="vidsift-stall-watchdog", daemon=True)

    def start(self) -> StallWatchdog:
        if self.stall_s > 0:
            # The watchdog ends the run through the main thread's KeyboardInterrupt. A process started
            # with SIGINT ignored (``nohup vidsift curate ... &``, a background job of a script) would
            # never get it, and a stalled run would wait forever: Python's handler is put in place
            # while the watchdog runs (the main thread only can) and the old disposition comes back
            # on stop().
            if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) in (
                signal.SIG_IGN,
                signal.SIG_DFL,
                None,
            ):
                self._restore = signal.signal(signal.SIGINT, signal.default_int_handler)
            _active.append(self)
            self.thread.start()
        return self

    def progress(self) -> None:
        self.last = time.monotonic()

    def stop(self) -> None:
        self.done.set()
        if self in _active:
            _active.remove(self)
        if self._restore is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._restore)
            self._restore = None

    def stalled(self) -> str | None:
        """The error to end the run with, or None while it is not stalled."""
        idle = time.monotonic() - self.last
        if idle < self.stall_s:
            return None
        try:
            demands, free, total = self.probe()
        except Exception:  # noqa: BLE001 - no status from Ray: no verdict this time
            return None
        demands = [(b, n) for b, n in demands if unplaceable(b, free, total)]
        if not demands:
            return None
        waiting = "; ".join(
            f"{count} x {{{_describe(b)}}} ({self.names.get(_describe(b), 'a Ray task or actor')})"
            for b, count in demands
        )
        nodes = "; ".join(f"node {n}: {_describe(r)}" for n, r in sorted(free.items())) or "no nodes"
        return (
            f"no progress for {idle:.0f} s while Ray cannot place {waiting}; free now: {nodes}. The run "
            "would wait forever: lower that stage's resources (fractional num_cpus are fine), or add a node "
            "that has them (--stall-timeout 0 waits anyway)"
        )

    def _watch(self) -> None:
        period = max(0.2, min(5.0, self.stall_s / 4))
        while not self.done.wait(period):
            message = self.stalled()
            if message and not self.done.is_set():
                self.message = message
                _fired.append(message)
                _thread.interrupt_main()
                return


def stop_all() -> None:
    for w in list(_active):
        w.stop()


def raise_if_stalled() -> None:
    """In the driver's ``except KeyboardInterrupt``: the watchdog's error, if it was the watchdog."""
    if _fired:
        raise RecipeError(_fired[-1])
