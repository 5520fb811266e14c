"""Build tiny random-weight checkpoints of real architectures for tests and the offline quick start.

    python tests/make_tiny_models.py out/tiny-models

writes ``OUT/tiny-qwen2_5-vl`` (a Qwen2.5-VL: vision tower, merger, Qwen2 decoder; image and native
video input) and ``OUT/tiny-qwen2-lm`` (a Qwen2 causal LM). Both share a byte-level BPE tokenizer
trained here on a few sentences, with the Qwen special tokens and a ChatML chat template, and are
saved with ``save_pretrained``, so the pipeline loads them through exactly the production path
(``AutoProcessor`` / ``AutoTokenizer`` / ``AutoModelFor...`` ``from_pretrained``).

Each folder also holds ``vidsift_random_weights.json``: the backends read it and every row these
models write is labelled ``caption_random_weights = true``. Their output is gibberish by design.
Building is deterministic (fixed seed) and takes a few seconds on a CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

VLM_DIR = "tiny-qwen2_5-vl"
LM_DIR = "tiny-qwen2-lm"
from vidsift.pipeline.backends.base import RANDOM_WEIGHTS_MARKER  # noqa: E402

SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# The ChatML template of the Qwen2-VL family, reduced to what the pipeline sends: a system
# message, user turns of text and images or videos, and the generation prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or 'video' in part %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "A woman in a red coat walks a brown dog along a wet city street at dusk.",
    "The camera pans slowly to the right across a green valley with a river and pine trees.",
    "Close-up of hands flipping a pancake in a black frying pan on a gas stove.",
    "A cartoon rabbit stands in a sunny meadow; soft warm light, shallow depth of field.",
    "Cars drive through an intersection seen from a fixed traffic camera, overcast daylight.",
    '{"subject": "a dog", "action": "running", "scene": "a beach", "camera": "static", '
    '"style": "realistic", "lighting": "golden hour"}',
    "Static shot, handheld, tracking shot, aerial view, slow motion, time-lapse, zoom in, tilt up.",
]


def build_tokenizer(vocab_size: int = 1024):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _ids(tok) -> dict[str, int]:
    return {t: tok.convert_tokens_to_ids(t) for t in SPECIAL}


def build_vlm(out: Path, tok) -> Path:
    import torch
    from transformers import (
        AutoModelForImageTextToText,
        Qwen2_5_VLConfig,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    ids = _ids(tok)
    hidden = 64
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=hidden,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 4]},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=hidden,
            fullatt_block_indexes=[1],
            window_size=56,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.suppress_tokens = [ids[t] for t in SPECIAL if t != "<|im_end|>"]
    # small pixel budgets keep the tiny model's vision sequence short; production checkpoints
    # ship their own processor settings
    pixels = dict(min_pixels=56 * 56, max_pixels=112 * 112)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tok,
        chat_template=CHAT_TEMPLATE,
    )
    path = out / VLM_DIR
    model.save_pretrained(path)
    processor.save_pretrained(path)
    _mark(path, "Qwen2_5_VLForConditionalGeneration")
    return path


def build_lm(out: Path, tok) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    ids = _ids(tok)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    # a text model never writes vision placeholders or turn markers; without this the random
    # weights mostly emit special tokens, which decode to nothing
    model.generation_config.suppress_tokens = [ids[t] for t in SPECIAL if t != "<|im_end|>"]
    path = out / LM_DIR
    model.save_pretrained(path)
    tok.save_pretrained(path)
    _mark(path, "Qwen2ForCausalLM")
    return path


def _mark(path: Path, architecture: str) -> None:
    marker = {"random_weights": True, "architecture": architecture, "built_by": "tests/make_tiny_models.py"}
    (path / RANDOM_WEIGHTS_MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def build_all(out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    return {"vlm": build_vlm(out, tok), "lm": build_lm(out, tok)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write the checkpoints into")
    args = parser.parse_args(argv)
    for kind, path in build_all(args.out).items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
