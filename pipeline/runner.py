"""``vidsift curate``, the driver: inputs, groups, fingerprint and resume; then the run and its manifest.

Inputs are listed, sorted and cut into deterministic groups of ``run.group_size`` files. Groups
with a completion marker in ``OUT/_done`` are skipped, so a killed run restarted with the same
command redoes only unfinished groups and ends with the same rows as an uninterrupted run.
Inputs and ``OUT`` are local paths or ``s3://`` URIs (``pipeline/storage.py``).

The other jobs of a run live in their own modules:

- ``cluster``: joining Ray, the placement check before anything runs (``check_fits``), where work ran;
- ``dataflow``: the Ray Data plan (per-video tasks, clip-stage pools that see only their columns of
  accepted clips, part files);
- ``publish``: part files, receipts and publishing a group once all its rows are in;
- ``manifest``: ``manifest.json`` and the summary, counted with the code ``vidsift stats`` uses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from vidsift.pipeline import storage
from vidsift.pipeline.cluster import (
    check_fits,
    demands,
    describe_demand,
    forwarded_env,
    max_resources,
    video_stages,
)
from vidsift.pipeline.dataflow import build_dataset, publish_in_run, video_resources
from vidsift.pipeline.manifest import build_manifest, print_summary
from vidsift.pipeline.progress import progress_bar
from vidsift.pipeline.publish import PARTS, WRITE_FAILED, GroupBuffer
from vidsift.pipeline.ray_session import init_ray
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


class OutputError(RecipeError):
    """The run stopped because the output (or its spool) could not be written: a full disk, storage out of
    reach, its folder gone. Finished groups are kept; ``vidsift curate`` exits ``EXIT_INCOMPLETE``."""


def stopped(output: str | Path, error: str) -> str:
    return (
        f"the run stopped on a storage error: {error}; the groups finished so far are kept "
        f"({storage.join(output, '_done')}): rerun the same command to resume"
    )


def storage_error(error: BaseException) -> OSError | None:
    """The ``OSError`` behind a run's failure, if one is: the driver's own write, a publish task's or a
    worker's part file (Ray wraps those; the original is in the chain). Failures of one input never get
    here: they are that video's rejection (``process``)."""
    found, seen, todo = None, set(), [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and not type(e).__module__.startswith("ray"):
            found = e  # the innermost original, not Ray's wrapper of it
        context = None if e.__suppress_context__ else e.__context__  # `raise ... from None` hides it
        todo += [e.__cause__, context, getattr(e, "cause", None)]
    return found


def run_curate(
    recipe: Recipe,
    input_path: str,
    output: str,
    limit: int | None = None,
    address: str | None = None,
    quiet: bool = False,
    retry_failed: bool = False,
    stall_timeout_s: float | None = None,
) -> int:
    if (address or os.environ.get("RAY_ADDRESS") or "").startswith("ray://"):  # it locks in there
        return _run_through_client(recipe, input_path, output, limit, address, quiet, retry_failed)
    from vidsift.pipeline.lock import output_lock

    # one writer per output: a second run on it refuses at once, naming this one (pipeline/lock.py);
    # the recipe's S3 settings apply to the lock too
    os.environ.update(storage.s3_environment(recipe.run.s3_endpoint_url, recipe.run.s3_region))
    from vidsift.pipeline import watchdog

    watchdog.configure(recipe.run.stall_timeout_s if stall_timeout_s is None else stall_timeout_s)
    with output_lock(output, "curate"):
        try:
            return _curate_locked(recipe, input_path, output, limit, address, quiet, retry_failed)
        except KeyboardInterrupt:
            watchdog.raise_if_stalled()  # the stall watchdog interrupted the run: its error, one line
            raise
        except RecipeError:  # a user error (no input, a bad recipe, ...): its own one line
            raise
        except Exception as e:
            cause = storage_error(e)
            if cause is None:
                raise
            raise OutputError(stopped(output, f"{type(cause).__name__}: {cause}")) from None
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
        held = hold_back_transient(out, list(pending), run.transient_tries)  # left for a rerun
    dedup: dict | None = None
    if any(s.name == "dedup" for s in recipe.stages):
        from vidsift.pipeline.dedup_run import dedup_run  # the index, its counts and the group rewrites

        dedup = dedup_run(
            out, recipe.stage("dedup"), recipe.stage("write_shards"), log=console.print, console=console
        )
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

    init_ray(address)
    # the recipe's API keys and the S3 settings of this process go to the in-cluster driver through the
    # object store (not runtime_env env_vars, whose values Ray writes to its logs); it forwards them to the
    # run's workers the same way (``forwarded_env``, ``dataflow.enter_run``)
    s3 = storage.s3_environment(recipe.run.s3_endpoint_url, recipe.run.s3_region)
    env = [ray.put({**forwarded_env(recipe), **s3})]
    task = ray.remote(_curate_in_cluster).options(num_cpus=0, max_retries=0)
    error = ray.get(task.remote(recipe.to_dict(), input_path, output, limit, quiet, retry_failed, env))
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
    env: list | None = None,
) -> str:
    """The driver of a ``ray://`` run, inside the cluster; returns a user error's message, or ""."""
    from vidsift.pipeline.dataflow import enter_run
    from vidsift.pipeline.recipe import build_recipe

    enter_run("", env)  # API keys and S3 settings of the client: forwarded to the workers from here
    recipe = build_recipe(recipe_dict)
    try:
        rc = run_curate(recipe, input_path, output, limit, None, quiet, retry_failed)
    except RecipeError as e:
        return str(e)
    return "transient failures left groups unfinished; rerun the same command to retry them" if rc else ""


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
    """Run the Ray Data plan (``dataflow.build_dataset``) over the pending groups' videos; publish each group
    as soon as all its rows are in. Returns the placement summary of this invocation."""
    import ray

    from vidsift.pipeline.input_lists import FetchLimits
    from vidsift.pipeline.watchdog import StallWatchdog

    worker_env = {**forwarded_env(recipe), **worker_env}  # to every task and actor of the run
    hooked = init_ray(address, worker_env)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    video_cpus = None
    if recipe.run.check_resources:
        video_cpus = check_fits(*demands(recipe), [n["Resources"] for n in nodes])
    video_res = video_resources(recipe, video_cpus)
    wanted = max_resources([s.resources for s in video_stages(recipe)])["num_cpus"]
    if video_res["num_cpus"] < wanted:
        console.print(
            f"vidsift curate: per-video tasks run with num_cpus={video_res['num_cpus']:g} instead of "
            f"{wanted:g}: no node has more left once the clip-stage pools are spread over it"
        )
    # A driver inside the cluster (ray://) could not install the setup hook: the values go to every task and
    # actor of the run through the object store (one reference, fetched by the worker: never runtime_env
    # env_vars, which Ray writes to its logs, nor a plain argument Ray may print)
    env_ref = ray.put(worker_env) if worker_env and not hooked else None
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
    fetch = dataclasses.asdict(FetchLimits.from_env(recipe.run.fetch_max_mb, recipe.run.fetch_timeout_s))
    ds = build_dataset(recipe, items, str(out), video_res, fetch, env_ref)
    buffers = {g: GroupBuffer(expected=set(files)) for g, files in pending.items()}
    parts: dict[str, set[str]] = defaultdict(set)
    write_cfg = dataclasses.asdict(recipe.stage("write_shards"))
    publish = ray.remote(publish_in_run).options(num_cpus=0, max_retries=3, scheduling_strategy="SPREAD")
    publishing: list = []
    accepted = 0
    rows_by_stage: dict[str, Counter] = defaultdict(Counter)
    counters = "{task.fields[clips]} clips, {task.fields[groups]} groups written"
    with progress_bar("curate", "videos", counters, console=console) as progress:
        task = progress.add_task("curate", total=len(items), clips=0, groups=0)
        written = 0
        video_demand, actor_demands = demands(recipe)
        names = {describe_demand(d): f"stage {n}" for n, d in actor_demands}
        names[describe_demand({**video_demand, "CPU": video_res["num_cpus"]})] = "the per-video task"
        watchdog = StallWatchdog(names).start()  # no progress while Ray holds unplaceable demands: an error
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            watchdog.progress()
            for row in batch.to_pylist():  # receipts: a few short strings per row
                if row["row_kind"] == WRITE_FAILED:
                    raise OutputError(stopped(out, row["reject_detail"]))
                buffers[row["group"]].count(row)
                parts[row["group"]].add(row["part"])
                for stage, by_node in json.loads(row["placement"] or "{}").items():
                    rows_by_stage[stage].update(by_node)
                if row["row_kind"] == "video":
                    progress.advance(task)
                elif not row["reject_reason"]:
                    accepted += 1
            for g in [g for g, b in buffers.items() if b.complete()]:
                buffers.pop(g)
                group_parts = sorted(parts.pop(g))
                publishing.append(publish.remote([env_ref], str(out), g, pending[g], group_parts, write_cfg))
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
    # per Ray node: videos of the per-video task, clips of each clip stage, in this invocation (a resumed
    # run counts only what it ran)
    return {
        "rows": {stage: dict(sorted(c.items())) for stage, c in sorted(rows_by_stage.items())},
        "nodes": {
            n["NodeID"]: {k: v for k, v in sorted(n["Resources"].items()) if not k.startswith("node:")}
            for n in nodes
        },
    }
