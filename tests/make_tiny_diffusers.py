"""Build tiny random-weight diffusers video pipelines (Wan 2.1, LTX-Video, CogVideoX) for tests and benches.

    python tests/make_tiny_diffusers.py out/tiny-diffusers [--family wan]

writes one folder per family (``OUT/tiny-wan``, ``OUT/tiny-ltx``, ``OUT/tiny-cogvideox``) laid out exactly
like a hub repository of that family (``model_index.json``, ``transformer/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``), saved with the pipeline's ``save_pretrained``. ``vidsift finetune`` and the
family's own pipeline load them through the same ``from_pretrained`` code as a real hub id. The real
architectures are kept; only their widths and depths shrink (1-2 layers, dims of 8-32). The text encoders
(UMT5 / T5 encoders) are built from small configs too, and the tokenizer is the byte-level BPE that
tests/make_tiny_models.py trains here on a few sentences: nothing is downloaded.

Each folder holds ``vidsift_random_weights.json``; their outputs are noise by design.
Building is deterministic (fixed seed) and takes a second or two per family on a CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.make_tiny_models import RANDOM_WEIGHTS_MARKER, build_tokenizer  # noqa: E402

TEXT_DIM = 32  # d_model of every tiny text encoder, and so the transformers' text/caption dim


def _t5_config(cls, vocab: int):
    return cls(
        vocab_size=vocab,
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=1,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        decoder_start_token_id=0,
    )


def build_wan(out: Path, tok) -> Path:
    import torch
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    # z_dim 16: AutoencoderKLWan's default latents_mean/std have 16 channels, as in Wan 2.1.
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=TEXT_DIM,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        rope_max_seq_len=32,
    )
    text_encoder = UMT5EncoderModel(_t5_config(UMT5Config, len(tok)))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = WanPipeline(
        tokenizer=tok, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer
    )
    return _save(pipe, out / "tiny-wan")


def build_ltx(out: Path, tok) -> Path:
    import torch
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    # Two spatio-temporal scalings: 4x spatial and 4x temporal compression (the real VAE: 32x and 8x).
    vae = AutoencoderKLLTXVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=False,
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=4,
        attention_head_dim=8,
        cross_attention_dim=32,
        num_layers=1,
        caption_channels=TEXT_DIM,
    )
    text_encoder = T5EncoderModel(_t5_config(T5Config, len(tok)))
    scheduler = FlowMatchEulerDiscreteScheduler()
    pipe = LTXPipeline(
        tokenizer=tok, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer
    )
    return _save(pipe, out / "tiny-ltx")


def build_cogvideox(out: Path, tok) -> Path:
    import torch
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    )
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        time_embed_dim=2,
        text_embed_dim=TEXT_DIM,
        num_layers=1,
        sample_width=2,
        sample_height=2,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=16,  # the text length the model is built for (226 for the real ones)
    )
    text_encoder = T5EncoderModel(_t5_config(T5Config, len(tok)))
    scheduler = CogVideoXDDIMScheduler(
        prediction_type="v_prediction", timestep_spacing="trailing", rescale_betas_zero_snr=True
    )
    pipe = CogVideoXPipeline(
        tokenizer=tok, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer
    )
    return _save(pipe, out / "tiny-cogvideox")


def _save(pipe, folder: Path) -> Path:
    pipe.save_pretrained(str(folder))
    (folder / RANDOM_WEIGHTS_MARKER).write_text(json.dumps({"random_weights": True, "built_by": __file__}))
    return folder


BUILDERS = {"wan": build_wan, "ltx": build_ltx, "cogvideox": build_cogvideox}


def build_all(out: Path, families: list[str] | None = None) -> dict[str, Path]:
    """Build the tiny pipelines of ``families`` (default: all) under ``out``; {family: folder}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(vocab_size=512)
    return {name: BUILDERS[name](out, tok) for name in families or BUILDERS}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--family", action="append", choices=sorted(BUILDERS), help="default: all")
    args = ap.parse_args(argv)
    for name, folder in build_all(args.out, args.family).items():
        print(f"{name}: {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
