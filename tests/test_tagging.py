"""The prompt tagger: rendered-text extraction, categories and tags, visualness, the `tag` step and
the `visual` filter."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.records import CATEGORIES, Prompt
from filters.base import Context, build_step
from filters.lib.rendered_text import extract_rendered_text, rendered_text_spans

HELDOUT = Path(__file__).resolve().parent / "fixtures" / "tagging_heldout.jsonl"


@pytest.mark.parametrize("text, expected", [
    ("A cat displaying a placard saying 'i don't know'.", ["i don't know"]),
    ("a t-shirt that says 'i'm proud of you'", ["i'm proud of you"]),
    ("a speech bubble: 'that's great!'", ["that's great!"]),
    ("A horse presenting a board that says 'mcdonald's'.", ["mcdonald's"]),
    ("the dog's bowl next to the cat's bed", []),
    ("I don't like the boys' bikes, they're loud", []),
    ("a sign with 'hello' and 'world' on it", ["hello", "world"]),
    ('a "STOP" sign and a "yield" sign', ["STOP", "yield"]),
    ("a mug reading \u2018that\u2019s great\u2019 and a \u201cGood morning\u201d card", ["that\u2019s great", "Good morning"]),
    ('She said "he told me \'no\'" loudly', ["he told me 'no'"]),
    ("a sign saying 'yes' next to the boys' bikes", ["yes"]),
    ("a sign stating 'cause' and a poster saying 'em'", ["cause", "em"]),
    ("a rock 'n' roll poster from the '90s", []),
    ('a 12" pizza next to a 10" pizza', []),
    ("a neon sign that says OPEN 24 HOURS, glowing at night", ["OPEN 24 HOURS"]),
    ("a street sign reading: NO PARKING.", ["NO PARKING"]),
    ("A DOG READING A BOOK IN A PARK", []),  # all caps: capitals say nothing
    ("a man reading a book", []),
    ("a poster reading I love you", []),
    ("a sign saying '' and nothing else", []),
])
def test_extract_rendered_text(text: str, expected: list[str]) -> None:
    assert extract_rendered_text(text) == expected


def test_spans_point_into_the_text() -> None:
    text = "a cake with \u201cHappy 30th\u201d and a card saying 'love you'"
    spans = rendered_text_spans(text)
    assert [text[a:b] for a, b in spans] == ["Happy 30th", "love you"]
    assert spans == sorted(spans)


@pytest.fixture(scope="module")
def tag():
    from filters.lib.tagging import load_nlp, tag_texts

    load_nlp()  # once per module; tag_texts reuses the cached pipeline
    return tag_texts


@pytest.mark.parametrize("text, category, tags", [
    ("a red car and a blue bench", "color", ["color"]),
    ("The car is bright orange.", "color", ["color"]),
    ("a conical hat and a spherical lamp", "shape", ["shape"]),
    ("a heart-shaped box", "shape", ["shape"]),
    ("a leather jacket and a wooden chair", "texture", ["texture"]),
    ("a table made of wood", "texture", ["texture"]),
    ("a mug on the left of a laptop", "spatial", ["spatial"]),
    ("a dog lying on a rug", "spatial", ["spatial"]),
    ("a ball hidden by a box", "3d_spatial", ["3d_spatial"]),
    ("a tiger hiding behind the bushes", "3d_spatial", ["3d_spatial"]),
    ("a chef chopping onions", "non_spatial", ["non_spatial"]),
    ("A boy is standing on a chair to reach a shelf.", "non_spatial", ["spatial", "non_spatial"]),
    ("three cakes and two cups", "numeracy", ["numeracy"]),
    ("two red cars parked on the street", "numeracy", ["color", "spatial", "numeracy", "complex"]),
    ("a tall white candle next to a short black vase", "complex", ["color", "shape", "spatial", "complex"]),
    ("a green plant next to a brown shelf", "complex", ["color", "spatial", "complex"]),
    ("a man riding a bicycle next to a bus", "complex", ["spatial", "non_spatial", "complex"]),
    ("The plump, juicy grapes ripened in the warm, golden sun.", "complex", ["color", "non_spatial", "complex"]),
    ("a black cat chasing a mouse", "color", ["color", "non_spatial"]),
    ("A cat holding a sign saying 'two red dogs'.", "text_rendering", ["non_spatial", "text_rendering"]),
    ("a portrait of an old fisherman", "general", ["general"]),
    ("a photo of 8k resolution, 1990 style", "general", ["general"]),
])
def test_category_and_tags(tag, text: str, category: str, tags: list[str]) -> None:
    row = tag([text])[0]
    assert (row["category"], row["tags"]) == (category, tags)


def test_tag_texts_rows(tag) -> None:
    texts = ["a neon sign that says 'open late'", "How do I make my code faster?", "a neon sign that says 'open late'"]
    rows = tag(texts)
    assert [r["text"] for r in rows] == texts
    assert set(rows[0]) == {"text", "category", "tags", "rendered_text", "scores"}
    assert rows[0]["rendered_text"] == ["open late"] and rows[0]["category"] == "text_rendering"
    assert rows[0]["scores"]["tokens"] == 7.0
    assert rows[0] == rows[2] and rows[0]["tags"] is not rows[2]["tags"]  # repeats share no lists
    assert all(set(r["tags"]) <= set(CATEGORIES) and r["category"] in r["tags"] for r in rows)


def test_visual_score_orders_concrete_above_abstract(tag) -> None:
    texts = ["a red barn in a snowy field", "a woman reading a newspaper at a cafe",
             "Freedom is more important than security.", "How do I make my code faster?",
             "Explain the theory of relativity in simple terms."]
    visual = [r["scores"]["visual"] for r in tag(texts)]
    assert all(0.0 <= v <= 1.0 for v in visual)
    assert min(visual[:2]) >= 0.7 and max(visual[2:]) <= 0.3, visual


def test_heldout_accuracy(tag) -> None:
    rows = [json.loads(line) for line in HELDOUT.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(rows) >= 150 and {r["category"] for r in rows} == set(CATEGORIES)
    got = tag([r["text"] for r in rows])
    right = [g["category"] == r["category"] for g, r in zip(got, rows)]
    assert sum(right) / len(rows) >= 0.95
    for category in CATEGORIES:
        mine = [ok for ok, r in zip(right, rows) if r["category"] == category]
        assert sum(mine) / len(mine) >= 0.8, category
    assert all(g["rendered_text"] == r["rendered_text"] for g, r in zip(got, rows))


def test_compbench_and_commontext_when_present(tag, shared_data) -> None:
    data = shared_data
    texts, labels = [], []
    for name in ("color", "shape", "texture", "spatial", "3d_spatial", "non_spatial", "numeracy", "complex"):
        lines = (data / "t2i-compbench" / f"{name}_train.txt").read_text(encoding="utf-8").splitlines()
        texts += lines[:40]
        labels += [name] * 40
    rows = tag(texts)
    assert sum(r["category"] == label for r, label in zip(rows, labels)) / len(rows) >= 0.85
    assert not any(r["rendered_text"] for r in rows)
    prompts = json.loads((data / "commontext" / "train.json").read_text(encoding="utf-8"))[:5000]
    exact = sum(extract_rendered_text(p) == [re.search(r"'(.*)'", p).group(1)] for p in prompts)
    assert exact / len(prompts) >= 0.99


def _records() -> list[Prompt]:
    return [
        Prompt("a yellow umbrella and a green raincoat", criterion="quality", source="file"),
        Prompt("a sign saying 'hello'", criterion="text", source="file"),
        Prompt("a cup on a desk", criterion="semantic", source="compbench", category="spatial", tags=["spatial"]),
        Prompt("a poster with a slogan", criterion="text", source="file", rendered_text=["SALE"]),
        Prompt('a shop sign that says "OPEN LATE"', criterion="text", source="file", category="text_rendering",
               tags=["text_rendering"]),  # labelled by its source, words to render not given
    ]


def test_tag_step_labels_only_unlabelled_records(tag) -> None:
    step = build_step("tag", {"batch_size": 2})
    records = _records()
    result = step.run(records, Context(progress=False))
    assert result.kept == records and result.dropped == []
    first, second, labelled, given, labelled_text = records
    assert (first.category, first.tags) == ("color", ["color"])
    assert (second.category, second.rendered_text) == ("text_rendering", ["hello"])
    assert set(first.scores) == {"visual", "tokens"} and first.scores["tokens"] == 7.0
    assert (labelled.category, labelled.tags, labelled.scores) == ("spatial", ["spatial"], {})
    assert (given.category, given.tags, given.rendered_text) == ("text_rendering", ["text_rendering"], ["SALE"])
    assert labelled_text.rendered_text == ["OPEN LATE"] and labelled_text.scores == {}  # not re-tagged


def test_tag_step_overwrite_relabels_everything(tag) -> None:
    records = _records()
    build_step("tag", {"overwrite": True}).run(records, Context(progress=False))
    assert records[2].category == "spatial" and "visual" in records[2].scores
    assert (records[3].category, records[3].rendered_text) == ("general", [])


def test_tag_step_and_visual_filter_reject_bad_config() -> None:
    with pytest.raises(ConfigError, match=r"steps\.tag\.modle"):
        build_step("tag", {"modle": "en_core_web_sm"})
    with pytest.raises(ConfigError, match="batch_size"):
        build_step("tag", {"batch_size": 0})
    with pytest.raises(ConfigError, match="min_score"):
        build_step("visual", {"min_score": 1.5})


def test_unknown_spacy_pipeline_is_a_config_error() -> None:
    from filters.lib.tagging import load_nlp

    with pytest.raises(ConfigError, match="no_such_pipeline"):
        load_nlp("no_such_pipeline")


def test_visual_filter_drops_abstract_prompts_with_reason(tag) -> None:
    records = [Prompt("How do I make my code faster?", criterion="quality", source="file"),
               Prompt("a red barn in a snowy field", criterion="quality", source="file"),
               Prompt("anything at all", criterion="quality", source="file", scores={"visual": 0.12})]
    result = build_step("visual", {"min_score": 0.3}).run(records, Context(progress=False))
    assert [r.text for r in result.kept] == ["a red barn in a snowy field"]
    reasons = {r.text: why for r, why in result.dropped}
    assert reasons["anything at all"] == "visual: not_visual 0.12 < 0.30"  # a cached score is not recomputed
    assert re.fullmatch(r"visual: not_visual 0\.[0-2]\d < 0\.30", reasons["How do I make my code faster?"])
