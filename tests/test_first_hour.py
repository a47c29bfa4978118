"""A new user's first hour with `curate` (issue: first hour): labels that survive reuse, a shrink that is
an error, keys that suggest their fix, summaries on stdout, recipes that cannot be hidden."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from core.errors import ConfigError
from curate.balance import ShortfallError
from curate.cli import main
from curate.pipeline import build, resolve_recipe
from curate.sources.files import SourceSpec, category_of_filename, read_source
from curate.curated_set import read_manifest, read_records


def _build(tmp_path, recipe="tiny", name="out", **kw):
    recipe_name, data = resolve_recipe(recipe, kw.pop("overrides", []), kw.pop("sources", []), **kw)
    build(recipe_name, data, tmp_path / name, progress=False)
    return tmp_path / name


def test_a_curated_set_reused_as_a_source_keeps_its_labels(tmp_path):
    first = _build(tmp_path, "tiny", "first")
    before = {r["text"]: (r["criterion"], r["category"], r["tags"], r["rendered_text"]) for r in read_records(first)}
    second = _build(tmp_path, "tiny", "second", sources=[f"semantic={first}"], overrides=["on_shortfall=warn"])
    from_first = [r for r in read_records(second) if r["source"] == str(first)]
    assert from_first
    for row in from_first:  # the tag step left them alone: nothing moved category
        assert (row["criterion"], row["category"], row["tags"], row["rendered_text"]) == before[row["text"]]


def test_a_curated_set_is_relabelled_only_when_the_recipe_asks(tmp_path):
    first = _build(tmp_path, "tiny", "first")
    rows = read_records(first)
    result = read_source(SourceSpec(uri=str(first)), "quality")
    assert Counter(r.category for r in result.records) == Counter(r["category"] for r in rows)
    from filters.base import Context
    from filters.tag import Tag

    for record in result.records:
        record.category, record.tags = "general", []  # what a re-tag starts from
    relabelled = Tag(overwrite=True).run(result.records, Context(progress=False)).kept
    assert {r.category for r in relabelled} - {"general"}  # the tagger did label them again


@pytest.mark.parametrize("name, category", [("color_train.txt", "color"), ("3d_spatial_val.jsonl", "3d_spatial"),
                                            ("spatial-train.csv", "spatial"), ("non_spatial.txt", "non_spatial"),
                                            ("Text_Rendering.parquet", "text_rendering"), ("colour.txt", None),
                                            ("numeracy2.txt", None), ("prompts.txt", None)])
def test_the_category_a_file_name_gives(name, category):
    assert category_of_filename(f"/some/folder/{name}") == category


def test_a_folder_of_one_file_per_category_keeps_each_files_category(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "color_val.txt").write_text("a green bench and a red car\n")  # the tagger alone would say color too
    (pool / "shape_val.txt").write_text("a red car on a bridge\n")  # ... but not shape
    (pool / "notes.txt").write_text("a quiet harbor at dawn\n")
    records = read_source(SourceSpec(uri=str(pool), category_from_filename=True), "semantic").records
    assert {r.text: (r.category, r.tags) for r in records} == {
        "a green bench and a red car": ("color", ["color"]), "a red car on a bridge": ("shape", ["shape"]),
        "a quiet harbor at dawn": ("general", [])}
    plain = read_source(SourceSpec(uri=str(pool)), "semantic").records
    assert {r.category for r in plain} == {"general"}  # off unless asked for


def test_a_shortfall_that_would_shrink_the_set_below_the_floor_is_an_error(tmp_path):
    wrong = tmp_path / "wrong.txt"  # one pool pointed at the wrong file: a handful of rows, most too short
    wrong.write_text("".join(f"a shop sign number {i}\n" for i in range(31)))  # nothing quoted to render
    with pytest.raises(ShortfallError) as caught:
        _build(tmp_path, "balanced", sources=[f"text={wrong}"], size=500, overrides=["steps.tag=null"])
    message = str(caught.value)
    assert message.startswith("the set would shrink to ") and "below shortfall_floor=0.5" in message
    assert "text: 0 available for a quota of" in message  # names the pool that fell short ...
    assert "(dropped: require_rendered_text no_rendered_text 31)" in message  # ... and what emptied it
    assert not (tmp_path / "out").exists()
    out = _build(tmp_path, "balanced", sources=[f"text={wrong}"], size=500,
                 overrides=["steps.tag=null", "on_shortfall=warn"])  # the other policies stay available
    assert len(read_records(out)) > 250


def test_step_criteria_are_recorded(tmp_path):
    out = _build(tmp_path, "balanced", size=300)
    steps = {s["name"]: s["criteria"] for s in read_manifest(out)["steps"]}
    recipe = read_manifest(out)["recipe"]["steps"]
    for name, criteria in steps.items():
        assert criteria == (recipe.get(name) or {}).get("criteria"), name


def test_a_mistyped_key_or_step_suggests_the_closest(tmp_path):
    for override, hint in (("sizee=3", "did you mean 'size'"), ("steps.lenght.min_words=3", "did you mean 'length'"),
                           ("steps.length.min_word=3", "did you mean 'min_words'"),
                           ("quotas.semantic.fractoin=1", "did you mean 'fraction'")):
        with pytest.raises(ConfigError, match=hint):
            resolve_recipe("balanced", overrides=[override])
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("size: 10\nquotas: {quality: {fraction: 1}}\nsources: {quality: [{generator: quality}]}\nonshortfall: warn\n")
    with pytest.raises(ConfigError, match="unknown key 'onshortfall'; did you mean 'on_shortfall'"):
        resolve_recipe(str(recipe))


def test_print_recipe_prints_every_resolved_key_and_builds_nothing(tmp_path):
    import yaml

    result = CliRunner().invoke(main, ["build", "--recipe", "balanced", "--size", "123", "--set", "steps.dedup_near=null",
                                       "--output", str(tmp_path / "out"), "--print-recipe"])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.stdout)
    assert printed == resolve_recipe("balanced", ["steps.dedup_near=null"], size=123)[1]
    assert not (tmp_path / "out").exists()


def test_the_build_summary_goes_to_stdout_and_progress_to_stderr(tmp_path):
    done = subprocess.run([sys.executable, "-m", "curate.cli", "build", "--recipe", "tiny", "--output",
                           str(tmp_path / "out")], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("kept 300, rejected ") and done.stdout.count("\n") == 1
    assert "kept 300" not in done.stderr and "on " in done.stderr  # the steps' progress lines


def test_a_recipes_folder_in_the_working_directory_does_not_hide_the_shipped_ones(tmp_path):
    (tmp_path / "recipes" / "curate").mkdir(parents=True)
    (tmp_path / "recipes" / "curate" / "mine.yaml").write_text("description: not shipped\n")
    done = subprocess.run([sys.executable, "-m", "curate.cli", "recipes"], cwd=tmp_path, capture_output=True,
                          text=True, check=True)
    assert "balanced" in done.stdout and "mine" not in done.stdout


def test_debug_is_taken_anywhere_on_the_command_line(tmp_path):
    for args in (["--debug", "build", "--recipe", "nope"], ["build", "--recipe", "nope", "--debug"]):
        result = CliRunner().invoke(main, [*args, "--output", str(tmp_path / "out")])
        assert isinstance(result.exception, ConfigError)  # raised, not turned into one line
    result = CliRunner().invoke(main, ["build", "--recipe", "nope", "--output", str(tmp_path / "out")])
    assert result.exit_code == 2 and result.output.startswith("error: no curate recipe named 'nope'")


def test_the_readme_lists_every_recipe_key_as_the_code_has_them():
    from curate.pipeline import recipe_keys as curate_keys
    from train.config import recipe_keys as train_keys

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name, keys in (("curate", curate_keys()), ("train", train_keys())):
        block = readme.split(f"<!-- {name}-keys -->\n```\n", 1)[1].split(f"\n```\n<!-- /{name}-keys -->", 1)[0]
        assert block == keys, f"README's {name} key list is stale: paste `{name} recipes --keys` into it"
    assert "sources.<criterion>.<i>.category_from_filename" in curate_keys() and "optim.lr" in train_keys()


def test_the_readme_lists_every_export_format_as_the_cli_has_them():
    from train.export import format_list

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("<!-- export-formats -->\n```\n", 1)[1].split("\n```\n<!-- /export-formats -->", 1)[0]
    assert block == format_list(), "README's export formats are stale: paste `train export --help`'s list into it"


def test_owner_slash_name_beside_a_local_folder_of_that_owner_is_a_missing_path(tmp_path, monkeypatch):
    from core.paths import local_path_or_hub_id
    from curate.sources.files import SourceError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "curated").mkdir()
    with pytest.raises(SourceError, match="curated/balanced: no such file or folder"):
        read_source(SourceSpec(uri="curated/balanced"), "quality")
    with pytest.raises(FileNotFoundError, match="data curated/balanced: no such file or folder"):
        local_path_or_hub_id("curated/balanced", "data")
    assert local_path_or_hub_id("someone/some-dataset", "data") is None  # no local someone/: a hub id
