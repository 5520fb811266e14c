"""Small recipes for the cluster tests: tiny clips, cheap settings, resources that fit 1-CPU nodes."""

from __future__ import annotations

from pathlib import Path

# every per-video stage asks for half a CPU: the per-video task takes the largest of them, so two
# run at once on a 1-CPU node and one fits beside a quarter-CPU actor on the "GPU" node
_HALF = "resources = { num_cpus = 0.5 }"
CPU_ONLY = f"""
[run]
group_size = 1

[[stage]]
name = "probe"
{_HALF}

[[stage]]
name = "analyze"
frames_per_clip = 1
{_HALF}

[[stage]]
name = "split_scenes"
min_scene_s = 0.5
{_HALF}

[[stage]]
name = "transcode"
max_short_side = 64
preset = "ultrafast"
{_HALF}
"""
# text_embed stands in for a GPU stage: it may only run where the custom resource gpu_node is
GPU_STAGE = """
[[stage]]
name = "text_embed"
batch_size = 8
resources = { num_cpus = 0.25, custom = { gpu_node = 1 } }
"""
SINK = """
[[stage]]
name = "write_shards"
"""


def write_recipe(folder: Path, name: str, gpu_stage: bool) -> str:
    path = folder / f"{name}.toml"
    path.write_text(CPU_ONLY + (GPU_STAGE if gpu_stage else "") + SINK)
    return str(path)
