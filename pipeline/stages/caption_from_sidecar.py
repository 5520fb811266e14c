"""caption_from_sidecar: captions that already exist, read from a sidecar file of time ranges per source.

For users who have captions (human annotations, an earlier captioning run, the ground truth of a synthetic
set) and for the curation ablation (bench/curation_ablation.py), where it is the documented "oracle
caption" stage. Reads ``source_uri``, ``video_id``, ``start_s`` and ``end_s`` of each accepted clip; writes
``caption`` and ``caption_short`` (the sidecar's ``caption_short``, or ``caption`` again), ``caption_model``
(``sidecar:`` and the sidecar's path) and, for clips it cannot caption, a flag in ``caption_qa_flags``.

The sidecar is JSON or CSV (by extension), one row per captioned time range of a source:

- JSON: a list of ``{"source", "start_s", "end_s", "caption"[, "caption_short"]}`` objects, or an object
  ``{source: [{"start_s", "end_s", "caption"[, "caption_short"]}, ...]}``;
- CSV: a header with ``source,start_s,end_s,caption`` (and optionally ``caption_short``).

``source`` matches a clip's ``source_uri`` exactly, else its ``video_id`` (the content id), else, when it
has no ``/``, the file name of ``source_uri``. A clip takes the caption of the range that overlaps it
most, if that range covers at least ``min_coverage`` of the clip's duration. A clip whose source has no
rows is flagged ``sidecar_source_missing``; one that no range covers enough (a clip across two captioned
ranges, or over time the sidecar leaves out) is flagged ``sidecar_range_missing``; ``on_missing``
decides whether such a clip is rejected with that reason (and the best coverage in ``reject_detail``) or
kept uncaptioned. A sidecar that cannot be read is a recipe error, reported when the recipe is built.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass

from vidsift.pipeline.rows import reject


@dataclass(frozen=True, kw_only=True)
class CaptionFromSidecarConfig:
    path: str = ""  # the sidecar: a .json or .csv file (local or s3://), one row per captioned time range
    min_coverage: float = 0.9  # the best range must cover this share of the clip's duration
    on_missing: str = "reject"  # reject | keep: what a clip without a sidecar caption does (always flagged)

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("caption_from_sidecar.path is required: a .json or .csv sidecar of captions")
        if not 0 < self.min_coverage <= 1:
            raise ValueError(f"caption_from_sidecar.min_coverage must be in (0, 1], got {self.min_coverage}")
        if self.on_missing not in ("reject", "keep"):
            raise ValueError(
                f"caption_from_sidecar.on_missing must be reject or keep, got {self.on_missing!r}"
            )
        load_sidecar(self.path)  # a sidecar that cannot be read fails the recipe, not the run


@dataclass(frozen=True)
class Span:
    start_s: float
    end_s: float
    caption: str
    caption_short: str


def _span(where: str, entry: dict) -> Span:
    try:
        start, end = float(entry["start_s"]), float(entry["end_s"])
        caption = str(entry["caption"] or "").strip()
    except KeyError as e:
        raise ValueError(f"{where}: missing {e.args[0]!r}") from None
    except (TypeError, ValueError):
        raise ValueError(f"{where}: start_s and end_s must be numbers") from None
    if not (math.isfinite(start) and math.isfinite(end)) or not 0 <= start < end:
        raise ValueError(f"{where}: need 0 <= start_s < end_s, got {start}, {end}")
    if not caption:
        raise ValueError(f"{where}: empty caption")
    short = str(entry.get("caption_short") or "").strip() or caption
    return Span(start, end, caption, short)


def parse_sidecar(text: str, fmt: str, name: str = "sidecar") -> dict[str, list[Span]]:
    """source -> its captioned ranges (sorted by start), from the text of a ``json`` or ``csv`` sidecar.
    Raises ValueError with a one-line message that names the bad row."""
    spans: dict[str, list[Span]] = {}
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name} is not valid JSON: {e}") from None
        if isinstance(data, dict):
            entries = []
            for source, rows in data.items():
                if not isinstance(rows, list):
                    raise ValueError(f"{name}: {source!r} must map to a list of ranges")
                entries += [{**r, "source": source} if isinstance(r, dict) else r for r in rows]
        elif isinstance(data, list):
            entries = data
        else:
            raise ValueError(f"{name}: expected a list of ranges or an object of sources")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not entry.get("source"):
                raise ValueError(f"{name}: entry {i} must be an object with a source")
            spans.setdefault(str(entry["source"]), []).append(_span(f"{name}: entry {i}", entry))
    elif fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        missing = {"source", "start_s", "end_s", "caption"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{name}: CSV header lacks {', '.join(sorted(missing))}")
        for entry in reader:
            where = f"{name}: line {reader.line_num}"
            if not entry.get("source"):
                raise ValueError(f"{where}: empty source")
            spans.setdefault(entry["source"], []).append(_span(where, entry))
    else:
        raise ValueError(f"{name}: sidecar format must be json or csv, got {fmt!r}")
    return {s: sorted(v, key=lambda sp: sp.start_s) for s, v in spans.items()}


def load_sidecar(path: str) -> dict[str, list[Span]]:
    from vidsift.pipeline.storage import open_input

    fmt = os.path.splitext(path)[1].lower().lstrip(".")
    if fmt not in ("json", "csv"):
        raise ValueError(f"caption_from_sidecar.path must end in .json or .csv, got {path!r}")
    try:
        with open_input(path) as f:
            text = f.read().decode("utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"caption_from_sidecar: sidecar not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"caption_from_sidecar: cannot read {path}: {e}") from None
    return parse_sidecar(text, fmt, os.path.basename(path))


def best_span(spans: list[Span], start_s: float, end_s: float) -> tuple[Span | None, float]:
    """The range overlapping [start_s, end_s) most, and the share of the clip's duration it covers."""
    duration = max(end_s - start_s, 1e-9)
    best, cover = None, 0.0
    for sp in spans:
        c = max(0.0, min(end_s, sp.end_s) - max(start_s, sp.start_s)) / duration
        if c > cover:
            best, cover = sp, c
    return best, cover


class CaptionFromSidecar:
    reads: tuple[str, ...] = (
        "source_uri",
        "video_id",
        "start_s",
        "end_s",
        "caption_qa_flags",
    )  # the columns it is given (process.call_clip_stage)
    writes: tuple[str, ...] = ("caption", "caption_short", "caption_model", "caption_qa_flags")

    def __init__(self, config: CaptionFromSidecarConfig) -> None:
        self.config = config
        self.spans = load_sidecar(config.path)
        self.model = f"sidecar:{config.path}"

    def find(self, row: dict) -> list[Span] | None:
        uri = row.get("source_uri") or ""
        for key in (uri, row.get("video_id") or ""):
            if key and key in self.spans:
                return self.spans[key]
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        return self.spans.get(name) if name else None

    def __call__(self, rows: list[dict]) -> list[dict]:
        return [self.caption(row) for row in rows]

    def caption(self, row: dict) -> dict:
        c = self.config
        row = dict(row)
        flags = list(row.get("caption_qa_flags") or [])
        spans = self.find(row)
        start, end = float(row["start_s"]), float(row["end_s"])
        if spans is None:
            flag, detail = "sidecar_source_missing", f"no sidecar rows for {row.get('source_uri')}"
        else:
            span, cover = best_span(spans, start, end)
            if span is not None and cover >= c.min_coverage:
                row.update(caption=span.caption, caption_short=span.caption_short, caption_model=self.model)
                row["caption_qa_flags"] = flags
                return row
            where = f"{span.start_s:.2f}-{span.end_s:.2f} s" if span else "none"
            detail = (
                f"clip {start:.2f}-{end:.2f} s: best sidecar range {where} covers {cover:.0%} "
                f"< min_coverage {c.min_coverage:.0%}"
            )
            flag = "sidecar_range_missing"
        row["caption_qa_flags"] = [*flags, flag]
        if c.on_missing == "reject":
            reject(row, "caption_from_sidecar", flag, detail)
        return row
