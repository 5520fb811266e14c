import tomllib
from pathlib import Path

import pytest

from vidsift.pipeline.recipe import RecipeError, build_recipe, load_recipe, parse_value

REPO = Path(__file__).resolve().parents[2]
STAGES = [{"name": n} for n in ("probe", "analyze", "split_scenes", "transcode", "write_shards")]


@pytest.mark.parametrize("name", ["quickstart", "default", "cluster"])
def test_shipped_recipes_load_and_round_trip(name):
    recipe = load_recipe(REPO / "recipes/curate" / f"{name}.toml")
    again = build_recipe(tomllib.loads(recipe.to_toml()))
    assert again == recipe
    assert [s.name for s in recipe.stages][:2] == ["probe", "analyze"]


def test_set_overrides_and_parses_values():
    r = build_recipe(
        {"stage": STAGES}, ["transcode.max_short_side=720", "transcode.preset=fast", "run.group_size=3"]
    )
    assert r.stage("transcode").max_short_side == 720 and r.stage("transcode").preset == "fast"
    assert r.run.group_size == 3
    assert parse_value("1.5") == 1.5 and parse_value("true") is True and parse_value("a b") == "a b"


@pytest.mark.parametrize(
    ("stages", "overrides", "message"),
    [
        (STAGES + [{"name": "sharpen"}], [], "unknown stage 'sharpen'"),
        ([{"name": "probe", "colour": 1}] + STAGES[1:], [], "unknown key 'colour' in stage probe"),
        (STAGES[1:], [], "lacks required stage(s): probe"),
        ([STAGES[1], STAGES[0]] + STAGES[2:], [], "must run in the order"),
        (STAGES, ["transcode.crf=99"], "stage transcode: transcode.crf must be in 0..51"),
        (STAGES, ["nosuch.key=1"], "no stage 'nosuch'"),
        (STAGES, ["noequals"], "expects stage.key=value"),
    ],
)
def test_bad_recipes_get_clear_errors(stages, overrides, message):
    with pytest.raises(RecipeError) as e:
        build_recipe({"stage": [dict(s) for s in stages]}, overrides)
    assert message in str(e.value)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[stage]\nname=")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(bad)


def test_every_stage_key_is_documented():
    import dataclasses

    from vidsift.pipeline.recipe import RunConfig
    from vidsift.pipeline.registry import STAGES, Resources

    doc = (REPO / "docs" / "recipes.md").read_text()
    for name, spec in STAGES.items():
        assert f"### `{name}`" in doc
        for f in dataclasses.fields(spec.config):
            assert f"| `{f.name}` |" in doc, f"{name}.{f.name} undocumented"
    for cls in (RunConfig, Resources):
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` |" in doc
