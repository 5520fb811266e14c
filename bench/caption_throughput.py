"""Caption throughput: the ``transformers`` backend against calling ``model.generate`` directly.

    python bench/caption_throughput.py [--vlm PATH] [--clips 16] [--batch 8] [--max-new-tokens 64]

Both paths get the same frames (sampled from the clips in ../shared/videos/quality), the same prompt,
the same batches and greedy decoding, so they generate the same tokens; the ratio of their rates is
the pipeline's overhead (request building, chat template, token accounting), which should stay
within 10%. Without ``--vlm`` it builds the tiny random-weight Qwen2.5-VL of tests/make_tiny_models.py
(absolute numbers then say nothing about a real model; the ratio still does). With a GPU and vLLM
installed it also runs the ``vllm`` backend against ``LLM.chat`` on the same requests.
Runs alternate and the median of ``--repeats`` is reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VIDEOS = REPO.parent / "shared" / "videos" / "quality"


def load_requests(n: int, num_frames: int, max_side: int):
    from vidsift.pipeline.backends.base import ChatRequest
    from vidsift.pipeline.stages.caption_vlm import DESCRIBE, SYSTEM, sample_frames

    files = sorted(p for p in VIDEOS.iterdir() if p.is_file())
    reqs = []
    while len(reqs) < n:
        for f in files:
            try:
                frames = sample_frames(f.read_bytes(), num_frames, max_side)
            except Exception:
                continue
            reqs.append(ChatRequest(system=SYSTEM, prompt=DESCRIBE, frames=frames, fps=2.0, as_video=True))
            if len(reqs) == n:
                break
    return reqs


def run_direct(backend, reqs, batch: int, max_new: int) -> tuple[float, int]:
    """The hand-written loop: chat template, processor, generate, decode. No vidsift code."""
    import torch
    from transformers.video_utils import VideoMetadata

    proc, net = backend.processor, backend.net
    t0, tokens = time.perf_counter(), 0
    for i in range(0, len(reqs), batch):
        chunk = reqs[i : i + batch]
        msgs = [
            [
                {"role": "system", "content": [{"type": "text", "text": r.system}]},
                {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": r.prompt}]},
            ]
            for r in chunk
        ]
        text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        md = [
            VideoMetadata(
                total_num_frames=len(r.frames), fps=r.fps, frames_indices=list(range(len(r.frames)))
            )
            for r in chunk
        ]
        inputs = proc(
            text=text, videos=[r.frames for r in chunk], video_metadata=md, return_tensors="pt", padding=True
        )
        inputs = inputs.to(backend.device)
        with torch.inference_mode():
            out = net.generate(**inputs, max_new_tokens=max_new, do_sample=False, pad_token_id=backend.pad_id)
        new = out[:, inputs["input_ids"].shape[1] :]
        proc.batch_decode(new, skip_special_tokens=True)
        for row in new.tolist():
            tokens += next((k + 1 for k, t in enumerate(row) if t in backend.eos_ids), len(row))
    return time.perf_counter() - t0, tokens


def run_backend(backend, reqs, batch: int) -> tuple[float, int]:
    t0, tokens = time.perf_counter(), 0
    for i in range(0, len(reqs), batch):
        tokens += sum(r.output_tokens for r in backend.chat(reqs[i : i + batch]))
    return time.perf_counter() - t0, tokens


def run_vllm(model: str, reqs, max_new: int) -> None:
    from vidsift.pipeline.backends.vllm_backend import VllmBackend
    from vidsift.pipeline.stages.caption_vlm import CaptionVlmConfig

    b = VllmBackend(CaptionVlmConfig(backend="vllm", model=model, max_new_tokens=max_new), vision=True)
    from vllm import SamplingParams

    from vidsift.pipeline.backends.openai_backend import jpeg_data_url

    convs = [
        [
            {"role": "system", "content": r.system},
            {
                "role": "user",
                "content": [
                    *({"type": "image_url", "image_url": {"url": jpeg_data_url(f)}} for f in r.frames),
                    {"type": "text", "text": r.prompt},
                ],
            },
        ]
        for r in reqs
    ]
    t0 = time.perf_counter()
    outs = b.llm.chat(convs, SamplingParams(max_tokens=max_new, temperature=0), use_tqdm=False)
    direct_s, direct_tok = time.perf_counter() - t0, sum(len(o.outputs[0].token_ids) for o in outs)
    backend_s, backend_tok = run_backend(b, reqs, len(reqs))
    report("vllm", len(reqs), direct_s, direct_tok, backend_s, backend_tok)


def report(name: str, n: int, direct_s: float, direct_tok: int, backend_s: float, backend_tok: int) -> None:
    print(f"{name:>12} | {'path':<16} | {'clips/s':>8} | {'out tok/s':>9} | tokens")
    for path, secs, tok in (
        ("model.generate", direct_s, direct_tok),
        ("vidsift backend", backend_s, backend_tok),
    ):
        print(f"{'':>12} | {path:<16} | {n / secs:8.2f} | {tok / secs:9.1f} | {tok}")
    print(f"{'':>12}   pipeline overhead: {backend_s / direct_s - 1:+.1%} (target <= 10%)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vlm", default="", help="VLM name or path (default: build the tiny test model)")
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--max-side", type=int, default=224)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from vidsift.pipeline.backends.transformers_backend import TransformersBackend
    from vidsift.pipeline.stages.caption_vlm import CaptionVlmConfig

    model = args.vlm
    if not model:
        from tests.make_tiny_models import build_all

        tmp = tempfile.TemporaryDirectory(prefix="tiny-models-")  # removed at exit
        model = str(build_all(Path(tmp.name))["vlm"])
    cfg = CaptionVlmConfig(model=model, device=args.device, max_new_tokens=args.max_new_tokens)
    backend = TransformersBackend(cfg, vision=True)
    reqs = load_requests(args.clips, args.frames, args.max_side)
    print(
        f"model {model} ({'random weights' if backend.random_weights else 'trained'}) on {backend.device}; "
        f"{len(reqs)} clips x {args.frames} frames, batch {args.batch}, {args.max_new_tokens} new tokens max"
    )
    run_direct(backend, reqs[: args.batch], args.batch, 4)  # warm-up
    direct, piped = [], []
    for _ in range(args.repeats):
        direct.append(run_direct(backend, reqs, args.batch, args.max_new_tokens))
        piped.append(run_backend(backend, reqs, args.batch))
    d_s = statistics.median(t for t, _ in direct)
    b_s = statistics.median(t for t, _ in piped)
    assert direct[0][1] == piped[0][1], "the two paths generated different token counts"
    report("transformers", len(reqs), d_s, direct[0][1], b_s, piped[0][1])

    import torch

    if torch.cuda.is_available():
        try:
            import vllm  # noqa: F401
        except ImportError:
            print("vllm: not installed, skipped")
        else:
            run_vllm(model, reqs, args.max_new_tokens)
    else:
        print("vllm: no GPU, skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
