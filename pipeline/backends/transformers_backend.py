"""``transformers`` backend: the model in this process (CPU or one GPU), batched ``generate``.

Loads with ``AutoProcessor`` + ``AutoModelForImageTextToText`` for a VLM, ``AutoTokenizer`` +
``AutoModelForCausalLM`` for an LLM, and renders prompts with the checkpoint's own chat template.
Frames go in as one video when the processor has a video processor (Qwen2-VL family: native video
input with the true sampling rate), else as a sequence of images.

JSON answers: the model answers freely first; when that is not a JSON object with every field, the
fields are decoded one at a time after a forced ``{"field": "`` prefix, stopping at the closing
quote. The structure is then valid by construction (the result says ``repaired_json``), whatever the
model, so a weak or random-weight model still fills every field.
"""

from __future__ import annotations

import json

from vidsift.pipeline.backends.base import (
    BackendConfig,
    ChatRequest,
    ChatResult,
    is_random_weights,
    parse_json_fields,
)


class TransformersBackend:
    name = "transformers"

    def __init__(self, config: BackendConfig, vision: bool) -> None:
        import torch
        from transformers import (
            AutoModelForCausalLM,
            AutoModelForImageTextToText,
            AutoProcessor,
            AutoTokenizer,
        )

        self.config = config
        self.model = config.model
        self.random_weights = is_random_weights(config.model)
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if config.dtype == "auto":
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            dtype = getattr(torch, config.dtype)
        if vision:
            self.processor = AutoProcessor.from_pretrained(config.model)
            self.tokenizer = self.processor.tokenizer
            net = AutoModelForImageTextToText.from_pretrained(config.model, dtype=dtype)
            self.takes_video = getattr(self.processor, "video_processor", None) is not None
        else:
            self.processor = None
            self.tokenizer = AutoTokenizer.from_pretrained(config.model)
            net = AutoModelForCausalLM.from_pretrained(config.model, dtype=dtype)
            self.takes_video = False
        self.tokenizer.padding_side = "left"  # batched generation continues every row at the same place
        self.net = net.to(self.device).eval()
        gen = self.net.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids)

    # -- prompts -------------------------------------------------------------------------------

    def messages(self, req: ChatRequest) -> list[dict]:
        content: list[dict] = []
        if req.frames:
            if req.as_video and self.takes_video:
                content.append({"type": "video"})
            else:
                content.extend({"type": "image"} for _ in req.frames)
        content.append({"type": "text", "text": req.prompt})
        return [
            {"role": "system", "content": [{"type": "text", "text": req.system}]},
            {"role": "user", "content": content},
        ]

    def prompt_text(self, req: ChatRequest) -> str:
        msgs = self.messages(req)
        if self.processor is None:  # text tokenizers' templates expect plain string contents
            msgs = [{"role": m["role"], "content": m["content"][-1]["text"]} for m in msgs]
            return self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        return self.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)

    def encode(self, texts: list[str], requests: list[ChatRequest]) -> dict:
        """Tokenized, padded model inputs for ``texts`` (rendered prompts) with the requests' frames."""
        if self.processor is None:
            return self.tokenizer(texts, return_tensors="pt", padding=True).to(self.device)
        kwargs: dict = {}
        videos = [r for r in requests if r.frames and r.as_video and self.takes_video]
        images = [r for r in requests if r.frames and not (r.as_video and self.takes_video)]
        if videos:
            from transformers.video_utils import VideoMetadata

            kwargs["videos"] = [r.frames for r in videos]
            kwargs["video_metadata"] = [
                VideoMetadata(
                    total_num_frames=len(r.frames),
                    fps=r.fps or 1.0,
                    frames_indices=list(range(len(r.frames))),
                )
                for r in videos
            ]
        if images:
            kwargs["images"] = [r.frames for r in images]
        return self.processor(text=texts, return_tensors="pt", padding=True, **kwargs).to(self.device)

    # -- generation ----------------------------------------------------------------------------

    def generate(
        self, texts: list[str], requests: list[ChatRequest], max_new_tokens: int, stop: str | None = None
    ) -> list[ChatResult]:
        import torch

        inputs = self.encode(texts, requests)
        kwargs: dict = {"max_new_tokens": max_new_tokens, "pad_token_id": self.pad_id}
        if self.config.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.config.temperature)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if stop:
            kwargs.update(stop_strings=[stop], tokenizer=self.tokenizer)
        with torch.inference_mode():
            out = self.net.generate(**inputs, **kwargs)
        new = out[:, inputs["input_ids"].shape[1] :].tolist()
        results = []
        for ids in new:
            n = next((i + 1 for i, t in enumerate(ids) if t in self.eos_ids), None)
            finish = "stop" if n is not None else ("length" if len(ids) >= max_new_tokens else "stop")
            ids = ids[: n if n is not None else len(ids)]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            results.append(ChatResult(text=text, output_tokens=len(ids), finish_reason=finish))
        return results

    def chat(self, requests: list[ChatRequest]) -> list[ChatResult]:
        results: list[ChatResult | None] = [None] * len(requests)
        # one generate() per kind of request: same token budget and answer format
        kinds: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            kinds.setdefault((r.max_new_tokens or self.config.max_new_tokens, r.json_fields), []).append(i)
        for (max_new, fields), idx in kinds.items():
            reqs = [requests[i] for i in idx]
            texts = [self.prompt_text(r) for r in reqs]
            for i, res in zip(idx, self.generate(texts, reqs, max_new), strict=True):
                results[i] = res
            if fields:
                bad = [
                    (i, t, r)
                    for i, t, r in zip(idx, texts, reqs, strict=True)
                    if not self._valid(i, results, fields)
                ]
                if bad:
                    fixed = self.fill_fields([t for _, t, _ in bad], [r for _, _, r in bad], fields, max_new)
                    for (i, _, _), res in zip(bad, fixed, strict=True):
                        results[i] = res
        return results  # type: ignore[return-value]

    @staticmethod
    def _valid(i: int, results: list, fields: tuple[str, ...]) -> bool:
        return parse_json_fields(results[i].text, fields) is not None

    def fill_fields(
        self, texts: list[str], requests: list[ChatRequest], fields: tuple[str, ...], max_new_tokens: int
    ) -> list[ChatResult]:
        """Constrained decoding of a flat JSON object of string fields: the keys and quotes are forced,
        the model writes each value until its closing quote."""
        per_field = max(8, max_new_tokens // len(fields))
        values: list[dict[str, str]] = [{} for _ in texts]
        tokens = [0] * len(texts)
        prefixes = list(texts)
        for k, name in enumerate(fields):
            opener = ("{" if k == 0 else ", ") + json.dumps(name) + ': "'
            prefixes = [p + opener for p in prefixes]
            for j, res in enumerate(self.generate(prefixes, requests, per_field, stop='"')):
                value = res.text.split('"', 1)[0].replace("\\", "").replace("\n", " ").strip()
                values[j][name] = value
                tokens[j] += res.output_tokens
                prefixes[j] += value + '"'
        return [
            ChatResult(text=json.dumps(v), output_tokens=n, finish_reason="stop", repaired_json=True)
            for v, n in zip(values, tokens, strict=True)
        ]
