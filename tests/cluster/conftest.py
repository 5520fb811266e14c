"""A real two-node Ray cluster on loopback, a real S3 server (moto) on loopback, tiny clips.

The cluster: a head node with 1 CPU and a worker node with 1 CPU that advertises the custom
resource ``gpu_node`` (standing in for a GPU node), each its own ``ray start`` with its own ports
and temp dir; everything is stopped in teardown, also when a test fails. The fixtures are
package-scoped: the cluster's daemons (raylets, dashboard, log monitors) stop when tests/cluster is
done instead of idling beside the rest of the suite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster.local_cluster import LocalCluster, free_port
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
    port = free_port()
    exe = str(Path(sys.executable).parent / "moto_server")
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import urllib.request

        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(env["AWS_ENDPOINT_URL"], timeout=2)
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.3)
        yield env
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
