"""`curate build` end to end, through the same functions and CLI a user runs."""

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from core.records import CATEGORIES, CRITERIA, normalize_text
from curate.cli import main
from curate.pipeline import build, resolve_recipe
from curate.curated_set import read_manifest, read_records

REQUIRED = ("id", "text", "criterion", "category", "tags", "rendered_text", "source")


def _build(tmp_path, recipe="tiny", name="out", **kw):
    recipe_name, data = resolve_recipe(recipe, kw.pop("overrides", []), kw.pop("sources", []), **kw)
    out = tmp_path / name
    build(recipe_name, data, out, progress=False)
    return out


def _check_counts_add_up(manifest):
    for step in manifest["steps"]:
        assert step["in"] == step["kept"] + step["dropped"], step
        assert sum(step["reasons"].values()) == step["dropped"], step
    for source in manifest["sources"]:
        assert source["rows_read"] == source["records"] + source["rejected"], source
    counts = manifest["counts"]
    assert counts["rows_read"] == counts["kept"] + counts["rejected"]


@pytest.fixture(scope="module")
def balanced(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("balanced")
    result = CliRunner().invoke(main, ["build", "--recipe", "balanced", "--size", "3000", "--output", str(tmp / "out"),
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    return tmp / "out"


def test_balanced_3000_meets_the_contract(balanced):
    rows = read_records(balanced)
    manifest = read_manifest(balanced)
    assert len(rows) == 3000
    for row in rows:
        for key in REQUIRED:
            assert row[key] is not None, (key, row)
        assert row["criterion"] in CRITERIA and row["category"] in CATEGORIES
    shares = Counter(r["criterion"] for r in rows)
    for criterion, quota in manifest["recipe"]["quotas"].items():
        assert abs(shares[criterion] / 3000 - quota["fraction"]) <= 0.01, (criterion, shares)
    assert len({normalize_text(r["text"]) for r in rows}) == 3000
    assert len({r["id"] for r in rows}) == 3000
    assert all(r["rendered_text"] for r in rows if r["criterion"] == "text")
    semantic = Counter(r["category"] for r in rows if r["criterion"] == "semantic")
    assert len(semantic) == 8 and max(semantic.values()) - min(semantic.values()) <= 1
    _check_counts_add_up(manifest)
    assert manifest["counts"]["kept"] == 3000 and not manifest["shortfalls"]
    rejected = read_records(balanced, "rejected")
    assert len(rejected) == manifest["counts"]["rejected"]
    assert all(r["reason"].startswith(r["step"] + ":") for r in rejected)


def test_balanced_is_deterministic(balanced, tmp_path):
    again = CliRunner().invoke(main, ["build", "--recipe", "balanced", "--size", "3000", "--output",
                                      str(tmp_path / "again"), "--quiet"])
    assert again.exit_code == 0, again.output
    assert (balanced / "data/part-00000.parquet").read_bytes() == (tmp_path / "again/data/part-00000.parquet").read_bytes()


def test_another_seed_gives_another_selection(tmp_path):
    a = {r["id"] for r in read_records(_build(tmp_path, name="a", seed=1))}
    b = {r["id"] for r in read_records(_build(tmp_path, name="b", seed=2))}
    assert len(a) == len(b) == 300 and a != b


def test_unknown_set_key_exits_nonzero_naming_it(tmp_path):
    result = CliRunner().invoke(main, ["build", "--recipe", "tiny", "--set", "no_such_key=1", "--output", str(tmp_path / "o")])
    assert result.exit_code != 0
    assert "no_such_key" in result.output
    assert not (tmp_path / "o").exists()


def test_recipes_command_lists_the_shipped_recipes():
    result = CliRunner().invoke(main, ["recipes"])
    assert result.exit_code == 0
    assert {line.split()[0] for line in result.output.splitlines()} >= {"balanced", "compbench", "commontext", "quality", "tiny"}


def test_a_short_pool_is_reported_and_keeps_the_fractions(tmp_path):
    pool = tmp_path / "text.txt"
    pool.write_text("".join(f"a shop sign that says 'OPEN {i}'\n" for i in range(20)))
    out = _build(tmp_path, sources=[f"text={pool}"], overrides=["shortfall_floor=0.1"])
    manifest = read_manifest(out)
    assert manifest["shortfalls"] and manifest["shortfalls"][0].startswith("text:")
    rows = read_records(out)
    shares = Counter(r["criterion"] for r in rows)
    assert shares["text"] <= 20 and len(rows) < 300
    assert abs(shares["text"] / len(rows) - 0.23) < 0.03
    _check_counts_add_up(manifest)


def test_warn_policy_keeps_other_quotas_full(tmp_path):
    pool = tmp_path / "text.txt"
    pool.write_text("".join(f"a shop sign that says 'OPEN {i}'\n" for i in range(20)))
    out = _build(tmp_path, sources=[f"text={pool}"], overrides=["on_shortfall=warn"])
    rows = read_records(out)
    assert Counter(r["criterion"] for r in rows) == {"quality": 141, "semantic": 90, "text": 20}


def test_output_of_another_kind_is_never_replaced(tmp_path):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "thesis.tex").write_text("x")
    result = CliRunner().invoke(main, ["build", "--recipe", "tiny", "--output", str(precious), "--quiet"])
    assert result.exit_code != 0 and "refusing" in result.output
    assert (precious / "thesis.tex").exists()


def test_a_set_with_foreign_files_inside_is_not_replaced(tmp_path):
    out = _build(tmp_path)
    (out / "stage1").mkdir()
    result = CliRunner().invoke(main, ["build", "--recipe", "tiny", "--output", str(out), "--quiet"])
    assert result.exit_code != 0 and "stage1" in result.output
    assert (out / "stage1").exists() and (out / "manifest.json").exists()


def test_rebuild_replaces_a_previous_set_atomically(tmp_path):
    out = _build(tmp_path, seed=1)
    first = read_manifest(out)["outputs"]
    _build(tmp_path, seed=2)
    assert read_manifest(out)["outputs"] != first
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_data_loads_with_datasets(tmp_path):
    import datasets

    out = _build(tmp_path)
    ds = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train")
    assert len(ds) == 300 and set(REQUIRED) <= set(ds.column_names)
    assert pq.read_table(out / "rejected/part-00000.parquet").column_names[-2:] == ["step", "reason"]
    assert json.loads((out / "manifest.json").read_text())["format"] == "t5shrink.curated/1"


def test_row_order_of_a_source_does_not_change_the_set(tmp_path):
    import random

    lines = [f"a {c} {o} next to a {c2} {o2}" for c in ("red", "blue", "green") for o in ("cup", "vase", "lamp")
             for c2 in ("black", "white") for o2 in ("chair", "book")]
    lines += ["A red cup next to a black chair.", "a black chair and a red cup", "a red cup and a black chair"]
    outs = []
    for i, seed in enumerate((1, 2)):
        random.Random(seed).shuffle(lines)
        path = tmp_path / f"pool{i}.txt"
        path.write_text("\n".join(lines) + "\n")
        out = _build(tmp_path, name=f"o{i}", sources=[f"semantic={path}"], overrides=["on_shortfall=warn"])
        outs.append(out)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "source"} for r in rows]  # noqa: E731 (paths differ)
    assert strip(read_records(outs[0])) == strip(read_records(outs[1]))


def test_inspect_json_counts_equal_the_data(balanced):
    result = CliRunner().invoke(main, ["inspect", str(balanced), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    rows = read_records(balanced)
    assert {c: v["count"] for c, v in summary["criteria"].items()} == dict(Counter(r["criterion"] for r in rows))
    by_pair = Counter((r["criterion"], r["category"]) for r in rows)
    reported = {(crit, cat): v["count"] for crit, cats in summary["categories"].items() for cat, v in cats.items()}
    assert reported == dict(by_pair)


def test_diff_reports_exact_count_changes(tmp_path):
    a = _build(tmp_path, name="a")
    b = _build(tmp_path, name="b", overrides=["quotas.quality.fraction=0.37", "quotas.text.fraction=0.33"])
    result = CliRunner().invoke(main, ["diff", str(a), str(b), "--json"])
    assert result.exit_code == 0, result.output
    changes = json.loads(result.stdout)
    count = lambda d, c: Counter(r["criterion"] for r in read_records(d))[c]  # noqa: E731
    for criterion in ("quality", "semantic", "text"):
        assert changes["criteria"][criterion]["delta"] == count(b, criterion) - count(a, criterion)
    assert changes["criteria"]["quality"]["delta"] == -30 and changes["criteria"]["text"]["delta"] == 30
    assert {"quotas.quality.fraction", "quotas.text.fraction"} <= set(changes["recipe"])


def test_tag_command_writes_one_object_per_prompt_in_order(tmp_path):
    prompts = ["a red car and a blue bench", "a neon sign that says 'that's great'", "three apples on a table"]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n")
    out = tmp_path / "tags.jsonl"
    result = CliRunner().invoke(main, ["tag", str(tmp_path / "p.txt"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == prompts
    assert [r["category"] for r in rows] == ["color", "text_rendering", "numeracy"]
    assert rows[1]["rendered_text"] == ["that's great"]
    assert all(r["category"] in r["tags"] for r in rows)
    assert [r["criterion"] for r in rows] == ["semantic", "text", "semantic"]
    assert all(r["id"] and r["source"] == str(tmp_path / "p.txt") for r in rows)
    assert (tmp_path / "tags.rejected.jsonl").read_text() == ""  # nothing rejected, and no stale file stands


def test_tag_command_writes_unreadable_rows_with_their_reason(tmp_path):
    lines = ['{"caption": "a red car and a blue bench"}', "{not json", '{"caption": 3}', ""]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "tags.jsonl"
    result = CliRunner().invoke(main, ["tag", str(tmp_path / "p.jsonl"), "--text-column", "caption",
                                       "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "3 rows could not be read" in result.output and "tags.rejected.jsonl" in result.output
    [row] = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["category"] == "color" and row["scores"]["visual"] > 0
    rejected = [json.loads(line) for line in (tmp_path / "tags.rejected.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rejected] == ["ingest"] * 3
    assert "JSON" in rejected[0]["reason"] and "'caption'" in rejected[1]["reason"] and "empty" in rejected[2]["reason"]


def test_a_scored_caption_pool_is_thresholded_by_aesthetic_score(tmp_path):
    import pyarrow as pa

    texts = [f"a misty mountain lake at sunrise number {i}, oil painting" for i in range(60)]
    scores = [5.0 + (i % 4) for i in range(60)]  # 5, 6, 7, 8: half are >= 6.5
    pq.write_table(pa.table({"TEXT": texts, "AESTHETIC_SCORE": scores}), tmp_path / "laion.parquet")
    out = _build(tmp_path, sources=[f"quality={tmp_path / 'laion.parquet'}"],
                 overrides=["sources.quality.0.text_column=TEXT",
                            "sources.quality.0.score_columns.aesthetic=AESTHETIC_SCORE",
                            "steps.aesthetic.mode=column", "steps.aesthetic.min_score=6.5",
                            "steps.aesthetic.criteria=[quality]", "on_shortfall=warn"])
    kept = [r for r in read_records(out) if r["criterion"] == "quality"]
    assert len(kept) == 30 and all(r["scores"]["aesthetic"] >= 6.5 for r in kept)
    dropped = [r for r in read_records(out, "rejected") if r["step"] == "aesthetic"]
    assert len(dropped) == 30 and all(r["reason"].startswith("aesthetic: ") for r in dropped)


def test_a_build_that_would_be_empty_fails_saying_why_and_writes_nothing(tmp_path):
    (tmp_path / "empty.txt").write_text("\n")
    result = CliRunner().invoke(main, ["build", "--recipe", "tiny", "--source", f"quality={tmp_path / 'empty.txt'}",
                                       "--output", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: the set would be empty: quality: 0 available for a quota of")
    assert "ingest empty 1" in result.stderr and not (tmp_path / "out").exists()


REPEATED_STEPS = """
size: 6
on_shortfall: warn
sources:
  quality: [{uri: QUALITY}]
  text: [{uri: TEXT}]
steps:
  dedup_semantic_captions: {kind: dedup_semantic, threshold: 0.9, criteria: [quality]}
  dedup_semantic_text: {kind: dedup_semantic, threshold: 0.98, criteria: [text]}
quotas:
  quality: {fraction: 0.5}
  text: {fraction: 0.5}
"""
PARAPHRASE = ["a golden retriever running on the beach at sunset", "a golden retriever runs along the beach at sunset"]


def test_one_step_kind_twice_under_its_own_names(tmp_path):
    from curate.report import summarize

    (tmp_path / "quality.txt").write_text("\n".join(PARAPHRASE + ["a bowl of ramen on a wooden table"]) + "\n")
    text = PARAPHRASE + ["a shop sign reading 'open'", "A shop sign reading 'open'."]
    (tmp_path / "text.txt").write_text("\n".join(text) + "\n")
    recipe = tmp_path / "twice.yaml"
    recipe.write_text(REPEATED_STEPS.replace("QUALITY", str(tmp_path / "quality.txt"))
                      .replace("TEXT", str(tmp_path / "text.txt")))
    out = _build(tmp_path, recipe=str(recipe))
    rejected = [r for r in read_records(out, "rejected") if r["step"] != "balance"]
    # each step drops under its own name, with its own threshold: the paraphrase (cos 0.97) goes at 0.9, not
    # at 0.98; the two signs (cos 0.99) go at 0.98
    assert {(r["criterion"], r["step"]) for r in rejected} == {("quality", "dedup_semantic_captions"),
                                                               ("text", "dedup_semantic_text")}
    [quality] = [r["text"] for r in rejected if r["criterion"] == "quality"]
    [text] = [r["text"] for r in rejected if r["criterion"] == "text"]
    assert quality in PARAPHRASE and text in ("a shop sign reading 'open'", "A shop sign reading 'open'.")
    assert all(r["reason"].startswith(f"{r['step']}: semantic_dup of ") for r in rejected)
    steps = {s["name"]: s for s in read_manifest(out)["steps"]}
    assert steps["dedup_semantic_captions"]["dropped"] == steps["dedup_semantic_text"]["dropped"] == 1
    by_step = summarize(out)["rejected"]["by_step"]
    assert by_step["dedup_semantic_captions"]["reasons"] == by_step["dedup_semantic_text"]["reasons"] == {
        "semantic_dup": 1}


@pytest.mark.parametrize("name, step, message", [
    ("mine", "{kind: dedup_semantc}", "unknown step kind steps.mine.kind='dedup_semantc'; did you mean 'dedup_semantic'"),
    ("mine", "{threshold: 0.9}", "unknown step steps.mine (known steps: "),
    ("length", "{kind: dedup_exact}", "steps.length is the length step, not a dedup_exact step"),
])
def test_an_unknown_step_kind_is_a_one_line_error(tmp_path, name, step, message):
    result = CliRunner().invoke(main, ["build", "--recipe", "tiny", "--set", f"steps.{name}={step}",
                                       "--output", str(tmp_path / "out")])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert message in result.output and not (tmp_path / "out").exists()
