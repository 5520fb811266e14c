import io
import os

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from vidsift.model.data import ClipSource, ClipStream, DataError, ShardIndex, decode_clip, load_samples
from vidsift.model.mp4 import encode_mp4
from vidsift.model.synthetic import write_synthetic_shards

SOURCE = ClipSource(frames=5, height=16, width=16, stride=2)


def ids_of(stream: ClipStream, n: int) -> list[str]:
    out = []
    for _ in range(n):
        ref, _ = stream.next_ref()
        out.append(stream.rows.row(ref)["clip_id"])
    return out


def test_index_and_validation_split(shards):
    index = ShardIndex(shards)
    assert index.num_rows == 24 and len(index.files) == 2 and len(index.groups) == 6
    val, refs = index.split(4)
    assert len(val) == 4 and len(refs) == 4
    assert [s.clip_id for s in load_samples(index, SOURCE, refs)] == sorted(val)


@pytest.mark.parametrize("readers", [1, 2, 3])
def test_readers_are_disjoint_and_cover_every_training_clip_once_per_epoch(shards, readers):
    index = ShardIndex(shards)
    val, _ = index.split(4)
    seen = []
    for r in range(readers):
        stream = ClipStream(index, SOURCE, r, readers, seed=1, shuffle_buffer=5, exclude=val)
        n = sum(len(rows) for _, _, rows in stream.units)
        seen += ids_of(stream, n)
        assert stream.epoch == 0 and stream.pos == n
    assert len(seen) == len(set(seen)) == 20
    assert not set(seen) & val


def test_more_readers_than_row_groups_split_rows(shards):
    index = ShardIndex(shards)
    streams = [ClipStream(index, SOURCE, r, 8, seed=0) for r in range(8)]
    got = [ids_of(s, 3) for s in streams]
    flat = [c for ids in got for c in ids]
    assert len(set(flat)) == 24


def test_order_is_shuffled_deterministic_and_changes_per_epoch(shards):
    index = ShardIndex(shards)
    a = ids_of(ClipStream(index, SOURCE, 0, 1, seed=3, shuffle_buffer=8), 48)
    b = ids_of(ClipStream(index, SOURCE, 0, 1, seed=3, shuffle_buffer=8), 48)
    c = ids_of(ClipStream(index, SOURCE, 0, 1, seed=4, shuffle_buffer=8), 48)
    assert a == b != c
    assert sorted(a[:24]) == sorted(a[24:]) and a[:24] != a[24:]
    file_order = [cid for _, _, ids in index.groups for cid in ids]
    assert a[:24] != file_order


def test_resume_position_replays_exactly(shards):
    index = ShardIndex(shards)
    stream = ClipStream(index, SOURCE, 0, 1, seed=0, shuffle_buffer=6)
    first = stream.next_batch(30)  # crosses an epoch boundary
    state = stream.state_dict()
    assert state["epoch"] == 1 and state["pos"] == 6
    rest = stream.next_batch(5)
    again = ClipStream(index, SOURCE, 0, 1, seed=0, shuffle_buffer=6)
    again.load_state_dict(state)
    replay = again.next_batch(5)
    assert [s.clip_id for s in replay] == [s.clip_id for s in rest]
    assert all(torch.equal(a.x, b.x) for a, b in zip(replay, rest, strict=True))
    assert len(first) == 30


def test_samples_have_training_size_and_captions(shards):
    index = ShardIndex(shards)
    src = ClipSource(frames=8, height=24, width=32, stride=2)
    batch = ClipStream(index, src, 0, 1).next_batch(4)
    for s in batch:
        assert s.x.shape == (3, 8, 24, 32)
        assert -1.0 <= s.x.min() and s.x.max() <= 1.0
        assert s.caption.startswith("a ") and " moving " in s.caption


def test_decode_clip_picks_strided_frames_and_crops():
    # Frame i is uniformly grey level 10 * i: decoded values reveal which frames were taken.
    frames = np.stack([np.full((40, 64, 3), 10 * i, np.uint8) for i in range(20)])
    data = encode_mp4(frames, 12.0, crf=0)
    x = decode_clip(data, frames=4, height=16, width=16, stride=3, start=0.0)
    assert x.shape == (3, 4, 16, 16)
    levels = ((x.mean(dim=(0, 2, 3)) + 1) * 127.5).round()
    assert levels.tolist() == pytest.approx([0, 30, 60, 90], abs=3)
    # Short clip: the window runs past the end, its last existing frame repeats.
    x = decode_clip(data, frames=8, height=16, width=16, stride=4, start=0.0)
    levels = ((x.mean(dim=(0, 2, 3)) + 1) * 127.5).round()
    assert levels.tolist() == pytest.approx([0, 40, 80, 120, 160, 160, 160, 160], abs=3)
    with av.open(io.BytesIO(data)) as c:
        assert c.streams.video[0].frames == 20


def test_bad_inputs_are_data_errors(tmp_path, shards):
    with pytest.raises(DataError, match="not found"):
        ShardIndex(str(tmp_path / "nope"))
    (tmp_path / "empty" / "clips").mkdir(parents=True)
    with pytest.raises(DataError, match="no clip shards"):
        ShardIndex(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="too few"):
        ShardIndex(shards).split(24)
    # Undecodable clip bytes name the clip.
    bad = tmp_path / "bad"
    write_synthetic_shards(str(bad), 2, frames=4, size=16)
    path = os.path.join(bad, "clips", "part-0.parquet")
    t = pq.read_table(path)
    import pyarrow as pa

    t = t.set_column(
        t.schema.get_field_index("clip_mp4"),
        t.schema.field("clip_mp4"),
        pa.array([b"not a video"] * 2, pa.binary()),
    )
    pq.write_table(t, path)
    with pytest.raises(DataError, match="unreadable clip_mp4"):
        ClipStream(ShardIndex(str(bad)), SOURCE, 0, 1).next_batch(1)


def test_null_captions_become_empty(tmp_path):
    write_synthetic_shards(str(tmp_path), 2, frames=4, size=16, captions=False)
    batch = ClipStream(ShardIndex(str(tmp_path)), SOURCE, 0, 1).next_batch(2)
    assert [s.caption for s in batch] == ["", ""]


def _bar_numbers(video: torch.Tensor) -> list[int]:
    """Frame indices of a clip made by tests.conftest.make_numbered_clip, read from decoded pixels."""
    gray = ((video.mean(dim=0) + 1) * 127.5).numpy()  # [F, H, W]
    _, h, w = gray.shape
    rows = slice(h // 8, h // 2 - h // 8)
    cols = [slice(b * w // 8 + w // 32, (b + 1) * w // 8 - w // 32) for b in range(8)]
    return [sum(1 << b for b in range(8) if g[rows, cols[b]].mean() > 128) for g in gray]


@pytest.mark.parametrize("source_fps", [30, 60])
def test_time_true_frames_take_the_same_seconds_per_sample_at_any_source_rate(tmp_path, source_fps):
    """fps = 10: a 30 fps clip gives every 3rd frame, a 60 fps clip every 6th; both span 0.7 s in 8 frames."""
    from tests.conftest import make_numbered_clip

    mp4 = make_numbered_clip(tmp_path / "n.mp4", frames=3 * source_fps, fps=source_fps).read_bytes()
    row = {"clip_id": "c", "clip_mp4": mp4, "caption": "x", "fps": float(source_fps)}
    source = ClipSource(8, 64, 96, stride=2, fps=10.0)
    numbers = _bar_numbers(source.sample(row, 0.5).x)
    video_times = [n / source_fps for n in numbers]  # positions in the clip (its drawn frame numbers)
    assert np.allclose(np.diff(video_times), 0.1)  # one training frame per 1/10 s, whatever the source rate
    assert abs(video_times[0] - 1.15) < 0.06  # the middle window of the 3 s clip
    # without fps the old fixed stride: every 2nd frame, 1/15 s or 1/30 s apart
    assert np.allclose(np.diff(_bar_numbers(ClipSource(8, 64, 96, stride=2).sample(row, 0.5).x)), 2)


def test_a_clip_slower_than_the_target_rate_repeats_frames(tmp_path):
    from tests.conftest import make_numbered_clip

    mp4 = make_numbered_clip(tmp_path / "n.mp4", frames=40, fps=5).read_bytes()
    row = {"clip_id": "c", "clip_mp4": mp4, "caption": "x", "fps": 5.0}
    numbers = _bar_numbers(ClipSource(8, 64, 96, fps=10.0).sample(row, 0.0).x)
    assert numbers == [0, 0, 1, 1, 2, 2, 3, 3]  # at 0.1 s steps, the 5 fps frame on show


def test_read_video_reuses_one_scaler_with_the_same_pixels(tmp_path) -> None:
    # read_video scales every frame through one VideoReformatter; frame.reformat per frame gives the same.
    from vidsift.model.data import cover_crop, read_video

    frames = (np.random.default_rng(0).integers(0, 256, (12, 40, 56, 3))).astype(np.uint8)
    src = encode_mp4(frames, fps=12)
    got, _ = read_video(src, 24, 30, frames=8, start=0.0)
    with av.open(io.BytesIO(src)) as container:
        ref = [cover_crop(f, 24, 30) for f in container.decode(video=0)][:8]
    want = torch.from_numpy(np.stack(ref)).permute(3, 0, 1, 2).float() / 127.5 - 1
    assert got.shape == (3, 8, 24, 30)
    assert torch.equal(got, want)
