"""Curation recipes: TOML files with a ``[run]`` table and an ordered ``[[stage]]`` list.

Loading, ``--set`` overrides, validation and the resolved-TOML writer are the one config system of
``vidsift.pipeline.config`` (training recipes use it too). Constructing a stage's config validates it:
unknown keys and bad values are errors that name the stage and the key. ``--set stage.key=value`` (or
``run.key=value``) overrides a value. A shipped recipe is found by name (``quickstart``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidsift.pipeline.config import (
    RecipeError,
    build_config,
    field_default,
    parse_override,
    parse_value,
    read_recipe,
    to_toml,
)
from vidsift.pipeline.registry import STAGES, Resources

__all__ = ["Recipe", "RecipeError", "RunConfig", "StageEntry", "build_recipe", "load_recipe", "parse_value"]


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    group_size: int = 8  # videos per resumable group: one shard file per table and group
    # How the run executes, not what it produces: these may change when a run is resumed.
    spool_dir: str = ""  # local folder for the one spooled copy of each s3:// input; "" = the system temp
    s3_endpoint_url: str = ""  # e.g. http://minio:9000; "" = AWS_ENDPOINT_URL(_S3), else AWS
    s3_region: str = ""  # "" = AWS_REGION / AWS_DEFAULT_REGION
    object_store_gb: float = 0.0  # cap on object-store memory Ray Data may fill; 0 = Ray Data's share
    max_videos_in_flight: int = 0  # per-video tasks running at once; 0 = as many as CPUs allow
    check_resources: bool = True  # refuse pools that can never all be placed (off: autoscaling clusters)
    # http(s):// inputs of an input list: a larger body is fetch_too_large, a slower download fetch_timeout;
    # 0 = $VIDSIFT_FETCH_MAX_MB / $VIDSIFT_FETCH_TIMEOUT_S, else 20 GiB and 600 s
    fetch_max_mb: float = 0.0
    fetch_timeout_s: float = 0.0
    transient_tries: int = 3  # runs that may meet a transient failure in a group before it is final
    # no progress this long while Ray holds a demand it cannot place ends the run with an error; 0 = wait
    stall_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.transient_tries < 1 or self.stall_timeout_s < 0:
            raise ValueError("run.transient_tries must be >= 1 and run.stall_timeout_s >= 0")
        if self.group_size < 1:
            raise ValueError(f"run.group_size must be >= 1, got {self.group_size}")
        if self.object_store_gb < 0 or self.max_videos_in_flight < 0:
            raise ValueError("run.object_store_gb and run.max_videos_in_flight must be >= 0")
        if self.fetch_max_mb < 0 or self.fetch_timeout_s < 0:
            raise ValueError("run.fetch_max_mb and run.fetch_timeout_s must be >= 0")
        if "@" in self.s3_endpoint_url:
            raise ValueError("run.s3_endpoint_url must not carry credentials: use AWS_ACCESS_KEY_ID/...")


# RunConfig keys that change how a run executes but not its rows
EXECUTION_KEYS = ("spool_dir", "s3_endpoint_url", "s3_region", "object_store_gb", "max_videos_in_flight",
                  "check_resources", "transient_tries", "stall_timeout_s")  # fmt: skip


@dataclass(frozen=True)
class StageEntry:
    name: str
    config: Any
    resources: Resources


@dataclass(frozen=True)
class Recipe:
    run: RunConfig
    stages: list[StageEntry]

    def stages_of_kind(self, kind: str) -> list[StageEntry]:
        return [s for s in self.stages if STAGES[s.name].kind == kind]

    def stage(self, name: str) -> Any:
        for s in self.stages:
            if s.name == name:
                return s.config
        raise KeyError(name)

    def to_dict(self) -> dict:
        stages = []
        for s in self.stages:
            entry = {"name": s.name, **dataclasses.asdict(s.config)}
            if s.resources != STAGES[s.name].resources:
                entry["resources"] = dataclasses.asdict(s.resources)
            stages.append(entry)
        return {"run": dataclasses.asdict(self.run), "stage": stages}

    def to_toml(self) -> str:
        return to_toml(self.to_dict())

    def row_settings(self) -> dict:
        """The recipe without what only decides how it executes (resources, spool folder, ...):
        a run may be resumed with those changed, and its rows stay the same."""
        run = {k: v for k, v in dataclasses.asdict(self.run).items() if k not in EXECUTION_KEYS}
        return {"run": run, "stage": [{"name": s.name, **dataclasses.asdict(s.config)} for s in self.stages]}

    def differs_from(self, earlier: dict) -> str | None:
        """Why this recipe would not give the rows of ``earlier`` (the row settings of a run written by an
        older vidsift, read back from its recipe.resolved.toml), or None when it gives the same rows.

        Keys the older code did not have are fine at their defaults (a new key's default keeps the old
        behaviour); every key it had must hold the same value, and the stages must be the same."""
        now = self.row_settings()
        old_stages, new_stages = earlier.get("stage", []), now["stage"]
        if [s.get("name") for s in old_stages] != [s["name"] for s in new_stages]:
            return "the stages differ"
        pairs = [("run", RunConfig, earlier.get("run", {}), now["run"])]
        pairs += [
            (f"stage {n['name']}", STAGES[n["name"]].config, o, n)
            for o, n in zip(old_stages, new_stages, strict=True)
        ]
        for where, cls, old, new in pairs:
            defaults = {f.name: field_default(f) for f in dataclasses.fields(cls)}
            for key, value in new.items():
                if key == "name" or (key in EXECUTION_KEYS and where == "run"):
                    continue
                before = old[key] if key in old else defaults.get(key)
                if _jsonable(value) != _jsonable(before):
                    return f"{where}: {key} = {value!r}, the run has {before!r}"
            unknown = sorted(set(old) - set(new) - {"name", "resources"})
            if unknown:
                return f"{where}: the run has key(s) this version does not know: {', '.join(unknown)}"
        return None


def _jsonable(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=str)


def build_recipe(data: dict, overrides: list[str] = ()) -> Recipe:
    data = {"run": dict(data.get("run", {})), "stage": [dict(s) for s in data.get("stage", [])]}
    extra = sorted(set(data) - {"run", "stage"})
    for key in overrides:
        if "=" not in key or "." not in key.split("=", 1)[0]:
            raise RecipeError(f"--set expects stage.key=value, got {key!r}")
        path, value = parse_override(key)
        section, field = path[0], ".".join(path[1:])
        if section == "run":
            data["run"][field] = value
            continue
        matches = [s for s in data["stage"] if s.get("name") == section]
        if not matches:
            raise RecipeError(f"--set {section}.{field}: the recipe has no stage {section!r}")
        matches[0][field] = value
    if extra:
        raise RecipeError(
            f"recipe: unknown top-level key(s) {', '.join(extra)}; expected [run] and [[stage]]"
        )
    run = build_config(RunConfig, data["run"], "[run]")
    entries = []
    for i, raw in enumerate(data["stage"]):
        name = raw.pop("name", None)
        if name not in STAGES:
            raise RecipeError(f"[[stage]] #{i + 1}: unknown stage {name!r}; known: {', '.join(STAGES)}")
        spec = STAGES[name]
        res = raw.pop("resources", None)
        resources = (
            build_config(Resources, res, f"stage {name}.resources") if res is not None else spec.resources
        )
        entries.append(StageEntry(name, build_config(spec.config, raw, f"stage {name}"), resources))
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise RecipeError(f"recipe lists a stage twice: {names}")
    required = [n for n, s in STAGES.items() if s.required]
    missing = [n for n in required if n not in names]
    if missing:
        raise RecipeError(f"recipe lacks required stage(s): {', '.join(missing)}")
    order = [n for n in names if n in required]
    if order != required:
        raise RecipeError(
            f"stages must run in the order {' -> '.join(required)}; recipe has {' -> '.join(order)}"
        )
    # optional stages sit where their kind runs: filters before transcode, clip stages after it
    window = {"video_filter": ("split_scenes", "transcode"), "clip": ("transcode", "write_shards")}
    for i, name in enumerate(names):
        kind = STAGES[name].kind
        if kind in window:
            after, before = window[kind]
            if not names.index(after) < i < names.index(before):
                raise RecipeError(f"stage {name} ({kind}) must come after {after} and before {before}")
    return Recipe(run, entries)


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """A curation recipe from a TOML file, or a shipped one by name (``quickstart``, ``default``)."""
    data, _ = read_recipe(path, "curate")
    return build_recipe(data, overrides)
