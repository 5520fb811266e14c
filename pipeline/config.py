"""The one config system of vidsift: curation recipes and training recipes load, override, validate
and write through these functions.

- A recipe is a TOML file, named by path or, for the recipes vidsift ships, by name
  (``quickstart`` -> ``vidsift/recipes/curate/quickstart.toml``; ``tiny`` -> ``.../train/tiny.toml``).
- ``--set KEY=VALUE`` overrides a value: KEY is a dotted path (``split_scenes.threshold``,
  ``run.group_size``, ``lr``) and VALUE is parsed as TOML (``3``, ``1.5``, ``true``, ``"text"``,
  ``{depth = 2}``), falling back to a plain string.
- A config is a dataclass; building one refuses unknown keys and values of the wrong type, naming
  where they came from. Every error is a ``RecipeError`` with a one-line message for the user.
- The resolved recipe (every default filled in) is written as TOML next to the output.
"""

from __future__ import annotations

import dataclasses
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w


class RecipeError(ValueError):
    """A recipe or override that cannot run, with a message meant for the user."""


def shipped_recipes(kind: str) -> dict[str, Path]:
    """The recipes of one kind (``curate`` or ``train``) installed with vidsift, by name."""
    folder = resources.files("vidsift.recipes") / kind
    if not folder.is_dir():
        return {}
    return {p.name[: -len(".toml")]: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml")}


def resolve_recipe(name_or_path: str | Path, kind: str) -> Path:
    """A recipe file: an existing path as given, else a recipe vidsift ships, by name."""
    p = Path(name_or_path)
    if p.exists() or p.suffix == ".toml" or len(p.parts) > 1:
        return p
    shipped = shipped_recipes(kind)
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise RecipeError(
        f"recipe not found: {name_or_path} (neither a file nor a shipped {kind} recipe; "
        f"shipped: {', '.join(sorted(shipped)) or 'none'})"
    )


def read_recipe(name_or_path: str | Path, kind: str) -> tuple[dict, Path]:
    """The TOML of a recipe, by path or shipped name, and the file it came from."""
    p = resolve_recipe(name_or_path, kind)
    try:
        return tomllib.loads(p.read_text()), p
    except FileNotFoundError:
        raise RecipeError(f"recipe not found: {p}") from None
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"recipe {p} is not valid TOML: {e}") from None


def parse_value(text: str) -> Any:
    """A ``--set`` value as TOML (numbers, booleans, arrays, inline tables), else a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], parsed value)."""
    key, sep, value = item.partition("=")
    path = [part.strip() for part in key.split(".")]
    if not sep or not all(path):
        raise RecipeError(f"--set expects key=value, got {item!r}")
    return path, parse_value(value.strip())


def _check_type(default: Any, value: Any, key: str, where: str) -> Any:
    """Refuse a value whose type differs from a primitive default's (an int is a fine float)."""
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) == isinstance(value, bool)
    elif isinstance(default, float) and isinstance(value, int):
        return float(value)
    elif isinstance(default, int | float | str):
        ok = isinstance(value, type(default))
    else:
        return value
    if not ok:
        raise RecipeError(f"{key} in {where} must be {type(default).__name__}, got {value!r}")
    return value


def field_default(f: dataclasses.Field) -> Any:
    """A dataclass field's default value (None when it has none)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def build_config(cls: type, values: dict, where: str) -> Any:
    """A config dataclass from ``values``: unknown keys, wrong types and what the class itself refuses
    (in ``__post_init__``) are ``RecipeError``s that name ``where``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        keys = f"key {unknown[0]!r}" if len(unknown) == 1 else f"keys {', '.join(map(repr, unknown))}"
        raise RecipeError(f"unknown {keys} in {where} (known: {', '.join(fields)})")
    checked = {k: _check_type(field_default(fields[k]), v, k, where) for k, v in values.items()}
    try:
        return cls(**checked)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"{where}: {e}") from None


def to_toml(data: dict) -> str:
    """A resolved recipe as TOML (``None`` values, which TOML cannot hold, are left out)."""

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if x is not None}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return tomli_w.dumps(clean(data))
