"""The one progress display of vidsift's long commands (curate, select, export, encode): a rich bar with
the command's name, done/total of its unit, its own counters and the elapsed time, on stderr, so stdout
keeps a command's result. ``quiet`` shows nothing."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def progress_bar(
    name: str, unit: str, counters: str = "", console: Console | None = None, quiet: bool = False
):
    """A ``rich.progress.Progress`` in curate's look. ``counters`` is a template over the task's fields,
    e.g. ``"{task.fields[clips]} clips"``; pass those fields to ``add_task``."""
    columns = [TextColumn(f"[bold]{name}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit)]
    if counters:
        columns.append(TextColumn(counters))
    columns.append(TimeElapsedColumn())
    return Progress(*columns, console=console or Console(stderr=True, quiet=quiet), transient=False)
