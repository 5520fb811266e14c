"""open_clip models for the model-based filters: settings, loading, and frames/texts to embeddings.

Loading is the real open_clip path and nothing else:
``open_clip.create_model_and_transforms(name, pretrained=tag_or_file)``. ``model`` is an open_clip
architecture name (``ViT-L-14-quickgelu``) or the path of an open_clip model-config JSON
(``{"embed_dim": ..., "vision_cfg": ..., "text_cfg": ...}``); a path is registered with
``open_clip.add_model_config`` first and its file stem becomes the architecture name. That is how
tests and the offline quick start run tiny random-weight models (``tests/make_tiny_clip.py``)
through exactly the production call. ``pretrained`` is an open_clip tag (downloaded into open_clip's
cache on first use: stage it ahead on machines without internet) or a local weights file.

Weights that ``tests/make_tiny_clip.py`` built have a marker file (``vidsift_random_weights.json``)
beside them; the stages label every score those weights produce (``*_random_weights`` columns).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from vidsift.pipeline.backends.base import RANDOM_WEIGHTS_MARKER

DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}  # recipe name -> open_clip precision


@dataclass(frozen=True, kw_only=True)
class ClipModelConfig:
    """Settings every open_clip stage shares; score_aesthetic and score_clip_text extend this."""

    STAGE: ClassVar[str] = "stage"  # the stage name used in error messages

    # OpenAI's ViT-L/14 (QuickGELU activations): the CLIP the LAION aesthetic head was trained on
    model: str = "ViT-L-14-quickgelu"  # open_clip architecture name, or path of an open_clip config JSON
    pretrained: str = "openai"  # open_clip weights: a tag (e.g. openai, laion2b_s32b_b82k) or a local file
    device: str = "auto"  # auto (cuda when present) | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (float16 on GPU, float32 on CPU) | float32 | bfloat16 | float16
    batch_size: int = 16  # clip rows per call of the stage (Ray Data batch)
    frames_per_pass: int = 64  # frames per image-encoder forward pass, gathered across the batch's clips

    def __post_init__(self) -> None:
        s = self.STAGE
        if not self.model:
            raise ValueError(f"{s}.model is required (an open_clip name or a model-config JSON path)")
        if not self.pretrained:
            raise ValueError(f"{s}.pretrained is required (an open_clip tag or a local weights file)")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"{s}.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"{s}.dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if self.batch_size < 1:
            raise ValueError(f"{s}.batch_size must be >= 1, got {self.batch_size}")
        if self.frames_per_pass < 1:
            raise ValueError(f"{s}.frames_per_pass must be >= 1, got {self.frames_per_pass}")


def _local_path(value: str) -> Path | None:
    """The filesystem path ``value`` names, or None for an open_clip name or tag."""
    if value.startswith("hf-hub:"):
        return None
    value = value.removeprefix("local-dir:")
    looks_like_file = value.endswith((".json", ".pt", ".pth", ".bin", ".safetensors"))
    return Path(value) if "/" in value or looks_like_file else None  # tags and names have no "/"


def is_random_weights(*values: str) -> bool:
    """True when any of these local files (or folders) has the test-weights marker beside it."""
    for value in values:
        path = _local_path(value)
        if path is None:
            continue
        folder = path if path.is_dir() else path.parent
        try:
            if json.loads((folder / RANDOM_WEIGHTS_MARKER).read_text()).get("random_weights"):
                return True
        except (OSError, ValueError):
            continue
    return False


def architecture_name(model: str, where: str) -> str:
    """The open_clip name for ``model``; a config JSON path is checked and registered first."""
    path = _local_path(model)
    if path is None or model.startswith("local-dir:"):
        return model
    import open_clip

    if not path.is_file():
        raise FileNotFoundError(f"{where}.model: no such open_clip model-config file: {path}")
    try:
        cfg = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{where}.model: {path} is not JSON: {e}") from None
    if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ValueError(
            f"{where}.model: {path} lacks embed_dim, vision_cfg or text_cfg (not an open_clip config)"
        )
    # open_clip rescans every registered path; a later path wins for the same stem
    open_clip.add_model_config(path)
    return path.stem


@dataclass
class ClipModel:
    """A loaded open_clip model with its own eval preprocessing."""

    model: Any  # open_clip CLIP in eval mode, on ``device``
    preprocess: Any  # PIL image -> [3, H, W] float tensor: the model's eval transform
    arch: str  # open_clip architecture name (for get_tokenizer)
    label: str  # what the score columns record: "<model>:<pretrained>"
    random_weights: bool  # test weights (marker file beside them): scores are not real
    device: Any  # torch.device
    dtype: Any  # torch dtype of the weights
    pil_steps: Any = field(init=False, default=None)  # the transform's steps before ToTensor
    normalize: Any = field(init=False, default=None)  # its Normalize as (mean, std) on device, or None

    def __post_init__(self) -> None:
        import torch
        from torchvision.transforms import Compose, Normalize, ToTensor

        # open_clip's eval transforms end with ToTensor, Normalize. Those two run once per batch
        # instead of once per frame (per frame they cost more than decoding and resizing together),
        # on the accelerator when there is one; the result is the same to the bit.
        steps = list(getattr(self.preprocess, "transforms", []))
        if len(steps) >= 2 and isinstance(steps[-2], ToTensor) and isinstance(steps[-1], Normalize):
            self.pil_steps = Compose(steps[:-2])
            self.normalize = tuple(
                torch.tensor(v, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
                for v in (steps[-1].mean, steps[-1].std)
            )

    @property
    def embed_dim(self) -> int:
        return int(self.model.visual.output_dim)

    def decode_jpegs(self, jpegs: list[bytes]):
        """JPEG bytes to one CPU batch [N, 3, H, W]: uint8 after the transform's picture steps
        (resize, crop), or float32 through the whole transform when it has an unusual shape."""
        import numpy as np
        import torch
        from PIL import Image

        pictures = []
        for data in jpegs:
            with Image.open(io.BytesIO(data)) as img:
                rgb = img.convert("RGB")
            if self.normalize is None:
                pictures.append(self.preprocess(rgb))
            else:
                pictures.append(np.asarray(self.pil_steps(rgb)))
        if self.normalize is None:
            return torch.stack(pictures)
        return torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2)

    def model_input(self, batch):
        """A ``decode_jpegs`` batch on ``device``, normalised, in the model's dtype."""
        import torch

        pin = self.device.type == "cuda"
        x = (batch.pin_memory() if pin else batch).to(self.device, non_blocking=pin)
        if self.normalize is not None:
            mean, std = self.normalize
            x = (x.to(torch.float32).div_(255) - mean).div_(std)  # ToTensor, Normalize
        return x.to(self.dtype).contiguous()

    def image_features(self, jpegs: list[bytes], per_pass: int) -> Iterator:
        """L2-normalised float32 image embeddings [n, D] on ``device``, one tensor per forward pass.

        The next pass's frames are decoded while the accelerator runs the current one: CUDA launches
        are asynchronous, and nothing waits for the result until the caller reads it.
        """
        import torch

        chunks = [jpegs[i : i + per_pass] for i in range(0, len(jpegs), per_pass)]
        batch = self.decode_jpegs(chunks[0]) if chunks else None
        for k in range(len(chunks)):
            with torch.inference_mode():
                feats = self.model.encode_image(self.model_input(batch)).float()
                feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                if k + 1 < len(chunks):
                    batch = self.decode_jpegs(chunks[k + 1])
            yield feats

    def text_features(self, texts: list[str]):
        """L2-normalised float32 text embeddings [n, D] on ``device``; texts longer than the model's
        context (77 tokens for CLIP) are truncated by its tokenizer."""
        import open_clip
        import torch

        tokens = open_clip.get_tokenizer(self.arch)(texts).to(self.device)
        with torch.inference_mode():
            feats = self.model.encode_text(tokens).float()
        return feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def resolve_device(device: str):
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def load_clip(config: ClipModelConfig) -> ClipModel:
    """``open_clip.create_model_and_transforms`` with the stage's settings; errors name the setting."""
    import warnings

    import open_clip
    import torch

    where = config.STAGE
    arch = architecture_name(config.model, where)
    weights = _local_path(config.pretrained)
    if weights is not None and not weights.is_file():
        raise FileNotFoundError(f"{where}.pretrained: no such weights file: {weights}")
    device = resolve_device(config.device)
    dtype = config.dtype if config.dtype != "auto" else ("float16" if device.type == "cuda" else "float32")
    with warnings.catch_warnings():
        # "ViT-L-14" with OpenAI weights runs GELU where the weights expect QuickGELU: the features are
        # quietly wrong. open_clip only warns; we refuse (use the -quickgelu architecture).
        warnings.filterwarnings("error", message="QuickGELU mismatch")
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=config.pretrained, precision=DTYPES[dtype], device=device
        )
    model.eval()
    return ClipModel(
        model=model,
        preprocess=preprocess,
        arch=arch,
        label=f"{config.model}:{config.pretrained}",
        random_weights=is_random_weights(config.model, config.pretrained),
        device=device,
        dtype=getattr(torch, dtype),
    )
