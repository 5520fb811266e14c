"""``vidsift curate --dry-run``: what a run would do, without running it or writing anything.

Lists the inputs (how many, their bytes, URLs and ``source_meta`` keys of an input list), the groups
(and which an existing ``--output`` has finished, or that it holds another run), the stages with
their resources, and the placement check against the Ray cluster (``cluster.check_fits``: an embedded
local Ray is started, or ``--address`` is joined, only to read its nodes' resources; no task runs).
"""

from __future__ import annotations

import json
import os
from collections import Counter

from vidsift.pipeline import storage
from vidsift.pipeline.recipe import Recipe, RecipeError
from vidsift.pipeline.registry import STAGES

SHOWN_INPUTS = 10


def curate_plan(recipe: Recipe, input_path: str, output: str, limit: int | None, address: str | None) -> dict:
    """The plan as a JSON-ready dict; ``placement.error`` says why the stages cannot be placed."""
    from vidsift.pipeline.cluster import check_fits, demands
    from vidsift.pipeline.input_lists import is_url, source_metas
    from vidsift.pipeline.runner import fingerprint, list_inputs, make_groups
    from vidsift.pipeline.stages.write_shards import done_groups

    os.environ.update(storage.s3_environment(recipe.run.s3_endpoint_url, recipe.run.s3_region))
    sizes = list_inputs(input_path)
    if limit:
        sizes = dict(list(sizes.items())[:limit])
    inputs = list(sizes)
    metas = source_metas(input_path)
    meta_keys: Counter = Counter()
    for uri in inputs:
        if metas.get(uri):
            meta_keys.update(list(json.loads(metas[uri])))  # count each key once per input
    groups = make_groups(inputs, recipe.run.group_size)
    output_state = "new"
    finished: set[str] = set()
    state_path = storage.join(output, "_run.json")
    if storage.exists(state_path):
        earlier = json.loads(storage.read_text(state_path))
        if earlier.get("fingerprint") != fingerprint(inputs, recipe):
            output_state = "holds another run (curate would refuse it)"
        else:
            finished = done_groups(output) & set(groups)
            output_state = f"resume: {len(finished)} of {len(groups)} groups done"
    video, actors = demands(recipe)
    plan = {
        "inputs": {
            "count": len(inputs),
            "bytes_known": sum(sizes.values()),
            "urls": sum(is_url(u) for u in inputs),
            "first": inputs[:SHOWN_INPUTS],
            "source_meta_keys": dict(sorted(meta_keys.items())),
        },
        "groups": {
            "count": len(groups),
            "group_size": recipe.run.group_size,
            "to_run": len(groups) - len(finished),
        },
        "output": {"path": str(output), "state": output_state},
        "stages": [
            {"name": s.name, "kind": STAGES[s.name].kind, "resources": s.resources.ray_options()}
            for s in recipe.stages
        ],
        "demand": {"per_video_task": video, "actors": [{"stage": n, "resources": r} for n, r in actors]},
        "placement": {"checked": recipe.run.check_resources, "nodes": [], "error": None},
    }
    if recipe.run.check_resources:
        import ray

        from vidsift.pipeline.ray_session import init_ray

        started_here = not ray.is_initialized()
        init_ray(address)
        try:
            nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
        finally:
            if started_here:
                ray.shutdown()
        plan["placement"]["nodes"] = [
            {k: v for k, v in sorted(n.items()) if not k.startswith("node:")} for n in nodes
        ]
        try:
            check_fits(video, actors, nodes)
        except RecipeError as e:
            plan["placement"]["error"] = str(e)
    return plan


def print_plan(plan: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(soft_wrap=True)  # long paths stay on one line
    i = plan["inputs"]
    console.print(
        f"[bold]vidsift curate --dry-run[/]: {i['count']} inputs ({i['bytes_known'] / 1e6:.1f} MB known"
        + (f", {i['urls']} URLs fetched when run" if i["urls"] else "")
        + f"), {plan['groups']['count']} groups of {plan['groups']['group_size']}, "
        f"{plan['groups']['to_run']} to run"
    )
    console.print(f"output {escape(plan['output']['path'])}: {plan['output']['state']}")
    for uri in i["first"]:
        console.print(f"  {escape(uri)}")
    if i["count"] > len(i["first"]):
        console.print(f"  ... and {i['count'] - len(i['first'])} more")
    if i["source_meta_keys"]:
        keys = ", ".join(f"{escape(k)} ({n})" for k, n in i["source_meta_keys"].items())
        console.print(f"source_meta keys (inputs that have them): {keys}")
    t = Table(title="stages", show_header=True)
    for col in ("stage", "kind", "resources"):
        t.add_column(col)
    for s in plan["stages"]:
        t.add_row(s["name"], s["kind"], ", ".join(f"{k}={v}" for k, v in s["resources"].items()))
    console.print(t)
    p = plan["placement"]
    if not p["checked"]:
        console.print("placement: not checked (run.check_resources = false)")
    elif p["error"]:
        console.print(f"placement: [bold red]does not fit[/]: {escape(p['error'])}")
    else:
        console.print(f"placement: fits on {len(p['nodes'])} Ray node(s)")


def dry_run(recipe: Recipe, input_path: str, output: str, limit: int | None, address: str | None) -> int:
    """Print the plan; a placement that cannot work is the command's error (``RecipeError``)."""
    plan = curate_plan(recipe, input_path, output, limit, address)
    print_plan(plan)
    if plan["placement"]["error"]:
        raise RecipeError(plan["placement"]["error"])
    return 0
