import numpy as np
import pytest

from vidsift.model.data import ClipSource, ClipStream, ShardIndex
from vidsift.model.synthetic import COLORS, DIRECTIONS, SHAPES, caption_of, judge, moving_shape


def test_judge_reads_colour_and_direction_of_every_caption():
    """The learning check's metric is right on real synthetic clips, so its accuracy means something."""
    rng = np.random.default_rng(0)
    for c in COLORS:
        for d in DIRECTIONS:
            for s in SHAPES:
                video = moving_shape(c, d, s, 8, 32, rng).transpose(3, 0, 1, 2) / 127.5 - 1
                assert judge(video) == (c, d), caption_of(c, d, s)
    assert judge(-np.ones((3, 4, 8, 8))) == ("none", "none")


@pytest.mark.parametrize("size", [32, 16])  # 16: the learning check's training size
def test_judge_after_h264_and_the_training_resize(shards, size):
    """Still right after H.264 encoding, decoding, resize and crop (what the model is trained on)."""
    src = ClipSource(frames=8, height=size, width=size, stride=2)
    for sample in ClipStream(ShardIndex(shards), src, 0, 1).next_batch(12):
        words = sample.caption.split()  # "a <colour> <shape> moving <direction>"
        assert judge(sample.x) == (words[1], words[4])
