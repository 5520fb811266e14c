"""Stages run where their resources say, on a real two-node cluster; jobs go in with ``ray job submit``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.cluster.jobs import clip_ids, manifest, read_rows, submit_curate
from tests.cluster.local_cluster import LocalCluster
from tests.conftest import vidsift_exe
from vidsift.pipeline.cluster import check_fits
from vidsift.pipeline.recipe import RecipeError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def submitted(cluster, tiny_clips, recipes, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("placement") / "out")
    result = submit_curate(cluster, recipes["gpu"], "--input", str(tiny_clips), "--output", out)
    return out, result


@pytest.mark.timeout(300)
def test_ray_job_submit_runs_curate_to_the_end(submitted, tiny_clips):
    out, result = submitted
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout + result.stderr
    videos = read_rows(out, "videos")
    assert sorted(v["source_uri"] for v in videos) == sorted(str(p) for p in tiny_clips.iterdir())
    clips = read_rows(out, "clips")
    assert len(clips) >= 6 and all(c["text_emb"] for c in clips)  # the "GPU" stage ran on every clip


@pytest.mark.timeout(300)
def test_gpu_stage_lands_on_the_gpu_node_and_video_tasks_spread(submitted, cluster):
    out, result = submitted
    assert result.returncode == 0, result.stdout[-3000:]
    placement = manifest(out)["last_run_placement"]
    gpu, head = cluster.node("gpu").node_id, cluster.node("head").node_id
    assert gpu and head and gpu != head
    # the manifest's node table says which node advertises gpu_node, and it is the worker
    assert placement["nodes"][gpu].get("gpu_node") == 1 and "gpu_node" not in placement["nodes"][head]
    clips = len(read_rows(out, "clips"))
    assert placement["rows"]["text_embed"] == {gpu: clips}  # every clip embedded on the gpu_node node
    videos = placement["rows"]["video"]
    assert sum(videos.values()) == 4
    assert set(videos) == {gpu, head}, videos  # CPU work spread over both nodes


@pytest.mark.timeout(300)
def test_ray_client_address_gives_the_same_rows(submitted, cluster, tiny_clips, recipes, tmp_path):
    """``vidsift curate --address ray://head:port`` drives the cluster from outside it."""
    out, _ = submitted
    again = tmp_path / "client"
    result = subprocess.run(
        [vidsift_exe(), "curate", recipes["gpu"], "--input", str(tiny_clips), "--output", str(again),
         "--address", cluster.client_address, "--limit", "2"],
        capture_output=True, text=True, env=cluster.env(), timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:] + cluster.log_tails("ray_client_server*")
    first_two = {str(p) for p in sorted(tiny_clips.iterdir())[:2]}
    expected = sorted(
        (c["clip_id"], c["num_frames"]) for c in read_rows(out, "clips") if c["source_uri"] in first_two
    )
    assert clip_ids(str(again)) == expected


@pytest.mark.timeout(120)
def test_pools_the_cluster_cannot_place_fail_fast(cluster, tiny_clips, recipes, tmp_path):
    """A custom resource no node has, or pools whose min_actors cannot all be placed: exit 2, at once."""
    cases = [
        ("text_embed.resources={num_cpus=0.25, custom={tpu=1}}", "no Ray node has that"),
        (
            "text_embed.resources={num_cpus=0.25, custom={gpu_node=1}, min_actors=2, max_actors=2}",
            "wait forever",
        ),
        # 0.05 CPU left per node: under the least share a per-video task is given (0.75 would run at 0.25)
        ("text_embed.resources={num_cpus=0.95, min_actors=2, max_actors=2}", "would wait forever"),
    ]
    for i, (override, message) in enumerate(cases):
        result = subprocess.run(
            [vidsift_exe(), "curate", recipes["gpu"], "--input", str(tiny_clips), "--output",
             str(tmp_path / f"o{i}"), "--address", cluster.address, "--set", override],
            capture_output=True, text=True, env=cluster.env(), timeout=100,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr[-2000:]
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
        # refused before anything ran (the subprocess timeout above is only a hang guard)
        out = tmp_path / f"o{i}"
        assert not (out / "_done").exists() and not (out / "clips").exists() and not (out / "_parts").exists()


def test_check_fits_packs_pools_onto_nodes():
    head = {"CPU": 1.0, "memory": 8 * 2**30}
    gpu = {"CPU": 1.0, "GPU": 1.0, "memory": 8 * 2**30}
    video = {"CPU": 0.5}
    check_fits(video, [("caption_vlm", {"CPU": 0.5, "GPU": 1.0})], [head, gpu])
    # 2 x 1-GPU actors on a cluster with one GPU
    with pytest.raises(RecipeError, match="would wait forever"):
        check_fits(video, [("caption_vlm", {"CPU": 0.5, "GPU": 1.0})] * 2, [head, gpu])
    # whole CPUs on 2 cores: two 1-CPU actors leave no room for the per-video task (the 2-core stall)
    with pytest.raises(RecipeError, match="would wait forever"):
        check_fits({"CPU": 1.0}, [("a", {"CPU": 1.0}), ("b", {"CPU": 1.0})], [{"CPU": 2.0}])
    assert check_fits({"CPU": 1.0}, [("a", {"CPU": 0.25}), ("b", {"CPU": 0.25})], [{"CPU": 2.0}]) == 1.0
    with pytest.raises(RecipeError, match="memory=64.0GiB"):
        check_fits(video, [("caption_expand", {"CPU": 1.0, "memory": 64 * 2**30})], [head, gpu])


def test_check_fits_sees_what_each_node_has_left():
    """The quick start's shape on two 1-CPU nodes (issue 17): four quarter-CPU caption actors spread over
    both leave half a CPU on each, so a whole-CPU per-video task would wait forever; it gets half."""
    nodes = [{"CPU": 1.0}, {"CPU": 1.0}]
    quarter = [(f"caption_{i}", {"CPU": 0.25}) for i in range(4)]
    assert check_fits({"CPU": 1.0}, quarter, nodes) == 0.5  # totals (2 - 1 >= 1) would say 1.0 fits
    assert check_fits({"CPU": 0.5}, quarter, nodes) == 0.5
    assert check_fits({"CPU": 1.0}, quarter, [{"CPU": 2.0}]) == 1.0  # one node: room for the whole CPU
    thirds = [(f"s{i}", {"CPU": 0.3}) for i in range(5)]  # 0.9 and 0.6 used: 0.4 left at most
    assert check_fits({"CPU": 1.0}, thirds, nodes) == 0.4
    with pytest.raises(RecipeError, match=r"per-video task does not fit\); the run would wait forever"):
        check_fits({"CPU": 1.0}, [(f"s{i}", {"CPU": 0.95}) for i in range(2)], nodes)
    # other resources of the per-video task must fit on the same node as its CPU share
    with pytest.raises(RecipeError, match="per-video task does not fit"):
        nodes = [{"CPU": 2, "GPU": 1}, {"CPU": 8}]
        check_fits({"CPU": 1.0, "GPU": 1.0}, [("g", {"CPU": 0.1, "GPU": 1.0})], nodes)


def test_stall_watchdog_names_the_demand_it_cannot_place():
    from vidsift.pipeline import watchdog

    free = {"a1b2c3d4": {"CPU": 0.5}, "e5f6a7b8": {"CPU": 0.5, "gpu_node": 1.0}}
    total = {"a1b2c3d4": {"CPU": 1.0}, "e5f6a7b8": {"CPU": 1.0, "gpu_node": 1.0}}
    pending = ([({"CPU": 1.0}, 1)], free, total)
    w = watchdog.StallWatchdog({"CPU=1": "the per-video task"}, stall_s=0.2, probe=lambda: pending)
    assert w.stalled() is None  # it has not been quiet long enough
    watchdog._fired.clear()
    w.start()
    with pytest.raises(KeyboardInterrupt):  # what the driver's main thread gets
        for _ in range(600):
            time.sleep(0.05)
    with pytest.raises(RecipeError) as e:
        watchdog.raise_if_stalled()
    message = str(e.value)
    assert "while Ray cannot place 1 x {CPU=1} (the per-video task)" in message
    assert "node a1b2c3d4: CPU=0.5; node e5f6a7b8: CPU=0.5, gpu_node=1" in message
    busy = {"a1b2c3d4": {"CPU": 0.0}, "e5f6a7b8": {"CPU": 0.25, "gpu_node": 1.0}}
    for probe in (lambda: ([], free, total), lambda: ([({"CPU": 1.0}, 9)], busy, total)):
        quiet = watchdog.StallWatchdog(stall_s=0.01, probe=probe)
        time.sleep(0.05)
        assert quiet.stalled() is None  # slow, but nothing waits, or only a backlog on busy nodes
    left = {"x": {"CPU": 4.0}}  # the node with gpu_node left the cluster
    gone = watchdog.StallWatchdog(stall_s=0.01, probe=lambda: ([({"gpu_node": 1.0}, 1)], left, left))
    time.sleep(0.05)
    assert "cannot place 1 x {gpu_node=1} (a Ray task or actor)" in gone.stalled()  # no node has it any more
    watchdog._fired.clear()


def test_stall_watchdog_fires_when_sigint_was_ignored():
    """Started with SIGINT ignored (nohup ... &, a script's background job), the watchdog still fires."""
    import signal

    from vidsift.pipeline import watchdog

    free = {"n": {"CPU": 1.0}}
    pending = ([({"tpu": 1.0}, 1)], free, free)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        w = watchdog.StallWatchdog(stall_s=0.1, probe=lambda: pending)
        watchdog._fired.clear()
        w.start()
        with pytest.raises(KeyboardInterrupt):
            for _ in range(600):  # a hang guard: the interrupt comes after ~0.2 s
                time.sleep(0.05)
        w.stop()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # the disposition it found is back
        assert "cannot place 1 x {tpu=1}" in watchdog._fired[-1]
    finally:
        signal.signal(signal.SIGINT, previous)
        watchdog._fired.clear()


CAPTIONED = """
[run]
group_size = 1

[[stage]]
name = "probe"

[[stage]]
name = "analyze"
frames_per_clip = 1

[[stage]]
name = "split_scenes"
min_scene_s = 0.5

[[stage]]
name = "transcode"
max_short_side = 64
preset = "ultrafast"
{captions}
[[stage]]
name = "write_shards"
"""
CAPTION = """
[[stage]]
name = "{name}"
resources = {{ num_cpus = 0.25, min_actors = 2, max_actors = 2 }}
backend = "openai"
model = "ok"
base_url = "{url}"
"""


@pytest.mark.timeout(600)
def test_quick_start_shape_runs_on_two_one_cpu_nodes_with_the_key_forwarded(
    cluster, tiny_clips, embedded_run, tmp_path
):
    """Issue 17's stall: whole-CPU per-video tasks beside four quarter-CPU caption actors, on two 1-CPU nodes
    (it hung for 15 minutes). Now it finishes with exactly the clip ids of an embedded local run of the same
    stages (``embedded_run``: the caption stages reject nothing here, every clip gets the server's caption, so
    they add no clip and drop none); the API key of this process reaches the caption actors on both nodes (Ray
    starts them without it), and appears in no file of the output."""

    from tests.pipeline.test_caption_openai import DESCRIPTION, KEY, Server, start

    server = start(Server())
    try:
        captions = "".join(CAPTION.format(name=n, url=server.url) for n in ("caption_vlm", "caption_expand"))
        recipe = tmp_path / "captioned.toml"
        recipe.write_text(CAPTIONED.format(captions=captions))
        args = [vidsift_exe(), "curate", str(recipe), "--input", str(tiny_clips), "--stall-timeout", "120"]
        env = cluster.env() | {"OPENAI_API_KEY": KEY}
        out = tmp_path / "cluster"
        result = subprocess.run(
            [*args, "--output", str(out), "--address", cluster.address],
            capture_output=True, text=True, env=env, timeout=500,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert "per-video tasks run with num_cpus=0.5 instead of 1" in result.stderr
        # the raylets were started without the key (cluster.env()): the actors had it from runtime_env
        assert sum(server.calls.values()) and set(server.auth) == {f"Bearer {KEY}"}  # on every request
        assert sum(manifest(str(out))["last_run_placement"]["rows"]["caption_vlm"].values()) >= 4
    finally:
        server.shutdown()
        server.server_close()
    assert clip_ids(str(out)) == clip_ids(embedded_run) and clip_ids(str(out))
    assert all(c["caption"] == DESCRIPTION for c in read_rows(str(out), "clips"))
    # nowhere in the output, nor in what Ray logged on the cluster's nodes (runtime_env env_vars would be)
    files = [p for where in (out, Path(cluster.temp_dir)) for p in where.rglob("*") if p.is_file()]
    assert len(files) > 20 and not [p for p in files if KEY.encode() in p.read_bytes()]


@pytest.mark.timeout(600)
def test_through_ray_client_the_key_reaches_the_actors_and_no_log(cluster, tiny_clips, tmp_path):
    """``--address ray://``: the run's driver is a task inside the cluster, which cannot install the worker
    setup hook. The API key still reaches the caption actors (through the object store), and it is in no
    file of the output nor of anything Ray wrote on the cluster's nodes (runtime_env env_vars would be)."""
    from tests.pipeline.test_caption_openai import DESCRIPTION, KEY, Server, start

    server = start(Server())
    try:
        captions = "".join(CAPTION.format(name=n, url=server.url) for n in ("caption_vlm", "caption_expand"))
        recipe = tmp_path / "captioned.toml"
        recipe.write_text(CAPTIONED.format(captions=captions))
        out = tmp_path / "client"
        result = subprocess.run(
            [vidsift_exe(), "curate", str(recipe), "--input", str(tiny_clips), "--output", str(out),
             "--address", cluster.client_address, "--limit", "2"],
            capture_output=True, text=True, env=cluster.env() | {"OPENAI_API_KEY": KEY}, timeout=500,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:] + cluster.log_tails("ray_client_server*")
        assert sum(server.calls.values()) and set(server.auth) == {f"Bearer {KEY}"}
    finally:
        server.shutdown()
        server.server_close()
    clips = read_rows(str(out), "clips")
    assert clips and all(c["caption"] == DESCRIPTION for c in clips)
    files = [p for where in (out, Path(cluster.temp_dir)) for p in where.rglob("*") if p.is_file()]
    assert len(files) > 20 and not [p for p in files if KEY.encode() in p.read_bytes()]


@pytest.mark.timeout(300)
def test_a_run_that_cannot_place_its_tasks_ends_with_the_demand_named(tmp_path):
    """The placement check off (as on an autoscaling cluster) and a per-video resource no node has: on an
    embedded Ray the watchdog ends the run after --stall-timeout, naming the demand; the lock is released."""
    from tests.conftest import make_numbered_clip

    src = tmp_path / "in"
    src.mkdir()
    make_numbered_clip(src / "v.mp4", frames=30)
    recipe = tmp_path / "tpu.toml"
    stages = ["probe", "analyze", "split_scenes", "transcode", "write_shards"]
    recipe.write_text("".join(f'[[stage]]\nname = "{n}"\n' for n in stages).replace(
        'name = "probe"\n', 'name = "probe"\nresources = { num_cpus = 0.5, custom = { tpu = 1 } }\n'
    ))  # fmt: skip
    out = tmp_path / "out"
    result = subprocess.run(
        [vidsift_exe(), "curate", str(recipe), "--input", str(src), "--output", str(out), "--quiet",
         "--set", "run.check_resources=false", "--stall-timeout", "3"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    line = [x for x in result.stderr.splitlines() if x.startswith("vidsift: error:")]
    assert line and "Ray cannot place 1 x {CPU=1, tpu=1} (the per-video task); free now: node " in line[0]
    assert "Traceback" not in result.stderr and not (out / "_lock.json").exists()


@pytest.mark.timeout(600)
def test_the_quick_start_recipe_runs_on_two_one_cpu_nodes(cluster, quickstart_run):
    """Issue 17: ``vidsift curate quickstart --address`` on two 1-CPU nodes hung for 15 minutes (whole-CPU
    per-video tasks beside four quarter-CPU caption actors spread over both nodes). The shipped recipe, with
    its tiny offline caption models (transformers, on CPU) and the sample videos of the embedded local quick
    start run (``quickstart_run``), now finishes on the loopback cluster with exactly that run's clip ids;
    ``--stall-timeout`` turns a stall into an error naming the demand instead of a hang."""
    local, _ = quickstart_run
    root = local.parent
    models = root / "out" / "tiny-models"
    out = root / "on-cluster"
    # The recipe names its models relative to where vidsift runs (out/tiny-models/...). A Ray worker on a
    # cluster does not start there (its cwd is its raylet's): every task and actor of the run moves to the
    # driver's working directory first (dataflow.use_driver_cwd), so the shipped recipe runs as it is.
    assert models.is_dir()
    result = subprocess.run(
        [vidsift_exe(), "curate", "quickstart", "--input", str(root / "videos"), "--output", str(out),
         "--address", cluster.address, "--stall-timeout", "120"],
        capture_output=True, text=True, env=cluster.env(), cwd=root, timeout=500,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert clip_ids(str(out)) == clip_ids(str(local)) and clip_ids(str(out))
    clips = read_rows(str(out), "clips")
    assert all(c["caption_vlm"] and c["caption"] and c["caption_random_weights"] for c in clips)
    assert all(c["text_emb"] for c in clips)  # the last clip stage ran on every clip


@pytest.mark.timeout(300)
def test_without_an_address_a_run_starts_its_own_ray_beside_a_running_cluster():
    # `ray start` records its address under Ray's temp folder (RAY_TMPDIR/ray), where a bare ray.init()
    # looks first and joins it unasked; vidsift without --address or RAY_ADDRESS starts its own Ray
    base = tempfile.mkdtemp(prefix="vsrt", dir="/tmp")  # short: Ray's socket paths live under it
    os.mkdir(os.path.join(base, "ray"))
    cluster = LocalCluster(temp_dir=os.path.join(base, "ray"))
    try:
        cluster.start_head(num_cpus=1)
        code = (
            "import ray\n"
            "from vidsift.pipeline.ray_session import init_ray\n"
            "ray.init(logging_level='ERROR'); print(ray.get_runtime_context().gcs_address); ray.shutdown()\n"
            "init_ray(None, actors=False); print(ray.get_runtime_context().gcs_address); ray.shutdown()\n"
        )
        env = {**cluster.env(), "RAY_TMPDIR": base}
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240
        )
        assert done.returncode == 0, done.stderr[-3000:]
        bare, ours = (address.rsplit(":", 1)[1] for address in done.stdout.split()[-2:])  # ports
        assert bare == str(cluster.gcs_port)  # the premise: a bare ray.init() joins the cluster
        assert ours != str(cluster.gcs_port)
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
