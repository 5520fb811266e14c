"""Stages run where their resources say, on a real two-node cluster; jobs go in with ``ray job submit``."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.cluster.jobs import clip_ids, manifest, read_rows, submit_curate
from tests.conftest import vidsift_exe
from vidsift.pipeline.recipe import RecipeError
from vidsift.pipeline.runner import check_fits

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
        ("text_embed.resources={num_cpus=0.75, min_actors=2, max_actors=2}", "would wait forever"),
    ]
    for i, (override, message) in enumerate(cases):
        started = time.time()
        result = subprocess.run(
            [vidsift_exe(), "curate", recipes["gpu"], "--input", str(tiny_clips), "--output",
             str(tmp_path / f"o{i}"), "--address", cluster.address, "--set", override],
            capture_output=True, text=True, env=cluster.env(), timeout=100,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr[-2000:]
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert time.time() - started < 60


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
    check_fits({"CPU": 1.0}, [("a", {"CPU": 0.25}), ("b", {"CPU": 0.25})], [{"CPU": 2.0}])
    with pytest.raises(RecipeError, match="memory=64.0GiB"):
        check_fits(video, [("caption_expand", {"CPU": 1.0, "memory": 64 * 2**30})], [head, gpu])
