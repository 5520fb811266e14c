from pathlib import Path

import pytest

from vidsift.pipeline.schema import CLIP_COLUMNS, CLIP_SCHEMA, REJECT_COLUMNS, VIDEO_COLUMNS, table_from_rows

DOC = (Path(__file__).resolve().parents[2] / "docs" / "schema.md").read_text()


@pytest.mark.parametrize("column", [c.name for c in CLIP_COLUMNS + REJECT_COLUMNS + VIDEO_COLUMNS])
def test_every_column_is_documented(column):
    assert f"| `{column}` |" in DOC


def test_rows_become_exactly_the_schema():
    table = table_from_rows([{"clip_id": "a", "video_id": "v", "source_uri": "s", "group": "g"}], CLIP_SCHEMA)
    assert table.schema.equals(CLIP_SCHEMA, check_metadata=True)
    assert table.column("width").null_count == 1
    with pytest.raises(KeyError, match="not in the schema"):
        table_from_rows([{"clip_id": "a", "colour": 1}], CLIP_SCHEMA)
