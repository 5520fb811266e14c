"""Run folders for the stats and report tests.

``synthetic_run`` writes a run folder whose every value is known (so tests can check the numbers),
with hostile captions, file names and reasons, and a second group carrying columns that later
stages will add (``aesthetic_score``, ``caption_model``, flags, ``dup_of``), so the statistics
must handle files whose schemas differ. A real curated run is conftest.py's ``bad_run``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vidsift.pipeline.schema import CLIP_SCHEMA, REJECTED_SCHEMA, VIDEO_SCHEMA, table_from_rows
from vidsift.pipeline.stages.write_shards import WriteShardsConfig, write_group

SCRIPT_CAPTION = "<script>window.__pwned=1</script> a cat jumps"
IMG_CAPTION = '"><img src=x onerror="window.__pwned=1"> a dog runs'
MARKUP_CAPTION = "[bold red]not markup[/] a bird sings"
HOSTILE_SOURCE = 'src/"><img src=x onerror="window.__pwned=1">.mp4'
HOSTILE_REASON = 'odd"><b>reason</b>'
N_ACCEPTED = 60
REJECTED_REASONS = {("split_scenes", "scene_too_short"): 8, ("filter_aesthetic", HOSTILE_REASON): 3}


def jpeg(color: tuple[int, int, int], size: tuple[int, int] = (64, 36)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def _clip(i: int, source: str, group: str) -> dict:
    w, h = [(640, 360), (360, 640), (480, 360), (512, 512)][i % 4]
    fps = [24.0, 25.0, 30.0][i % 3]
    frames = 24 * (1 + i % 5)
    return {
        "clip_id": f"{i:032x}",
        "video_id": f"{hash(source) & 0xFFFF:016x}",
        "source_uri": source,
        "group": group,
        "scene_index": i,
        "start_frame": 100 * i,
        "end_frame": 100 * i + frames,
        "start_s": 10.0 * i,
        "end_s": 10.0 * i + frames / fps,
        "cut_kind_start": "cut" if i % 2 else "start",
        "cut_kind_end": "end",
        "luma_mean": float(i),
        "luma_std": 10.0,
        "black_ratio": 0.0,
        "sharpness": 100.0 + i,
        "frame_diff": 1.0,
        "frames_jpeg": [
            jpeg((4 * i % 255, 80, 160)),
            jpeg((80, 4 * i % 255, 40)),
            jpeg((200, 40, 4 * i % 255)),
        ],
        "frames_s": [10.0 * i, 10.0 * i + 0.5, 10.0 * i + 1.0],
        "width": w,
        "height": h,
        "fps": fps,
        "num_frames": frames,
        "duration_s": frames / fps,
        "preview_jpeg": jpeg((20, 20, 20)),
        "caption": " ".join(["word"] * (5 + i)),  # clip i has 5 + i words
    }


def synthetic_run(out: Path, n_accepted: int = N_ACCEPTED) -> dict:
    """Two groups: g000000 through the real ``write_group`` (schema columns only), g000001 with extra
    columns. Returns the rows written, for expectations."""
    sources = [f"src/video_{k}.mp4" for k in range(5)] + [HOSTILE_SOURCE]
    accepted = [
        _clip(i, sources[i % len(sources)], "g000000" if i < n_accepted // 2 else "g000001")
        for i in range(n_accepted)
    ]
    accepted[0]["caption"] = SCRIPT_CAPTION
    accepted[1]["caption"] = IMG_CAPTION
    accepted[2]["caption"] = MARKUP_CAPTION
    accepted[3]["caption"] = None
    rejected = []
    k = 1000
    for (stage, reason), n in REJECTED_REASONS.items():
        for _ in range(n):
            row = _clip(k, sources[k % len(sources)], "g000000")
            for col in ("width", "height", "fps", "num_frames", "duration_s", "preview_jpeg", "caption"):
                row[col] = None
            row.update(reject_stage=stage, reject_reason=reason, reject_detail=f"detail of {reason}")
            rejected.append(row)
            k += 1
    videos = []
    for s in sources:
        videos.append(
            {
                "source_uri": s,
                "group": "g000000" if s != sources[-1] else "g000001",
                "status": "ok",
                "analysis_decode_passes": 1,
                "duration_s": 600.0,
                "num_scenes": sum(r["source_uri"] == s for r in accepted + rejected),
                "num_clips_accepted": sum(r["source_uri"] == s for r in accepted),
            }
        )
    videos += [
        {
            "source_uri": "src/audio.mp3",
            "group": "g000000",
            "status": "rejected",
            "reason": "no_video_stream",
        },
        {"source_uri": "src/copy.mp4", "group": "g000000", "status": "rejected", "reason": "duplicate_file"},
    ]
    config = WriteShardsConfig(row_group_rows=8)
    # group g000000 holds every video and rejected row; clips are split between the two groups
    g0 = [r for r in accepted if r["group"] == "g000000"]
    write_group(out, "g000000", g0, rejected, videos, config)
    g1 = [r for r in accepted if r["group"] == "g000001"]
    extra = {
        "aesthetic_score": (pa.float32(), [float(r["scene_index"]) / 10 for r in g1]),
        "caption_model": (pa.string(), ["tiny-random-vlm"] * len(g1)),
        "is_watermarked": (pa.bool_(), [r["scene_index"] % 3 == 0 for r in g1]),
        "qa_flags": (
            pa.list_(pa.string()),
            [["hallucination"] if r["scene_index"] % 5 == 0 else [] for r in g1],
        ),
        "dup_of": (pa.string(), [accepted[0]["clip_id"] if r["scene_index"] % 10 == 0 else None for r in g1]),
    }
    # columns other issues add to the schema go through it; the others are appended as a later stage would
    in_schema = {k: v for k, v in extra.items() if k in CLIP_SCHEMA.names}
    for n, r in enumerate(g1):
        r.update({k: values[n] for k, (_, values) in in_schema.items()})
    table = table_from_rows(g1, CLIP_SCHEMA)
    for name, (typ, values) in extra.items():
        if name not in in_schema:
            table = table.append_column(name, pa.array(values, typ))
    pq.write_table(table, out / "clips" / "g000001.parquet", compression="zstd", row_group_size=8)
    pq.write_table(table_from_rows([], REJECTED_SCHEMA), out / "rejected" / "g000001.parquet")
    pq.write_table(table_from_rows([], VIDEO_SCHEMA), out / "videos" / "g000001.parquet")
    (out / "_done" / "g000001").touch()
    manifest = {
        "schema_version": 1,
        "recipe": {"run": {"group_size": 4}, "stage": [{"name": "caption_vlm", "model": "tiny/vlm"}]},
        "counts": {"groups": 2, "clips_accepted": len(accepted), "clips_rejected": len(rejected)},
        "models": {"caption": {"name": "tiny-random-vlm", "random_weights": True}},
        "stage_seconds": {"probe": 1.0},
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "_run.json").write_text("{}")
    return {"accepted": accepted, "rejected": rejected, "videos": videos}
