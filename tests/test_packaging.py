"""``pip install .`` gives one package, ``vidsift``: no top-level ``pipeline`` or ``model``, recipes found by
name as package data, and the quick start runs from an empty directory with no checkout on the path.

The wheel is built from this checkout and unpacked into a fresh virtual environment whose only other
path entry is the test environment's site-packages (for the dependencies): that directory's ``.pth``
files, the editable install among them, are not processed there, so ``vidsift`` can only come from the
wheel.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv's python with the vidsift wheel installed (not editable)."""
    root = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), str(REPO)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (root / "dist").glob("vidsift-*.whl")
    env = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    Path(site, "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def run(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", code], cwd=cwd, capture_output=True, text=True, timeout=900)


def test_one_package_and_no_top_level_pipeline_or_model(installed, tmp_path):
    for name in ("pipeline", "model"):
        r = run(installed, f"import {name}", tmp_path)
        assert r.returncode != 0 and "No module named" in r.stderr
    r = run(installed, "import vidsift.pipeline, vidsift.model; print(vidsift.pipeline.__file__)", tmp_path)
    assert r.returncode == 0, r.stderr
    assert str(REPO) not in r.stdout  # the installed copy, not this checkout
    r = run(installed, "from vidsift.pipeline.cli import main; main(['--version'])", tmp_path)
    assert r.stdout.startswith("vidsift ") and "unknown" not in r.stdout
    # the trainer's commands reach the CLI through the wheel's vidsift.commands entry point
    r = run(installed, "from vidsift.pipeline.cli import main; main(['train', '--help'])", tmp_path)
    assert r.returncode == 0 and "--data" in r.stdout, r.stderr


def test_every_source_package_is_in_the_wheel(installed):
    """pyproject.toml lists the packages by hand (package-dir maps them): a new sub-package must be added."""
    site = Path(
        run(installed, "import sysconfig; print(sysconfig.get_paths()['purelib'])", REPO).stdout.strip()
    )
    for top in ("pipeline", "model"):
        for init in (REPO / top).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO)
            assert (site / "vidsift" / rel / "__init__.py").exists(), f"{rel} is missing from the wheel"
            for py in init.parent.glob("*.py"):
                assert (site / "vidsift" / rel / py.name).exists(), (
                    f"{rel / py.name} is missing from the wheel"
                )


def test_stages_lists_the_registry(installed, tmp_path):
    r = run(installed, "from vidsift.pipeline.cli import main; main(['stages', '--json'])", tmp_path)
    assert r.returncode == 0, r.stderr
    stages = {s["name"]: s for s in json.loads(r.stdout)}
    from vidsift.pipeline.registry import STAGES

    assert list(stages) == list(STAGES)
    keys = {k["name"]: k["default"] for k in stages["transcode"]["keys"]}
    assert keys["max_short_side"] == STAGES["transcode"].config().max_short_side
    assert stages["write_shards"]["resources"]["num_cpus"] == 0


def test_quickstart_by_name_from_an_empty_directory(installed, quickstart_run, videos, tmp_path):
    """The shipped quickstart recipe, found by name, on one of the quick start's videos: the same clips as
    the quick start run from the checkout."""
    run_dir, _ = quickstart_run
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "tiny-models").symlink_to(run_dir.parent / "out" / "tiny-models")
    src = tmp_path / "videos"
    src.mkdir()
    (src / "realshort.mp4").symlink_to(videos / "quality" / "realshort.mp4")
    args = ["curate", "quickstart", "--input", str(src), "--output", "run", "--quiet"]
    r = run(
        installed, f"import sys; from vidsift.pipeline.cli import main; sys.exit(main({args!r}))", tmp_path
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ours = pq.read_table(tmp_path / "run" / "clips").to_pydict()
    theirs = pq.read_table(run_dir / "clips").to_pydict()
    mine = sorted(ours["clip_id"])
    assert mine and mine == sorted(c for c, u in zip(theirs["clip_id"], theirs["source_uri"], strict=True)
                                   if u.endswith("realshort.mp4"))  # fmt: skip
