"""``vidsift stats OUT --html report.html``: one self-contained HTML report of a run.

Reads the statistics dict of ``pipeline.stats.compute_stats`` (charts and tables) and, for the clip
gallery, a bounded sample of clip rows. Writes one HTML file with no network references: charts
are matplotlib PNGs (Agg) embedded as data URIs, CSS and JS are inline, and a Content-Security-Policy
allows only that one script (by hash) and data: images.

The gallery holds at most ``gallery_size`` accepted clips and ``gallery_size // 4`` per rejection
reason, the lowest clip ids of each (clip ids are hashes, so this is a uniform sample that is the
same on every run). Their animated previews are sprite strips built from ``frames_jpeg``; the JPEG
bytes are read one Parquet row group at a time, only for row groups that hold a sampled clip, and
``clip_mp4`` is never read. In the page the gallery filters, sorts and pages client side.

Everything that comes from data (captions, paths, reasons, column names) is HTML-escaped, and the
JSON embedded in ``<script type="application/json">`` has ``<``, ``>``, ``&``, U+2028 and U+2029
escaped, so no caption can end the script element or inject markup.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from vidsift.pipeline import storage
from vidsift.pipeline.formatting import fmt, hours, top_values
from vidsift.pipeline.stats import (
    SCORE_SHIFT_HEADER,
    RunDb,
    RunError,
    _q,
    caption_columns,
    model_columns,
    open_run,
    score_columns,
    score_shift_rows,
)

SPRITE_HEIGHT = 96  # px per frame in the gallery
SPRITE_MAX_FRAMES = 8
SPRITE_QUALITY = 70
PAGE_SIZE = 24
ACCEPTED, REJECTED = "accepted", "rejected"


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def script_json(obj: Any) -> str:
    """JSON that is safe inside a <script> element: it cannot close the element or start a comment."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    for ch, rep in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(ch, rep)
    return text


def table(headers: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# ---------------------------------------------------------------- charts (matplotlib, Agg)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # labels come from data: a "$" in a file name must not switch on mathtext
    plt.rcParams.update({"text.parse_math": False, "font.size": 8, "axes.titlesize": 9})
    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def chart(fig, alt: str) -> str:
    return f'<img class="chart" alt="{esc(alt)}" src="data:image/png;base64,{_png(fig)}">'


def _short(label: str, n: int = 40) -> str:
    label = os.path.basename(label.rstrip("/")) or label
    return label if len(label) <= n else label[: n - 1] + "…"


def _barh(ax, items: list[tuple[str, float]], title: str, color: str = "#4c72b0") -> None:
    labels = [_short(str(k)) for k, _ in items][::-1]
    values = [v for _, v in items][::-1]
    ax.barh(range(len(values)), values, color=color)
    ax.set_yticks(range(len(values)), labels)
    ax.set_title(title)
    for i, v in enumerate(values):
        ax.text(v, i, f" {fmt(v)}", va="center", fontsize=7)
    ax.margins(x=0.15)


def funnel_chart(s: dict) -> str:
    plt = _plt()
    f = s["funnel"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 2.2))
    _barh(
        a,
        [
            ("input videos", f.get("input_videos", 0)),
            ("readable", f.get("readable_videos", 0)),
            ("with accepted clips", f.get("videos_with_clips", 0)),
        ],
        "videos",
    )
    _barh(
        b,
        [
            ("candidate clips", f.get("candidate_clips", 0)),
            ("accepted", f.get("accepted_clips", 0)),
            ("rejected", f.get("rejected_clips", 0)),
        ],
        "clips",
        "#55a868",
    )
    return chart(fig, "funnel: videos and clips")


def rejection_chart(s: dict) -> str | None:
    rej = s["rejections"]
    panels = []
    if rej["videos"]:
        panels.append(([(x["reason"], x["videos"]) for x in rej["videos"]], "rejected videos by reason"))
    if rej["clips"]:
        panels.append(
            ([(f"{x['stage']}/{x['reason']}", x["clips"]) for x in rej["clips"]], "rejected clips by reason")
        )
    if not panels:
        return None
    plt = _plt()
    rows = max(len(p[0]) for p in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(9, 0.8 + 0.28 * rows), squeeze=False)
    for ax, (items, title) in zip(axes[0], panels, strict=True):
        _barh(ax, items, title, "#c44e52")
    return chart(fig, "rejections by reason")


def _edges(h: dict) -> list[float]:
    lo, hi, n = h["lo"], h["hi"], h["bins"]
    if hi <= lo:
        hi = lo + 1.0
    return [lo + (hi - lo) * i / n for i in range(n + 1)]


def histogram_grid(named: dict[str, tuple[dict | None, dict | None]], alt: str) -> str | None:
    """Small multiples: per column the accepted (filled) and rejected (step) share of clips per bin."""
    named = {k: v for k, v in named.items() if v[0] or v[1]}
    if not named:
        return None
    plt = _plt()
    cols = 3
    rows = math.ceil(len(named) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(9, 1.9 * rows), squeeze=False)
    for ax in axes.flat[len(named) :]:
        ax.axis("off")
    for ax, (name, (acc, rej)) in zip(axes.flat, named.items(), strict=False):
        for d, label, kw in ((acc, ACCEPTED, {"fill": True, "alpha": 0.6}), (rej, REJECTED, {"fill": False})):
            if d is None:
                continue
            counts = d["hist"]["counts"]
            total = sum(counts) or 1
            ax.stairs(
                [c / total for c in counts], _edges(d["hist"]), label=f"{label} (n={fmt(d['count'])})", **kw
            )
        ax.set_title(name)
        ax.legend(fontsize=6, frameon=False)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return chart(fig, alt)


def media_chart(s: dict) -> str | None:
    m = s["media"]
    panels = [(k, m[k]) for k in ("aspect", "short_side", "resolution", "fps") if m.get(k)]
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(9, 2.4), squeeze=False)
    for ax, (name, items) in zip(axes[0], panels, strict=True):
        _barh(ax, [(str(x["value"]), x["clips"]) for x in items], name, "#8172b3")
    fig.tight_layout()
    return chart(fig, "clip aspect ratio, short side, resolution and frame rate")


def sources_chart(s: dict) -> str | None:
    top = s["sources"].get("top")
    if not top:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 0.8 + 0.25 * len(top)))
    _barh(
        ax,
        [(x["source_uri"], round(x["hours"] * 60, 2)) for x in top],
        "accepted minutes per source",
        "#937860",
    )
    return chart(fig, "top sources by accepted duration")


# ---------------------------------------------------------------- gallery


def _sample_ids(db: RunDb, size: int) -> dict[str, list[str]]:
    """Clip ids per gallery category: 'accepted' and one key per rejection reason."""
    out: dict[str, list[str]] = {}
    if size <= 0:
        return out
    if db.has("clips", "clip_id"):
        out[ACCEPTED] = [r[0] for r in db.rows(f"SELECT clip_id FROM clips ORDER BY clip_id LIMIT {size}")]
    if db.has("rejected", "clip_id", "reject_reason"):
        per = max(1, size // 4)
        # min_by(x, x, n) is a bounded top-n per group: memory does not grow with the table
        for reason, ids in db.rows(
            f"SELECT reject_reason, min_by(clip_id, clip_id, {per}) FROM rejected GROUP BY 1 ORDER BY 1"
        ):
            out[f"{REJECTED}:{reason}"] = sorted(ids)
    return out


def _gallery_rows(db: RunDb, table: str, ids: list[str]) -> list[dict]:
    """The sampled rows' scalar columns plus their file and row number (for the media read)."""
    if not ids:
        return []
    types = db.run.columns[table]
    media = {"frames_jpeg", "clip_mp4", "preview_jpeg", "latent", "text_emb"}
    cols = [
        c
        for c in types
        if c not in media and not str(types[c]).startswith(("list", "large_list", "binary", "large_binary"))
    ]
    idlist = ", ".join("'" + i.replace("'", "''") + "'" for i in ids)
    src = db.source(table, virtual=True)
    sel = ", ".join(_q(c) for c in cols)
    rows = db.rows(
        f"SELECT {sel}, filename, file_row_number FROM {src} WHERE clip_id IN ({idlist}) ORDER BY clip_id"
    )
    names = [*cols, "_file", "_row"]
    return [dict(zip(names, r, strict=True)) for r in rows]


def _sprite(frames: list[bytes] | None, preview: bytes | None) -> tuple[str, int, int, int] | None:
    """(base64 JPEG strip, frame width, frame height, frames), or None when the clip has no picture."""
    from PIL import Image

    jpegs = [f for f in (frames or []) if f] or ([preview] if preview else [])
    if not jpegs:
        return None
    if len(jpegs) > SPRITE_MAX_FRAMES:
        step = len(jpegs) / SPRITE_MAX_FRAMES
        jpegs = [jpegs[int(i * step)] for i in range(SPRITE_MAX_FRAMES)]
    images = []
    for b in jpegs:
        try:
            with Image.open(io.BytesIO(b)) as im:
                images.append(im.convert("RGB"))
        except OSError:  # a damaged JPEG: skip the frame, keep the card
            continue
    if not images:
        return None
    w0, h0 = images[0].size
    h = SPRITE_HEIGHT
    w = max(2, round(w0 * h / h0))
    strip = Image.new("RGB", (w * len(images), h))
    for i, im in enumerate(images):
        strip.paste(im.resize((w, h), Image.BILINEAR), (i * w, 0))
    buf = io.BytesIO()
    strip.save(buf, format="JPEG", quality=SPRITE_QUALITY, optimize=True)
    return base64.b64encode(buf.getvalue()).decode(), w, h, len(images)


def _attach_sprites(rows: list[dict]) -> None:
    """Read frames_jpeg / preview_jpeg only for the row groups that hold sampled rows, one at a time."""
    by_file: dict[str, list[dict]] = {}
    for r in rows:
        by_file.setdefault(r["_file"], []).append(r)
    for name, wanted in by_file.items():
        path = storage.from_duckdb_path(name)  # DuckDB names S3 files vss3://
        try:
            _read_media(path, wanted)
        except (OSError, ValueError, pa.ArrowException) as e:
            raise RunError(f"{path}: unreadable Parquet file ({e})") from None


def _read_media(path: str, wanted: list[dict]) -> None:
    """Sprites for ``wanted`` rows of one file: only their row groups' picture columns are read."""
    pf = storage.open_parquet(path)
    cols = [c for c in ("frames_jpeg", "preview_jpeg") if c in pf.schema_arrow.names]
    starts = [0]
    for i in range(pf.num_row_groups):
        starts.append(starts[-1] + pf.metadata.row_group(i).num_rows)
    by_group: dict[int, list[dict]] = {}
    for r in wanted:
        g = bisect.bisect_right(starts, r["_row"]) - 1
        by_group.setdefault(g, []).append(r)
    for g, members in sorted(by_group.items()):
        batch = pf.read_row_group(g, columns=cols) if cols else None
        for r in members:
            i = r["_row"] - starts[g]
            frames = batch.column("frames_jpeg")[i].as_py() if "frames_jpeg" in cols else None
            preview = batch.column("preview_jpeg")[i].as_py() if "preview_jpeg" in cols else None
            r["_sprite"] = _sprite(frames, preview)
        del batch  # one row group's JPEGs in memory at a time


def _card(i: int, r: dict, status: str, scores: list[str], captions: list[str], models: list[str]) -> str:
    sprite = r.get("_sprite")
    if sprite:
        data, w, h, n = sprite
        anim = f"animation-duration:{0.7 * n:.1f}s;animation-timing-function:steps({n})" if n > 1 else ""
        thumb = (
            f'<div class="thumb" style="width:{w}px;height:{h}px">'
            f'<img class="sprite" alt="frames of the clip" width="{w * n}" height="{h}" loading="lazy" '
            f'style="{anim}" src="data:image/jpeg;base64,{data}"></div>'
        )
    else:
        thumb = '<div class="thumb none">no frames stored</div>'
    if status == ACCEPTED:
        badge = '<span class="badge ok">accepted</span>'
    else:
        badge = (
            f'<span class="badge rej">rejected</span> <span class="reason">'
            f"{esc(r.get('reject_stage'))}/{esc(r.get('reject_reason'))}</span>"
        )
    fake = [c[: -len("_random_weights")] for c, v in r.items() if c.endswith("_random_weights") and v is True]
    if fake:  # DESIGN: output of random-weight test models is never presented as the real thing
        badge += f' <span class="badge rej">random-weight {esc(", ".join(fake))}</span>'
    dims = " · ".join(
        x
        for x in (
            f"{r['width']}x{r['height']}" if r.get("width") else "",
            f"{r['duration_s']:.2f} s" if r.get("duration_s") else "",
            f"{r['fps']:.3g} fps" if r.get("fps") else "",
        )
        if x
    )
    span = ""
    if r.get("start_s") is not None and r.get("end_s") is not None:
        span = f" [{r['start_s']:.2f}–{r['end_s']:.2f} s]"
    caps = (
        "".join(f'<dt>{esc(c)}</dt><dd class="caption">{esc(r.get(c))}</dd>' for c in captions if r.get(c))
        or '<dd class="nocap">no caption</dd>'
    )
    sc = "".join(f"<span><b>{esc(c)}</b> {esc(fmt(r.get(c)))}</span>" for c in scores if r.get(c) is not None)
    mods = "".join(f"<li>{esc(c)}: {esc(r.get(c))}</li>" for c in models if r.get(c))
    detail = f'<p class="detail">{esc(r.get("reject_detail"))}</p>' if r.get("reject_detail") else ""
    dup = f'<p class="detail">duplicate of {esc(r.get("dup_of"))}</p>' if r.get("dup_of") else ""
    return (
        f'<article class="card" data-i="{i}">{thumb}<div class="meta">{badge} '
        f'<span class="dims">{esc(dims)}</span></div><p class="src" title="{esc(r.get("source_uri"))}">'
        f"{esc(_short(str(r.get('source_uri') or ''), 60))}"
        f"{esc(span)}</p><dl>{caps}</dl>{detail}{dup}"
        f'<div class="scores">{sc}</div>{f"<ul class=models>{mods}</ul>" if mods else ""}</article>'
    )


def gallery(run_path: str | Path, gallery_size: int) -> tuple[str, list[dict], dict]:
    """(cards HTML, per-card data for the page script, sampling note data)."""
    run = open_run(run_path)
    db = RunDb(run)
    try:
        ids = _sample_ids(db, gallery_size)
        acc = _gallery_rows(db, "clips", ids.get(ACCEPTED, []))
        rej = _gallery_rows(db, "rejected", [i for k, v in ids.items() if k != ACCEPTED for i in v])
    finally:
        db.con.close()
    _attach_sprites(acc)
    _attach_sprites(rej)
    scores = list(dict.fromkeys(score_columns(run.columns["clips"]) + score_columns(run.columns["rejected"])))
    captions = list(
        dict.fromkeys(caption_columns(run.columns["clips"]) + caption_columns(run.columns["rejected"]))
    )
    models = model_columns(run.columns["clips"])
    cards, data = [], []
    for status, rows in ((ACCEPTED, acc), (REJECTED, rej)):
        for r in rows:
            i = len(data)
            cards.append(_card(i, r, status, scores, captions, models))
            data.append(
                {
                    "status": status,
                    "reason": r.get("reject_reason") or "",
                    "id": r["clip_id"],
                    "s": {c: r.get(c) for c in scores if isinstance(r.get(c), int | float)},
                }
            )
    note = {
        "shown_accepted": len(acc),
        "total_accepted": run.rows["clips"],
        "shown_rejected": len(rej),
        "total_rejected": run.rows["rejected"],
        "scores": scores,
        "reasons": sorted({d["reason"] for d in data if d["reason"]}),
    }
    return "".join(cards), data, note


# ---------------------------------------------------------------- the page


def _sections(s: dict, comparison: dict | None) -> list[tuple[str, str, str]]:
    """(anchor, title, html) per report section."""
    f = s["funnel"]
    out = []
    tiles = [
        ("input videos", fmt(f.get("input_videos"))),
        ("input duration", hours(f.get("input_hours"))),
        ("accepted clips", fmt(f.get("accepted_clips"))),
        ("accepted duration", hours(f.get("accepted_hours"))),
        ("rejected clips", fmt(f.get("rejected_clips"))),
    ]
    tiles_html = "".join(f'<div class="tile"><b>{esc(v)}</b><span>{esc(k)}</span></div>' for k, v in tiles)
    checks = table(
        ["check", "ok", "detail"], [[c["check"], c["ok"], c["detail"]] for c in s["checks"]], "checks"
    )
    out.append(("funnel", "Funnel", f'<div class="tiles">{tiles_html}</div>{funnel_chart(s)}{checks}'))
    rej = s["rejections"]
    body = rejection_chart(s) or "<p>Nothing was rejected.</p>"
    if rej["videos"]:
        body += table(
            ["video rejected: reason", "videos"], [[x["reason"], x["videos"]] for x in rej["videos"]]
        )
    if rej["clips"]:
        body += table(
            ["clip rejected: stage", "reason", "clips", "duration"],
            [[x["stage"], x["reason"], x["clips"], hours(x["hours"])] for x in rej["clips"]],
        )
    out.append(("rejections", "Rejections", body))
    acc, rejs = s["scores"]["accepted"], s["scores"]["rejected"]
    grid = histogram_grid(
        {c: (acc.get(c), rejs.get(c)) for c in dict.fromkeys([*acc, *rejs])},
        "score histograms, accepted and rejected clips",
    )
    qcols = ["count", "nulls", "mean", "min", "p1", "p5", "p25", "p50", "p75", "p95", "p99", "max"]
    body = grid or "<p>No score columns in this run.</p>"
    for which, d in (("accepted", acc), ("rejected", rejs)):
        if d:
            body += f"<h3>{which} clips</h3>" + table(
                ["column", *qcols], [[c, *(v.get(k) for k in qcols)] for c, v in d.items()]
            )
    body += (
        f'<p class="note">Quantiles are {esc(s["run"]["quantiles"])}; histogram tails beyond the 0.5th '
        "and 99.5th percentiles are counted in the edge bins.</p>"
    )
    out.append(("scores", "Scores", body))
    body = media_chart(s) or "<p>No media columns.</p>"
    out.append(("media", "Duration, resolution, aspect, frame rate", body))
    caps = s["captions"]
    if caps:
        grid = histogram_grid(
            {f"{c}: words": (d["words"], None) for c, d in caps.items()}, "caption length in words"
        )
        body = (grid or "") + table(
            ["column", "present", "missing or empty", "mean chars", "words p5", "p50", "p95"],
            [
                [
                    c,
                    d["present"],
                    d["missing_or_empty"],
                    d["mean_chars"],
                    *((d["words"] or {}).get(k) for k in ("p5", "p50", "p95")),
                ]
                for c, d in caps.items()
            ],
        )
    else:
        body = "<p>No caption columns in this run.</p>"
    if s["flags"]:
        body += "<h3>QA flags</h3>" + table(
            ["column", "counts"],
            [[c, ", ".join(f"{k}: {fmt(v)}" for k, v in d.items())] for c, d in s["flags"].items()],
        )
    if s["categories"]:
        body += "<h3>Categorical columns</h3>" + table(
            ["column", "distinct", "top values"],
            [[c, d["distinct"], top_values(d["top"])] for c, d in s["categories"].items()],
        )
    out.append(("captions", "Captions, flags and categories", body))
    body = table(["kind", "count"], [[k, v] for k, v in s["duplicates"].items()]) if s["duplicates"] else ""
    src = s["sources"]
    if src.get("top"):
        body += f"<p>{esc(fmt(src['sources']))} sources contribute accepted clips.</p>" + (
            sources_chart(s) or ""
        )
        body += table(
            ["source", "clips", "duration"],
            [[x["source_uri"], x["clips"], hours(x["hours"])] for x in src["top"]],
        )
    lic = s.get("licences") or {}
    clips, videos = lic.get("clips") or {}, lic.get("videos") or {}
    if clips or videos:
        body += "<h3>Licences (input list)</h3>" + table(
            ["licence", "accepted clips", "videos"],
            [[k, clips.get(k, 0), videos.get(k, 0)] for k in sorted(set(clips) | set(videos))],
        )
    out.append(("sources", "Duplicates, sources and licences", body or "<p>No clips.</p>"))
    m = s["models"]
    rows = [[c, top_values(d["top"])] for c, d in m["columns"].items()]
    rows += [[f"manifest: {k}", v if isinstance(v, str) else json.dumps(v)] for k, v in m["manifest"].items()]
    body = table(["column", "written by"], rows) if rows else "<p>No model wrote any column of this run.</p>"
    if any(k.endswith("random_weights") and v is True for k, v in m["manifest"].items()):
        body = '<p class="warn">Some columns were written by random-weight test models.</p>' + body
    if s["stage_seconds"]:
        body += table(["stage", "seconds (sum over videos)"], [[k, v] for k, v in s["stage_seconds"].items()])
    out.append(("models", "Models and timing", body))
    if comparison:
        c = comparison
        body = f"<p>A = <code>{esc(c['a'])}</code>, B = <code>{esc(c['b'])}</code></p>"
        body += table(
            ["count", "A", "B", "B − A"], [[x["name"], x["a"], x["b"], x["delta"]] for x in c["counts"]]
        )
        body += table(
            ["rejection", "A", "B", "B − A"],
            [[x["reason"], x["a"], x["b"], x["delta"]] for x in c["reasons"]],
        )
        body += table(
            SCORE_SHIFT_HEADER,
            score_shift_rows(c),
        )
        out.append(("compare", "Comparison", body))
    return out


def _gallery_section(cards: str, note: dict) -> str:
    opts = [
        '<option value="all">all</option>',
        f'<option value="{ACCEPTED}">accepted</option>',
        f'<option value="{REJECTED}">rejected (any reason)</option>',
    ]
    opts += [f'<option value="reason:{esc(r)}">rejected: {esc(r)}</option>' for r in note["reasons"]]
    sorts = ['<option value="id">clip id</option>']
    for c in note["scores"]:
        sorts += [
            f'<option value="{esc(c)}:desc">{esc(c)} ↓</option>',
            f'<option value="{esc(c)}:asc">{esc(c)} ↑</option>',
        ]
    shown = (
        f"Showing a sample of {fmt(note['shown_accepted'])} of {fmt(note['total_accepted'])} accepted and "
        f"{fmt(note['shown_rejected'])} of {fmt(note['total_rejected'])} rejected clips (lowest clip ids per "
        "category, a uniform sample; `--gallery N` changes the size)."
    )
    return (
        f'<p class="note">{esc(shown)}</p><div class="controls">'
        f'<label>show <select id="filter">{"".join(opts)}</select></label> '
        f'<label>sort by <select id="sort">{"".join(sorts)}</select></label> '
        '<label>caption contains <input id="search" type="search"></label> '
        '<button id="prev" type="button">‹ prev</button> <span id="page"></span> '
        '<button id="next" type="button">next ›</button> <span id="count"></span></div>'
        f'<div id="gallery">{cards}</div>'
    )


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#20232a;color:#eee;padding:12px 24px}header h1{margin:0;font-size:20px}
header code{color:#9cf}nav a{color:#9cf;margin-right:12px}main{padding:0 24px 48px;max-width:1400px}
section{background:#fff;border:1px solid #ddd;border-radius:6px;margin:16px 0;padding:8px 16px}
h2{font-size:17px}h3{font-size:14px;margin:12px 0 4px}
table{border-collapse:collapse;margin:8px 0;font-size:12px}
td,th{border:1px solid #e3e3e3;padding:2px 6px;text-align:right}
td:first-child,th:first-child{text-align:left}.checks td:nth-child(2){font-weight:bold}
img.chart{max-width:100%;display:block;margin:8px 0}.note{color:#666;font-size:12px}
.warn{color:#fff;background:#b03a2e;padding:4px 8px;border-radius:4px;display:inline-block}
.tiles{display:flex;gap:12px;flex-wrap:wrap}.tile{background:#f0f4fa;border-radius:6px;padding:8px 14px}
.tile b{display:block;font-size:20px}.tile span{color:#555;font-size:12px}
.controls{position:sticky;top:0;background:#fff;padding:6px 0;z-index:1}
#gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(290px,1fr));gap:10px}
.card{border:1px solid #ddd;border-radius:6px;padding:6px;background:#fff;overflow:hidden}
.card[hidden]{display:none}.thumb{overflow:hidden;background:#000;max-width:100%}
.thumb.none{color:#aaa;height:96px;width:170px;display:flex;align-items:center;justify-content:center}
.sprite{display:block;max-width:none;animation-name:play;animation-iteration-count:infinite}
@keyframes play{to{transform:translateX(-100%)}}
@media (prefers-reduced-motion:reduce){.sprite{animation:none}}
.badge{border-radius:3px;padding:0 5px;color:#fff;font-size:11px}.ok{background:#3a7d44}
.rej{background:#b03a2e}
.reason{font-family:monospace;font-size:11px}.dims,.src,.detail{color:#555;font-size:11px}
.src{word-break:break-all;margin:2px 0}dl{margin:4px 0}dt{font-size:10px;color:#888}
dd{margin:0 0 4px;font-size:12px;white-space:pre-wrap;word-break:break-word}.nocap{color:#aaa}
.scores{font-size:11px;display:grid;grid-template-columns:1fr 1fr;gap:0 8px}
.scores b{font-weight:normal;color:#777}
.models{font-size:10px;color:#666}
"""

JS = """
(() => {
  const data = JSON.parse(document.getElementById('gallery-data').textContent);
  const cards = Array.from(document.querySelectorAll('#gallery .card'));
  const grid = document.getElementById('gallery');
  const $ = (id) => document.getElementById(id);
  const PAGE = __PAGE_SIZE__;
  let page = 0;
  function selected() {
    const f = $('filter').value, q = $('search').value.trim().toLowerCase();
    let idx = data.map((_, i) => i).filter((i) => {
      const d = data[i];
      if (f === 'accepted' && d.status !== 'accepted') return false;
      if (f === 'rejected' && d.status !== 'rejected') return false;
      if (f.startsWith('reason:') && d.reason !== f.slice(7)) return false;
      if (q) {
        const caps = Array.from(cards[i].querySelectorAll('.caption')).map((e) => e.textContent).join(' ');
        if (!caps.toLowerCase().includes(q)) return false;
      }
      return true;
    });
    const s = $('sort').value;
    if (s === 'id') idx.sort((a, b) => (data[a].id < data[b].id ? -1 : 1));
    else {
      const k = s.slice(0, s.lastIndexOf(':')), dir = s.endsWith(':asc') ? 1 : -1;
      const v = (i) => (k in data[i].s ? data[i].s[k] : null);
      idx.sort((a, b) => {
        const x = v(a), y = v(b);
        if (x === null) return y === null ? 0 : 1;
        if (y === null) return -1;
        return dir * (x - y);
      });
    }
    return idx;
  }
  function render() {
    const idx = selected();
    const pages = Math.max(1, Math.ceil(idx.length / PAGE));
    page = Math.min(page, pages - 1);
    const visible = new Set(idx.slice(page * PAGE, (page + 1) * PAGE));
    for (const i of idx) grid.appendChild(cards[i]);
    cards.forEach((c, i) => { c.hidden = !visible.has(i); });
    $('page').textContent = 'page ' + (page + 1) + ' of ' + pages;
    $('count').textContent = idx.length + ' clips match';
    $('prev').disabled = page === 0;
    $('next').disabled = page >= pages - 1;
  }
  $('filter').addEventListener('change', () => { page = 0; render(); });
  $('sort').addEventListener('change', () => { page = 0; render(); });
  $('search').addEventListener('input', () => { page = 0; render(); });
  $('prev').addEventListener('click', () => { page -= 1; render(); });
  $('next').addEventListener('click', () => { page += 1; render(); });
  render();
})();
""".replace("__PAGE_SIZE__", str(PAGE_SIZE))


def render_report(
    stats: dict, cards: str, gallery_data: list[dict], note: dict, comparison: dict | None
) -> str:
    sections = _sections(stats, comparison)
    sections.append(("clip-gallery", "Clip gallery", _gallery_section(cards, note)))
    digest = base64.b64encode(hashlib.sha256(JS.encode()).digest()).decode()
    # only our script (by hash) may run, nothing may load from the network: a second line of defence
    csp = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"
    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t, _ in sections)
    body = "".join(f'<section id="{a}"><h2>{esc(t)}</h2>{h}</section>' for a, t, h in sections)
    run = stats["run"]
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">'
        f"<title>vidsift report: {esc(run['path'])}</title><style>{CSS}</style></head><body>"
        f"<header><h1>vidsift report</h1><p>run <code>{esc(run['path'])}</code> · schema "
        f"{esc(fmt(run['schema_version']))} · {esc(fmt(run['groups_done']))} groups done</p>"
        f"<nav>{nav}</nav></header>"
        f"<main>{body}</main>"
        f'<script type="application/json" id="vidsift-stats">{script_json(stats)}</script>'
        f'<script type="application/json" id="gallery-data">{script_json(gallery_data)}</script>'
        f"<script>{JS}</script></body></html>\n"
    )


def write_report(
    run_path: str | Path,
    stats: dict,
    html_path: str | Path,
    *,
    comparison: dict | None = None,
    gallery_size: int = 120,
) -> Path:
    cards, data, note = gallery(run_path, gallery_size)
    text = render_report(stats, cards, data, note, comparison)
    path = Path(html_path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
