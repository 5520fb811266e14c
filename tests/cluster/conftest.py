"""A real two-node Ray cluster on loopback, a real S3 server (moto) on loopback, tiny clips.

The cluster: a head node with 1 CPU and a worker node with 1 CPU that advertises the custom
resource ``gpu_node`` (standing in for a GPU node), each its own ``ray start`` with its own ports
and temp dir; everything is stopped in teardown, also when a test fails. The fixtures are
package-scoped: the cluster's daemons (raylets, dashboard, log monitors) stop when tests/cluster is
done instead of idling beside the rest of the suite.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.cluster.local_cluster import LocalCluster
from tests.cluster.recipes import write_recipe
from tests.conftest import make_numbered_clip, vidsift_exe


@pytest.fixture(scope="package")
def cluster():
    c = LocalCluster()
    try:
        c.start_head(num_cpus=1)
        c.add_node("gpu", num_cpus=1, resources={"gpu_node": 1})
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="package")
def tiny_clips(tmp_path_factory) -> Path:
    """Four small H.264 clips, two or three hard cuts each, all different."""
    src = tmp_path_factory.mktemp("tiny_clips")
    for i in range(4):
        make_numbered_clip(src / f"clip{i}.mp4", frames=50 + 10 * i, cut_every=25 + 5 * i)
    return src


@pytest.fixture(scope="package")
def recipes(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("recipes")
    return {"gpu": write_recipe(folder, "gpu", True), "cpu": write_recipe(folder, "cpu", False)}


@pytest.fixture(scope="package")
def embedded_run(tiny_clips, recipes, tmp_path_factory) -> str:
    """The oracle of the cluster runs: the CPU recipe on ``tiny_clips`` from local disk on an embedded local
    Ray (no address, no RAY_ variables: not the cluster), run once; read-only. Clip ids derive from content,
    frames and the row-deciding recipe values, so the same inputs curated on the cluster, from a bucket or
    with caption stages added must give exactly its clip ids."""
    out = tmp_path_factory.mktemp("embedded") / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    args = ["curate", recipes["cpu"], "--input", str(tiny_clips), "--output", str(out), "--quiet"]
    result = subprocess.run([vidsift_exe(), *args], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return str(out)


@pytest.fixture(scope="package")
def s3(tmp_path_factory):
    """moto in server mode on loopback; yields the AWS variables that point at it."""
    from tests.conftest import moto_s3

    with moto_s3(tmp_path_factory.mktemp("moto")) as env:
        yield env
