"""A worker node dies part-way through a run: Ray runs its tasks again on the nodes left, and the job ends
with exactly the rows of an uninterrupted run."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.cluster.jobs import clip_ids, job_logs, job_status, submit_curate
from tests.conftest import make_numbered_clip

pytestmark = pytest.mark.slow


@pytest.mark.timeout(480)
def test_killing_a_worker_node_mid_run_loses_no_rows(cluster, recipes, tmp_path):
    src = tmp_path / "inputs"
    src.mkdir()
    for i in range(8):  # enough videos that the run is still going when the node dies
        make_numbered_clip(src / f"v{i}.mp4", frames=90 + 7 * i, cut_every=30 + i, size=(160, 96))
    args = [recipes["cpu"], "--input", str(src)]
    whole = tmp_path / "whole"
    assert submit_curate(cluster, *args, "--output", str(whole)).returncode == 0
    expected = clip_ids(str(whole))
    assert len(expected) >= 16

    cluster.add_node("doomed", num_cpus=1)
    try:
        out = tmp_path / "killed"
        submitted = submit_curate(cluster, *args, "--output", str(out), wait=False)
        assert submitted.returncode == 0, submitted.stderr
        job_id = re.search(r"raysubmit_[A-Za-z0-9]+", submitted.stdout + submitted.stderr).group()
        for _ in range(2400):  # a hang guard (polls), not a speed check
            if (out / "_done").is_dir():
                break
            time.sleep(0.1)
        assert (out / "_done").is_dir(), "no group finished"
        done_at_kill = len(list((out / "_done").iterdir()))
        cluster.kill_node("doomed")
    finally:
        cluster.nodes = [n for n in cluster.nodes if n.name != "doomed" or n.proc.poll() is None]
    assert done_at_kill < 8, "the run finished before the node died"

    for _ in range(150):  # a hang guard (polls), not a speed check
        if (status := job_status(cluster, job_id)) in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(2)
    else:
        pytest.fail("the job neither finished nor failed after the node died")
    # Ray retries the dead node's tasks elsewhere (and rebuilds their lost outputs): the job itself succeeds
    assert status == "SUCCEEDED", (
        f"{status} (groups done at the kill: {done_at_kill})\n" + job_logs(cluster, job_id)[-4000:]
    )
    assert clip_ids(str(out)) == expected
    assert len(list(Path(out, "_done").iterdir())) == 8
