"""Process start-up shared by the trainer and the fine-tuner: distributed only when torchrun launched us."""

from __future__ import annotations

import os

import torch


def start_processes(device: str) -> tuple[bool, int, int, torch.device]:
    """(launched by torchrun, rank, world size, this process's device). Under torchrun the process group
    starts here (NCCL on GPU, gloo on CPU) and each process takes its local GPU; otherwise one process on
    ``device`` ("auto": CUDA when available)."""
    kind = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device).type
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False, 0, 1, torch.device(kind if device == "auto" else device)
    import torch.distributed as dist

    dist.init_process_group(backend="nccl" if kind == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_RANK", 0))
    here = torch.device(f"cuda:{local}") if kind == "cuda" else torch.device("cpu")
    if here.type == "cuda":
        torch.cuda.set_device(here)
    return True, dist.get_rank(), dist.get_world_size(), here
