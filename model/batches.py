"""From data readers to model inputs and losses: one adapter for fixed-size batches, one for packed rows.

The training loop asks its adapter for the next batch of a reader, for that batch's loss, for the
validation loss and for the inputs of a sample grid; whether clips are cropped to one size or packed at
their native sizes (``pack = true``) is decided once, when the adapter is built (``make_batches``), so the
loop has one path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vidsift.model.data import clip_tokens, collate, pack
from vidsift.model.dit import packed_attention_mask
from vidsift.model.flow import flow_loss, packed_flow_loss, packed_training_loss, training_loss

VAL_TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)  # validation loss: fixed timesteps and fixed noise, comparable


@dataclass
class Batch:
    inputs: tuple  # what the loss function takes after the model
    tokens: int  # useful tokens (padding does not count), for tokens/s and MFU


class Batches:
    """What both adapters share: text conditioning, the VAE on the fly, the size the DiT sees."""

    def __init__(self, cfg, device: torch.device, vae, use_latents: bool, encoder, patch) -> None:
        self.cfg, self.device, self.vae, self.use_latents = cfg, device, vae, use_latents
        self.encoder, self.patch = encoder, tuple(patch)

    def input_shape(self, x: torch.Tensor, is_latent: bool) -> tuple[int, ...]:
        """What the DiT sees for a sample: its latent's shape when the VAE encodes on the fly."""
        if self.vae is not None and not is_latent:
            return tuple(self.vae.latent_shape(*x.shape[1:]))
        return tuple(x.shape)

    def full_shape(self) -> tuple[int, ...]:
        """The DiT input of one clip at the full training size."""
        cfg = self.cfg
        return self.input_shape(torch.empty(3, cfg.frames, cfg.height, cfg.width), False)

    def text_of(self, samples) -> tuple[torch.Tensor, torch.Tensor]:
        if self.encoder is not None:
            text, mask = self.encoder([s.caption for s in samples])
        else:
            text, mask = pad_text([s.text_emb for s in samples], self.cfg.text_tokens)
        return text.to(self.device), mask.to(self.device)


class FixedBatches(Batches):
    """Every clip cropped to frames x height x width: batches of ``batch_size`` clips."""

    def _inputs(self, samples) -> tuple:
        x, captions, _ = collate(samples)
        x = x.to(self.device)
        if self.vae is not None and not self.use_latents:
            x = self.vae.encode(x)  # no cached latents: encode on the fly (run `vidsift encode` to skip this)
        text, mask = self.text_of(samples)
        empty = torch.tensor([c == "" for c in captions], device=self.device)
        return x, text, mask, empty

    def next(self, reader) -> Batch:
        x, text, mask, empty = self._inputs(reader.next_batch(self.cfg.batch_size))
        return Batch((x, text, mask, empty), x.shape[0] * clip_tokens(tuple(x.shape), self.patch))

    def loss(self, forward, batch: Batch, flow, generator: torch.Generator) -> torch.Tensor:
        return training_loss(forward, *batch.inputs, flow, generator)

    def val_loss(self, model, val) -> float:
        x, text, mask, empty = self._inputs(val)
        g = torch.Generator().manual_seed(1234)
        total = 0.0
        for t in VAL_TIMES:
            noise = torch.randn(x.shape, generator=g).to(self.device)
            tt = torch.full((x.shape[0],), t, device=self.device)
            total += flow_loss(model, x, text, mask, empty, tt, noise).item() / len(VAL_TIMES)
        return total

    def sample_inputs(self, samples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, text, mask, _ = self._inputs(samples)
        return x, text, mask


class PackedBatches(Batches):
    """Clips at their native sizes packed into rows of ``token_budget`` tokens, block-diagonal attention."""

    def __init__(self, cfg, device, vae, use_latents, encoder, patch, budget: int) -> None:
        super().__init__(cfg, device, vae, use_latents, encoder, patch)
        self.budget = budget

    def _inputs(self, samples, bins=None, rows=None) -> tuple:
        """A Packed batch on the device; per clip slot: text [R, K, L, D], mask [R, K, L], empty [R, K]."""
        xs = []
        for s in samples:
            x = s.x.to(self.device)
            if self.vae is not None and not s.is_latent:
                x = self.vae.encode(x[None])[0]  # clips differ in size: one at a time
            xs.append(x)
        packed = pack(xs, self.patch, self.budget, self.cfg.max_clips, rows=rows, bins=bins)
        text, mask = self.text_of(samples)
        empty = torch.tensor([s.caption == "" for s in samples])
        return (
            packed,
            packed.per_clip(text),
            packed.per_clip(mask, fill=True),
            packed.per_clip(empty, fill=True).to(self.device),
        )

    def next(self, reader) -> Batch:
        samples, bins = reader.next_batch()
        packed, text, mask, empty = self._inputs(samples, bins, rows=self.cfg.batch_size)
        attn = packed_attention_mask(packed.seq_id, self.cfg.packed_attention)  # once for every block
        return Batch((packed, text, mask, empty, attn), int(packed.real.sum()))

    def loss(self, forward, batch: Batch, flow, generator: torch.Generator) -> torch.Tensor:
        packed, text, mask, empty, attn = batch.inputs
        return packed_training_loss(forward, packed, text, mask, empty, flow, generator, attn)

    def val_loss(self, model, val) -> float:
        """The held-out clips at their native sizes, packed into as many rows as needed."""
        packed, text, mask, empty = self._inputs(val)
        attn = packed_attention_mask(packed.seq_id, self.cfg.packed_attention)
        g = torch.Generator().manual_seed(1234)
        total = 0.0
        for t in VAL_TIMES:
            noise = torch.randn(packed.tokens.shape, generator=g).to(self.device)
            tt = torch.full(empty.shape, t, device=self.device)
            loss = packed_flow_loss(model.forward_packed, packed, text, mask, empty, tt, noise, None, attn)
            total += loss.item() / len(VAL_TIMES)
        return total

    def sample_inputs(self, samples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Validation clips differ in size: their prompts are sampled at the full training size."""
        text, mask = self.text_of(samples)
        return torch.empty(len(samples), *self.full_shape()), text, mask


def pad_text(embs: list[torch.Tensor], tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached caption embeddings of different lengths as one [B, tokens, D] batch and its mask."""
    dim = embs[0].shape[1]
    text = torch.zeros(len(embs), tokens, dim)
    mask = torch.zeros(len(embs), tokens, dtype=torch.bool)
    for i, e in enumerate(embs):
        n = min(tokens, e.shape[0])
        text[i, :n], mask[i, :n] = e[:n], True
    mask[:, 0] = True  # an empty caption still has one (zero) token; it trains as the null caption anyway
    return text, mask
