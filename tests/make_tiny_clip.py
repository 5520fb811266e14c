"""Build a tiny random-weight open_clip model and aesthetic head for tests and the offline quick start.

    python tests/make_tiny_clip.py out/tiny-clip

writes into OUT:

- ``tiny-clip.json``: an open_clip model config (ViT image tower and text transformer, 2 layers each,
  64 wide, 224-px input, 32-px patches, the real CLIP BPE tokenizer bundled with open_clip);
- ``tiny-clip.pt``: its random weights (``state_dict``);
- ``tiny-aesthetic-head.pth``: a random LAION improved-aesthetic MLP head for its 64-d embeddings,
  with the published layer layout and state-dict keys;
- ``vidsift_random_weights.json``: the marker that makes every score from these files
  ``*_random_weights = true``.

The stages load them exactly as they load real weights::

    model = "OUT/tiny-clip.json", pretrained = "OUT/tiny-clip.pt", head = "OUT/tiny-aesthetic-head.pth"

``--arch ViT-B-32`` instead saves random weights for a built-in architecture at full size (the
throughput benchmark uses it). Deterministic (fixed seed), a second or two on a CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "tiny-clip"
TINY_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def build(out: Path, arch: str | None = None, seed: int = 0) -> dict[str, str]:
    """Write the files; return the stage settings that load them (model, pretrained, head)."""
    import open_clip
    import torch

    from vidsift.pipeline.clip_models import RANDOM_WEIGHTS_MARKER
    from vidsift.pipeline.stages.score_aesthetic import build_aesthetic_head

    out.mkdir(parents=True, exist_ok=True)
    if arch is None:
        config = out / f"{NAME}.json"
        config.write_text(json.dumps(TINY_CONFIG, indent=1))
        open_clip.add_model_config(config)
        name, model_setting = NAME, str(config)
    else:
        name = model_setting = arch
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    weights = out / f"{name}.pt"
    torch.save(model.state_dict(), weights)
    head = build_aesthetic_head(model.visual.output_dim)
    head_path = out / f"{name}-aesthetic-head.pth" if arch else out / "tiny-aesthetic-head.pth"
    torch.save(head.state_dict(), head_path)
    (out / RANDOM_WEIGHTS_MARKER).write_text(
        json.dumps({"random_weights": True, "built_by": "tests/make_tiny_clip.py", "seed": seed}) + "\n"
    )
    return {"model": model_setting, "pretrained": str(weights), "head": str(head_path)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--arch", help="a built-in open_clip architecture at full size, e.g. ViT-B-32")
    args = parser.parse_args()
    print(json.dumps(build(args.out, args.arch), indent=1))


if __name__ == "__main__":
    main()
