import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.sources.files import SourceError, SourceSpec, read_source


def _read(path, **kw):
    return read_source(SourceSpec(uri=str(path), **kw), "quality")


def test_txt_one_prompt_per_line(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a red car\n\n  a blue bench  \n")
    result = _read(path)
    assert [r.text for r in result.records] == ["a red car", "a blue bench"]
    assert result.rows_read == 3 and [why for _, why in result.rejected] == ["ingest: empty (an empty row)"]
    assert all(r.criterion == "quality" and r.source == str(path) for r in result.records)


def test_jsonl_picks_the_text_column_and_copies_scores(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"caption": "a cat on a mat", "AESTHETIC_SCORE": 6.9, "img": "a.png"}, {"caption": "a dog", "AESTHETIC_SCORE": "x"},
            {"caption": "a fox", "AESTHETIC_SCORE": float("nan")}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = _read(path, score_columns={"aesthetic": "AESTHETIC_SCORE"}, image_column="img")
    assert [r.text for r in result.records] == ["a cat on a mat", "a dog", "a fox"]
    assert result.records[0].scores == {"aesthetic": 6.9}
    assert result.records[1].scores == result.records[2].scores == {}  # NaN is "not scored", never a pass
    assert result.records[0].meta == {"image": "a.png"}


def test_wrong_columns_fail_naming_the_columns_found(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"url": "u", "width": 3}) + "\n")
    with pytest.raises(SourceError, match="columns found: url, width"):
        _read(path)


def test_csv_quoting_survives(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('prompt,n\n"a sign saying ""hello, world""",1\n"two lines\nin one cell",2\n')
    result = _read(path)
    assert [r.text for r in result.records] == ['a sign saying "hello, world"', "two lines in one cell"]


def test_parquet_and_folders(tmp_path):
    pq.write_table(pa.table({"text": ["a red car", None], "x": [1, 2]}), tmp_path / "a.parquet")
    (tmp_path / "b.txt").write_text("a green apple\n")
    result = _read(tmp_path)
    assert sorted(r.text for r in result.records) == ["a green apple", "a red car"]
    assert result.rows_read == 3 and "missing text field" in result.rejected[0][1]


def test_hf_dataset_saved_to_disk(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"prompt": ["a red car", "a blue bench", "a cat"]}).save_to_disk(tmp_path / "ds")
    result = _read(tmp_path / "ds", limit=2)
    assert [r.text for r in result.records] == ["a red car", "a blue bench"] and result.rows_read == 2


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        _read(tmp_path / "nope.jsonl")


def test_hostile_jsonl_every_row_kept_or_rejected(tmp_path):
    good = [json.dumps({"text": f"a red car number {i}"}).encode() for i in range(5)]
    lines = [
        b"\xef\xbb\xbf" + good[0],                      # BOM on the first line
        good[1],
        b'{"text": "broken',                             # malformed JSON
        json.dumps({"text": "nul\x00byte here"}).encode(),
        b'{"text": "bad \xff\xfe bytes"}',               # invalid UTF-8
        json.dumps({"text": ""}).encode(),
        json.dumps({"text": "   \t "}).encode(),
        json.dumps({"text": "x" * 100_000}).encode(),   # huge row: kept here, the length filter drops it
        json.dumps({"text": 42}).encode(),
        json.dumps({"other": "no text"}).encode(),
        json.dumps([1, 2]).encode(),
        good[2], good[2],                                # duplicate rows: dedup's business, not ingest's
    ]
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = _read(path)
    assert result.rows_read == len(lines)
    assert len(result.records) + len(result.rejected) == len(lines)
    reasons = [why for _, why in result.rejected]
    assert any("malformed JSON" in r for r in reasons)
    assert any("invalid utf-8" in r for r in reasons)
    assert reasons.count("ingest: empty (an empty row)") == 2
    assert any("is int, not a string" in r for r in reasons)
    assert any("missing text field" in r for r in reasons)
    assert any("not an object" in r for r in reasons)
    texts = [r.text for r in result.records]
    assert texts[0] == "a red car number 0" and "nul byte here" in texts


def test_category_column_accepts_only_known_categories(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("text,label\na red car,color\na yellow banana,banana\n")
    records = _read(path, category_column="label").records
    assert [(r.category, r.tags) for r in records] == [("color", ["color"]), ("general", [])]


def test_a_named_text_column_that_is_not_there_fails_naming_the_columns(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"caption": "a cat"}) + "\n")
    with pytest.raises(SourceError, match="no column 'nope' .*columns found: caption"):
        _read(path, text_column="nope")


def test_each_file_of_a_folder_finds_its_own_text_column(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "a red car"}) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"caption": "a blue bench"}) + "\n")
    assert [r.text for r in _read(tmp_path).records] == ["a red car", "a blue bench"]


def test_an_oversized_row_is_rejected_at_ingest_and_stored_cut(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("x" * 2_000_000 + "\na red car\n")  # spaCy refuses texts over 1,000,000 characters
    result = _read(path)
    assert [r.text for r in result.records] == ["a red car"]
    [(row, why)] = result.rejected
    assert why == "ingest: too_long 2,000,000 chars > 100,000" and len(row.text) == 100_000


def test_a_curated_set_folder_contributes_only_its_kept_prompts(tmp_path):
    from core.records import Drop, Prompt
    from curate.curated_set import write_curated

    kept = [Prompt(text="a red car", criterion="quality", source="x")]
    dropped = [(Prompt(text="a red car.", criterion="quality", source="x"), Drop("dedup_exact", "exact_dup of 1"))]
    out = write_curated(tmp_path / "set", kept, dropped, {"recipe": "test"})
    result = _read(out)
    assert [r.text for r in result.records] == ["a red car"] and result.rows_read == 1 and not result.rejected


def test_a_json_file_holding_one_object_is_an_error_alone_and_skipped_in_a_folder(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"prompts": ["a cat", "a dog"]}, indent=2))
    with pytest.raises(SourceError, match="one JSON object"):
        _read(path)
    (tmp_path / "prompts.txt").write_text("a red car\n")  # beside it, as a dataset's metadata sits beside its data
    with pytest.warns(UserWarning, match="skipping .*p.json: one JSON object"):
        result = _read(tmp_path)
    assert [r.text for r in result.records] == ["a red car"] and not result.rejected


def test_a_nested_path_that_does_not_exist_is_not_looked_up_on_the_hub(tmp_path):
    for uri in ("path/to/prompts/", "some_folder/"):
        with pytest.raises(SourceError, match="no such file or folder"):
            read_source(SourceSpec(uri=uri), "quality")


def test_another_tools_manifest_beside_prompt_files_is_not_a_curated_set(tmp_path):
    from curate.curated_set import is_curated_set

    for name, manifest, with_data in (("theirs", {"format": "other-tool/2"}, True), ("bare", {"name": "x"}, False)):
        folder = tmp_path / name
        (folder / "data").mkdir(parents=True) if with_data else folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps(manifest))
        (folder / "prompts.txt").write_text("a red cube\na blue sphere\n")
        assert not is_curated_set(folder)
        result = read_source(SourceSpec(uri=str(folder)), criterion="semantic")
        assert [r.text for r in result.records] == ["a red cube", "a blue sphere"]  # read, not silently empty
