"""The layering of docs/architecture.md, read from the imports of every source file (not from the docs):

- ``vidsift.pipeline`` never imports ``vidsift.model`` (the trainer's commands reach the CLI through the
  ``vidsift.commands`` entry point);
- ``vidsift.model`` uses only the pipeline's base modules: storage, the table schema, the one config
  system, the text encoder whose embeddings the shards store, the output lock, the progress display and the
  model-server backends (for prompt expansion at sampling).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PIPELINE_BASE = {"storage", "schema", "config", "text_encoder", "lock", "progress", "backends", "ray_session"}


def imported_modules(path: Path) -> set[str]:
    """Every absolute ``vidsift.*`` module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("vidsift.")}


def test_pipeline_never_imports_model():
    offenders = {
        f"{p.relative_to(REPO)}: {m}"
        for p in (REPO / "pipeline").rglob("*.py")
        for m in imported_modules(p)
        if m.startswith("vidsift.model")
    }
    assert not offenders, sorted(offenders)


def test_model_uses_only_the_pipeline_base():
    used = {}
    for p in (REPO / "model").rglob("*.py"):
        for m in imported_modules(p):
            if m.startswith("vidsift.pipeline."):
                used.setdefault(m.split(".")[2], set()).add(str(p.relative_to(REPO)))
    assert "storage" in used  # the scan finds real imports
    outside = {k: sorted(v) for k, v in used.items() if k not in PIPELINE_BASE}
    assert not outside, outside


def test_the_model_commands_come_from_the_entry_point():
    from vidsift.pipeline.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"curate", "stats", "train", "sample", "encode", "finetune"} <= set(commands)
