"""Checkpoints of a training run: weights, EMA weights and the resume state, written as one step.

A run folder holds ``model.safetensors`` and ``ema.safetensors`` (weights plus metadata that rebuild the
model alone, read by ``vidsift sample``) and ``state.pt`` (optimizer, step, data position, RNG). The three
must always belong to the same step, so a checkpoint is written as a journal:

1. all three files go into ``OUT/checkpoint.next/``, each fsynced, then an empty ``complete`` marker;
2. they are renamed into the run folder (state.pt last), and ``checkpoint.next/`` is removed.

A crash in step 1 leaves the previous checkpoint untouched (the unfinished folder is deleted on resume); a
crash in step 2 is rolled forward on resume from the complete folder. Resume then checks that the model,
EMA and state agree on the step, and loads the state with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import torch

FILES = {"model": "model.safetensors", "ema": "ema.safetensors", "state": "state.pt"}
JOURNAL = "checkpoint.next"


class CheckpointError(Exception):
    """A missing, foreign or inconsistent checkpoint; the CLI prints it on one line."""


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_weights(model_or_state, path: str, meta: dict) -> None:
    """A module's weights (or an already gathered state dict) as safetensors with ``meta`` as metadata."""
    from safetensors.torch import save_file

    state = model_or_state if isinstance(model_or_state, dict) else model_or_state.state_dict()
    tmp = path + ".tmp"
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in state.items()},
        tmp,
        metadata={k: json.dumps(v) for k, v in meta.items()},
    )
    _fsync(tmp)
    os.replace(tmp, path)


def checkpoint_meta(model, cfg, step: int, text_model: str, vae_path: str) -> dict:
    """The metadata stored with the weights: enough to rebuild and sample the model with nothing else."""
    from vidsift.model.dit import config_to_dict

    return {
        "kind": "vidsift-dit",
        "dit": config_to_dict(model.cfg),
        "flow": dataclasses.asdict(cfg.flow()),
        "text_model": text_model,
        "text_tokens": cfg.text_tokens,
        "vae": vae_path,
        "frames": cfg.frames,
        "height": cfg.height,
        "width": cfg.width,
        "fps": cfg.fps or 24.0 / cfg.frame_stride,  # the rate the model learnt; samples are written at it
        "step": step,
    }


def write_checkpoint(out: str, weights: dict, ema_weights: dict, meta: dict, state: dict) -> None:
    """Write one step's model, EMA and state so that a crash at any point leaves a consistent checkpoint."""
    journal = os.path.join(out, JOURNAL)
    shutil.rmtree(journal, ignore_errors=True)
    os.makedirs(journal)
    save_weights(weights, os.path.join(journal, FILES["model"]), meta)
    save_weights(ema_weights, os.path.join(journal, FILES["ema"]), meta)
    torch.save(state, os.path.join(journal, FILES["state"]))
    _fsync(os.path.join(journal, FILES["state"]))
    open(os.path.join(journal, "complete"), "w").close()  # noqa: SIM115
    _fsync(journal)
    _commit(out)


def _commit(out: str) -> None:
    journal = os.path.join(out, JOURNAL)
    for name in ("model", "ema", "state"):  # state last: it is what says "resume from here"
        src = os.path.join(journal, FILES[name])
        if os.path.exists(src):
            os.replace(src, os.path.join(out, FILES[name]))
    _fsync(out)
    shutil.rmtree(journal, ignore_errors=True)


def recover(out: str) -> str | None:
    """Finish or discard an interrupted checkpoint write; returns what was done (for a log line)."""
    journal = os.path.join(out, JOURNAL)
    if not os.path.isdir(journal):
        return None
    if os.path.exists(os.path.join(journal, "complete")):
        _commit(out)
        return "finished an interrupted checkpoint write"
    shutil.rmtree(journal, ignore_errors=True)
    return "discarded an unfinished checkpoint write"


def weights_step(path: str) -> int | None:
    """The training step recorded in a safetensors file's metadata (None when it records none)."""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta["step"]) if "step" in meta else None


def has_checkpoint(out: str) -> bool:
    return os.path.exists(os.path.join(out, FILES["state"]))


def load_checkpoint(out: str, device: torch.device) -> tuple[dict, dict, dict]:
    """(model weights, EMA weights, state) of a run folder, checked to belong to one step."""
    from safetensors.torch import load_file

    paths = {k: os.path.join(out, f) for k, f in FILES.items()}
    state = torch.load(paths["state"], map_location="cpu", weights_only=True)
    steps = {"state": state["step"], "model": weights_step(paths["model"]), "ema": weights_step(paths["ema"])}
    if len({s for s in steps.values() if s is not None}) != 1:
        raise CheckpointError(
            f"checkpoint in {out} mixes steps ({', '.join(f'{k} {v}' for k, v in steps.items())}); "
            "it was not written by one save: restore the files of one step or start a new run folder"
        )
    model = load_file(paths["model"], device=str(device))
    ema = load_file(paths["ema"], device=str(device))
    return model, ema, state
