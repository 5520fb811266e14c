"""``vidsift curate``: run a recipe over a folder or bucket prefix of videos on Ray; write the run folder.

Inputs are listed, sorted and cut into deterministic groups of ``run.group_size`` files. Groups
with a completion marker in ``OUT/_done`` are skipped, so a killed run restarted with the same
command redoes only unfinished groups and ends with the same rows as an uninterrupted run.
Inputs and ``OUT`` are local paths or ``s3://`` URIs (``pipeline/storage.py``).

On Ray, the per-video stages run as one task per video (``pipeline.process``), streaming
through Ray Data, then the clip stages' actor pools; the last step (``write_parts``) writes the rows
to part files of their groups on the workers and sends the driver only receipts. When all videos of
a group are in, a publish task writes the group (``publish_group``, ``write_shards``); the driver
finally writes ``manifest.json``. Before anything
runs, the stages' resources are checked against the cluster (``check_fits``): a pool that can
never be placed is an error, not a silent stall. Each row records the Ray node every stage ran
on; the manifest sums that up (``last_run_placement``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa

from vidsift.pipeline import storage
from vidsift.pipeline.manifest import build_manifest, print_summary
from vidsift.pipeline.progress import progress_bar
from vidsift.pipeline.publish import (
    PARTS,
    VIDEO_PREFIX,
    WORK_SCHEMA,
    GroupBuffer,
    publish_group,
    write_parts,
)
from vidsift.pipeline.recipe import Recipe, RecipeError
from vidsift.pipeline.stages.write_shards import (
    done_groups,
    remove_partial_files,
    write_manifest,
    write_text_atomic,
)


def list_inputs(path: str) -> dict[str, int]:
    """``{uri: size}`` of every file under ``path`` (or ``path`` itself), sorted; nothing is filtered by name.

    Local paths come back absolute, not resolved (a symlink keeps the name the user gave it);
    ``s3://bucket/prefix`` lists every key under the prefix. An input list (``list.csv``, ``.jsonl`` or
    ``.parquet``, ``pipeline/input_lists.py``) gives its ``uri`` column, in the list's order.
    """
    from vidsift.pipeline.input_lists import is_input_list, read_input_list

    if is_input_list(path):
        return {uri: entry.size for uri, entry in read_input_list(path).items()}
    try:
        files = storage.list_files(path)
    except FileNotFoundError:
        raise RecipeError(f"input not found: {path}") from None
    if not files:
        raise RecipeError(f"input folder holds no files: {path}")
    return files


def find_duplicates(sizes: dict[str, int], hash_full_file: bool) -> dict[str, str]:
    """``{uri: first uri with the same bytes}`` for every input that repeats an earlier one (sorted order).

    Only files whose sizes collide are hashed, so this costs nothing on typical inputs; the
    decision depends on the input list alone, so a resumed run makes the same one.
    """
    from vidsift.pipeline.stages.probe import content_hash

    by_size: dict[int, list[str]] = defaultdict(list)
    for uri in sorted(sizes):
        by_size[sizes[uri]].append(uri)
    duplicates: dict[str, str] = {}
    for size, same_size in by_size.items():
        if size == 0 or len(same_size) < 2:
            continue
        first_by_hash: dict[str, str] = {}
        for uri in same_size:
            try:
                h = content_hash(uri, hash_full_file)
            except OSError:
                continue  # probe reports it
            if h in first_by_hash:
                duplicates[uri] = first_by_hash[h]
            else:
                first_by_hash[h] = uri
    return duplicates


def make_groups(inputs: list[str], group_size: int) -> dict[str, list[str]]:
    return {f"g{i // group_size:06d}": inputs[i : i + group_size] for i in range(0, len(inputs), group_size)}


def fingerprint(inputs: list[str], recipe: Recipe) -> str:
    """Inputs and every recipe value that decides rows; how the run executes (resources, spool
    folder, object-store cap, ...) may change between a run and its resumption."""
    return _fingerprint(inputs, recipe.row_settings())


def _fingerprint(inputs: list[str], row_settings: dict) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(row_settings, sort_keys=True, default=str).encode())
    for uri in inputs:
        h.update(uri.encode() + b"\0")
    return h.hexdigest()


def resume_mismatch(out: Path | str, inputs: list[str], recipe: Recipe, stored: str) -> str | None:
    """Why this command cannot resume the run in ``out`` whose stored fingerprint differs from its own, or
    None when it can: a run written by an older vidsift, with fewer recipe keys, resumes when its
    recipe.resolved.toml and these inputs give its stored fingerprint, and this recipe has the same value
    for every key it had and defaults for the keys it lacked (``Recipe.differs_from``)."""
    import tomllib

    from vidsift.pipeline.recipe import EXECUTION_KEYS

    other = "it holds a run over other inputs or another recipe"
    path = storage.join(out, "recipe.resolved.toml")
    try:
        resolved = tomllib.loads(storage.read_text(path)) if storage.exists(path) else None
    except (OSError, tomllib.TOMLDecodeError):
        resolved = None
    if resolved is None:
        return other
    old = {
        "run": {k: v for k, v in resolved.get("run", {}).items() if k not in EXECUTION_KEYS},
        "stage": [{k: v for k, v in s.items() if k != "resources"} for s in resolved.get("stage", [])],
    }
    if _fingerprint(inputs, old) != stored:
        return other
    why = recipe.differs_from(old)
    if why is None:
        return None
    return f"{other} ({why}; to resume it as it was, give its own {path} as the recipe)"


def video_task(batch: pa.Table, recipe_dict: dict, fetch: dict | None = None) -> pa.Table:
    """Ray Data UDF: one input row (source_uri, group, source_meta) -> work rows for that video."""
    from vidsift.pipeline.input_lists import FetchLimits, process_input
    from vidsift.pipeline.recipe import build_recipe

    recipe = build_recipe(recipe_dict)
    placement = json.dumps({"video": _node_id()})
    rows = []
    for item in batch.to_pylist():
        limits = FetchLimits(**(fetch or {}))
        video, clips = process_input(item["source_uri"], item["group"], recipe, item["duplicate_of"], limits)
        if item.get("source_meta"):  # an input list's other columns, carried into every row of the video
            for row in [video, *clips]:
                row["source_meta"] = item["source_meta"]
        n = len(clips) + 1
        rows.append(
            {
                "row_kind": "video",
                "rows_of_video": n,
                "placement": placement,
                **{VIDEO_PREFIX + k: v for k, v in video.items()},
            }
        )
        rows.extend({"row_kind": "clip", "rows_of_video": n, "placement": placement, **c} for c in clips)
    return pa.Table.from_pylist([{n: r.get(n) for n in WORK_SCHEMA.names} for r in rows], schema=WORK_SCHEMA)


class ClipStageTask:
    """Ray Data actor for one clip stage: loads the stage (its model) once, then maps batches."""

    def __init__(self, name: str, config: dict) -> None:
        from vidsift.pipeline.registry import STAGES

        spec = STAGES[name]
        self.name = name
        self.stage = spec.impl(spec.config(**config))
        self.node = _node_id()

    def __call__(self, batch: pa.Table) -> pa.Table:
        from vidsift.pipeline.process import apply_clip_stage

        rows = batch.to_pylist()
        # the rows this stage works on (apply_clip_stage's choice): accepted clips
        todo = [i for i, r in enumerate(rows) if r.get("clip_id") and not r.get("reject_reason")]
        rows = apply_clip_stage(self.stage, rows)
        for i in todo:
            where = json.loads(rows[i].get("placement") or "{}")
            rows[i]["placement"] = json.dumps({**where, self.name: self.node})
        return pa.Table.from_pylist(rows, schema=WORK_SCHEMA)


def _node_id() -> str:
    """The Ray node this worker runs on ("" outside Ray, e.g. a stage called directly in a test)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def _init_ray(address: str | None, env: dict[str, str] | None = None) -> bool:
    """Start or join Ray. ``env``: variables every worker of this job gets (``forwarded_env``), set by
    a worker setup hook rather than ``runtime_env`` ``env_vars``, whose values Ray writes to its logs
    (runtime_env_agent.log); the hook travels pickled in Ray's key-value store. False when Ray was
    already running here (a driver inside the cluster): then nothing was set up."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return False
    runtime_env = {"worker_process_setup_hook": _set_environment(dict(env))} if env else None
    # Ray's C++ core logs straight to stderr, e.g. an error-level line about every clip-stage actor's
    # constructor arguments (ray-project/ray#53727) that means nothing here; failures that matter reach
    # the driver as exceptions. Set RAY_BACKEND_LOG_LEVEL yourself to see more.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    if address:
        # a cluster: "auto", "host:6379", or "ray://head:10001" (Ray Client); inside `ray job submit`
        # RAY_ADDRESS is set for us
        _connect(address, runtime_env)
    else:
        # Embedded local Ray; workers import vidsift from the same environment as the driver. Their
        # output (model-loading progress bars, library warnings) stays in Ray's log files
        # (/tmp/ray/session_latest/logs): errors still reach the driver as exceptions.
        ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False, runtime_env=runtime_env)
    return True


def _set_environment(values: dict[str, str]):
    """A Ray worker setup hook that puts ``values`` into the worker's environment."""

    def setup() -> None:
        os.environ.update(values)

    return setup


CLIENT_ATTEMPTS = 3


def _connect(address: str, runtime_env: dict | None = None) -> None:
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


def run_curate(
    recipe: Recipe,
    input_path: str,
    output: str,
    limit: int | None = None,
    address: str | None = None,
    quiet: bool = False,
    retry_failed: bool = False,
    stall_timeout_s: float = 600.0,
) -> int:
    if (address or os.environ.get("RAY_ADDRESS") or "").startswith("ray://"):  # it locks in there
        return _run_through_client(recipe, input_path, output, limit, address, quiet, retry_failed)
    from vidsift.pipeline.lock import output_lock

    # one writer per output: a second run on it refuses at once, naming this one (pipeline/lock.py);
    # the recipe's S3 settings apply to the lock too
    os.environ.update(storage.s3_environment(recipe.run.s3_endpoint_url, recipe.run.s3_region))
    from vidsift.pipeline import watchdog

    watchdog.configure(stall_timeout_s)
    with output_lock(output, "curate"):
        try:
            return _curate_locked(recipe, input_path, output, limit, address, quiet, retry_failed)
        except KeyboardInterrupt:
            watchdog.raise_if_stalled()  # the stall watchdog interrupted the run: its error, one line
            raise
        finally:
            watchdog.stop_all()


def _curate_locked(
    recipe: Recipe,
    input_path: str,
    output: str,
    limit: int | None,
    address: str | None,
    quiet: bool,
    retry_failed: bool = False,
) -> int:
    from rich.console import Console

    from vidsift.pipeline.process import EXIT_INCOMPLETE, hold_back_transient, reopen_transient

    console = Console(stderr=True, quiet=quiet)
    run = recipe.run
    # the recipe's S3 settings win over the environment, for this process and its video tasks
    aws_env = storage.s3_environment(run.s3_endpoint_url, run.s3_region)
    os.environ.update(aws_env)
    sizes = list_inputs(input_path)
    if limit:
        sizes = dict(list(sizes.items())[:limit])
    inputs = list(sizes)
    out: Path | str = output if storage.is_remote(output) else Path(output)
    storage.makedirs(out)
    fp = fingerprint(inputs, recipe)
    state_path = storage.join(out, "_run.json")
    if storage.exists(state_path):
        earlier = json.loads(storage.read_text(state_path))
        stored = earlier.get("fingerprint")
        why = resume_mismatch(out, inputs, recipe, stored) if stored != fp else None
        if why:
            raise RecipeError(f"{out}: {why}; resume it with the same command, or write to a new --output")
        if stored != fp:
            console.print(f"{out}: a run written by an earlier vidsift version; resuming it (same rows)")
    remove_partial_files(out)  # left by a run that was killed while writing; one run per output at a time
    storage.remove_tree(storage.join(out, PARTS))  # rows of groups a killed run never published: redone
    write_text_atomic(state_path, json.dumps({"fingerprint": fp, "inputs": len(inputs)}) + "\n")
    write_text_atomic(storage.join(out, "recipe.resolved.toml"), recipe.to_toml())
    groups = make_groups(inputs, run.group_size)
    if retry_failed:  # groups finished with transient failures (after their tries) run again
        reopened = reopen_transient(out)
        console.print(f"--retry-failed: {len(reopened)} groups with transient failures run again")
    finished = done_groups(out)
    pending = {g: files for g, files in groups.items() if g not in finished}
    console.print(
        f"vidsift curate: {len(inputs)} input files in {len(groups)} groups; "
        f"{len(groups) - len(pending)} groups already done, {len(pending)} to run"
    )
    started = time.time()
    placement: dict = {}
    held: dict = {}
    if pending:
        duplicates = find_duplicates({u: sizes[u] for u in inputs}, recipe.stage("probe").hash_full_file)
        worker_env = aws_env if storage.is_remote(input_path) else {}
        from vidsift.pipeline.input_lists import source_metas

        meta = source_metas(input_path)  # {} unless --input is an input list
        placement = _run_groups(recipe, pending, duplicates, out, address, console, worker_env, meta)
        held = hold_back_transient(out, list(pending))  # transient failures: left for a rerun
    dedup: dict | None = None
    if any(s.name == "dedup" for s in recipe.stages):
        from vidsift.pipeline.select import dedup_run  # the index, its counts and the group rewrites

        dedup = dedup_run(out, recipe.stage("dedup"), recipe.stage("write_shards"), log=console.print)
    manifest = build_manifest(out, recipe, len(inputs), len(groups), time.time() - started)
    manifest["last_run_placement"] = placement
    if dedup is not None:
        manifest["dedup"] = dedup
    write_manifest(out, manifest)
    print_summary(console, manifest)
    if held:
        rows = sum(n for n, _ in held.values())
        print(
            f"vidsift: {rows} videos or clips in {len(held)} groups failed transiently (storage, network "
            "or a server out of reach); rerun the same command to retry them",
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE
    return 0


def _run_through_client(
    recipe: Recipe,
    input_path: str,
    output: str,
    limit: int | None,
    address: str | None,
    quiet: bool,
    retry_failed: bool = False,
) -> int:
    """``--address ray://...``: run the whole curation as one task inside the cluster.

    Ray Data's streaming executor does not run over Ray Client, so this process only connects and
    waits; the run's driver (listing, group publication, manifest) is a zero-CPU task on a
    cluster node. ``--input`` and ``--output`` must therefore be reachable from the cluster (S3,
    NFS); its progress lines reach this terminal through Ray's log forwarding.
    """
    import ray

    _init_ray(address)
    env = storage.s3_environment(recipe.run.s3_endpoint_url, recipe.run.s3_region)
    task = ray.remote(_curate_in_cluster).options(
        num_cpus=0, max_retries=0, runtime_env={"env_vars": env} if env else None
    )
    error = ray.get(task.remote(recipe.to_dict(), input_path, output, limit, quiet, retry_failed))
    if error:
        raise RecipeError(error)
    return 0


def _curate_in_cluster(
    recipe_dict: dict,
    input_path: str,
    output: str,
    limit: int | None,
    quiet: bool,
    retry_failed: bool = False,
) -> str:
    """The driver of a ``ray://`` run, inside the cluster; returns a user error's message, or ""."""
    from vidsift.pipeline.recipe import build_recipe

    recipe = build_recipe(recipe_dict)
    try:
        rc = run_curate(recipe, input_path, output, limit, None, quiet, retry_failed)
    except RecipeError as e:
        return str(e)
    return "transient failures left groups unfinished; rerun the same command to retry them" if rc else ""


def _demands(recipe: Recipe) -> tuple[dict[str, float], list[tuple[str, dict[str, float]]]]:
    """Ray resources of one video task, and of every actor each clip-stage pool starts with."""
    video = _as_ray_resources(_max_resources([s.resources for s in _video_stages(recipe)]))
    actors = [
        (s.name, _as_ray_resources(s.resources.ray_options()))
        for s in recipe.stages_of_kind("clip")
        for _ in range(s.resources.min_actors)
    ]
    return video, actors


def _as_ray_resources(opts: dict) -> dict[str, float]:
    res = {
        "CPU": opts.get("num_cpus", 0.0),
        "GPU": opts.get("num_gpus", 0.0),
        "memory": opts.get("memory", 0),
    }
    res.update(opts.get("resources", {}))
    if opts.get("accelerator_type"):
        res[f"accelerator_type:{opts['accelerator_type']}"] = 0.001  # what Ray reserves for it
    return {k: float(v) for k, v in res.items() if v}


MIN_VIDEO_CPUS = 0.1  # the least CPU share a per-video task is given to fit beside the pools


def check_fits(
    video: dict[str, float], actors: list[tuple[str, dict[str, float]]], nodes: list[dict]
) -> float:
    """The CPUs to give each per-video task so that it and every pool's starting actors can be placed;
    raise ``RecipeError``, naming the stage, when no share can.

    Ray Data starts ``min_actors`` of every clip-stage pool up front and spreads them over the nodes
    (its SPREAD strategy); a per-video task then needs one node with its whole demand still free.
    Totals can hide that: two 1-CPU nodes with four quarter-CPU actors spread over them have 1 CPU
    free in all but half a CPU on each node, and a 1-CPU task waits forever. So the actors are placed
    per node the way Ray spreads them (largest first, each on the node with the most CPU left; the
    first-fit packing is tried when spreading leaves one out), and the per-video task gets its
    ``num_cpus``, or the largest share at least ``MIN_VIDEO_CPUS`` that one node still has (the caller
    says so). ``nodes`` are ``{resource: total}`` per alive node.
    """

    def fits(need: dict[str, float], free: dict[str, float]) -> bool:
        return all(free.get(k, 0.0) + 1e-9 >= v for k, v in need.items())

    def describe(need: dict[str, float]) -> str:
        return ", ".join(
            f"{k}={v / 2**30:.1f}GiB" if k == "memory" else f"{k}={v:g}" for k, v in need.items()
        )

    totals: dict[str, float] = defaultdict(float)
    for n in nodes:
        for k, v in n.items():
            totals[k] += v
    shown = {k: v for k, v in totals.items() if k != "object_store_memory" and not k.startswith("node:")}
    have = describe(shown)
    for name, need in [("per-video task", video)] + actors:
        if not any(fits(need, n) for n in nodes):
            raise RecipeError(
                f"stage {name} asks each worker for {describe(need)}, but no Ray node has that "
                f"(cluster: {have}); lower its resources (fractional num_cpus are fine) or add a node "
                "that has them"
            )

    def wait_forever(name: str) -> RecipeError:
        asked = defaultdict(float)
        for _, n in [("per-video task", video)] + actors:
            for k, v in n.items():
                asked[k] += v
        return RecipeError(
            f"the clip-stage pools' min_actors plus one per-video task need {describe(dict(asked))} "
            f"at once, more than the cluster can place (cluster: {have}; {name} does not fit); the run "
            "would wait forever. Lower min_actors or num_cpus/num_gpus of the clip stages, or add nodes "
            "(--set run.check_resources=false skips this check, e.g. on an autoscaling cluster)"
        )

    def place(spread: bool) -> list[dict[str, float]] | str:
        """Free resources per node once the actors are placed, or the stage that finds no node."""
        free = [dict(n) for n in nodes]
        for name, need in sorted(actors, key=lambda a: -a[1].get("GPU", 0) - a[1].get("CPU", 0)):
            room = [f for f in free if fits(need, f)]
            if not room:
                return name
            node = max(room, key=lambda f: f.get("CPU", 0.0)) if spread else room[0]
            for k, v in need.items():
                node[k] -= v
        return free

    placed = place(spread=True)
    if isinstance(placed, str):
        placed = place(spread=False)
        if isinstance(placed, str):
            raise wait_forever(placed)
    others = {k: v for k, v in video.items() if k != "CPU"}
    cpus = max((f.get("CPU", 0.0) for f in placed if fits(others, f)), default=-1.0)
    want = video.get("CPU", 0.0)
    if cpus + 1e-9 >= want:
        return want
    if cpus + 1e-9 < min(want, MIN_VIDEO_CPUS):
        raise wait_forever("per-video task")
    return math.floor(cpus * 100 + 1e-6) / 100  # hundredths of a CPU, never more than is left


def _describe(need: dict[str, float]) -> str:
    from vidsift.pipeline.watchdog import _describe as describe

    return describe({k: v for k, v in need.items() if v})


def forwarded_env(recipe: Recipe) -> dict[str, str]:
    """Environment variables every task and actor of the run gets (``_init_ray``'s setup hook): those the
    recipe names (each backend's ``api_key_env``) and the AWS settings (``storage.AWS_VARIABLES``),
    where this process has them. Their values go to Ray's key-value store only: never to the manifest,
    the resolved recipe, the shards, our output or Ray's logs (docs/architecture.md, "Failure classes")."""
    names = set(storage.AWS_VARIABLES)
    names.update(getattr(s.config, "api_key_env", "") or "" for s in recipe.stages)
    return {n: os.environ[n] for n in sorted(names) if n and os.environ.get(n)}


def _video_stages(recipe: Recipe) -> list:
    """The stages that run inside the per-video task (its resources are the most any of them asks)."""
    return recipe.stages_of_kind("video") + recipe.stages_of_kind("video_filter")


def _run_groups(
    recipe: Recipe,
    pending: dict[str, list[str]],
    duplicates: dict[str, str],
    out: Path | str,
    address: str | None,
    console,
    worker_env: dict[str, str],
    source_meta: dict[str, str | None] | None = None,
) -> dict:
    import ray

    from vidsift.pipeline.input_lists import FetchLimits
    from vidsift.pipeline.watchdog import StallWatchdog

    worker_env = {**forwarded_env(recipe), **worker_env}  # to every task and actor of the run
    hooked = _init_ray(address, worker_env)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    video_cpus = None
    if recipe.run.check_resources:
        video_cpus = check_fits(*_demands(recipe), [n["Resources"] for n in nodes])
    ctx = ray.data.DataContext.get_current()
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    # Ray 2.60 warns that scheduling_strategy/runtime_env passed to map_batches will need its new named
    # parameters in 2.64; Ray is pinned to 2.60 (pyproject.toml), so the warning is noise in every run
    warnings.filterwarnings("ignore", message=".*ray_remote_args.*is deprecated")
    ctx.enable_progress_bars = False  # one progress display: ours
    ctx.print_on_execution_start = False
    if recipe.run.object_store_gb:
        # backpressure: Ray Data stops launching tasks once its operators' outputs hold this much
        limits = ctx.execution_options.resource_limits
        ctx.execution_options.resource_limits = limits.copy(
            object_store_memory=recipe.run.object_store_gb * 2**30
        )
    items = [
        {
            "source_uri": uri,
            "group": g,
            "duplicate_of": duplicates.get(uri),
            "source_meta": (source_meta or {}).get(uri),
        }  # fmt: skip
        for g, files in pending.items()
        for uri in files
    ]
    video_res = _max_resources([s.resources for s in _video_stages(recipe)])
    if video_cpus is not None and video_cpus < video_res["num_cpus"]:
        console.print(
            f"vidsift curate: per-video tasks run with num_cpus={video_cpus:g} instead of "
            f"{video_res['num_cpus']:g}: no node has more left once the clip-stage pools are spread over it"
        )
        video_res["num_cpus"] = video_cpus
    # per-video work is CPU-bound and independent: spread it over the nodes instead of Ray's default of
    # filling the driver's node first (one node alone on a 1-node Ray)
    video_res["scheduling_strategy"] = "SPREAD"
    if worker_env and not hooked:  # a driver inside the cluster (ray://): Ray logs these values
        video_res["runtime_env"] = {"env_vars": worker_env}  # S3 settings, API keys
    if recipe.run.max_videos_in_flight:
        video_res["compute"] = ray.data.TaskPoolStrategy(size=recipe.run.max_videos_in_flight)
    fetch_limits = FetchLimits.from_env(recipe.run.fetch_max_mb, recipe.run.fetch_timeout_s)
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        video_task,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={"recipe_dict": recipe.to_dict(), "fetch": dataclasses.asdict(fetch_limits)},
        **video_res,
    )
    for entry in recipe.stages_of_kind("clip"):
        res = entry.resources
        ds = ds.map_batches(
            ClipStageTask,
            fn_constructor_kwargs={"name": entry.name, "config": dataclasses.asdict(entry.config)},
            batch_size=getattr(entry.config, "batch_size", 8),
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=res.min_actors, max_size=res.max_actors),
            **res.ray_options(),
            **({"runtime_env": video_res["runtime_env"]} if "runtime_env" in video_res else {}),
        )
    ds = ds.map_batches(write_parts, batch_format="pyarrow", fn_kwargs={"out": str(out)}, **video_res)
    buffers = {g: GroupBuffer(expected=set(files)) for g, files in pending.items()}
    parts: dict[str, set[str]] = defaultdict(set)
    write_cfg = dataclasses.asdict(recipe.stage("write_shards"))
    publish = ray.remote(publish_group).options(
        num_cpus=0, max_retries=3, scheduling_strategy="SPREAD", runtime_env=video_res.get("runtime_env")
    )
    publishing: list = []
    accepted = 0
    rows_by_stage: dict[str, Counter] = defaultdict(Counter)
    counters = "{task.fields[clips]} clips, {task.fields[groups]} groups written"
    with progress_bar("curate", "videos", counters, console=console) as progress:
        task = progress.add_task("curate", total=len(items), clips=0, groups=0)
        written = 0
        video_demand, actor_demands = _demands(recipe)
        names = {_describe(d): f"stage {n}" for n, d in actor_demands}
        names[_describe({**video_demand, "CPU": video_res["num_cpus"]})] = "the per-video task"
        watchdog = StallWatchdog(names).start()  # no progress while Ray holds unplaceable demands: an error
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            watchdog.progress()
            for row in batch.to_pylist():  # receipts: a few short strings per row
                buffers[row["group"]].count(row)
                parts[row["group"]].add(row["part"])
                for stage, node in json.loads(row["placement"] or "{}").items():
                    if stage != "video" or row["row_kind"] == "video":  # videos, or clips of a clip stage
                        rows_by_stage[stage][node] += 1
                if row["row_kind"] == "video":
                    progress.advance(task)
                elif not row["reject_reason"]:
                    accepted += 1
            for g in [g for g, b in buffers.items() if b.complete()]:
                buffers.pop(g)
                publishing.append(publish.remote(str(out), g, pending[g], sorted(parts.pop(g)), write_cfg))
            done, publishing = ray.wait(publishing, num_returns=len(publishing), timeout=0)
            ray.get(done)  # a group that could not be written fails the run here, with its error
            written += len(done)
            progress.update(task, clips=accepted, groups=written)
        watchdog.stop()
        if buffers:
            raise RuntimeError(f"groups never completed: {sorted(buffers)}")
        while publishing:
            done, publishing = ray.wait(publishing)
            ray.get(done)
            written += len(done)
            progress.update(task, groups=written)
    storage.remove_tree(storage.join(out, PARTS))
    # per Ray node: videos of the per-video task, clips of each clip stage, in this invocation (a
    # resumed run counts only what it ran)
    return {
        "rows": {stage: dict(sorted(c.items())) for stage, c in sorted(rows_by_stage.items())},
        "nodes": {
            n["NodeID"]: {k: v for k, v in sorted(n["Resources"].items()) if not k.startswith("node:")}
            for n in nodes
        },
    }


def _max_resources(resources: list) -> dict:
    opts: dict = {}
    for r in resources:
        for k, v in r.ray_options().items():
            if k == "resources":
                merged = opts.setdefault("resources", {})
                for rk, rv in v.items():
                    merged[rk] = max(merged.get(rk, 0), rv)
            elif isinstance(v, str):
                opts[k] = v  # accelerator_type: the per-video stages should agree on one
            else:
                opts[k] = max(opts.get(k, 0), v)
    return opts
