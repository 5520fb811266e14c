"""A real multi-node Ray cluster on loopback: one ``ray start --head`` plus ``ray start --address`` nodes.

Every node is its own ``ray start --block`` process in its own session, with its own ports and
a private temp dir, so nothing here touches another Ray instance on the machine (``ray stop``
would: it kills every Ray process of the user). Stopping a node sends SIGTERM to its ``ray
start`` process (which takes its raylet and workers down), then SIGKILLs, by pid, whatever is
still running with this cluster's temp dir on its command line.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    resources: dict
    node_id: str = ""


@dataclass
class LocalCluster:
    # short: Ray puts Unix sockets under the temp dir, and socket paths are limited to ~107 bytes
    temp_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="vsray", dir="/tmp"))
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    client_port: int = field(default_factory=free_port)
    nodes: list[Node] = field(default_factory=list)
    # Ray 2.60 turns token authentication on for clusters started where a token exists; give this
    # cluster its own token so nothing reads or writes ~/.ray, and every client here sends it
    token: str = field(default_factory=lambda: secrets.token_hex(32))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def client_address(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    def env(self) -> dict:
        """Environment for processes that talk to this cluster (``ray job submit``, ``vidsift``)."""
        env = dict(os.environ)
        env.pop("RAY_ADDRESS", None)
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN"] = self.token
        # the venv's scripts first: the job's entrypoint and Ray's workers use this interpreter
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def _start(self, name: str, args: list[str], resources: dict, num_cpus: float) -> Node:
        cmd = [
            RAY, "start", "--block", "--disable-usage-stats", f"--num-cpus={num_cpus}", "--num-gpus=0",
            "--node-ip-address=127.0.0.1",
            f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
            "--object-store-memory=200000000",  # 200 MB per node: tiny inputs, and 2 shared cores
        ]  # fmt: skip
        # every node advertises node_<name>, so tests can tell which Ray node id is which
        resources = {f"node_{name}": 1, **resources}
        cmd.append(f"--resources={json.dumps(resources)}")
        log = open(Path(self.temp_dir) / f"{name}.log", "ab")
        proc = subprocess.Popen(
            cmd + args, stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True
        )
        node = Node(name, proc, resources)
        self.nodes.append(node)
        return node

    def start_head(self, num_cpus: float = 1, resources: dict | None = None) -> Node:
        head = self._start(
            "head",
            [
                "--head",
                f"--port={self.gcs_port}",
                f"--temp-dir={self.temp_dir}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={self.client_port}",
            ],  # fmt: skip
            resources or {},
            num_cpus,
        )
        self.wait_for_nodes(1)
        return head

    def add_node(self, name: str, num_cpus: float = 1, resources: dict | None = None) -> Node:
        n = len(self.alive_node_ids())
        node = self._start(name, [f"--address={self.address}"], resources or {}, num_cpus)
        self.wait_for_nodes(n + 1)
        return node

    def log_tails(self, pattern: str, chars: int = 2000) -> str:
        """The ends of the head's Ray log files matching ``pattern``, for a failing test's message."""
        logs = sorted((Path(self.temp_dir) / "session_latest" / "logs").glob(pattern))
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in logs)

    def _ray_nodes(self) -> list[dict]:
        """Alive nodes as the cluster's state API sees them (a short-lived client process)."""
        code = (
            f"import json, ray; ray.init(address={self.address!r}, logging_level='ERROR'); "
            "nodes = [{'id': n['NodeID'], 'res': n['Resources']} for n in ray.nodes() if n['Alive']]; "
            "print(json.dumps(nodes))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=self.env(), timeout=120
        )
        if out.returncode != 0:
            return []
        return json.loads(out.stdout.strip().splitlines()[-1])

    def alive_node_ids(self) -> list[str]:
        return [n["id"] for n in self._ray_nodes()]

    def wait_for_nodes(self, count: int, timeout: float = 120) -> list[dict]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for node in self.nodes:
                if node.proc.poll() is not None:
                    raise RuntimeError(
                        f"ray start for {node.name} exited: see {self.temp_dir}/{node.name}.log"
                    )
            nodes = self._ray_nodes()
            if len(nodes) == count:
                self._name_nodes(nodes)
                return nodes
            time.sleep(1)
        raise TimeoutError(f"cluster did not reach {count} nodes in {timeout} s")

    def _name_nodes(self, nodes: list[dict]) -> None:
        # tell nodes apart by the marker resource each one advertises (node_<name>)
        for node in self.nodes:
            for n in nodes:
                if n["res"].get(f"node_{node.name}"):
                    node.node_id = n["id"]

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def kill_node(self, name: str) -> None:
        """SIGKILL a node's ``ray start`` and every process of its session: a machine that died."""
        node = self.node(name)
        victims = [node.proc.pid] + [c.pid for c in _children(node.proc.pid)]
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        node.proc.wait()

    def stop(self) -> None:
        for node in reversed(self.nodes):
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in reversed(self.nodes):
            try:
                node.proc.wait(timeout=5)  # throwaway nodes: no need for a slow graceful stop
            except subprocess.TimeoutExpired:
                node.proc.kill()
        # anything left that belongs to this cluster (its temp dir is on every Ray process's command line)
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if p.info["pid"] != os.getpid() and any(self.temp_dir in a for a in p.info["cmdline"] or []):
                    p.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
