"""The index's candidate search (``table_pairs``) against a plain re-statement of its bucket rule: the
packed one-sort path, its chunks (a bucket never cut between two), crowded buckets split by more bits,
and the argsort path when a key and a position do not fit 64 bits."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from vidsift.pipeline import dedup_index
from vidsift.pipeline.dedup_index import table_pairs
from vidsift.pipeline.stages.dedup import DedupConfig


def reference(hashes, clips, runs, positions, bits, config):
    """Group by the bits at ``positions[:used]``; a bucket over ``max_bucket`` is grouped again on 8 more
    (until all 64 are used); inside the others every pair within ``max_hamming`` of two clips is a pair."""
    counts = {"hash_pairs_compared": 0, "split_buckets": 0, "split_entries": 0}
    pairs = set()

    def key(i, used):
        return tuple(int(hashes[i]) >> int(p) & 1 for p in positions[:used])

    def search(members, used):
        buckets = {}
        for i in members:
            buckets.setdefault(key(i, used), []).append(i)
        for bucket in buckets.values():
            if len(bucket) > config.max_bucket and used < 64:
                counts["split_buckets"] += 1
                counts["split_entries"] += len(bucket)
                search(bucket, min(64, used + 8))
                continue
            for a, b in combinations(bucket, 2):
                counts["hash_pairs_compared"] += 1
                ca, cb = int(clips[a]), int(clips[b])
                near = bin(int(hashes[a]) ^ int(hashes[b])).count("1") <= config.max_hamming
                ours = runs is None or runs[ca] == 0 or runs[cb] == 0
                if ca != cb and near and ours:
                    pairs.add((min(ca, cb) << 32) | max(ca, cb))

    search(range(len(hashes)), bits)
    return np.array(sorted(pairs), np.uint64), counts


def crowded_entries(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes near a few bases (big buckets, many near pairs) and some random ones, 1-6 per clip."""
    rng = np.random.default_rng(seed)
    bases = rng.integers(0, 2**63, 6, dtype=np.uint64)
    h = bases[rng.integers(0, len(bases), n)]
    for _ in range(3):
        h ^= np.where(rng.random(n) < 0.5, np.uint64(1) << rng.integers(0, 64, n).astype(np.uint64), 0)
    spread = rng.random(n) < 0.3
    h[spread] = rng.integers(0, 2**63, int(spread.sum()), dtype=np.uint64)
    clips = np.sort(rng.integers(0, n // 3, n)).astype(np.int32)
    return h, clips


@pytest.mark.parametrize(
    ("bits", "chunk", "max_bucket"), [(12, 37, 8), (20, 64, 4096), (60, 37, 8), (14, 1 << 19, 3)]
)
def test_table_pairs_equal_the_bucket_rule(monkeypatch, bits, chunk, max_bucket):
    monkeypatch.setattr(dedup_index, "CHUNK", chunk)
    hashes, clips = crowded_entries(600, seed=bits)
    config = DedupConfig(max_bucket=max_bucket)
    runs = np.zeros(clips.max() + 1, np.int16)
    runs[::4] = 1  # some clips of an --against run: pairs of two of them are not ours
    positions = np.random.default_rng(bits).permutation(64)
    got, counts = table_pairs(hashes, clips, runs, positions, bits, config)
    want, want_counts = reference(hashes, clips, runs, positions, bits, config)
    assert counts == want_counts
    np.testing.assert_array_equal(got, want)
    assert len(want) > 20 and counts["hash_pairs_compared"] > len(want)
    if max_bucket < 10:  # the crowded path was taken
        assert counts["split_buckets"] > 0
