"""Submitting curation jobs to the test cluster and reading what they wrote (local or s3://)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.cluster.local_cluster import LocalCluster
from tests.conftest import vidsift_exe
from vidsift.pipeline import storage

RAY = str(Path(sys.executable).parent / "ray")


def submit_curate(
    cluster: LocalCluster, *args: str, env_vars: dict | None = None, wait: bool = True, timeout: int = 300
) -> subprocess.CompletedProcess:
    """``ray job submit -- vidsift curate ...`` against the cluster's job server."""
    cmd = [RAY, "job", "submit", "--address", cluster.dashboard]
    if env_vars:
        cmd += ["--runtime-env-json", json.dumps({"env_vars": env_vars})]
    if not wait:
        cmd.append("--no-wait")
    cmd += ["--", vidsift_exe(), "curate", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=cluster.env(), timeout=timeout)


def read_rows(out: str, table: str) -> list[dict]:
    return [
        r for f in storage.parquet_files(storage.join(out, table)) for r in storage.read_table(f).to_pylist()
    ]


def clip_ids(out: str) -> list[tuple[str, int]]:
    return sorted((c["clip_id"], c["num_frames"]) for c in read_rows(out, "clips"))


def manifest(out: str) -> dict:
    return json.loads(storage.read_text(storage.join(out, "manifest.json")))


def job_status(cluster: LocalCluster, job_id: str) -> str:
    """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED, as ``ray job status`` says."""
    out = subprocess.run(
        [RAY, "job", "status", "--address", cluster.dashboard, job_id],
        capture_output=True, text=True, env=cluster.env(), timeout=60,
    )  # fmt: skip
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)  # the CLI colours the status word
    words = text.upper().replace("'", " ").replace(".", " ").replace(":", " ").split()
    return next(
        (w for w in reversed(words) if w in ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED")), ""
    )


def job_logs(cluster: LocalCluster, job_id: str) -> str:
    """What the job's driver printed (``ray job logs``)."""
    out = subprocess.run(
        [RAY, "job", "logs", "--address", cluster.dashboard, job_id],
        capture_output=True, text=True, env=cluster.env(), timeout=60,
    )  # fmt: skip
    return out.stdout + out.stderr
