"""The Ray Data plan of a curation run: per-video tasks, then one actor pool per clip stage, then the parts.

    inputs -> video_task (probe .. transcode, a task per video) -> clip stage pools -> write_parts -> receipts

- ``video_task`` runs the per-video stages (``process.process_input``). It publishes the video row at once,
  to its own part file (``publish.write_video_part``), so video rows travel separately: the stream carries
  the video's clips (``WORK_SCHEMA``: the clip columns plus row bookkeeping) and one small receipt row for
  the video.
- ``ClipStageTask`` loads one clip stage once per actor. ``run_clip_stage`` gives the stage only the accepted
  clip rows of a batch, only the columns it declares it reads (``stage.reads``), and joins the columns it
  wrote back into the batch, in place; rejected clips and video receipts pass
  through untouched.
- Where work ran is noted once per batch and stage (``note_placement``: ``{stage: {node: rows}}`` on the
  batch's first row), not per row; the driver sums the receipts' notes into ``last_run_placement``. A retried
  task's output replaces the failed one's, so nothing is counted twice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vidsift.pipeline.cluster import max_resources, node_id, video_stages
from vidsift.pipeline.publish import WORK_SCHEMA, publish_group, write_failed, write_parts, write_video_part
from vidsift.pipeline.ray_session import apply_env
from vidsift.pipeline.recipe import Recipe


def video_task(
    batch: pa.Table,
    recipe_dict: dict,
    out: str,
    fetch: dict | None = None,
    cwd: str = "",
    env: list | None = None,
) -> pa.Table:
    """Ray Data UDF: input rows (source_uri, group, duplicate_of, source_meta) -> the videos' clip rows and
    one receipt row per video (its row already written to a part file under ``out``)."""
    from vidsift.pipeline.input_lists import FetchLimits, process_input
    from vidsift.pipeline.recipe import build_recipe

    enter_run(cwd, env)
    recipe = build_recipe(recipe_dict)
    rows = []
    for item in batch.to_pylist():
        limits = FetchLimits(**(fetch or {}))
        video, clips = process_input(item["source_uri"], item["group"], recipe, item["duplicate_of"], limits)
        if item.get("source_meta"):  # an input list's other columns, carried into every row of the video
            for row in [video, *clips]:
                row["source_meta"] = item["source_meta"]
        n = len(clips) + 1
        try:
            part = write_video_part(out, video, n)
        except OSError as e:  # the output cannot be written: the driver stops the run with this error
            rows.append(write_failed(video["group"], video["source_uri"], e))
            continue
        receipt = {"group": video["group"], "source_uri": video["source_uri"], "part": part}
        rows.append({"row_kind": "video", "rows_of_video": n, **receipt})
        rows.extend({"row_kind": "clip", "rows_of_video": n, **c} for c in clips)
    table = pa.Table.from_pylist([{n: r.get(n) for n in WORK_SCHEMA.names} for r in rows], schema=WORK_SCHEMA)
    return note_placement(table, "video", batch.num_rows)


def note_placement(batch: pa.Table, stage: str, n: int) -> pa.Table:
    """``batch`` with ``n`` rows of work by ``stage`` on this worker's node added to the placement note of its
    first row (``publish.WORK_SCHEMA``); unchanged when there is nothing to note."""
    if not n or not batch.num_rows:
        return batch
    note = json.loads(batch["placement"][0].as_py() or "{}")
    nodes = note.setdefault(stage, {})
    node = node_id()
    nodes[node] = nodes.get(node, 0) + n
    column = batch["placement"].combine_chunks().to_pylist()
    column[0] = json.dumps(note, sort_keys=True)
    index = batch.schema.get_field_index("placement")
    return batch.set_column(index, batch.schema.field(index), pa.array(column, pa.string()))


def accepted_clips(batch: pa.Table) -> pa.ChunkedArray:
    """The mask of the rows a clip stage works on: clips that no stage has rejected."""
    return pc.and_(pc.equal(batch["row_kind"], "clip"), pc.is_null(batch["reject_reason"]))


def run_clip_stage(stage, batch: pa.Table) -> tuple[pa.Table, int]:
    """A loaded clip stage on the accepted clips of ``batch`` (only their ``stage.reads`` columns); its
    written columns joined back in place. Returns the batch and how many clips the stage saw."""
    from vidsift.pipeline.process import call_clip_stage

    mask = accepted_clips(batch).combine_chunks()
    todo = batch.filter(mask)
    if not todo.num_rows:
        return batch, 0
    written = call_clip_stage(stage, todo.select(list(stage.reads)).to_pylist())
    # row i of the joined column: the stage's value for an accepted clip, else the batch's own
    take = np.arange(batch.num_rows)
    take[np.flatnonzero(mask.to_numpy(zero_copy_only=False))] = batch.num_rows + np.arange(todo.num_rows)
    take = pa.array(take)
    for name in sorted({c for w in written for c in w}):
        old = todo[name].to_pylist()  # a clip the stage left this column alone on keeps its value
        new = [w[name] if name in w else o for w, o in zip(written, old, strict=True)]
        index = batch.schema.get_field_index(name)
        field = batch.schema.field(index)
        both = pa.concat_arrays([batch[name].combine_chunks(), pa.array(new, type=field.type)])
        batch = batch.set_column(index, field, both.take(take))
    return batch, todo.num_rows


class ClipStageTask:
    """Ray Data actor for one clip stage: loads the stage (its model) once, then maps batches."""

    def __init__(self, name: str, config: dict, cwd: str = "", env: list | None = None) -> None:
        from vidsift.pipeline.registry import STAGES

        enter_run(cwd, env)
        spec = STAGES[name]
        self.name = name
        self.stage = spec.impl(spec.config(**config))
        unknown = [c for c in (*self.stage.reads, *self.stage.writes) if c not in WORK_SCHEMA.names]
        if unknown:
            raise RuntimeError(f"stage {name} declares columns that are not clip columns: {unknown}")

    def __call__(self, batch: pa.Table) -> pa.Table:
        batch, n = run_clip_stage(self.stage, batch)
        return note_placement(batch, self.name, n)


def enter_run(cwd: str, env: list | None) -> None:
    """What every task and actor of the run does first.

    ``cwd``: run in the driver's working directory where this node has it, so that a stage's relative paths
    (a model folder such as ``out/tiny-models/tiny-qwen2-lm``, a sidecar) and a relative ``--output`` mean on
    the workers what they mean where the user typed them: a Ray worker starts elsewhere (its raylet's
    folder). The rows still record the names as the recipe gives them. On a cluster such paths must be on a
    filesystem every node mounts at the same place; where the folder does not exist the worker stays.

    ``env``: ``[ObjectRef]`` of the variables a driver inside the cluster (``ray://``) forwards (API keys,
    S3 settings), or ``[None]`` / None when the job's setup hook has set them already; a list, so that Ray
    passes the reference through instead of its value."""
    if cwd and os.path.isdir(cwd) and os.getcwd() != cwd:
        os.chdir(cwd)
    apply_env(env)


def publish_in_run(env: list | None, out: str, group: str, files: list[str], parts: list[str], config: dict):
    """``publish.publish_group`` as a task of the run (with the run's forwarded environment)."""
    enter_run("", env)
    return publish_group(out, group, files, parts, config)


def video_resources(recipe: Recipe, video_cpus: float | None) -> dict:
    """Ray options of the per-video task: the most any per-video stage asks, with ``video_cpus`` (the
    placement check's share) when it is lower; spread over the nodes."""
    res = max_resources([s.resources for s in video_stages(recipe)])
    if video_cpus is not None and video_cpus < res["num_cpus"]:
        res["num_cpus"] = video_cpus
    # per-video work is CPU-bound and independent: spread it over the nodes instead of Ray's default of
    # filling the driver's node first (one node alone on a 1-node Ray)
    res["scheduling_strategy"] = "SPREAD"
    return res


def build_dataset(recipe: Recipe, items: list[dict], out: str, video_res: dict, fetch: dict, env_ref=None):
    """The run's Ray Data plan over ``items`` (one per input video); iterating it yields receipts."""
    import ray

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
    if recipe.run.max_videos_in_flight:
        video_res = {**video_res, "compute": ray.data.TaskPoolStrategy(size=recipe.run.max_videos_in_flight)}
    cwd = os.getcwd()  # relative paths in stage configs mean the same on the workers (enter_run)
    env = [env_ref]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        video_task,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={
            "recipe_dict": recipe.to_dict(),
            "out": out,
            "fetch": fetch,
            "cwd": cwd,
            "env": env,
        },  # fmt: skip
        **video_res,
    )
    for entry in recipe.stages_of_kind("clip"):
        res = entry.resources
        ds = ds.map_batches(
            ClipStageTask,
            fn_constructor_kwargs={
                "name": entry.name,
                "config": dataclasses.asdict(entry.config),
                "cwd": cwd,
                "env": env,
            },
            batch_size=getattr(entry.config, "batch_size", 8),
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=res.min_actors, max_size=res.max_actors),
            **res.ray_options(),
        )
    return ds.map_batches(
        write_parts_in_run,
        batch_format="pyarrow",
        fn_kwargs={"out": out, "cwd": cwd, "env": env},
        **video_res,
    )


def write_parts_in_run(batch: pa.Table, out: str, cwd: str = "", env: list | None = None) -> pa.Table:
    """``publish.write_parts`` as a task of the run (its working directory and forwarded environment)."""
    enter_run(cwd, env)
    return write_parts(batch, out)
