"""Fine-tuning checkpoints and outputs.

- ``checkpoint/state.pt``: what exact resume needs: the trainable weights (LoRA matrices, or the whole
  transformer in full mode), the optimizer state keyed by parameter name, the step, the loss history and
  the recipe keys that must not change between a run and its resume. Written atomically (temp + rename).
- ``lora/pytorch_lora_weights.safetensors`` (LoRA mode): saved with the family pipeline's
  ``save_lora_weights``, so ``Pipeline.from_pretrained(model).load_lora_weights(OUT / "lora")`` loads it.
- ``transformer/`` (full mode): ``save_pretrained`` of the fine-tuned transformer; pass it to the pipeline
  as ``transformer=TransformerClass.from_pretrained(OUT / "transformer")``.

Under FSDP2 every rank takes part in gathering the full weights; rank 0 writes.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

# Keys a resume must share with the run it continues: they change what is trained, not for how long.
ADAPTER = "default"  # peft's adapter name; parameter names hold it (``...to_q.lora_A.default.weight``)

RESUME_KEYS = (
    "model", "family", "mode", "lora_rank", "lora_alpha", "lora_targets", "seed", "batch_size", "grad_accum",
    "caption_column", "text_tokens",
)  # fmt: skip


def trainable_state(module, fsdp: bool) -> dict[str, torch.Tensor]:
    """The trainable parameters by name, full (unsharded) and on the CPU."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        names = {n for n, p in module.named_parameters() if p.requires_grad}
        return {n: t for n, t in full.items() if n in names}
    return {n: p.detach().cpu().clone() for n, p in module.named_parameters() if p.requires_grad}


def optimizer_state(module, opt, fsdp: bool) -> dict:
    """The optimizer state keyed by parameter name (so it loads into any process layout)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=fsdp)
    return get_optimizer_state_dict(module, opt, options=options)


def save_state(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def restore(module, opt, state: dict) -> None:
    """Load trainable weights and optimizer state saved by ``save_state`` (every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(module, state["trainable"], options=options)
    set_optimizer_state_dict(module, opt, state["optimizer"], options=StateDictOptions(full_state_dict=True))


def save_lora(family, trainable: dict[str, torch.Tensor], folder: Path, lora_config) -> Path:
    """The LoRA in the family pipeline's format (``load_lora_weights`` reads it), from the full trainable
    state: peft's key names without the adapter name, as ``peft.get_peft_model_state_dict`` writes them."""
    suffix = f".{ADAPTER}."
    weights = {k.replace(suffix, "."): v.contiguous() for k, v in trainable.items() if suffix in k}
    meta = {k: v for k, v in lora_config.to_dict().items() if k in ("r", "lora_alpha", "target_modules")}
    meta["target_modules"] = sorted(meta["target_modules"])
    family.classes()["pipeline"].save_lora_weights(
        str(folder), transformer_lora_layers=weights, transformer_lora_adapter_metadata=meta
    )
    return folder / "pytorch_lora_weights.safetensors"
