"""The Ray side of a curation run: what each worker asks for, whether it fits, and what it is given.

Starting or joining Ray is ``pipeline/ray_session.py`` (a base module: ``vidsift encode`` uses it too).

- ``forwarded_env``: the run's environment (API keys, S3 settings) that ``ray_session.init_ray`` gives to
  every worker by a setup hook;
- ``demands`` / ``check_fits``: the placement check before anything runs: one per-video task plus every
  clip-stage pool's ``min_actors``, placed per node the way Ray spreads them; a recipe that could never be
  placed is a ``RecipeError`` naming the stage, not a silent stall;
- ``node_id``: the Ray node a worker runs on (where work ran: ``dataflow.note_placement``).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict

from vidsift.pipeline import storage
from vidsift.pipeline.recipe import Recipe, RecipeError


def node_id() -> str:
    """The Ray node this worker runs on ("" outside Ray, e.g. a stage called directly in a test)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def demands(recipe: Recipe) -> tuple[dict[str, float], list[tuple[str, dict[str, float]]]]:
    """Ray resources of one video task, and of every actor each clip-stage pool starts with."""
    video = _as_ray_resources(max_resources([s.resources for s in video_stages(recipe)]))
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


def describe_demand(need: dict[str, float]) -> str:
    from vidsift.pipeline.watchdog import _describe as describe

    return describe({k: v for k, v in need.items() if v})


def forwarded_env(recipe: Recipe) -> dict[str, str]:
    """Environment variables every task and actor of the run gets (``init_ray``'s setup hook): those the
    recipe names (each backend's ``api_key_env``) and the AWS settings (``storage.AWS_VARIABLES``),
    where this process has them. Their values go to Ray's key-value store only: never to the manifest,
    the resolved recipe, the shards, our output or Ray's logs (docs/architecture.md, "Failure classes")."""
    names = set(storage.AWS_VARIABLES)
    names.update(getattr(s.config, "api_key_env", "") or "" for s in recipe.stages)
    return {n: os.environ[n] for n in sorted(names) if n and os.environ.get(n)}


def video_stages(recipe: Recipe) -> list:
    """The stages that run inside the per-video task (its resources are the most any of them asks)."""
    return recipe.stages_of_kind("video") + recipe.stages_of_kind("video_filter")


def max_resources(resources: list) -> dict:
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
