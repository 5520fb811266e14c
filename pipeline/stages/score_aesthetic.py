"""score_aesthetic: the LAION improved-aesthetic predictor on each clip's sampled frames.

Reads ``frames_jpeg`` (the few frames the analysis pass kept per clip). Every frame goes through an
open_clip image encoder (OpenAI ViT-L/14 by default; frames of all clips in a batch are encoded
together, ``frames_per_pass`` at a time), its embedding is L2-normalised, and the LAION
improved-aesthetic-predictor MLP head (``sac+logos+ava1-l14-linearMSE.pth``: Linear(768,1024),
Dropout, Linear(1024,128), Dropout, Linear(128,64), Dropout, Linear(64,16), Linear(16,1); no
activations) maps it to a rating on the AVA scale, roughly 1..10. Writes ``aesthetic_score`` (mean
over the frames), ``aesthetic_min_score`` (the worst frame), ``aesthetic_model`` and
``aesthetic_random_weights``. A clip without frames gets null scores and is not rejected.

Rejects ``low_aesthetic`` when the mean is below ``min_score`` (4.5, the cut LAION-5B-style
filtering uses) or the worst frame is below ``min_frame_score``; 0 turns either check off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vidsift.pipeline.clip_models import ClipModelConfig
from vidsift.pipeline.rows import reject


@dataclass(frozen=True, kw_only=True)
class ScoreAestheticConfig(ClipModelConfig):
    STAGE: ClassVar[str] = "score_aesthetic"

    head: str = ""  # local .pth of the LAION aesthetic MLP, e.g. sac+logos+ava1-l14-linearMSE.pth (required)
    min_score: float = 4.5  # reject low_aesthetic when the mean frame score is below this; 0 = never
    min_frame_score: float = 0.0  # reject low_aesthetic when the worst frame scores below this; 0 = never

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.head:
            raise ValueError(
                "score_aesthetic.head is required: the local path of the LAION improved-aesthetic MLP "
                "weights (sac+logos+ava1-l14-linearMSE.pth)"
            )
        if self.min_score < 0 or self.min_frame_score < 0:
            raise ValueError("score_aesthetic.min_score and min_frame_score must be >= 0 (0 = no rejection)")


def build_aesthetic_head(embed_dim: int):
    """The improved-aesthetic-predictor MLP, laid out so its state-dict keys are the published ones
    (``layers.0.weight`` ... ``layers.7.bias``). Dropout is inactive in eval mode."""
    from collections import OrderedDict

    from torch import nn

    layers = nn.Sequential(
        nn.Linear(embed_dim, 1024),
        nn.Dropout(0.2),
        nn.Linear(1024, 128),
        nn.Dropout(0.2),
        nn.Linear(128, 64),
        nn.Dropout(0.1),
        nn.Linear(64, 16),
        nn.Linear(16, 1),
    )
    return nn.Sequential(OrderedDict(layers=layers))


def load_aesthetic_head(path: str, embed_dim: int, device):
    from pathlib import Path

    import torch

    if not Path(path).is_file():
        raise FileNotFoundError(f"score_aesthetic.head: no such weights file: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a Lightning checkpoint of the same module
    first = state.get("layers.0.weight") if isinstance(state, dict) else None
    if first is None:
        keys = sorted(state)[:6] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"score_aesthetic.head: {path} is not an aesthetic-predictor state dict ({keys})")
    if first.shape[1] != embed_dim:
        raise ValueError(
            f"score_aesthetic.head: {path} takes {first.shape[1]}-d embeddings, "
            f"the CLIP model makes {embed_dim}-d (the published head is for ViT-L/14: 768)"
        )
    head = build_aesthetic_head(embed_dim)
    try:
        head.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"score_aesthetic.head: {path} does not fit the head layout: {e}") from None
    return head.to(device).eval()


class ScoreAesthetic:
    # the columns of accepted clip rows this stage is given, and the only ones it may change (besides the
    # reject columns); the runner joins them back into the batch (process.call_clip_stage)
    reads: tuple[str, ...] = ("frames_jpeg",)
    writes: tuple[str, ...] = (
        "aesthetic_score",
        "aesthetic_min_score",
        "aesthetic_model",
        "aesthetic_random_weights",
    )

    def __init__(self, config: ScoreAestheticConfig) -> None:
        from vidsift.pipeline.clip_models import is_random_weights, load_clip

        self.config = config
        self.clip = load_clip(config)
        self.head = load_aesthetic_head(config.head, self.clip.embed_dim, self.clip.device)
        self.label = f"{self.clip.label}+{config.head}"
        self.random_weights = self.clip.random_weights or is_random_weights(config.head)

    def frame_scores(self, jpegs: list[bytes]):
        """One aesthetic score per JPEG frame (float32 numpy)."""
        import numpy as np
        import torch

        parts = []
        with torch.inference_mode():
            for feats in self.clip.image_features(jpegs, self.config.frames_per_pass):
                parts.append(self.head(feats)[:, 0].cpu())
        return torch.cat(parts).numpy() if parts else np.zeros(0, np.float32)

    def __call__(self, rows: list[dict]) -> list[dict]:
        import numpy as np

        c = self.config
        out = [dict(r) for r in rows]
        frames = [f for r in out for f in r.get("frames_jpeg") or []]
        owner = np.repeat(np.arange(len(out)), [len(r.get("frames_jpeg") or []) for r in out])
        scores = self.frame_scores(frames)
        for i, row in enumerate(out):
            row["aesthetic_model"] = self.label
            row["aesthetic_random_weights"] = self.random_weights
            mine = scores[owner == i]
            if not mine.size:
                row["aesthetic_score"] = row["aesthetic_min_score"] = None
                continue
            row["aesthetic_score"] = mean = float(mine.mean())
            row["aesthetic_min_score"] = low = float(mine.min())
            if c.min_score and mean < c.min_score:
                reject(row, c.STAGE, "low_aesthetic", f"mean aesthetic score {mean:.2f} < {c.min_score}")
            elif c.min_frame_score and low < c.min_frame_score:
                reject(row, c.STAGE, "low_aesthetic", f"worst frame scores {low:.2f} < {c.min_frame_score}")
        return out
