"""Hostile files, rows and recipes (reliability, round 2): one bad file or row never costs the good
ones, errors are one line naming the file or key, and nothing a recipe holds is ever expanded whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from core.errors import ConfigError
from curate.cli import main
from curate.pipeline import build, resolve_recipe
from curate.sources.files import MAX_LINE_BYTES, SourceError, SourceSpec, read_source
from curate.curated_set import read_manifest, read_records


def _read(path, **kw):
    return read_source(SourceSpec(uri=str(path), **kw), "quality")


def _good_parquet(path, n=5):
    pq.write_table(pa.table({"text": [f"a lighthouse on a cliff number {i}" for i in range(n)]}), path)


def _truncated_parquet(path):
    _good_parquet(path, 50)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the footer (and its magic bytes) gone


# ---- files -----------------------------------------------------------------------------------


def test_a_corrupt_file_in_a_folder_is_skipped_naming_it_and_counted(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    _good_parquet(pool / "a.parquet")
    _truncated_parquet(pool / "b.parquet")
    (pool / "c.txt").write_text("a red car on a bridge\n")
    with pytest.warns(UserWarning, match=r"skipping .*b\.parquet: cannot be read"):
        result = _read(pool)
    assert len(result.records) == 6 and result.rows_read == 6
    [skipped] = result.skipped_files
    assert skipped["path"].endswith("b.parquet") and "cannot be read" in skipped["reason"]

    name, data = resolve_recipe("tiny", sources=[f"quality={pool}"], overrides=["on_shortfall=warn"])
    with pytest.warns(UserWarning, match="b.parquet"):
        build(name, data, tmp_path / "out", progress=False)
    [source] = [s for s in read_manifest(tmp_path / "out")["sources"] if s["uri"] == str(pool)]
    assert source["rows_read"] == 6 and source["skipped_files"][0]["path"].endswith("b.parquet")
    from curate.report import summarize

    [shown] = [s for s in summarize(tmp_path / "out")["inputs"] if s["uri"] == str(pool)]
    assert shown["skipped_files"] == 1  # `curate inspect` shows it too


def test_a_corrupt_file_given_alone_is_a_one_line_error_naming_it(tmp_path):
    bad = tmp_path / "captions.parquet"
    _truncated_parquet(bad)
    with pytest.raises(SourceError, match=r"captions\.parquet: cannot be read"):
        _read(bad)
    done = subprocess.run([sys.executable, "-m", "curate.cli", "build", "--recipe", "tiny", "--source",
                           f"quality={bad}", "--output", str(tmp_path / "out"), "--quiet"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "captions.parquet" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))  # nothing half-made left


@pytest.mark.parametrize("row, reason", [
    ('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ('{"text": "a cat", "n": ' + "9" * 5000 + "}", "malformed JSON"),
    ('{"text": "a cat", "score": 1e999}', None),  # infinity is "not scored", not a failure
])
def test_a_row_that_cannot_be_parsed_for_any_reason_is_rejected_not_fatal(tmp_path, row, reason):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"text": "a red car on a bridge"}) + "\n" + row + "\n")
    result = _read(path, score_columns={"aesthetic": "score"})
    assert result.rows_read == 2 and result.records[0].text == "a red car on a bridge"
    if reason is None:
        assert len(result.records) == 2 and result.records[1].scores == {}
    else:
        [(_, why)] = result.rejected
        assert reason in why


def test_a_huge_number_in_a_score_column_is_not_a_score(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"text": "a cat", "s": 10 ** 400}) + "\n")
    [record] = _read(path, score_columns={"aesthetic": "s"}).records
    assert record.scores == {}


def test_a_line_longer_than_memory_should_hold_is_rejected_without_holding_it(tmp_path):
    path = tmp_path / "p.txt"
    with open(path, "w") as handle:
        handle.write("a red car\n" + "é" * (MAX_LINE_BYTES // 2 + 10) + "\na blue bench\n")
    result = _read(path)
    assert [r.text for r in result.records] == ["a red car", "a blue bench"]
    [(row, why)] = result.rejected
    assert why == f"ingest: too_long {MAX_LINE_BYTES // 2 + 10:,} chars > 100,000" and len(row.text) == 100_000


@pytest.mark.parametrize("tail", ["plain row three,3\nplain row four,4\n", '"a poster for the fair",3\nplain row four,4\n'])
def test_rows_swallowed_by_an_unterminated_quote_are_reported_and_read_again(tmp_path, tail):
    path = tmp_path / "p.csv"
    path.write_text('prompt,n\n"a red car on a bridge",1\n"an unterminated quote, on a sign,2\n' + tail)
    result = _read(path)
    texts = [r.text for r in result.records]
    assert texts[0] == "a red car on a bridge" and texts[-1] == "plain row four"
    assert texts[1] in ("plain row three", "a poster for the fair") and len(texts) == 3
    [(row, why)] = result.rejected
    assert why.startswith("ingest: unterminated_quote (unterminated quote in the row at line 3: it swallowed the")
    assert row.text.startswith('"an unterminated quote')
    assert result.rows_read == 4


def test_a_quoted_cell_over_two_lines_is_still_one_row(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('prompt,n\n"a sign saying\n""open""",1\nlast row,2\n"final cell\nover two lines",3\n')
    result = _read(path)
    assert [r.text for r in result.records] == ['a sign saying "open"', "last row", "final cell over two lines"]
    assert not result.rejected


def test_links_out_of_a_source_folder_are_not_followed(tmp_path):
    secret = tmp_path / "elsewhere"
    secret.mkdir()
    (secret / "private.txt").write_text("a line from outside the folder\n")
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "ok.txt").write_text("a red car on a bridge\n")
    (pool / "inside.txt").symlink_to(pool / "ok.txt")  # inside the folder: read
    (pool / "outside.txt").symlink_to(secret / "private.txt")
    (pool / "linked_folder").symlink_to(secret, target_is_directory=True)
    with pytest.warns(UserWarning, match="outside the folder"):
        result = _read(pool)
    assert [r.text for r in result.records] == ["a red car on a bridge"] * 2
    assert sorted(os.path.basename(s["path"]) for s in result.skipped_files) == ["linked_folder", "outside.txt"]
    assert [r.text for r in _read(pool / "outside.txt").records] == ["a line from outside the folder"]  # given directly


# ---- recipes ---------------------------------------------------------------------------------

BOMB = "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['lol'] * 9)}]\n"
               for p, c in zip([None, *"abcdefg"], "abcdefgh"))


@pytest.mark.parametrize("where", ["size", "description", "steps.length.min_words", "quotas.quality.fraction"])
def test_an_alias_bomb_is_refused_before_anything_expands_it(tmp_path, where):
    recipe = tmp_path / "bomb.yaml"
    head, _, leaf = where.rpartition(".")
    nested = f"{leaf}: *h" if not head else "\n".join(
        "  " * i + f"{part}:" for i, part in enumerate(head.split("."))) + "\n" + "  " * len(head.split(".")) + f"{leaf}: *h"
    recipe.write_text(BOMB + nested + "\n")
    with pytest.raises(ConfigError, match="aliases expand to more than"):
        resolve_recipe(str(recipe))
    with pytest.raises(ConfigError, match="--set description: its aliases expand"):
        resolve_recipe("tiny", overrides=["description=" + BOMB.replace("\n", ", ").join("{}")])


def test_a_recursive_alias_is_refused(tmp_path):
    recipe = tmp_path / "loop.yaml"
    recipe.write_text("size: &a [1, *a]\n")
    with pytest.raises(ConfigError, match="loop.yaml: an alias refers to a value that contains it"):
        resolve_recipe(str(recipe))


def test_error_messages_show_a_bounded_prefix_of_a_large_value(tmp_path):
    recipe = tmp_path / "big.yaml"
    rows = ", ".join(f"[{', '.join(str(j) for j in range(100))}]" for _ in range(200))
    recipe.write_text(f"size: [{rows}]\n")
    with pytest.raises(ConfigError) as caught:
        resolve_recipe(str(recipe))
    message = str(caught.value)
    assert message.startswith("size must be int, got a list of 200 item(s)") and len(message) < 200


@pytest.mark.parametrize("override, message", [
    ("quotas.semantic.categories.color=-0.5", "quotas.semantic.categories.color must be a number >= 0, got -0.5"),
    ("quotas.semantic.categories.color=.nan", "quotas.semantic.categories.color must be a number >= 0"),
    ("quotas.semantic.categories.color=null", "quotas.semantic.categories.color must be a number >= 0, got None"),
    ("quotas.semantic.fraction=.inf", "quotas.semantic.fraction must be a number >= 0"),
])
def test_category_weights_must_be_non_negative_numbers(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        resolve_recipe("balanced", overrides=[override])


def test_category_weights_that_sum_to_zero_are_an_error_naming_the_criterion():
    zeros = [f"quotas.semantic.categories.{c}=0" for c in
             ("color", "shape", "texture", "spatial", "3d_spatial", "non_spatial", "numeracy", "complex")]
    with pytest.raises(ConfigError, match="quotas.semantic.categories: every weight is 0"):
        resolve_recipe("balanced", overrides=zeros)


def test_the_scaled_to_message_matches_what_is_written(tmp_path):
    pool = tmp_path / "few.txt"
    pool.write_text("".join(f"a lighthouse on a cliff at dusk number {i}\n" for i in range(30)))
    name, data = resolve_recipe("balanced", sources=[f"quality={pool}"], size=400,
                                overrides=["steps.tag=null", "shortfall_floor=0"])
    said = []
    build(name, data, tmp_path / "out", progress=False, log=said.append)
    [scaled] = [line for line in said if "scaled to" in line]
    assert f"scaled to {len(read_records(tmp_path / 'out')):,} records" in scaled


# ---- a failing build leaves nothing behind -----------------------------------------------------


def test_a_build_that_fails_after_reading_began_leaves_no_staging_folder(tmp_path):
    (tmp_path / "ok.txt").write_text("a red car on a bridge\n" * 3)
    name, data = resolve_recipe("tiny", sources=[f"quality={tmp_path / 'ok.txt'}",
                                                 f"text={tmp_path / 'missing.txt'}"])
    with pytest.raises(SourceError, match="missing.txt: no such file"):
        build(name, data, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.txt"]


def test_cli_errors_for_hostile_input_are_one_line(tmp_path):
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(BOMB + "size: *h\n")
    result = CliRunner().invoke(main, ["build", "--recipe", str(recipe), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "bomb.yaml" in result.output and "expand" in result.output


def test_disguised_rows_are_rejected_at_ingest_and_foreign_scripts_are_not(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a r\u0435d \u0441ar on a bridge\n"           # Cyrillic е and с inside Latin words
                    "a r\u0336e\u0336d\u0336 car on a bridge\n"   # strike-through marks
                    "a red car on a bridge\n"
                    "\u043a\u0440\u0430\u0441\u043d\u0430\u044f \u043c\u0430\u0448\u0438\u043d\u0430 \u043d\u0430 \u043c\u043e\u0441\u0442\u0443\n"  # Russian
                    'a sign reading "\u041c\u041e\u0421\u041a\u0412\u0410" above a door\n'
                    "a re\u200bd car on a\u00ad bridge\n")         # invisible characters: cleaned, kept
    result = _read(path)
    assert [r.text for r in result.records][1:] == [
        "\u043a\u0440\u0430\u0441\u043d\u0430\u044f \u043c\u0430\u0448\u0438\u043d\u0430 \u043d\u0430 \u043c\u043e\u0441\u0442\u0443",
        'a sign reading "\u041c\u041e\u0421\u041a\u0412\u0410" above a door', "a red car on a bridge"]
    reasons = [why for _, why in result.rejected]
    assert [r.split(" ", 3)[:3] for r in reasons] == [["ingest:", "lookalike", "mixed_script"],
                                                      ["ingest:", "lookalike", "combining_overlay"]]


def test_link_loops_and_dangling_links_in_a_folder_are_skipped_naming_them(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "ok.txt").write_text("a red car on a bridge\n")
    (pool / "l1.txt").symlink_to(pool / "l2.txt")
    (pool / "l2.txt").symlink_to(pool / "l1.txt")  # a loop
    (pool / "gone.txt").symlink_to(pool / "deleted.txt")  # dangling, inside the folder
    with pytest.warns(UserWarning, match="leads to no file"):
        result = _read(pool)
    assert [r.text for r in result.records] == ["a red car on a bridge"]
    assert sorted(os.path.basename(s["path"]) for s in result.skipped_files) == ["gone.txt", "l1.txt", "l2.txt"]


def test_a_csv_header_with_an_unterminated_quote_is_an_error_not_an_empty_file(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('"prompt,n\nrow one,1\nrow two,2\n')
    with pytest.raises(SourceError, match=r"p\.csv: its header line has an unterminated quote"):
        _read(path)


def test_csv_with_carriage_return_line_ends_recovers_swallowed_rows(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes(b'text\r"a red car\rblue cat\rgreen dog\r')
    result = _read(path)
    assert [r.text for r in result.records] == ["blue cat", "green dog"] and len(result.rejected) == 1


def test_a_runaway_csv_row_is_cut_and_the_rest_read(tmp_path):
    from curate.sources.csv_rows import MAX_ROW_CHARS

    path = tmp_path / "p.csv"
    filler = "".join(f"line {i} inside the runaway quote\n" for i in range(MAX_ROW_CHARS // 30 + 10))
    path.write_text('text,n\n"an unterminated quote,1\n' + filler + "a last row,2\n")
    result = _read(path)
    assert result.rejected[0][1].startswith("ingest: unterminated_quote (unterminated quote in the row at line 2")
    assert result.records[-1].text == "a last row" and result.rows_read == filler.count("\n") + 2


def test_a_bom_does_not_hide_an_over_long_first_line(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes(b"\xef\xbb\xbf" + b"x" * (MAX_LINE_BYTES - 3) + b"tail of the first line\nsecond line\n")
    result = _read(path)
    assert [r.text for r in result.records] == ["second line"] and result.rows_read == 2


def test_json_lines_in_a_json_file_are_rows_and_a_json_document_is_bounded(tmp_path, monkeypatch):
    import curate.sources.files as files

    lines = tmp_path / "lines.json"
    lines.write_text("\n".join(json.dumps({"text": f"a red car number {i}"}) for i in range(3)) + "\n")
    assert [r.text for r in _read(lines).records] == [f"a red car number {i}" for i in range(3)]
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps({"prompts": ["a cat"]}, indent=2))
    with pytest.raises(SourceError, match="one JSON object"):
        _read(pretty)
    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"text": "a red car"}] * 50))
    assert len(_read(array).records) == 50
    monkeypatch.setattr(files, "MAX_JSON_DOCUMENT_BYTES", 100)
    with pytest.raises(SourceError, match=r"array\.json: a [\d,]+-byte JSON document is read whole"):
        _read(array)


def test_a_curated_set_with_a_damaged_part_is_an_error_not_a_partial_set(tmp_path):
    from core.records import Prompt
    from curate.curated_set import write_curated

    out = write_curated(tmp_path / "set", [Prompt(text="a red car", criterion="quality", source="x")], [], {})
    part = next((out / "data").glob("*.parquet"))
    part.write_bytes(part.read_bytes()[:40])
    with pytest.raises(SourceError, match=r"part-00000\.parquet: cannot be read"):
        _read(out)
    (out / "manifest.json").write_text('{"format": "t5shrink.curated/1", ')  # cut off
    done = subprocess.run([sys.executable, "-m", "curate.cli", "inspect", str(out)], capture_output=True, text=True)
    assert done.returncode != 0 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1


def test_long_keys_in_errors_are_cut(tmp_path):
    result = CliRunner().invoke(main, ["build", "--recipe", "tiny", "--set", f"steps.{'x' * 50_000}={{}}",
                                       "--output", str(tmp_path / "out")])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and len(result.output) < 1100
