"""One small adapter per diffusers video family: what differs between Wan 2.1, LTX-Video and CogVideoX.

The fine-tuning loop (loop.py) is the same for all three; an adapter answers, for its family:

- which diffusers classes make up a checkpoint (transformer, VAE, text encoder; the pipeline that loads
  LoRAs and samples);
- the size and frame-count rules (``spatial_multiple``, ``frames_ok``);
- how pixels become the latents the transformer trains on (latent normalisation) and back;
- how captions become text embeddings (tokenizer length, attention mask, zeroed padding);
- the diffusion convention: flow matching with sigma * 1000 timesteps (Wan, LTX) or DDPM v-prediction on
  integer timesteps (CogVideoX), i.e. the noisy input, the timestep and the regression target;
- the transformer's calling convention (LTX packs latents into tokens; CogVideoX takes [B, F, C, H, W] and
  rotary embeddings).

Each adapter follows its diffusers pipeline's own code (``encode_prompt``, ``prepare_latents``, the decode in
``__call__``), so a model fine-tuned here samples correctly with that pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch


@dataclass
class Components:
    """A loaded checkpoint: the trained transformer and the frozen parts around it."""

    transformer: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any


@dataclass
class Text:
    """Encoded captions: [B, L, D] embeddings and the [B, L] attention mask (1 = token)."""

    emb: torch.Tensor
    mask: torch.Tensor

    def to(self, device, dtype=None) -> Text:
        return Text(self.emb.to(device, dtype), self.mask.to(device))

    def select(self, keep: torch.Tensor, null: Text) -> Text:
        """Per sample: this caption where ``keep``, else the null caption (caption dropout)."""
        k = keep.view(-1, 1, 1).to(self.emb.device)
        emb = torch.where(k, self.emb, null.emb.expand_as(self.emb))
        mask = torch.where(k[:, :, 0], self.mask, null.mask.expand_as(self.mask))
        return Text(emb, mask)


class Family:
    """The adapter interface, with the flow-matching convention Wan and LTX share."""

    name: str
    pipeline_class: str  # diffusers pipeline class: loads LoRAs (load_lora_weights) and samples
    transformer_class: str
    vae_class: str
    text_encoder_class: str  # transformers class
    default_text_tokens: int
    flow = True  # flow matching (x_t = (1 - s) x0 + s noise, target noise - x0); else DDPM v-prediction

    # -- loading ------------------------------------------------------------------------------------------
    def classes(self) -> dict[str, type]:
        import diffusers
        import transformers

        return {
            "pipeline": getattr(diffusers, self.pipeline_class),
            "transformer": getattr(diffusers, self.transformer_class),
            "vae": getattr(diffusers, self.vae_class),
            "text_encoder": getattr(transformers, self.text_encoder_class),
        }

    def load(
        self, model: str, transformer_dtype: torch.dtype, frozen_dtype: torch.dtype, offline: bool = False
    ) -> Components:
        """Load a checkpoint (hub id or a local folder in the hub layout) through ``from_pretrained``;
        ``offline``: local files and the Hugging Face cache only (no request)."""
        check_offline(model, offline)
        transformer = self.classes()["transformer"].from_pretrained(
            model, subfolder="transformer", dtype=transformer_dtype, local_files_only=offline
        )
        c = self._load_frozen(model, frozen_dtype, offline, transformer)
        scheduler_cls = _scheduler_class(model, self.classes()["pipeline"], offline)
        c.scheduler = scheduler_cls.from_pretrained(model, subfolder="scheduler", local_files_only=offline)
        return c

    def load_encoders(self, model: str, dtype: torch.dtype, offline: bool = False) -> Components:
        """The VAE, text encoder and tokenizer (what ``vidsift encode`` runs), with the transformer as a shell
        on the meta device (its config gives the size rules; no weights are read) and no scheduler."""
        check_offline(model, offline)
        return self._load_frozen(model, dtype, offline, self._meta("transformer", model, offline))

    def shell(self, model: str, offline: bool = False) -> Components:
        """Transformer and VAE on the meta device, from their configs alone: enough for the size rules."""
        check_offline(model, offline)
        return Components(
            self._meta("transformer", model, offline), self._meta("vae", model, offline), None, None, None
        )

    def _meta(self, part: str, model: str, offline: bool):
        cls = self.classes()[part]
        with torch.device("meta"):
            return cls.from_config(cls.load_config(model, subfolder=part, local_files_only=offline))

    def _load_frozen(self, model: str, dtype: torch.dtype, offline: bool, transformer) -> Components:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        local = {"local_files_only": offline}
        cls = self.classes()
        vae = cls["vae"].from_pretrained(model, subfolder="vae", dtype=dtype, **local)
        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar, not download progress
        try:
            text_encoder = cls["text_encoder"].from_pretrained(
                model, subfolder="text_encoder", dtype=dtype, **local
            )
        finally:
            if shown:
                hf_logging.enable_progress_bar()
        tokenizer = AutoTokenizer.from_pretrained(model, subfolder="tokenizer", **local)
        for m in (vae, text_encoder):
            m.requires_grad_(False).eval()
        return Components(transformer, vae, text_encoder, tokenizer, None)

    def pipeline(self, c: Components, transformer=None):
        """The family's diffusers pipeline around these components (sampling, load_lora_weights)."""
        return self.classes()["pipeline"](
            tokenizer=c.tokenizer,
            text_encoder=c.text_encoder,
            vae=c.vae,
            scheduler=c.scheduler,
            transformer=transformer if transformer is not None else c.transformer,
        )

    # -- size rules ---------------------------------------------------------------------------------------
    def vae_factors(self, c: Components) -> tuple[int, int]:
        """(temporal, spatial) compression of the VAE."""
        raise NotImplementedError

    def patch(self, c: Components) -> tuple[int, int]:
        """(temporal, spatial) patch size of the transformer."""
        raise NotImplementedError

    def spatial_multiple(self, c: Components) -> int:
        return self.vae_factors(c)[1] * self.patch(c)[1]

    def frames_ok(self, c: Components, frames: int) -> bool:
        """Frame counts the causal VAE takes (1 + k * temporal factor) whose latent fills whole patches."""
        t, _ = self.vae_factors(c)
        pt, _ = self.patch(c)
        return frames >= 1 and (frames - 1) % t == 0 and (1 + (frames - 1) // t) % pt == 0

    def text_tokens(self, c: Components, requested: int) -> int:
        return requested or self.default_text_tokens

    # -- latents ------------------------------------------------------------------------------------------
    def encode_video(
        self, c: Components, pixels: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """[B, 3, F, H, W] in [-1, 1] -> the normalised latent the transformer sees, [B, C, T, h, w].
        ``generator`` samples the VAE posterior; ``None`` takes its mode."""
        mean, std = self.encode_posterior(c, pixels)
        return self.latent_from_posterior(c, mean, std, generator)

    def encode_posterior(self, c: Components, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE posterior of [B, 3, F, H, W] pixels: its (mean, std), raw (not normalised), in the VAE's
        dtype. This pair is what ``vidsift encode --vae diffusers:NAME`` caches."""
        dist = c.vae.encode(pixels.to(*placement(c.vae))).latent_dist
        return dist.mean, dist.std

    def latent_from_posterior(
        self, c: Components, mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """A posterior sample (``generator``; its mode when ``None``), normalised for the transformer."""
        raw = mean if generator is None else _sample_posterior(mean, std, generator)
        return self.normalise(c, raw.float())

    def decode_latent(self, c: Components, latent: torch.Tensor) -> torch.Tensor:
        """Normalised latent -> pixels [B, 3, F, H, W] in about [-1, 1] (as the last step of the pipeline)."""
        raw = self.denormalise(c, latent.float()).to(*placement(c.vae))
        return c.vae.decode(raw, return_dict=False)[0].float()

    def normalise(self, c: Components, raw: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def denormalise(self, c: Components, latent: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- text ---------------------------------------------------------------------------------------------
    def encode_text(self, c: Components, captions: list[str], tokens: int) -> Text:
        """Captions -> embeddings as the family's pipeline computes them (T5-style: padded to ``tokens``)."""
        inputs = c.tokenizer(
            captions,
            padding="max_length",
            max_length=tokens,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        device = placement(c.text_encoder)[0]
        ids, mask = inputs.input_ids.to(device), inputs.attention_mask.to(device)
        with torch.no_grad():
            emb = self._run_text_encoder(c, ids, mask)
        return Text(emb.float(), mask)

    def _run_text_encoder(self, c: Components, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return c.text_encoder(ids)[0]

    # -- diffusion ----------------------------------------------------------------------------------------
    def noise(
        self, c: Components, latent: torch.Tensor, noise: torch.Tensor, u: torch.Tensor, shift: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noisy input, timestep, target) for a clean latent, its noise and u in (0, 1) per sample.
        Flow matching: sigma = shift * u / (1 + (shift - 1) u) (the samplers' resolution shift), timestep
        sigma * 1000, target the velocity noise - x0."""
        sigma = shift * u / (1 + (shift - 1) * u)
        s = sigma.view(-1, *[1] * (latent.dim() - 1))
        return (1 - s) * latent + s * noise, sigma * 1000.0, noise - latent

    def predict(
        self, c: Components, transformer, noisy: torch.Tensor, timestep: torch.Tensor, text: Text
    ) -> torch.Tensor:
        """The transformer's output for a noisy latent [B, C, T, h, w], in the same layout."""
        raise NotImplementedError


def placement(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) of a frozen model's first parameter: where and in what its input goes. diffusers'
    ``.device`` and ``.dtype`` walk every submodule looking for offloading and casting hooks (which vidsift
    never attaches): a fixed cost per call that a training step on a small model feels."""
    p = next(module.parameters())
    return p.device, p.dtype


def _sample_posterior(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # DiagonalGaussianDistribution.sample draws on the parameters' device; draw on the CPU generator instead.
    eps = torch.randn(mean.shape, generator=generator, dtype=torch.float32).to(mean.device)
    return mean + std * eps.to(mean.dtype)


def family_of(model: str, offline: bool = False) -> Family:
    """The adapter of a diffusers checkpoint, from the pipeline class its model_index.json names; a model of
    another kind, or no diffusers pipeline at all, is a ValueError saying which families are supported."""
    from diffusers import DiffusionPipeline

    check_offline(model, offline)
    supported = ", ".join(f"{f.pipeline_class} ({f.name})" for f in FAMILIES.values())
    try:
        config = DiffusionPipeline.load_config(model, local_files_only=offline)
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{model!r} is not a diffusers pipeline (no model_index.json: {first})") from None
    name = config.get("_class_name")
    for family in FAMILIES.values():
        if family.pipeline_class == name:
            return family
    raise ValueError(f"{model!r} is a {name or 'pipeline of no class'}, not a supported family: {supported}")


def check_offline(model: str, offline: bool) -> None:
    """With ``offline``, a hub id must be in the Hugging Face cache: say so in one line before diffusers is
    asked (its message names a missing file, and building its request headers alone contacts the hub)."""
    import os

    if not offline or os.path.isdir(model):
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = isinstance(try_to_load_from_cache(model, "model_index.json"), str)
    except ValueError:  # not a valid repo id: in no cache either
        cached = False
    if not cached:
        raise OSError(
            f"{model!r} is neither a local folder nor in the Hugging Face cache, and offline = true reads "
            "local files only (set offline = false to download it)"
        )


def _scheduler_class(model: str, pipeline_cls: type, offline: bool = False) -> type:
    """The scheduler class the checkpoint names (scheduler/scheduler_config.json), as the pipeline would."""
    import diffusers

    has_config = hasattr(pipeline_cls, "load_config")
    config = pipeline_cls.load_config(model, local_files_only=offline) if has_config else {}
    name = (config.get("scheduler") or [None, "FlowMatchEulerDiscreteScheduler"])[1]
    return getattr(diffusers, name)


class Wan(Family):
    """Wan 2.1 (``WanTransformer3DModel`` + ``AutoencoderKLWan`` + UMT5): flow matching; latents normalised
    per channel by the VAE config's latents_mean / latents_std; 4x temporal, 8x spatial VAE, patch (1, 2, 2);
    frames 1 + 4k; text padded to 512 tokens with the padding embeddings zeroed."""

    name = "wan"
    pipeline_class = "WanPipeline"
    transformer_class = "WanTransformer3DModel"
    vae_class = "AutoencoderKLWan"
    text_encoder_class = "UMT5EncoderModel"
    default_text_tokens = 512

    def vae_factors(self, c: Components) -> tuple[int, int]:
        return c.vae.config.scale_factor_temporal, c.vae.config.scale_factor_spatial

    def patch(self, c: Components) -> tuple[int, int]:
        p = c.transformer.config.patch_size
        return p[0], p[1]

    def _stats(self, c: Components, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = c.vae.config.z_dim
        mean = torch.tensor(c.vae.config.latents_mean, dtype=like.dtype, device=like.device).view(
            1, z, 1, 1, 1
        )
        std = torch.tensor(c.vae.config.latents_std, dtype=like.dtype, device=like.device).view(1, z, 1, 1, 1)
        return mean, std

    def normalise(self, c: Components, raw: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(c, raw)
        return (raw - mean) / std

    def denormalise(self, c: Components, latent: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(c, latent)
        return latent * std + mean

    def _run_text_encoder(self, c: Components, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # WanPipeline._get_t5_prompt_embeds: encode with the mask, then zero everything past each caption.
        emb = c.text_encoder(ids, mask).last_hidden_state
        return emb * mask.unsqueeze(-1).to(emb.dtype)

    def encode_text(self, c: Components, captions: list[str], tokens: int) -> Text:
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        return super().encode_text(c, [prompt_clean(t) for t in captions], tokens)

    def predict(self, c, transformer, noisy, timestep, text):
        return transformer(
            hidden_states=noisy, timestep=timestep, encoder_hidden_states=text.emb, return_dict=False
        )[0]


class LTXVideo(Family):
    """LTX-Video (``LTXVideoTransformer3DModel`` + ``AutoencoderKLLTXVideo`` + T5): flow matching; latents
    normalised by the VAE's latents_mean / latents_std buffers and its scaling factor; 8x temporal, 32x
    spatial VAE; frames 1 + 8k; latents packed into a token sequence; text 128 tokens with a mask."""

    name = "ltx"
    pipeline_class = "LTXPipeline"
    transformer_class = "LTXVideoTransformer3DModel"
    vae_class = "AutoencoderKLLTXVideo"
    text_encoder_class = "T5EncoderModel"
    default_text_tokens = 128
    frame_rate = 25.0  # the rope interpolation scale of LTXPipeline's default frame_rate

    def vae_factors(self, c: Components) -> tuple[int, int]:
        return c.vae.temporal_compression_ratio, c.vae.spatial_compression_ratio

    def patch(self, c: Components) -> tuple[int, int]:
        return c.transformer.config.patch_size_t, c.transformer.config.patch_size

    def normalise(self, c: Components, raw: torch.Tensor) -> torch.Tensor:
        from diffusers import LTXPipeline

        return LTXPipeline._normalize_latents(
            raw, c.vae.latents_mean.float(), c.vae.latents_std.float(), c.vae.config.scaling_factor
        )

    def denormalise(self, c: Components, latent: torch.Tensor) -> torch.Tensor:
        from diffusers import LTXPipeline

        return LTXPipeline._denormalize_latents(
            latent, c.vae.latents_mean.float(), c.vae.latents_std.float(), c.vae.config.scaling_factor
        )

    def decode_latent(self, c: Components, latent: torch.Tensor) -> torch.Tensor:
        raw = self.denormalise(c, latent.float()).to(*placement(c.vae))
        timestep = (
            torch.zeros(raw.shape[0], device=raw.device) if c.vae.config.timestep_conditioning else None
        )
        return c.vae.decode(raw, timestep, return_dict=False)[0].float()

    def predict(self, c, transformer, noisy, timestep, text):
        from diffusers import LTXPipeline

        b, _, f, h, w = noisy.shape
        pt, p = self.patch(c)
        t, s = self.vae_factors(c)
        tokens = LTXPipeline._pack_latents(noisy, p, pt)
        out = transformer(
            hidden_states=tokens,
            encoder_hidden_states=text.emb,
            timestep=timestep,
            encoder_attention_mask=text.mask,
            num_frames=f,
            height=h,
            width=w,
            rope_interpolation_scale=(t / self.frame_rate, s, s),
            return_dict=False,
        )[0]
        return LTXPipeline._unpack_latents(out, f, h, w, p, pt)


class CogVideoX(Family):
    """CogVideoX (``CogVideoXTransformer3DModel`` + ``AutoencoderKLCogVideoX`` + T5): DDPM v-prediction on
    integer timesteps with the checkpoint's scheduler (zero-terminal-SNR betas); latents scaled by the VAE's
    scaling_factor; 4x temporal, 8x spatial VAE, patch 2 (and a temporal patch in 1.5); frames 1 + 4k; the
    transformer takes [B, F, C, H, W] and, in 5B/1.5, 3D rotary embeddings; text is exactly
    ``max_text_seq_length`` tokens (226)."""

    name = "cogvideox"
    pipeline_class = "CogVideoXPipeline"
    transformer_class = "CogVideoXTransformer3DModel"
    vae_class = "AutoencoderKLCogVideoX"
    text_encoder_class = "T5EncoderModel"
    default_text_tokens = 226
    flow = False

    def vae_factors(self, c: Components) -> tuple[int, int]:
        return c.vae.config.temporal_compression_ratio, 2 ** (len(c.vae.config.block_out_channels) - 1)

    def patch(self, c: Components) -> tuple[int, int]:
        return c.transformer.config.patch_size_t or 1, c.transformer.config.patch_size

    def text_tokens(self, c: Components, requested: int) -> int:
        # The transformer's text positions are fixed at build time: any other length does not fit.
        return c.transformer.config.max_text_seq_length

    def normalise(self, c: Components, raw: torch.Tensor) -> torch.Tensor:
        return raw * c.vae.config.scaling_factor

    def denormalise(self, c: Components, latent: torch.Tensor) -> torch.Tensor:
        return latent / c.vae.config.scaling_factor

    def noise(self, c, latent, noise, u, shift):
        """DDPM: integer t from u, x_t = sqrt(a) x0 + sqrt(1 - a) noise, target
        v = sqrt(a) noise - sqrt(1 - a) x0 (the same minimum as the x0 loss weighted 1 / (1 - a) that
        CogVideoX's own fine-tuning scripts use)."""
        n = c.scheduler.config.num_train_timesteps
        t = (u * n).long().clamp(0, n - 1)
        noisy = c.scheduler.add_noise(latent, noise, t)
        target = c.scheduler.get_velocity(latent, noise, t)
        return noisy, t, target

    def predict(self, c, transformer, noisy, timestep, text):
        _, _, f, h, w = noisy.shape
        rotary = None
        if c.transformer.config.use_rotary_positional_embeddings:
            from diffusers import CogVideoXPipeline

            # The pipeline's own helper reads only these two attributes of the pipeline.
            shim = SimpleNamespace(vae_scale_factor_spatial=self.vae_factors(c)[1], transformer=c.transformer)
            s = self.vae_factors(c)[1]
            rotary = CogVideoXPipeline._prepare_rotary_positional_embeddings(
                shim, h * s, w * s, f, noisy.device
            )
        out = transformer(
            hidden_states=noisy.permute(0, 2, 1, 3, 4),
            encoder_hidden_states=text.emb,
            timestep=timestep,
            image_rotary_emb=rotary,
            return_dict=False,
        )[0]
        return out.permute(0, 2, 1, 3, 4)


FAMILIES: dict[str, Family] = {f.name: f for f in (Wan(), LTXVideo(), CogVideoX())}


def nearest_frames(family: Family, c: Components, frames: int) -> tuple[int, int]:
    """The valid frame counts just below and above ``frames`` (for error messages)."""
    lo = next((f for f in range(frames, 0, -1) if family.frames_ok(c, f)), 1)
    hi = next(f for f in range(frames, frames + 1000) if family.frames_ok(c, f))
    return lo, hi


def round_to(value: int, multiple: int) -> int:
    return max(multiple, int(math.floor(value / multiple)) * multiple)
