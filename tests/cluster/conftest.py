"""A real two-node Ray cluster on loopback, a real S3 server (moto) on loopback, tiny clips.

The cluster: a head node with 1 CPU and a worker node with 1 CPU that advertises the custom
resource ``gpu_node`` (standing in for a GPU node), each its own ``ray start`` with its own ports
and temp dir; everything is stopped in teardown, also when a test fails. The fixtures are
package-scoped: the cluster's daemons (raylets, dashboard, log monitors) stop when tests/cluster is
done instead of idling beside the rest of the suite.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster.local_cluster import LocalCluster
from tests.cluster.recipes import write_recipe
from tests.conftest import make_numbered_clip


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
def s3(tmp_path_factory):
    """moto in server mode on loopback; yields the AWS variables that point at it."""
    from tests.conftest import moto_s3

    with moto_s3(tmp_path_factory.mktemp("moto")) as env:
        yield env
