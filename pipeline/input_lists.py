"""Input lists: ``--input list.csv|list.jsonl|list.parquet``, one row per video, and ``source_meta``.

A list has a ``uri`` column (a local path, relative paths resolved against the list's folder; an
``s3://`` URI; or an ``http(s)://`` URL, fetched with a size and a time limit). Every other column
of a row is carried into every clip (and the video row) of that video as ``source_meta``: one JSON
object, stored as a string column (see ``docs/schema.md``).
"""

from __future__ import annotations

import json

LICENCE_KEYS = ("licence", "license")  # the British spelling is the documented one; both are counted


def licence_of(source_meta: str | None) -> str | None:
    """The ``licence`` value of a clip's ``source_meta`` JSON, or None."""
    if not source_meta:
        return None
    try:
        meta = json.loads(source_meta)
    except json.JSONDecodeError:
        return None
    if not isinstance(meta, dict):
        return None
    for key in LICENCE_KEYS:
        if meta.get(key) not in (None, ""):
            return str(meta[key])
    return None
