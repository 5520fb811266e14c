"""The per-video part of a curation run: probe -> analyze -> split_scenes -> transcode.

These stages run fused in one task per source video so decoded frames never leave the worker.
The result is one video row plus one row per candidate clip (accepted, or rejected with
``reject_stage``/``reject_reason``/``reject_detail``): every input and every candidate is
accounted for. Per-video failures (a file FFmpeg cannot read) become data.

Failure classes of one video (docs/architecture.md, "Failure classes"):

- a bad input: a rejection with its specific reason (probe, analyze, the budgets of ``ProbeConfig``,
  ``decode_timeout`` when the analysis pass runs past its budget);
- a transient failure (storage or network unreachable, a full spool disk: ``is_transient``): the
  video is rejected as ``transient_failure`` and its group is left unfinished, so a rerun retries it;
  after ``run.transient_tries`` runs (3) the group is finished with that rejection (``vidsift curate
  --retry-failed`` runs such videos again);
- anything else raised while processing one video (a bug our code has on some input): the video is
  rejected as ``internal_error`` with the traceback in ``detail``, and the run goes on with the others.
"""

from __future__ import annotations

import errno
import hashlib
import traceback
from collections import Counter, defaultdict
from contextlib import ExitStack

import av

from vidsift.pipeline import schema, storage
from vidsift.pipeline.recipe import Recipe
from vidsift.pipeline.registry import STAGES
from vidsift.pipeline.stages.core import VideoWork, find_scenes
from vidsift.pipeline.stages.probe import probe_video

TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.EAGAIN,
                    errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.EHOSTUNREACH,
                    errno.ENETUNREACH, errno.ENETDOWN, errno.EPIPE}  # fmt: skip
# what pyarrow's S3 client says when the service, not the request, is the problem
TRANSIENT_MARKERS = ("NETWORK_CONNECTION", "SLOW_DOWN", "SERVICE_UNAVAILABLE", "INTERNAL_FAILURE",
                     "REQUEST_TIMEOUT", "THROTTLING", "Couldn't connect", "Connection refused",
                     "Connection reset", "timed out", "Timeout", "curlCode")  # fmt: skip
DETAIL_CHARS = 4000  # an internal error's traceback kept in ``detail`` (its end: where it was raised)


def is_transient(error: BaseException) -> bool:
    """True for failures that a later try may not meet: storage or network out of reach, a full disk."""
    if isinstance(error, FileNotFoundError | PermissionError | IsADirectoryError):
        return False
    if isinstance(error, ConnectionError | TimeoutError):
        return True
    if isinstance(error, OSError):
        return error.errno in TRANSIENT_ERRNOS or any(m in str(error) for m in TRANSIENT_MARKERS)
    return False


def failed_video(source_uri: str, group: str, error: BaseException, where: str) -> dict:
    """The video row of a video whose processing raised ``error``: ``transient_failure`` or
    ``internal_error`` (with the traceback)."""
    if is_transient(error):
        reason, detail = "transient_failure", f"{where}: {type(error).__name__}: {error}"
    else:
        trace = "".join(traceback.format_exception(error))
        reason, detail = "internal_error", f"{where}: {trace[-DETAIL_CHARS:]}"
    return {"source_uri": source_uri, "group": group, "num_clips_accepted": 0, "status": "rejected",
            "reason": reason, "detail": detail}  # fmt: skip


TRIES = "_tries"  # OUT/_tries/<group>: how many runs met a transient failure in that group
EXIT_INCOMPLETE = 3  # vidsift curate's exit status while groups wait for a rerun (transient failures)


def _transient_in(out: storage.Location, group: str) -> int:
    """Rows of a written group (videos and rejected clips) that failed transiently."""
    n = 0
    for table, column in (("videos", "reason"), ("rejected", "reject_reason")):
        path = storage.join(out, table, f"{group}.parquet")
        if storage.exists(path):
            n += storage.read_table(path, [column]).column(column).to_pylist().count("transient_failure")
    return n


def _delete(location: str) -> None:
    fs, path = storage.filesystem(location)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


def hold_back_transient(
    out: storage.Location, groups: list[str], tries: int = 3
) -> dict[str, tuple[int, int]]:
    """After a run: every group of ``groups`` that was written with transient failures counts one more
    try (``OUT/_tries/<group>``) and, while it has had fewer than ``tries`` (``run.transient_tries``),
    loses its completion marker so the next run of the same command does it again. Returns ``{group:
    (rows, tries so far)}`` of the groups held back."""
    done = set(storage.list_names(storage.join(out, "_done")))
    held = {}
    for group in groups:
        if group not in done:
            continue
        rows = _transient_in(out, group)
        path = storage.join(out, TRIES, group)
        if not rows:
            _delete(path)
            continue
        count = (int(storage.read_text(path)) if storage.exists(path) else 0) + 1
        if count >= tries:
            _delete(path)  # final: the rows keep reason transient_failure
            continue
        storage.makedirs(storage.join(out, TRIES))
        storage.write_text_atomic(path, f"{count}\n")
        _delete(storage.join(out, "_done", group))
        held[group] = (rows, count)
    return held


def reopen_transient(out: storage.Location) -> list[str]:
    """``vidsift curate --retry-failed``: finished groups that hold transient failures lose their
    completion marker and their try count, so this run does them again (same ids for the rest)."""
    reopened = []
    for group in sorted(storage.list_names(storage.join(out, "_done"))):
        if _transient_in(out, group):
            _delete(storage.join(out, "_done", group))
            _delete(storage.join(out, TRIES, group))
            reopened.append(group)
    return reopened


def make_clip_id(video_id: str, start_frame: int, end_frame: int) -> str:
    return hashlib.blake2b(f"{video_id}:{start_frame}:{end_frame}".encode(), digest_size=16).hexdigest()


def run_video_stages(work: VideoWork, stages: list) -> VideoWork:
    """The registry's per-video stages of ``stages`` (recipe entries), in order, over one video: a core
    stage's ``impl(config, work)``, a filter's ``impl(config, video, analysis, clips) -> clips`` (filters
    score every candidate from the analysis pass and mark, never drop, rejects). Stops once the video is
    rejected."""
    for entry in stages:
        spec = STAGES[entry.name]
        if spec.kind == "video":
            spec.impl(entry.config, work)
        elif spec.kind == "video_filter":
            work.clips = spec.impl(entry.config, work.video, work.analysis, work.clips)
        if not work.ok:
            break
    return work


def scan_video(path: str, recipe: Recipe) -> VideoWork:
    """probe + analyze + the scene search of split_scenes for one file (``vidsift scenes``, ``vidsift
    stage``); a bad file is a rejected video, not an exception."""
    av.logging.set_level(None)  # FFmpeg's own warnings about broken inputs become our reasons instead
    work = VideoWork(path, recipe, {})
    run_video_stages(work, [s for s in recipe.stages if s.name in ("probe", "analyze")])
    if work.ok:
        find_scenes(recipe.stage("split_scenes"), work)
    return work


def process_video(
    source_uri: str, group: str, recipe: Recipe, duplicate_of: str | None = None
) -> tuple[dict, list[dict]]:
    """One input file to ``(video row, candidate clip rows)``; rejected clips carry reject columns.

    ``duplicate_of`` names an earlier input with the same bytes: this one is rejected unread, since
    its clips would repeat (with the same clip ids) the clips of the first. An ``s3://`` input is
    streamed to one local spool file first (``storage.local_file``), read from there, and deleted.
    Never raises for one video: see the failure classes at the top of this module.
    """
    try:
        with ExitStack() as stack:
            try:
                path = stack.enter_context(storage.local_file(source_uri, recipe.run.spool_dir))
            except FileNotFoundError as e:
                video = {"status": "rejected", "reason": "file_not_found", "detail": str(e)}
            except OSError as e:
                if is_transient(e):
                    return failed_video(source_uri, group, e, "cannot fetch the input"), []
                video = {"status": "rejected", "reason": "unreadable", "detail": f"cannot fetch: {e}"}
            else:
                return _process_local(path, source_uri, group, recipe, duplicate_of)
    except Exception as e:  # noqa: BLE001 - one video's failure must not end the run; it is recorded
        return failed_video(source_uri, group, e, "processing failed"), []
    video.update(source_uri=source_uri, group=group, num_clips_accepted=0)
    return video, []


def _process_local(
    path: str, source_uri: str, group: str, recipe: Recipe, duplicate_of: str | None
) -> tuple[dict, list[dict]]:
    identity = {"source_uri": source_uri, "group": group, "num_clips_accepted": 0}
    if duplicate_of is not None:
        video = {**probe_video(path, recipe.stage("probe")), **identity}
        video.update(status="rejected", reason="duplicate_file", detail=f"same bytes as {duplicate_of}")
        return video, []
    av.logging.set_level(None)  # FFmpeg's own warnings about broken inputs become our reasons instead
    work = run_video_stages(VideoWork(path, recipe, identity), recipe.stages)
    if not work.ok:
        return work.video, []
    return work.video, work.clips


def account_video(video: dict, clips: list[dict]) -> dict:
    """The video row once all its clips are final: accepted count, and ``no_clip_accepted`` if none."""
    video = dict(video)
    if video["status"] != "ok" and video.get("reason") != "no_clip_accepted":
        return video
    video["num_clips_accepted"] = sum(1 for c in clips if not c.get("reject_reason"))
    if video["num_clips_accepted"]:
        video.update(status="ok", reason=None)
        return video
    reasons = Counter(f"{r['reject_stage']}/{r['reject_reason']}" for r in clips)
    summary = ", ".join(f"{k} x{n}" for k, n in sorted(reasons.items())) or "no scene found"
    video.update(
        status="rejected",
        reason="no_clip_accepted",
        detail=f"all {len(clips)} candidate clips rejected: {summary}",
    )
    return video


def account_group(videos: list[dict], clips: list[dict], rejected: list[dict]) -> list[dict]:
    """``account_video`` for every video of a group, from the group's final clip and rejected rows."""
    by_uri: dict[str, list[dict]] = defaultdict(list)
    for c in clips + rejected:
        by_uri[c["source_uri"]].append(c)
    return [account_video(v, by_uri[v["source_uri"]]) for v in videos]


REJECT_COLUMNS = tuple(c.name for c in schema.REJECT_COLUMNS)  # any clip stage may reject a clip


def call_clip_stage(stage, rows: list[dict]) -> list[dict]:
    """Run a loaded clip stage on accepted clips given as their ``stage.reads`` columns; return, per clip, the
    columns it wrote: its declared ``stage.writes`` and the reject columns, nothing else.

    A stage that changes a column it does not declare is a bug, raised here (every test that runs a stage
    checks its declaration). A clip the stage rejected because its model server could not be reached or kept
    failing (the ``openai`` backend's ``UNREACHABLE`` errors, after every retry) is a transient failure: its
    reason becomes ``transient_failure`` (the stage and the error stay), so its group is left for a rerun.
    """
    from vidsift.pipeline.backends.openai_backend import UNREACHABLE

    done = stage(rows)
    if len(done) != len(rows):
        raise RuntimeError(f"{type(stage).__name__} returned {len(done)} rows for {len(rows)}")
    allowed = (*stage.writes, *REJECT_COLUMNS)
    written = []
    for before, after in zip(rows, done, strict=True):
        undeclared = [k for k in after if k not in allowed and (k not in before or after[k] != before[k])]
        if undeclared:
            raise RuntimeError(f"{type(stage).__name__} changed columns it does not declare: {undeclared}")
        out = {k: after[k] for k in allowed if k in after}
        if out.get("reject_reason") and UNREACHABLE in (out.get("reject_detail") or ""):
            out["reject_reason"] = "transient_failure"
        written.append(out)
    return written


def apply_clip_stage(stage, rows: list[dict]) -> list[dict]:
    """``call_clip_stage`` on the accepted clip rows of ``rows`` (dicts: ``vidsift stage``, tests); other rows
    pass through. The Ray plan does the same on Arrow batches (``dataflow.run_clip_stage``)."""
    todo = [i for i, r in enumerate(rows) if r.get("clip_id") and not r.get("reject_reason")]
    if not todo:
        return rows
    written = call_clip_stage(stage, [{k: rows[i].get(k) for k in stage.reads} for i in todo])
    out = list(rows)
    for i, w in zip(todo, written, strict=True):
        out[i] = {**rows[i], **w}
    return out
