"""``vidsift export``: a finished run's accepted clips in the layouts other trainers read.

- ``webdataset``: ``shard-NNNNNN.tar`` files of ``{clip_id}.mp4``, ``{clip_id}.json`` (every
  non-binary column of the clip row, ``source_meta`` decoded to an object) and ``{clip_id}.txt``
  (the caption), ``--shard-size`` clips per tar.
- ``videofolder``: ``videos/NNNNNN/{clip_id}.mp4`` plus ``metadata.jsonl`` with ``file_name`` and
  every non-binary column, the Hugging Face ``videofolder`` layout
  (``datasets.load_dataset("videofolder", data_dir=DIR)``), and ``metadata.csv`` with
  ``video,caption`` beside it for trainers that read that (DiffSynth-Studio style).
- ``hf``: a ``datasets`` dataset saved with ``save_to_disk`` (``datasets.load_from_disk``): a
  ``video`` column of feature ``datasets.Video`` holding the MP4 bytes, and every non-binary column.

Every export also writes ``clip_ids.txt`` (one id per line, in export order), ``export.json``
(format, source, filter, counts, what was skipped and why) and a dataset card ``README.md``
(recipe, counts, licences). The run is read one Parquet batch at a time (``BATCH_ROWS`` rows, only
the columns exported), so memory stays flat whatever its size; the run may be local or ``s3://``,
the output is a local folder. ``--where`` is ``vidsift select``'s expression language.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from vidsift.pipeline import storage
from vidsift.pipeline.input_lists import licence_of

FORMATS = ("webdataset", "videofolder", "hf")
BATCH_ROWS = 16  # clip rows per Parquet read: a batch holds this many MP4s in memory
MEDIA_COLUMN = "clip_mp4"
DEFAULT_SHARD_SIZE = 1000


class ExportError(ValueError):
    """A bad run folder, output or option, with a message for the user."""


def _is_binary(t: pa.DataType) -> bool:
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _is_binary(t.value_type)
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)


@dataclass
class ClipSource:
    """The clip files of a finished run, their exported columns and row counts (footers only)."""

    run: str
    files: list[str]
    schema: pa.Schema  # the exported non-binary columns, unified over every file
    rows: int
    manifest: dict
    recipe_toml: str

    @classmethod
    def open(cls, run: str) -> ClipSource:
        manifest_path = storage.join(run, "manifest.json")
        try:
            manifest = json.loads(storage.read_text(manifest_path))
        except (FileNotFoundError, OSError):
            raise ExportError(f"{run} is not a finished vidsift run (no manifest.json)") from None
        except json.JSONDecodeError as e:
            raise ExportError(f"{manifest_path}: not valid JSON ({e.msg})") from None
        toml_path = storage.join(run, "recipe.resolved.toml")
        recipe_toml = storage.read_text(toml_path) if storage.exists(toml_path) else ""
        files = storage.parquet_files(storage.join(run, "clips"))
        schemas, rows = [], 0
        for f in files:
            meta = storage.read_parquet_metadata(f)
            rows += meta.num_rows
            schemas.append(meta.schema.to_arrow_schema())
        fields: dict[str, pa.Field] = {}
        for s in schemas:
            for f in s:
                if not _is_binary(f.type) and f.name not in fields:
                    fields[f.name] = f.remove_metadata()
        if "clip_id" not in fields:
            raise ExportError(f"{run}: its clip files have no clip_id column")
        return cls(run, files, pa.schema(list(fields.values())), rows, manifest, recipe_toml)

    def batches(self) -> Iterator[tuple[list[dict], int]]:
        """``(rows, rows read)`` per Parquet batch: the exported columns plus ``clip_mp4``."""
        for path in self.files:
            pf = storage.open_parquet(path)
            have = set(pf.schema_arrow.names)
            columns = [c for c in self.schema.names if c in have]
            columns += [MEDIA_COLUMN] if MEDIA_COLUMN in have else []
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=columns):
                yield batch.to_pylist(), batch.num_rows


def _json_value(v: object) -> object:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/inf
    if isinstance(v, list):
        return [_json_value(x) for x in v]
    return v


def metadata_of(row: dict, names: list[str], decode_meta: bool) -> dict:
    """The clip's non-binary columns as JSON values; ``source_meta`` decoded when ``decode_meta``."""
    out = {n: _json_value(row.get(n)) for n in names}
    if decode_meta and out.get("source_meta"):
        out["source_meta"] = json.loads(out["source_meta"])
    return out


@dataclass
class ExportResult:
    format: str
    source: str
    output: str
    where: str | None
    shard_size: int
    rows_read: int = 0
    clips: int = 0
    seconds: float = 0.0  # summed clip durations
    files: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> clips not exported
    licences: Counter = field(default_factory=Counter)  # licence -> clips

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "source": self.source,
            "where": self.where,
            "shard_size": self.shard_size,
            "rows_read": self.rows_read,
            "clips": self.clips,
            "hours": round(self.seconds / 3600, 6),
            "skipped": dict(sorted(self.skipped.items())),
            "licences": dict(sorted(self.licences.items())),
            "files": self.files,
        }


class _Writer:
    """One export format: ``add`` one clip at a time, ``close`` at the end."""

    def __init__(self, out: Path, names: list[str], shard_size: int, source: ClipSource) -> None:
        self.out, self.names, self.shard_size, self.source = out, names, shard_size, source
        self.files: list[str] = []
        self.count = 0

    def add(self, row: dict, mp4: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class WebDatasetWriter(_Writer):
    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.tar: tarfile.TarFile | None = None
        self.tmp = self.final = ""

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0  # mtime 0: the same run exports the same bytes
        self.tar.addfile(info, io.BytesIO(data))

    def add(self, row: dict, mp4: bytes) -> None:
        if self.count % self.shard_size == 0:
            self._finish_shard()
            name = f"shard-{self.count // self.shard_size:06d}.tar"
            self.final, self.tmp = str(self.out / name), str(self.out / f".{name}.tmp")
            self.tar = tarfile.open(self.tmp, "w", format=tarfile.USTAR_FORMAT)
            self.files.append(name)
        key = row["clip_id"]  # 32 hex digits: no dot, so webdataset's key/extension split is unambiguous
        self._member(f"{key}.mp4", mp4)
        meta = json.dumps(metadata_of(row, self.names, decode_meta=True), ensure_ascii=False)
        self._member(f"{key}.json", meta.encode())
        self._member(f"{key}.txt", (row.get("caption") or "").encode())
        self.count += 1

    def _finish_shard(self) -> None:
        if self.tar is not None:
            self.tar.close()
            os.replace(self.tmp, self.final)  # a reader never sees half a shard
            self.tar = None

    def close(self) -> None:
        self._finish_shard()


class VideoFolderWriter(_Writer):
    """``train/videos/NNNNNN/{clip_id}.mp4`` and ``train/metadata.jsonl`` (the split folder keeps the
    loader from reading ``metadata.csv``: two metadata files of different formats in one split are an
    error in ``datasets``), and ``metadata.csv`` (``video,caption``) at the top."""

    SPLIT = "train"

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.split = self.out / self.SPLIT
        self.split.mkdir()
        self.jsonl = open(self.split / ".metadata.jsonl.tmp", "w", encoding="utf-8")  # noqa: SIM115
        self.csv_file = open(self.out / ".metadata.csv.tmp", "w", encoding="utf-8", newline="")  # noqa: SIM115
        self.csv = csv.writer(self.csv_file)
        self.csv.writerow(["video", "caption"])

    def add(self, row: dict, mp4: bytes) -> None:
        folder = f"videos/{self.count // self.shard_size:06d}"
        rel = f"{folder}/{row['clip_id']}.mp4"
        if self.count % self.shard_size == 0:
            (self.split / folder).mkdir(parents=True)
            self.files.append(f"{self.SPLIT}/{folder}")
        (self.split / rel).write_bytes(mp4)
        # source_meta stays a JSON string here: every line must have the same columns and types
        meta = metadata_of(row, self.names, decode_meta=False)
        self.jsonl.write(json.dumps({"file_name": rel, **meta}, ensure_ascii=False) + "\n")
        self.csv.writerow([f"{self.SPLIT}/{rel}", row.get("caption") or ""])
        self.count += 1

    def close(self) -> None:
        files = ((self.jsonl, self.split, "metadata.jsonl"), (self.csv_file, self.out, "metadata.csv"))
        for f, folder, name in files:
            f.close()
            os.replace(folder / f".{name}.tmp", folder / name)
        self.files += [f"{self.SPLIT}/metadata.jsonl", "metadata.csv"]


class HfWriter(_Writer):
    """Rows go through ``datasets``' own ``ArrowWriter`` (``BATCH_ROWS`` rows per Arrow batch) into one
    Arrow file in a cache folder inside the output; ``save_to_disk`` then shards it into ``data/`` and the
    cache is removed. The ``video`` column is a ``datasets.Video`` feature holding the MP4 bytes."""

    def features(self):
        import datasets

        schema = self.source.schema
        # a column with no value in any file is null-typed: datasets stores it as a string column
        fields = [pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in schema]
        features = datasets.Features.from_arrow_schema(pa.schema(fields))
        return datasets.Features({"video": datasets.Video(), **features})

    def run(self, rows: Iterator[tuple[dict, bytes]]) -> None:
        import datasets
        from datasets.arrow_writer import ArrowWriter

        datasets.disable_progress_bars()  # one progress display: ours
        cache = self.out / ".cache"
        cache.mkdir()
        features = self.features()
        names = [n for n in features if n != "video"]
        arrow = cache / "clips.arrow"
        with ArrowWriter(features=features, path=str(arrow), writer_batch_size=BATCH_ROWS) as w:
            for row, mp4 in rows:
                video = {"bytes": mp4, "path": f"{row['clip_id']}.mp4"}  # the path names the format
                w.write({"video": video, **{n: row.get(n) for n in names}})
                self.count += 1
            w.finalize()
        ds = datasets.Dataset.from_file(str(arrow))
        ds.save_to_disk(str(self.out / "data"), num_shards=max(1, math.ceil(self.count / self.shard_size)))
        del ds
        shutil.rmtree(cache, ignore_errors=True)
        self.files = ["data"]


WRITERS = {"webdataset": WebDatasetWriter, "videofolder": VideoFolderWriter, "hf": HfWriter}


def _prepare_output(output: str) -> Path:
    if storage.is_remote(output):
        raise ExportError(
            f"--output {output}: export writes to a local folder (copy it to a bucket afterwards, "
            "e.g. with `aws s3 sync`)"
        )
    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--output {output} exists and is not an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def export_run(
    run: str,
    fmt: str,
    output: str,
    where: str | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    quiet: bool = False,
) -> ExportResult:
    """Export the accepted clips of ``run`` (local or ``s3://``) that pass ``where`` to ``output``."""
    from rich.console import Console
    from rich.progress import Progress

    from vidsift.pipeline.progress import progress_bar

    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if shard_size < 1:
        raise ExportError(f"--shard-size must be >= 1, got {shard_size}")
    predicate = _predicate(where)
    if fmt == "hf":
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise ExportError("--format hf needs the `datasets` package: pip install datasets") from None
    if storage.is_remote(run):
        os.environ.update(storage.s3_environment())
    source = ClipSource.open(str(run))
    out = _prepare_output(output)
    result = ExportResult(fmt, str(run), str(out), where, shard_size)
    names = source.schema.names
    writer = WRITERS[fmt](out, names, shard_size, source)
    console = Console(stderr=True, quiet=quiet)
    ids = open(out / ".clip_ids.txt.tmp", "w", encoding="utf-8")  # noqa: SIM115

    def selected(progress: Progress, task) -> Iterator[tuple[dict, bytes]]:
        for rows, n in source.batches():
            result.rows_read += n
            for row in rows:
                mp4 = row.pop(MEDIA_COLUMN, None)
                if not predicate(row):
                    result.skipped["where"] += 1
                    continue
                if not mp4:
                    result.skipped["no_clip_mp4"] += 1  # e.g. a column a later stage left empty
                    continue
                ids.write(row["clip_id"] + "\n")
                result.clips += 1
                result.seconds += row.get("duration_s") or 0.0
                result.licences[licence_of(row.get("source_meta")) or "unknown"] += 1
                yield row, mp4
            progress.update(task, advance=n, written=result.clips)

    with progress_bar(f"export {fmt}", "clips read", "{task.fields[written]} exported", console) as progress:
        task = progress.add_task("export", total=source.rows, written=0)
        rows = selected(progress, task)
        if isinstance(writer, HfWriter):
            writer.run(rows)
        else:
            for row, mp4 in rows:
                writer.add(row, mp4)
        writer.close()
    ids.close()
    os.replace(out / ".clip_ids.txt.tmp", out / "clip_ids.txt")
    result.files = writer.files + ["clip_ids.txt", "README.md", "export.json"]
    (out / "README.md").write_text(dataset_card(source, result), encoding="utf-8")
    (out / "export.json").write_text(json.dumps(result.to_dict(), indent=1) + "\n", encoding="utf-8")
    for reason, n in sorted(result.skipped.items()):
        console.print(f"export: {n} clips not exported: {reason}")
    console.print(
        f"export: {result.clips} clips ({result.seconds / 60:.2f} min) of {result.rows_read} as {fmt} "
        f"in {out}"
    )
    return result


def _predicate(where: str | None) -> Callable[[dict], bool]:
    if not where:
        return lambda row: True
    from vidsift.pipeline.select import SelectError, parse_where

    try:
        return parse_where(where)
    except SelectError as e:
        raise ExportError(str(e)) from None


def _md(text: object) -> str:
    """A value for a Markdown table cell: one line, no pipes."""
    return " ".join(str(text).replace("|", "\\|").split())


def loader_line(result: ExportResult) -> str:
    """The one line of Python that reads this export."""
    if result.format == "webdataset":
        tars = [f for f in result.files if f.endswith(".tar")]
        last = len(tars) - 1
        shards = "shard-000000.tar" if last <= 0 else f"shard-{{000000..{last:06d}}}.tar"
        return f'webdataset.WebDataset("DIR/{shards}")  # keys: mp4, json, txt'
    if result.format == "videofolder":
        return 'datasets.load_dataset("videofolder", data_dir="DIR")'
    return 'datasets.load_from_disk("DIR/data")'


def dataset_card(source: ClipSource, result: ExportResult) -> str:
    """The dataset card: YAML header, how to load it, counts, licences and the recipe."""
    counts = source.manifest.get("counts", {})
    captions = source.manifest.get("captions") or {}
    lines = [
        "---",
        "task_categories:",
        "- text-to-video",
        "tags:",
        "- vidsift",
        "---",
        "",
        "# vidsift export",
        "",
        f"Accepted clips of the vidsift run `{_md(result.source)}` as `{result.format}`"
        + (f", filtered by `{_md(result.where)}`." if result.where else "."),
        "",
        f"Load it with `{loader_line(result)}`. `clip_ids.txt` lists every clip id, so results join "
        "back to the run's scores (`clip_id` column).",
        "",
        "## Counts",
        "",
        "| | |",
        "|---|---|",
        f"| clips exported | {result.clips} |",
        f"| hours exported | {result.seconds / 3600:.4f} |",
        f"| clip rows read | {result.rows_read} |",
    ]
    lines += [f"| not exported: {_md(k)} | {v} |" for k, v in sorted(result.skipped.items())]
    for key in ("input_files", "videos_ok", "videos_rejected", "candidate_clips", "clips_accepted"):
        if key in counts:
            lines.append(f"| run: {key.replace('_', ' ')} | {counts[key]} |")
    lines += ["", "## Licences", "", "Clips by the `licence` of their source (input list column):", ""]
    lines += ["| licence | clips |", "|---|---|"]
    lines += [f"| {_md(k)} | {v} |" for k, v in sorted(result.licences.items())]
    if captions.get("random_weights"):
        lines += [
            "",
            f"**Warning:** captions of {captions.get('random_weights_rows')} clips were written by "
            "random-weight test models: they are not real captions.",
        ]
    if source.recipe_toml:
        lines += ["", "## Recipe", "", "```toml", source.recipe_toml.rstrip(), "```"]
    return "\n".join(lines) + "\n"
