"""``vidsift encode OUT --vae CKPT``: fill the cached-input columns of every clip shard, as a Ray Data job.

One task per shard file runs on an actor pool whose actors load the VAE and the text encoder once
(``__init__``) and then, per file: decode each clip (the middle window at the requested size), encode it,
embed its caption, and write the file again with ``latent``, ``latent_shape``, ``latent_model``,
``text_emb``, ``text_emb_shape`` and ``text_model`` filled. The new file is written beside the old one and
moved over it (``pipeline/storage.py``: a rename, or on S3 a copy then delete), so a crash never leaves a
half-written shard. The run folder may be an ``s3://`` prefix. Ray starts embedded on
this machine unless RAY_ADDRESS points at a cluster.

Text embeddings keep only the caption's real tokens ([tokens, dim], float16); the trainer pads them.

``vidsift encode OUT --vae diffusers:NAME`` (``encode_family``) caches a pretrained diffusers family's VAE
posteriors and caption embeddings for ``vidsift finetune`` instead: the same Ray plan, one task per shard
file, but the clip shards stay untouched and each group's rows go to ``OUT/latents/<model>/<group>.parquet``
(model/finetune/latents.py says why and what a row holds). A rerun skips groups already written with the
same settings.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from vidsift.pipeline import storage


class EncodeShards:
    """Ray actor: models loaded once, then one shard file per call."""

    def __init__(
        self,
        vae: str,
        text_model: str,
        frames: int,
        height: int,
        width: int,
        stride: int,
        text_tokens: int,
        env: list | None = None,
    ) -> None:
        import torch

        from vidsift.model.vae import load_vae
        from vidsift.pipeline.ray_session import apply_env
        from vidsift.pipeline.text_encoder import TextEncoder

        apply_env(env)  # the bucket's AWS settings, before anything reads a shard
        torch.set_num_threads(max(1, torch.get_num_threads()))
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.vae_path = vae
        self.vae = load_vae(vae, self.device)
        self.text = TextEncoder(text_model, text_tokens, self.device)
        self.size = (frames, height, width, stride)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {"path": [], "rows": [], "seconds": []}
        for path in batch["path"]:
            t0 = time.time()
            out["rows"].append(self.encode_file(str(path)))
            out["path"].append(str(path))
            out["seconds"].append(time.time() - t0)
        return out

    def encode_file(self, path: str) -> int:
        import pyarrow as pa
        import torch

        from vidsift.model.data import ClipSource, DataError

        table = storage.read_table(path)
        frames, height, width, stride = self.size
        source = ClipSource(frames, height, width, stride)
        latents, latent_shapes, embs, emb_shapes = [], [], [], []
        for row in table.select(["clip_id", "clip_mp4", "caption"]).to_pylist():
            try:
                x = source.sample(row, 0.5).x[None].to(self.device)
            except DataError:
                latents.append(None)  # an unreadable clip keeps null latents; training reports it by clip id
                latent_shapes.append(None)
            else:
                z = self.vae.encode(x)[0].to(torch.float16).cpu().numpy()
                latents.append(np.ascontiguousarray(z).tobytes())
                latent_shapes.append(list(z.shape))
            emb, mask = self.text([(row["caption"] or "").strip()])
            e = emb[0][mask[0]].to(torch.float16).cpu().numpy()
            embs.append(np.ascontiguousarray(e).tobytes())
            emb_shapes.append(list(e.shape))
        n = table.num_rows
        values = {
            "latent": pa.array(latents, pa.binary()),
            "latent_shape": pa.array(latent_shapes, pa.list_(pa.int32())),
            "latent_model": pa.array([self.vae_path] * n, pa.string()),
            "text_emb": pa.array(embs, pa.binary()),
            "text_emb_shape": pa.array(emb_shapes, pa.list_(pa.int32())),
            "text_model": pa.array([self.text.name] * n, pa.string()),
        }
        for name, arr in values.items():
            i = table.schema.get_field_index(name)
            field = table.schema.field(name) if i >= 0 else pa.field(name, arr.type)
            table = table.set_column(i, field, arr) if i >= 0 else table.append_column(field, arr)
        # a hidden temporary file (key) beside the shard, then moved over it: readers never see half a file
        # with the file's own row groups (the run's shard contract decided them)
        storage.write_row_groups_atomic(table, path, _row_group_sizes(path), compression="zstd")
        return n


def _row_group_sizes(path: str) -> list[int]:
    md = storage.read_parquet_metadata(path)
    return [md.row_group(i).num_rows for i in range(md.num_row_groups)]


def actor_resources(gpus: float | None, cluster_gpus: float, workers: int, files: int) -> dict:
    """The Ray options of the encode actors: ``num_gpus`` each and the pool size.

    ``gpus`` is what each actor asks for; ``None`` means one GPU when the cluster has any, else none (Ray
    hides GPUs from actors that do not request one, so without this an actor on a GPU node encodes on its
    CPU). The pool never asks for more GPUs than the cluster has (its actors would wait forever).
    """
    if gpus is None:
        gpus = 1.0 if cluster_gpus >= 1 else 0.0
    if gpus < 0:
        raise ValueError(f"encode: gpus per worker must be >= 0, got {gpus}")
    if gpus > cluster_gpus:
        raise ValueError(
            f"encode: each worker asks for {gpus} GPU(s) but the Ray cluster has {cluster_gpus:g}"
        )
    size = max(1, min(workers, files))
    if gpus:
        size = max(1, min(size, int(cluster_gpus // gpus)))
    return {"num_gpus": gpus, "size": size}


def encode_shards(
    data: str,
    vae: str,
    text_model: str = "",
    frames: int = 17,
    height: int = 128,
    width: int = 128,
    stride: int = 2,
    text_tokens: int = 32,
    workers: int = 1,
    gpus: float | None = None,
) -> list[dict]:
    """Encode every shard of a run folder in place; returns one summary row per file.

    ``gpus``: GPUs per actor (``None``: one if the Ray cluster has GPUs; see ``actor_resources``).
    """
    from vidsift.model.data import shard_files
    from vidsift.model.sample import CheckpointError

    files = shard_files(data)
    if not os.path.isfile(vae):
        raise CheckpointError(
            f"VAE checkpoint not found: {vae} (a `vidsift train-vae` checkpoint, or diffusers:<model>)"
        )
    kwargs = dict(
        vae=os.path.abspath(vae),
        text_model=text_model,
        frames=frames,
        height=height,
        width=width,
        stride=stride,
        text_tokens=text_tokens,
    )
    return run_pool(data, files, EncodeShards, kwargs, workers, gpus)


def run_pool(
    data: str, files: list[str], actor: type, kwargs: dict, workers: int, gpus: float | None
) -> list[dict]:
    """The Ray plan of both encodes: one item per shard file through a pool of ``actor``s (each loads its
    models once), a progress bar over files; one summary row per file, as files finish."""
    import ray

    from vidsift.pipeline.ray_session import init_ray

    # joins RAY_ADDRESS when set (an unreachable one is a one-line error), else starts a local Ray without
    # the dashboard, as curate does. A bucket's AWS settings go to the actors as a reference into Ray's
    # object store that each fetches first (ray_session.apply_env; it works through Ray Client too), never
    # as runtime_env env_vars, whose values Ray writes to its logs
    started = init_ray(None)
    try:
        env = storage.s3_environment() if storage.is_remote(data) else {}
        kwargs = {**kwargs, "env": [ray.put(env) if env else None]}
        resources = actor_resources(gpus, ray.cluster_resources().get("GPU", 0.0), workers, len(files))
        paths = [p if storage.is_remote(p) else os.path.abspath(p) for p in files]
        ds = ray.data.from_items([{"path": p} for p in paths])
        ds = ds.map_batches(
            actor,
            fn_constructor_kwargs=kwargs,
            batch_size=1,
            num_gpus=resources["num_gpus"],
            compute=ray.data.ActorPoolStrategy(size=resources["size"]),
        )
        from vidsift.pipeline.progress import progress_bar

        summary = []
        with progress_bar("encode", "shard files", "{task.fields[rows]} clips") as bar:
            task = bar.add_task("encode", total=len(paths), rows=0)
            for row in ds.iter_rows():  # one row per shard file, as its actor finishes it
                summary.append(row)
                bar.update(task, advance=1, rows=sum(r["rows"] for r in summary))
        return summary
    finally:
        if started:  # a Ray we started must not outlive the job (tests, notebooks call this in-process)
            ray.shutdown()


class EncodeFamily:
    """Ray actor of ``encode_family``: a diffusers family's VAE and text encoder loaded once, then one shard
    file per call, written to its cache file."""

    def __init__(
        self, model: str, family: str, offline: bool, settings: dict, folder: str, env: list | None = None
    ) -> None:
        import torch

        from vidsift.model.finetune.families import FAMILIES
        from vidsift.pipeline.ray_session import apply_env

        apply_env(env)  # the bucket's AWS settings, before anything reads a shard
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.family = FAMILIES[family]
        self.c = self.family.load_encoders(model, torch.float32, offline)
        self.c.vae.to(self.device)
        self.c.text_encoder.to(self.device)
        self.settings, self.folder = settings, folder

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        from vidsift.model.finetune.latents import encode_group

        out: dict[str, list] = {"path": [], "rows": [], "seconds": [], "dropped": []}
        for path in batch["path"]:
            t0 = time.time()
            target = storage.join(self.folder, storage.name(str(path)))
            counts = encode_group(str(path), target, self.family, self.c, self.settings)
            out["path"].append(str(path))
            out["rows"].append(counts["rows"])
            out["dropped"].append(json.dumps(counts["dropped"], sort_keys=True))
            out["seconds"].append(time.time() - t0)
        return out


def parse_diffusers_vae(vae: str) -> str | None:
    """The model of ``--vae diffusers:NAME``, None for a vidsift VAE checkpoint; an empty name is an error."""
    from vidsift.model.sample import CheckpointError

    if not vae.startswith("diffusers:"):
        return None
    name = vae.removeprefix("diffusers:").strip()
    if not name:
        raise CheckpointError("--vae diffusers: needs a model: diffusers:<hub id or local folder>")
    return os.path.abspath(name) if os.path.isdir(name) else name


def encode_family(
    data: str,
    model: str,
    buckets: list[tuple[int, int, int]],
    stride: int = 1,
    text_tokens: int = 0,
    caption_column: str = "caption",
    dtype: str = "float16",
    family: str = "",
    offline: bool = False,
    workers: int = 1,
    gpus: float | None = None,
) -> dict:
    """Cache ``model``'s VAE posteriors and caption embeddings for every clip of the run (``vidsift encode
    --vae diffusers:NAME``). ``family``: the family a finetune recipe expects ("" = any). Checks the model's
    family and the sizes before Ray starts; returns the cache folder and per-file counts."""
    from vidsift.model.data import shard_files
    from vidsift.model.finetune.families import family_of
    from vidsift.model.finetune.latents import DTYPES, cache_folder, group_settings, written_settings
    from vidsift.model.finetune.loop import check_buckets
    from vidsift.model.sample import CheckpointError

    files = shard_files(data)
    if dtype not in DTYPES:
        raise CheckpointError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    try:
        fam = family_of(model, offline)
        shell = fam.shell(model, offline)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"--vae diffusers:{model}: {str(e).strip().splitlines()[0]}") from None
    if family and fam.name != family:
        raise CheckpointError(f"--vae diffusers:{model} is a {fam.name} model; the recipe is for {family}")
    check_buckets(fam, shell, buckets)  # a size the family cannot take: RecipeError, before Ray starts
    tokens = fam.text_tokens(shell, text_tokens)
    settings = group_settings(model, buckets, stride, tokens, caption_column, dtype)
    folder = cache_folder(data, model)
    # Resumable per group: a group whose cache file holds these settings is done.
    todo = [f for f in files if written_settings(storage.join(folder, storage.name(f))) != settings]
    kwargs = dict(model=model, family=fam.name, offline=offline, settings=settings, folder=folder)
    summary = run_pool(data, todo, EncodeFamily, kwargs, workers, gpus) if todo else []
    return {"folder": folder, "family": fam.name, "files": len(files), "skipped": len(files) - len(todo),
            "summary": summary}  # fmt: skip
