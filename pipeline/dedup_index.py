"""The run-wide near-duplicate search: a Hamming-space LSH index over ``dedup_hashes``, for millions of clips.

Steps (``find_near_duplicates``):

1. **Read** (``load_hash_table``): only the columns the decision needs, straight from the shards into flat
   numpy arrays (hashes and their per-clip offsets, curves as an ``N x 64`` matrix); no row dicts.
2. **Candidates** (``table_pairs``): ``index_tables`` hash tables, each keyed on bit positions drawn
   at random (a fixed seed) from the 64, as many as it takes for their measured entropy to reach
   ``log2(entries) + 2`` (real dHash bits are skewed), or ``index_bits``. Two hashes ``d`` bits apart
   share a ``k``-bit key with probability ``C(64-d, k) / C(64, k)``; a copy has many samples and three
   crop scales that match, so one collision among them is enough. Inside a bucket every pair of hashes
   is compared *exactly* (popcount of the XOR); only pairs within ``max_hamming`` bits, from two
   different clips, become candidate clip pairs. Exact multi-index hashing (``max_hamming + 1`` bands)
   is not used: at 10 bits it needs bands of <= 6 bits, whose 64 values each hold 1/64 of the run, so
   its candidate count grows with the square of the run (see docs/filters.md).
   No bucket is skipped: a bucket larger than ``max_bucket`` entries is split by further bit positions
   and searched again; such splits are counted (``split_buckets``, ``split_entries``) and printed.
   Each table is one in-place sort of keys packed above the entries' positions, then the sorted
   entries a chunk at a time (``_packed_round``): CPU per table grows with the entries (1.0x per entry
   from 2.6M to 26M entries), where whole-run temporaries cost page faults growing faster than the run.
3. **Verify** (``verify_pairs``): today's decision rule on each candidate pair (the time curves,
   vectorised over pairs, then ``dedup.frame_match`` over the samples at three crops; frames matched only
   near the limit also need frame-difference curves that agree, ``edge_evidence_many``).
4. **Group**: connected components over the verified pairs only (scipy), then the keep-the-best rule:
   most pixels, then longest, then smallest ``clip_id``; a clip of an ``--against`` run is always kept
   before a clip of the run being deduplicated (those runs are never rewritten).

Past ``distribute_above`` clips (counted from the Parquet footers) ``search_files`` runs every step as Ray
tasks and this process holds none of the run: read tasks of ~``LOAD_CLIPS`` clips put each chunk's entries
and verification arrays in the object store, one task joins the entries that every table task reads
zero-copy (one task per hash table, its candidate pairs left in the object store in partitions by pair),
verification tasks (one per partition: its pairs made unique, then verified) and the grouping gather only
the clips of their pairs. Below it, ``load_hash_table`` and ``find_near_duplicates`` run in this
process (``search_pairs`` can also send a table held here to Ray tasks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vidsift.pipeline import storage
from vidsift.pipeline.measures import HASH_SCALES
from vidsift.pipeline.stages.dedup import (
    CURVE_POINTS,
    DedupConfig,
    curves_agree_many,
    edge_evidence_many,
    frame_match,
)
from vidsift.pipeline.storage import Location

COLUMNS = ["clip_id", "group", "source_uri", "dedup_hashes", "dedup_curve", "width", "height", "duration_s"]
SCALES = len(HASH_SCALES)
VERIFY_CHUNK = 20_000  # candidate pairs per verification task
# progress(phase, done, total, **counters): "read" (files), "index" (hash tables), "verify" (parts of the
# candidate pairs: chunks in this process, partitions in Ray tasks)
Progress = Callable[..., None]


@dataclass
class HashTable:
    """Every clip of one or more runs, as flat arrays (index ``i`` is one clip)."""

    clip_id: pa.Array  # string
    source_uri: pa.Array  # string
    group: pa.Array  # string
    run: np.ndarray  # int16: 0 = the run being deduplicated, 1.. = --against runs
    offsets: np.ndarray  # int64, len N+1: clip i's hashes are hashes[offsets[i]:offsets[i+1]]
    hashes: np.ndarray  # uint64, samples x scales per clip, flattened
    curves: np.ndarray  # float32 N x 2*CURVE_POINTS (rows without a curve are zeros)
    has_curve: np.ndarray  # bool
    pixels: np.ndarray  # int64
    duration: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.offsets) - 1


@dataclass
class SearchStats:
    """What the search did, counted for the manifest (nothing is skipped silently)."""

    clips: int = 0
    clips_without_hashes: int = 0  # only flat (black/white) frames: nothing to compare, never a duplicate
    hashes: int = 0
    tables: int = 0
    key_bits: float = 0  # mean over the tables
    hash_pairs_compared: int = 0  # inside buckets, exact popcount
    split_buckets: int = 0  # buckets over max_bucket entries, split by more bits (not skipped)
    split_entries: int = 0
    candidate_pairs: int = 0  # clip pairs with at least one hash pair within max_hamming
    verified_pairs: int = 0  # of those, duplicates by the full rule
    duplicates: int = 0  # clips rejected
    distributed: bool = False
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def _list_arrays(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (int64, len n+1, nulls as empty) and flat values of a list column, without Python objects."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if isinstance(arr, pa.ChunkedArray):  # zero chunks
        arr = pa.array([], col.type)
    lens = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.zeros(len(arr) + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    values = pc.list_flatten(arr)  # skips nulls, keeps order: matches offsets
    return offsets, values.to_numpy(zero_copy_only=False)


def table_from_arrow(t: pa.Table, run: int = 0) -> HashTable:
    """A ``HashTable`` from an Arrow table with ``COLUMNS`` (``group`` optional)."""
    n = t.num_rows
    offsets, values = _list_arrays(t.column("dedup_hashes"))
    hashes = values.astype(np.int64).view(np.uint64)
    # keep whole samples (three scales each): as find_duplicates always did
    lens = np.diff(offsets)
    keep = lens // SCALES * SCALES
    if np.any(keep != lens):
        idx = np.concatenate([np.arange(o, o + k) for o, k in zip(offsets[:-1], keep, strict=True)] or [[]])
        hashes = hashes[idx.astype(np.int64)]
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(keep, out=offsets[1:])
    c_off, c_val = _list_arrays(t.column("dedup_curve"))
    c_len = np.diff(c_off)
    has_curve = c_len == 2 * CURVE_POINTS
    curves = np.zeros((n, 2 * CURVE_POINTS), np.float32)
    if has_curve.any():
        rows = np.flatnonzero(has_curve)
        curves[rows] = c_val.astype(np.float32)[c_off[rows][:, None] + np.arange(2 * CURVE_POINTS)]

    def num(name: str, dtype) -> np.ndarray:
        return pc.fill_null(t.column(name), 0).to_numpy().astype(dtype)

    group = t.column("group") if "group" in t.column_names else pa.nulls(n, pa.string())
    return HashTable(
        clip_id=t.column("clip_id").combine_chunks(),
        source_uri=t.column("source_uri").combine_chunks(),
        group=group.combine_chunks() if isinstance(group, pa.ChunkedArray) else group,
        run=np.full(n, run, np.int16),
        offsets=offsets,
        hashes=hashes,
        curves=curves,
        has_curve=has_curve,
        pixels=num("width", np.int64) * num("height", np.int64),
        duration=num("duration_s", np.float64),
    )


class UnreadableShard(ValueError):
    """A clip file the search cannot read: not Parquet, cut short, or without the hash columns."""


def _unreadable(location: Location, error: Exception) -> UnreadableShard:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return UnreadableShard(f"{location}: cannot read the clip columns dedup needs ({reason})")


def read_clip_columns(run: Location, files: list | None = None, on_file: Callable[[int], None] | None = None
                      ) -> pa.Table:  # fmt: skip
    """The columns the search needs, of every accepted clip of a run (column-only Parquet reads).

    ``files``: the run's clip files when already listed; ``on_file(rows)`` is called after each file.
    Raises ``UnreadableShard`` naming the first file that cannot be read.
    """
    files = storage.parquet_files(storage.join(run, "clips")) if files is None else files
    tables = []
    for f in files:
        try:
            tables.append(storage.read_table(f, columns=COLUMNS))
        except (OSError, pa.ArrowException) as e:
            raise _unreadable(f, e) from None
        if on_file:
            on_file(tables[-1].num_rows)
    if not tables:
        from vidsift.pipeline.schema import CLIP_SCHEMA

        return pa.schema([CLIP_SCHEMA.field(c) for c in COLUMNS]).empty_table()
    return pa.concat_tables(tables, promote_options="permissive")


def load_hash_table(runs: list[Location], progress: Progress | None = None) -> HashTable:
    """``runs[0]`` is the run to deduplicate, the others are earlier runs it is compared against.

    ``progress("read", files_done, files, clips=...)`` after each file read.
    """
    files = [storage.parquet_files(storage.join(r, "clips")) for r in runs]
    total = sum(len(f) for f in files)
    done = {"files": 0, "clips": 0}

    def on_file(rows: int) -> None:
        done["files"] += 1
        done["clips"] += rows
        if progress:
            progress("read", done["files"], total, clips=done["clips"])

    if progress:
        progress("read", 0, total, clips=0)
    parts = [read_clip_columns(r, f, on_file) for r, f in zip(runs, files, strict=True)]
    return concat_tables([table_from_arrow(t, run=i) for i, t in enumerate(parts)])


def concat_tables(parts: list[HashTable]) -> HashTable:
    if len(parts) == 1:
        return parts[0]
    offsets = [np.zeros(1, np.int64)]
    base = 0
    for p in parts:
        offsets.append(p.offsets[1:] + base)
        base += int(p.offsets[-1])
    return HashTable(
        clip_id=pa.concat_arrays([p.clip_id for p in parts]),
        source_uri=pa.concat_arrays([p.source_uri for p in parts]),
        group=pa.concat_arrays([p.group.cast(pa.string()) for p in parts]),
        run=np.concatenate([p.run for p in parts]),
        offsets=np.concatenate(offsets),
        hashes=np.concatenate([p.hashes for p in parts]),
        curves=np.concatenate([p.curves for p in parts]),
        has_curve=np.concatenate([p.has_curve for p in parts]),
        pixels=np.concatenate([p.pixels for p in parts]),
        duration=np.concatenate([p.duration for p in parts]),
    )


# ---------------------------------------------------------------------------------------------- index


def bit_entropy(hashes: np.ndarray, sample: int = 1_000_000) -> np.ndarray:
    """Entropy (in bits) of each of the 64 hash bits over (a sample of) the entries."""
    h = hashes[:: max(1, len(hashes) // sample)]
    if len(h) == 0:
        return np.ones(64)
    p = np.array([((h >> np.uint64(b)) & np.uint64(1)).mean() for b in range(64)])
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def key_bits(entries: int, entropy: np.ndarray, positions: np.ndarray, config: DedupConfig) -> int:
    """Bits keying one table: ``index_bits``, or (auto) as many of ``positions`` as it takes for their
    entropy to reach ``log2(entries) + 2``, i.e. about 4 keys per entry, so buckets stay small whatever
    the skew of the bits."""
    if config.index_bits:
        return config.index_bits
    target = np.log2(max(entries, 2)) + 2
    reached = np.flatnonzero(np.cumsum(entropy[positions]) >= target)
    return int(min(48, max(12, reached[0] + 1 if len(reached) else 64)))


def table_positions(config: DedupConfig) -> list[np.ndarray]:
    """One permutation of the 64 bits per table: its first ``key_bits`` key it, the rest split big buckets."""
    rng = np.random.default_rng(config.index_seed)
    return [rng.permutation(64) for _ in range(config.index_tables)]


def _keys(h: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The bits of ``h`` at ``positions``, packed into a uint64 key (lookup tables over 16-bit parts, read
    in place: four passes over the hashes)."""
    key = np.zeros(len(h), np.uint64)
    parts = np.ascontiguousarray(h, "<u8").view("<u2").reshape(-1, 4)  # part k: bits 16k..16k+15
    v = np.arange(1 << 16, dtype=np.uint64)
    for part in range(4):
        lut = np.zeros(1 << 16, np.uint64)
        for out_bit, pos in enumerate(positions):
            if pos // 16 == part:
                lut |= ((v >> np.uint64(pos % 16)) & np.uint64(1)) << np.uint64(out_bit)
        if lut.any():
            key |= lut[parts[:, part]]
    return key


def entries(table: HashTable) -> tuple[np.ndarray, np.ndarray]:
    """The index entries: each clip's distinct hashes (``hash``, ``clip``), static shots repeat them.

    In clip order, each clip's hashes ascending (``bit_entropy`` samples this order). Sorted clip by clip
    (all clips of one hash count at once, a row per clip): a global sort of (clip, hash) cost 15x more
    for 10x the hashes.
    """
    lens = np.diff(table.offsets)
    clip = np.repeat(np.arange(len(table), dtype=np.int64), lens)
    if len(clip) == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int32)
    h = np.empty_like(table.hashes)
    for n in np.unique(lens[lens > 0]):
        at = table.offsets[:-1][lens == n][:, None] + np.arange(n)
        h[at] = np.sort(table.hashes[at], axis=1)
    first = np.ones(len(h), bool)
    first[1:] = (h[1:] != h[:-1]) | (clip[1:] != clip[:-1])
    return h[first], clip[first].astype(np.int32)


def _sorted_keys(keys: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``(order, keys[order])`` for keys below ``2**bits``, ties in index order (a stable argsort).

    One ``np.sort`` of the keys packed above their positions when both fit in 64 bits: 3-4x less CPU than
    ``argsort`` at 10^7 keys, whose cost grew 14x for 10x the keys (docs/benchmarks.md, issue 16).
    """
    n = len(keys)
    low = max(1, (n - 1).bit_length())
    if bits + low > 64:
        order = np.argsort(keys, kind="stable")
        return order, keys[order]
    packed = np.sort((keys << np.uint64(low)) | np.arange(n, dtype=np.uint64))
    return (packed & np.uint64((1 << low) - 1)).astype(np.int64), packed >> np.uint64(low)


def table_pairs(
    hashes: np.ndarray,
    clips: np.ndarray,
    runs: np.ndarray,
    positions: np.ndarray,
    bits: int,
    config: DedupConfig,
) -> tuple[np.ndarray, dict[str, int]]:
    """Candidate clip pairs (``i * 2**32 + j``, ``i < j``, unique) found by one hash table, and its counts.

    ``positions`` is a permutation of the 64 bits: the first ``bits`` key the table; a bucket over
    ``config.max_bucket`` entries is keyed again on the next 8 positions, until it is small enough or the
    whole hash is the key (then it is searched whatever its size: identical hashes).
    """
    counts = {"hash_pairs_compared": 0, "split_buckets": 0, "split_entries": 0}
    found: list[np.ndarray] = []
    low = max(1, (len(hashes) - 1).bit_length())
    if bits + low <= 64:  # keys and positions fit one uint64: one sort, then the buckets chunk by chunk
        todo, todo_keys = _packed_round(hashes, clips, runs, positions, bits, low, config, counts, found)
    else:
        order, sk = _sorted_keys(_keys(hashes, positions[:bits]), bits)
        todo, todo_keys = _search_buckets(order, sk, bits, hashes, clips, runs, config, counts, found)
    used = bits
    while len(todo):  # crowded buckets, keyed again on 8 more positions
        extra = positions[used : used + 8]
        keys = (todo_keys << np.uint64(len(extra))) | _keys(hashes[todo], extra)
        used += len(extra)
        order, sk = _sorted_keys(keys, used)
        todo, todo_keys = _search_buckets(todo[order], sk, used, hashes, clips, runs, config, counts, found)
    pairs = np.unique(np.concatenate(found)) if found else np.zeros(0, np.uint64)
    return pairs, counts


CHUNK = 1 << 19  # entries handled at once after the sort: arrays of a few MB stay in cache and in the heap


def _packed_round(
    hashes: np.ndarray,
    clips: np.ndarray,
    runs: np.ndarray | None,
    positions: np.ndarray,
    bits: int,
    low: int,
    config: DedupConfig,
    counts: dict[str, int],
    found: list[np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """The first round of ``table_pairs`` when a key (``bits``) and an entry's position (``low`` bits) fit
    in 64 bits: the keys packed above the positions, one in-place sort, then the sorted entries ``CHUNK``
    at a time, each chunk ending at a key boundary (a bucket is never cut). Work on whole-run arrays
    made the kernel's page faults for fresh 100+ MB temporaries the largest cost at 1M clips, growing
    faster than the run (docs/benchmarks.md, issue 16). Returns the members of crowded buckets."""
    n = len(hashes)
    packed = np.empty(n, np.uint64)
    for s in range(0, n, CHUNK):
        e = min(n, s + CHUNK)
        packed[s:e] = (_keys(hashes[s:e], positions[:bits]) << np.uint64(low)) | np.arange(
            s, e, dtype=np.uint64
        )
    packed.sort()
    mask = np.uint64((1 << low) - 1)
    crowded: list[tuple[np.ndarray, np.ndarray]] = []
    s = 0
    while s < n:
        e = min(n, s + CHUNK)
        if e < n:  # extend to the end of the last bucket
            after = ((int(packed[e - 1]) >> low) + 1) << low
            e = n if after >= 1 << 64 else int(np.searchsorted(packed, np.uint64(after)))
        part = packed[s:e]
        big = _search_buckets((part & mask).astype(np.int64), part >> np.uint64(low), bits, hashes, clips,
                              runs, config, counts, found)  # fmt: skip
        if len(big[0]):
            crowded.append(big)
        s = e
    if not crowded:
        return np.zeros(0, np.int64), np.zeros(0, np.uint64)
    return np.concatenate([c[0] for c in crowded]), np.concatenate([c[1] for c in crowded])


def _search_buckets(
    idx: np.ndarray,
    sk: np.ndarray,
    used: int,
    hashes: np.ndarray,
    clips: np.ndarray,
    runs: np.ndarray | None,
    config: DedupConfig,
    counts: dict[str, int],
    found: list[np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Search the buckets of entries ``idx`` sorted by their keys ``sk`` (``used`` bits); those over
    ``max_bucket`` entries are not searched but returned (entries, keys) to be split, unless the whole hash
    is the key already (identical hashes: searched whatever their number)."""
    start = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
    size = np.diff(np.r_[start, len(sk)])
    big = size > config.max_bucket if used < 64 else np.zeros(len(size), bool)
    crowded = np.zeros(0, np.int64), np.zeros(0, np.uint64)
    if big.any():
        member_big = np.repeat(big, size)
        counts["split_buckets"] += int(big.sum())
        counts["split_entries"] += int(member_big.sum())
        crowded = idx[member_big], sk[member_big]
        idx, sk = idx[~member_big], sk[~member_big]
    # the bucket members' hashes and clips in key order: the pair loop then reads them in order
    found.extend(_bucket_pairs(hashes[idx], clips[idx], runs, sk, config, counts))
    return crowded


def _bucket_pairs(
    hs: np.ndarray,
    cs: np.ndarray,
    runs: np.ndarray | None,
    sk: np.ndarray,
    config: DedupConfig,
    counts: dict[str, int],
) -> list[np.ndarray]:
    """Every pair inside each run of equal keys in ``sk`` (sorted; ``hs``, ``cs``: the entries' hashes and
    clips in that order), kept when within ``max_hamming``."""
    out = []
    if len(sk) < 2:
        return out
    same = sk[1:] == sk[:-1]
    pos = np.flatnonzero(same)  # entries with a bucket mate after them
    starts = np.flatnonzero(np.r_[True, ~same])
    end = np.repeat(np.r_[starts[1:], len(sk)], np.diff(np.r_[starts, len(sk)]))[pos]  # their bucket's end
    offset = 1
    limit = np.uint64(config.max_hamming)
    while len(pos):
        b = pos + offset
        counts["hash_pairs_compared"] += len(pos)
        ca, cb = cs[pos], cs[b]
        ok = (ca != cb) & (np.bitwise_count(hs[pos] ^ hs[b]) <= limit)
        if runs is not None:
            ok &= (runs[ca] == 0) | (runs[cb] == 0)  # two clips of --against runs: not our business
        if ok.any():
            lo = np.minimum(ca[ok], cb[ok]).astype(np.uint64)
            hi = np.maximum(ca[ok], cb[ok]).astype(np.uint64)
            out.append(np.unique((lo << np.uint64(32)) | hi))
        offset += 1
        more = end > b + 1  # a mate ``offset`` entries on, still in the bucket
        pos, end = pos[more], end[more]
    return out


def verify_pairs(
    pairs: np.ndarray,
    offsets: np.ndarray,
    hashes: np.ndarray,
    curves: np.ndarray,
    has_curve: np.ndarray,
    config: DedupConfig,
) -> np.ndarray:
    """The decision rule on each candidate pair: a bool mask over ``pairs``.

    The time curves are compared first, for all pairs at once; the frame hashes of those that agree
    then one pair at a time (both must hold, so the order changes nothing but the cost). A pair whose
    frames match only near the limit (``edge_margin``) also needs ``edge_evidence_many``.
    """
    keep = np.zeros(len(pairs), bool)
    signed = hashes.view(np.int64)
    for s in range(0, len(pairs), VERIFY_CHUNK):
        chunk = pairs[s : s + VERIFY_CHUNK]
        i = (chunk >> np.uint64(32)).astype(np.int64)
        j = (chunk & np.uint64(0xFFFFFFFF)).astype(np.int64)
        a, b = curves[i], curves[j]
        a[~has_curve[i]] = np.nan
        b[~has_curve[j]] = np.nan
        agree = np.flatnonzero(curves_agree_many(a, b, config))
        edge_ok = edge_evidence_many(a[agree], b[agree], config)  # for the few whose curves agree
        for k, edge in zip(agree, edge_ok, strict=True):
            x = signed[offsets[i[k]] : offsets[i[k] + 1]].reshape(-1, SCALES)
            y = signed[offsets[j[k]] : offsets[j[k] + 1]].reshape(-1, SCALES)
            found, at_edge = frame_match(x, y, config)
            keep[s + k] = found and (edge or not at_edge)
    return keep


# ----------------------------------------------------------------------------------------------- search


def _gather(refs: list, each: Callable[[int], None]) -> list:
    """``ray.get(refs)`` in order, calling ``each(done)`` as tasks finish (in any order)."""
    import ray

    pending = list(refs)
    while pending:
        _, pending = ray.wait(pending, num_returns=1)
        each(len(refs) - len(pending))
    return ray.get(refs)


def _start_ray() -> bool:
    """Join ``RAY_ADDRESS`` when set (one that nothing answers is a ``RecipeError`` at once, not minutes of
    Ray's retries), else start a local Ray for this search; True when started here."""
    from vidsift.pipeline.ray_session import init_ray

    return init_ray(None, actors=False)  # plain tasks: no need to quiet Ray's actor lines (and its own)


def table_task_memory(entries: int) -> int:
    """Bytes a hash-table task needs beside the shared entries (Ray's ``memory`` resource, so a node runs
    no more of them than its memory holds): the packed keys (8 bytes an entry), the chunk temporaries and
    the pairs found. Measured: 1.07x the packed keys above the worker's own (docs/benchmarks.md, issue 16)."""
    return int(1.5 * 8 * entries) + (256 << 20)


def _candidates(
    h: np.ndarray,
    c: np.ndarray,
    runs: np.ndarray | None,
    perms: list[np.ndarray],
    bits: list[int],
    config: DedupConfig,
    stats: SearchStats,
    progress: Progress,
) -> np.ndarray:
    """The candidate clip pairs of every hash table (unique, uint64 ``i << 32 | j``), in this process."""
    compared = 0
    progress("index", 0, len(perms), compared=0)
    found = []
    for k, (p, b) in enumerate(zip(perms, bits, strict=True), 1):
        pairs, counts = table_pairs(h, c, runs, p, b, config)
        found.append(pairs)
        compared += counts["hash_pairs_compared"]
        stats.hash_pairs_compared += counts["hash_pairs_compared"]
        stats.split_buckets += counts["split_buckets"]
        stats.split_entries += counts["split_entries"]
        progress("index", k, len(perms), compared=compared)
    return np.unique(np.concatenate(found)) if found else np.zeros(0, np.uint64)


def _verify(
    candidates: np.ndarray, config: DedupConfig, stats: SearchStats, progress: Progress, table: HashTable
) -> np.ndarray:
    """The verified pairs among ``candidates``, in this process, ``VERIFY_CHUNK`` pairs at a time."""
    chunks = [candidates[s : s + VERIFY_CHUNK] for s in range(0, len(candidates), VERIFY_CHUNK)]
    progress("verify", 0, len(chunks), verified=0, candidates=len(candidates))
    masks = []
    for ch in chunks:
        masks.append(verify_pairs(ch, table.offsets, table.hashes, table.curves, table.has_curve, config))
        verified = int(sum(m.sum() for m in masks))
        progress("verify", len(masks), len(chunks), verified=verified, candidates=len(candidates))
    mask = np.concatenate(masks) if masks else np.zeros(0, bool)
    stats.verified_pairs = int(mask.sum())
    return candidates[mask]


def search_pairs(
    table: HashTable, config: DedupConfig, stats: SearchStats, progress: Progress | None = None
) -> np.ndarray:
    """Verified duplicate clip pairs (uint64 ``i << 32 | j``) of a table held here; ``progress`` as
    ``find_near_duplicates``. Past ``distribute_above`` clips the table goes to the object store as one
    part and the search runs as the Ray tasks of ``search_files`` (which reads a run without holding it)."""
    import time

    progress = progress or (lambda *a, **k: None)
    t0 = time.time()
    h, c = entries(table)
    runs = table.run if (table.run != 0).any() else None
    entropy = bit_entropy(h)
    stats.hashes = len(h)
    stats.distributed = len(table) > config.distribute_above
    if stats.distributed:
        import ray

        started_ray = _start_ray()
        try:
            refs = [ray.put(h), ray.put(c), ray.put(runs)]
            del h, c
            part = ray.put(_part(table))
            return _search_tasks(refs, [part], entropy, config, stats, progress, t0)
        finally:
            if started_ray:
                ray.shutdown()
    perms = table_positions(config)
    bits = [key_bits(len(h), entropy, p, config) for p in perms]
    stats.tables, stats.key_bits = config.index_tables, round(float(np.mean(bits)), 1)
    candidates = _candidates(h, c, runs, perms, bits, config, stats, progress)
    del h, c
    stats.candidate_pairs = len(candidates)
    t1 = time.time()
    stats.seconds["candidates"] = round(t1 - t0, 3)
    pairs = _verify(candidates, config, stats, progress, table)
    stats.seconds["verify"] = round(time.time() - t1, 3)
    return pairs


# ----------------------------------------------------------------------- the run read by the tasks

LOAD_CLIPS = 150_000  # clips per read task of ``search_files`` (a few hundred MB of task memory)


def count_clips(files: list[list[Location]], above: int) -> tuple[int, bool]:
    """Clips in ``files`` from the Parquet footers, counting until past ``above``: ``(counted, more)``,
    ``more`` when the count stopped there (the search is then distributed: the exact count comes later)."""
    counted = 0
    for f in (f for run in files for f in run):
        try:
            counted += storage.read_parquet_metadata(f).num_rows
        except (OSError, pa.ArrowException) as e:
            raise _unreadable(f, e) from None
        if counted > above:
            return counted, True
    return counted, False


META_SCHEMA = pa.schema(
    [("clip_id", pa.string()), ("source_uri", pa.string()), ("group", pa.string()), ("run", pa.int16()),
     ("pixels", pa.int64()), ("duration", pa.float64())]
)  # fmt: skip


def _load_task(files: list[Location], run: int, cwd: str, env: list):  # runs inside a Ray task
    """One chunk of a run's clip files, read and indexed: (counts, index entries, the verification part)."""
    from vidsift.pipeline.dataflow import enter_run

    enter_run(cwd, env)
    t = table_from_arrow(read_clip_columns("", files), run=run)
    h, c = entries(t)
    info = {
        "clips": len(t),
        "entries": len(h),
        "without_hashes": int((np.diff(t.offsets) < SCALES).sum()),
        "files": len(files),
    }
    part = _part(t)
    _release_memory()  # the Arrow columns read
    return info, (h, c, t.run), part


def _part(t: HashTable) -> dict:
    """What verification and the keep-the-best rule need of ``t``'s clips (``_Parts`` reads it back)."""
    columns = [t.clip_id, t.source_uri, t.group, t.run, t.pixels, t.duration]
    arrays = [
        (x if isinstance(x, pa.Array) else pa.array(x)).cast(f.type)
        for x, f in zip(columns, META_SCHEMA, strict=True)
    ]
    meta = pa.Table.from_arrays(arrays, schema=META_SCHEMA)
    return {
        "offsets": t.offsets,
        "hashes": t.hashes,
        "curves": t.curves,
        "has_curve": t.has_curve,
        "meta": meta,
    }


def _assemble_task(*chunks):  # runs inside a Ray task
    """The index entries of every chunk as one array each (clip numbers made run-wide), the runs of the
    clips (None: no --against run), and the entries' count and bit entropy. Written into arrays allocated
    once: 12 bytes an entry is this task's memory beside the shared chunks (0.45 GiB at 1M clips)."""
    entries_n, clips_n = sum(len(h) for h, _, _ in chunks), sum(len(r) for _, _, r in chunks)
    h, c, run = np.empty(entries_n, np.uint64), np.empty(entries_n, np.int32), np.empty(clips_n, np.int16)
    at = base = 0
    for hk, ck, rk in chunks:
        h[at : at + len(hk)] = hk
        np.add(ck, base, out=c[at : at + len(ck)])
        run[base : base + len(rk)] = rk
        at, base = at + len(hk), base + len(rk)
    return h, c, (run if (run != 0).any() else None), {"hashes": entries_n, "entropy": bit_entropy(h)}


def _release_memory() -> None:
    """Hand freed memory back to the system: a Ray worker lives on after its task, and the Arrow pool and
    the C heap may otherwise keep the pages of a task's temporaries (not measured on its own: see
    docs/benchmarks.md, issue 16)."""
    import ctypes
    import ctypes.util

    pa.default_memory_pool().release_unused()
    name = ctypes.util.find_library("c")
    if name:
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


class _Parts:
    """Clip ``i`` of the run-wide numbering found in the chunk parts ``_load_task`` returned."""

    def __init__(self, parts: list[dict]) -> None:
        self.parts = parts
        self.base = np.cumsum([0] + [len(p["offsets"]) - 1 for p in parts])

    def locate(self, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(part, index inside it) of each clip."""
        part = np.searchsorted(self.base, clips, side="right") - 1
        return part, clips - self.base[part]

    def table(self, clips: np.ndarray) -> HashTable:
        """A ``HashTable`` of ``clips`` (sorted, unique) only, in that order."""
        part, local = self.locate(clips)
        offsets, hashes, curves, has_curve, metas = [np.zeros(1, np.int64)], [], [], [], []
        total = 0
        for k in np.unique(part):
            p, idx = self.parts[k], local[part == k]
            lens = p["offsets"][idx + 1] - p["offsets"][idx]
            at = np.repeat(p["offsets"][idx] - np.r_[0, np.cumsum(lens)[:-1]], lens) + np.arange(lens.sum())
            hashes.append(p["hashes"][at])
            offsets.append(total + np.cumsum(lens))
            total += int(lens.sum())
            curves.append(p["curves"][idx])
            has_curve.append(p["has_curve"][idx])
            metas.append(p["meta"].take(pa.array(idx)))
        meta = pa.concat_tables(metas) if metas else META_SCHEMA.empty_table()
        return HashTable(
            clip_id=meta.column("clip_id").combine_chunks(),
            source_uri=meta.column("source_uri").combine_chunks(),
            group=meta.column("group").combine_chunks(),
            run=meta.column("run").to_numpy(),
            offsets=np.concatenate(offsets),
            hashes=np.concatenate(hashes) if hashes else np.zeros(0, np.uint64),
            curves=np.concatenate(curves) if curves else np.zeros((0, 2 * CURVE_POINTS), np.float32),
            has_curve=np.concatenate(has_curve) if has_curve else np.zeros(0, bool),
            pixels=meta.column("pixels").to_numpy(),
            duration=meta.column("duration").to_numpy(),
        )


def _local_pairs(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The clips of ``pairs`` (sorted, unique) and the pairs renumbered into them."""
    i = (pairs >> np.uint64(32)).astype(np.int64)
    j = (pairs & np.uint64(0xFFFFFFFF)).astype(np.int64)
    clips = np.unique(np.concatenate([i, j]))
    li, lj = np.searchsorted(clips, i), np.searchsorted(clips, j)
    return clips, (li.astype(np.uint64) << np.uint64(32)) | lj.astype(np.uint64)


PAIR_PARTITION_ENTRIES = 2_000_000  # index entries per partition of the candidate pairs (``search_files``)


def _partition(pairs: np.ndarray, n: int) -> list[np.ndarray]:
    """``pairs`` (sorted) cut into ``n`` sorted parts by a hash of each pair: a pair found by several hash
    tables lands in the same part every time, so each part can be made unique on its own."""
    if n == 1:
        return [pairs]
    part = ((pairs * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)) % np.uint64(n)  # wraps: a hash
    order = np.argsort(part, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(part.astype(np.int64), minlength=n))]
    return [pairs[order[bounds[k] : bounds[k + 1]]] for k in range(n)]


def _ray_table_parts(h, c, r, positions, bits, config, n):  # runs inside a Ray task
    """``table_pairs``, its pairs returned as ``n`` partitions (``_partition``) after the counts."""
    try:
        pairs, counts = table_pairs(h, c, r, positions, bits, config)
        return (counts, *_partition(pairs, n))
    finally:
        _release_memory()


def _verify_partition_task(config: DedupConfig, tables: int, *args) -> tuple[int, np.ndarray]:  # Ray task
    """One partition of the candidate pairs: ``args`` are its part from each of ``tables`` hash tables, then
    the chunk parts of the run. Returns how many distinct candidates it held and the verified ones."""
    candidates = np.unique(np.concatenate(args[:tables]))
    return len(candidates), candidates[_verify_task(candidates, config, *args[tables:])]


def _verify_task(pairs: np.ndarray, config: DedupConfig, *parts: dict) -> np.ndarray:  # in a Ray task
    """``verify_pairs`` over the clips of ``pairs`` only, gathered from the chunk parts."""
    clips, local = _local_pairs(pairs)
    t = _Parts(list(parts)).table(clips)
    return verify_pairs(local, t.offsets, t.hashes, t.curves, t.has_curve, config)


def _moves_task(pairs: np.ndarray, run_names: list[str], *parts: dict) -> pa.Table:  # in a Ray task
    """The moves (``moves_table``) of the verified ``pairs``, from the chunk parts."""
    clips, local = _local_pairs(pairs)
    t = _Parts(list(parts)).table(clips)
    return moves_table(t, choose_representatives(t, local), run_names)


def moves_table(table: HashTable, duplicates: dict[int, int], run_names: list[str]) -> pa.Table:
    """What ``dedup_run.move_duplicates`` applies: ``group``, ``clip_id``, ``dup_of`` and ``reject_detail``
    (the kept clip, its source and, from an ``--against`` run, that run) of each duplicate of
    ``duplicates`` (``{duplicate: kept}`` clip indices of ``table``)."""
    dup = pa.array(np.fromiter(duplicates.keys(), np.int64, len(duplicates)))
    rep = np.fromiter(duplicates.values(), np.int64, len(duplicates))
    rep_id = table.clip_id.take(pa.array(rep))
    rep_src = table.source_uri.take(pa.array(rep)).to_pylist()
    details = [
        f"duplicates {i} from {s}" + (f" in run {run_names[r]}" if r else "")
        for i, s, r in zip(rep_id.to_pylist(), rep_src, table.run[rep].tolist(), strict=True)
    ]
    return pa.table(
        {
            "group": table.group.take(dup).cast(pa.string()),
            "clip_id": table.clip_id.take(dup),
            "dup_of": rep_id,
            "reject_detail": pa.array(details, pa.string()),
        }
    )


def _search_tasks(
    refs: list, parts: list, entropy: np.ndarray, config: DedupConfig, stats: SearchStats,
    progress: Progress, t0: float,
) -> np.ndarray:  # fmt: skip
    """The verified pairs, as Ray tasks: ``refs`` are the object refs of the index entries, their clips and
    runs (``stats.hashes`` entries; the list is emptied once the table tasks hold them, so the entries are
    freed when those end), ``parts`` the refs of the clips' parts (``_part``) in clip order.

    Each hash table is a task that leaves its candidate pairs in the object store, cut into partitions by
    pair (one per ``PAIR_PARTITION_ENTRIES`` entries); a task per partition makes its pairs unique and
    verifies them, gathering only their clips from the parts: no candidate list is held here."""
    import time

    import ray

    perms = table_positions(config)
    bits = [key_bits(stats.hashes, entropy, p, config) for p in perms]
    stats.tables, stats.key_bits = config.index_tables, round(float(np.mean(bits)), 1)
    n = max(1, -(-stats.hashes // PAIR_PARTITION_ENTRIES))
    table_task = ray.remote(_ray_table_parts).options(
        num_cpus=1, num_returns=n + 1, memory=table_task_memory(stats.hashes), max_retries=2
    )
    by_table = [table_task.remote(*refs, p, b, config, n) for p, b in zip(perms, bits, strict=True)]
    refs.clear()
    progress("index", 0, len(perms), compared=0)
    for counts in _gather([t[0] for t in by_table], lambda done: progress("index", done, len(perms),
                                                                           compared=0)):  # fmt: skip
        stats.hash_pairs_compared += counts["hash_pairs_compared"]
        stats.split_buckets += counts["split_buckets"]
        stats.split_entries += counts["split_entries"]
    progress("index", len(perms), len(perms), compared=stats.hash_pairs_compared)
    t1 = time.time()
    stats.seconds["candidates"] = round(t1 - t0, 3)
    verify = ray.remote(_verify_partition_task).options(num_cpus=1, max_retries=2)
    futures = [verify.remote(config, len(perms), *[t[k + 1] for t in by_table], *parts) for k in range(n)]
    del by_table  # each partition's pairs are freed once verified
    seen = {"candidates": 0, "verified": 0}
    progress("verify", 0, n, **seen)
    pending = list(futures)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        count, found = ray.get(ready[0])
        seen["candidates"] += count
        seen["verified"] += len(found)
        progress("verify", n - len(pending), n, **seen)
    results = ray.get(futures)
    stats.candidate_pairs, stats.verified_pairs = seen["candidates"], seen["verified"]
    stats.seconds["verify"] = round(time.time() - t1, 3)
    return np.sort(np.concatenate([found for _, found in results]))


def search_files(
    runs: list[Location], config: DedupConfig, progress: Progress | None = None
) -> tuple[pa.Table, SearchStats]:
    """The search as Ray tasks straight from the shards, for runs of any size: ``(moves, stats)``.

    Nothing run-wide passes through this process. Read tasks (``LOAD_CLIPS`` clips each) read the hash
    columns of their files and return the index entries and the verification arrays to the object store;
    one task joins the entries (the input of every hash-table task); verification and the keep-the-best
    rule run in tasks that gather only the clips of their pairs; each table's candidate pairs are cut into
    partitions by pair (one per ``PAIR_PARTITION_ENTRIES`` index entries) and each partition is made unique
    and verified by one task. This process holds object references, counts, the verified pairs and the
    moves. Same results as ``find_near_duplicates`` over ``load_hash_table(runs)``: the clips are numbered
    in the same order.
    """
    import os
    import time

    import ray

    progress = progress or (lambda *a, **k: None)
    t0 = time.time()
    files = [storage.parquet_files(storage.join(r, "clips")) for r in runs]
    if not any(files):
        return moves_table(_Parts([]).table(np.zeros(0, np.int64)), {}, []), SearchStats(distributed=True)
    started_ray = _start_ray()
    try:
        env = [ray.put(storage.s3_environment())] if any(storage.is_remote(str(r)) for r in runs) else [None]
        # chunks of about LOAD_CLIPS clips, from the rows of each run's first file
        chunks: list[tuple[list[Location], int]] = []
        for k, run_files in enumerate(files):
            per_file = count_clips([run_files[:1]], 0)[0] if run_files else 1
            step = max(1, LOAD_CLIPS // max(1, per_file))
            chunks += [(run_files[s : s + step], k) for s in range(0, len(run_files), step)]
        load = ray.remote(_load_task).options(num_cpus=1, num_returns=3, max_retries=2)
        loaded = [load.remote(chunk, k, os.getcwd(), env) for chunk, k in chunks]
        infos = [x[0] for x in loaded]
        total = sum(len(f) for f in files)
        done = {"files": 0, "clips": 0}
        progress("read", 0, total, clips=0)
        pending = list(infos)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            info = ray.get(ready[0])
            done["files"] += info["files"]
            done["clips"] += info["clips"]
            progress("read", done["files"], total, clips=done["clips"])
        infos = ray.get(infos)
        stats = SearchStats(clips=sum(i["clips"] for i in infos), distributed=True)
        stats.clips_without_hashes = sum(i["without_hashes"] for i in infos)
        parts = [x[2] for x in loaded]
        entries_n = sum(i["entries"] for i in infos)  # the joined entries: 12 bytes each, made once
        assemble = ray.remote(_assemble_task).options(
            num_cpus=1, num_returns=4, max_retries=2, memory=int(1.5 * 12 * entries_n) + (256 << 20)
        )
        *refs, summary = assemble.remote(*[x[1] for x in loaded])
        del loaded  # the chunks' entries are freed once joined
        summary = ray.get(summary)
        stats.hashes = summary["hashes"]
        pairs = _search_tasks(refs, parts, summary["entropy"], config, stats, progress, t0)
        moves_task = ray.remote(_moves_task).options(num_cpus=1, max_retries=2)
        moves = ray.get(moves_task.remote(pairs, [str(r) for r in runs], *parts))
        stats.duplicates = moves.num_rows
    finally:
        if started_ray:
            ray.shutdown()
    return moves, stats


def choose_representatives(table: HashTable, pairs: np.ndarray) -> dict[int, int]:
    """``{duplicate clip index: kept clip index}`` from verified pairs (connected components)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(pairs) == 0:
        return {}
    i = (pairs >> np.uint64(32)).astype(np.int64)
    j = (pairs & np.uint64(0xFFFFFFFF)).astype(np.int64)
    nodes = np.unique(np.concatenate([i, j]))  # components over the clips in pairs only
    li, lj = np.searchsorted(nodes, i), np.searchsorted(nodes, j)
    graph = coo_matrix((np.ones(len(li), np.int8), (li, lj)), shape=(len(nodes), len(nodes)))
    _, label = connected_components(graph, directed=False)
    # keep-the-best: an --against clip first (never rewritten), then most pixels, longest, smallest id
    ids = table.clip_id.take(pa.array(nodes))
    order = pc.sort_indices(
        pa.table(
            {
                "label": label,
                "new": (table.run[nodes] == 0).astype(np.int8),
                "px": -table.pixels[nodes],
                "dur": -table.duration[nodes],
                "id": ids,
            }
        ),
        sort_keys=[(k, "ascending") for k in ("label", "new", "px", "dur", "id")],
    ).to_numpy()
    sorted_label = label[order]
    first = np.r_[True, sorted_label[1:] != sorted_label[:-1]]
    keeper_of_label = np.empty(label.max() + 1, np.int64)
    keeper_of_label[sorted_label[first]] = nodes[order[first]]
    keeper = keeper_of_label[label]
    dup = (keeper != nodes) & (table.run[nodes] == 0)  # clips of --against runs are never rejected
    return dict(zip(nodes[dup].tolist(), keeper[dup].tolist(), strict=True))


def find_near_duplicates(
    table: HashTable, config: DedupConfig, progress: Progress | None = None
) -> tuple[dict[int, int], SearchStats]:
    """``{duplicate clip index: kept clip index}`` over ``table``, and what the search did.

    ``progress(phase, done, total, **counters)`` follows the work: ``"index"`` per hash table
    (``compared``: hash pairs compared so far), then ``"verify"`` per part of the candidate pairs
    (a chunk here, a partition in Ray tasks; ``verified``, ``candidates``).
    """
    stats = SearchStats(clips=len(table))
    stats.clips_without_hashes = int((np.diff(table.offsets) < SCALES).sum())
    pairs = search_pairs(table, config, stats, progress)
    duplicates = choose_representatives(table, pairs)
    stats.duplicates = len(duplicates)
    return duplicates, stats
