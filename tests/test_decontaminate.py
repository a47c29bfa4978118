"""Decontamination: a planted evaluation set and light rewordings of its prompts never reach data/, each
drop names the eval prompt it copies and how, and prompts that merely share a phrase with one stay."""

from __future__ import annotations

import pytest
import yaml

from core.errors import ConfigError
from core.records import Prompt
from curate.curated_set import iter_rows, read_manifest
from curate.pipeline import build, resolve_recipe
from filters.base import Context, build_step
from filters.lib.contamination import EvalIndex, word_ngrams

EVAL = [
    "a red bicycle leaning against a brick wall at sunset",
    "an old fisherman mending his nets on a wooden pier at dawn",
    "a glass teapot filled with blooming flowers on a marble kitchen counter",
    "a knight in silver armor riding a black horse through a misty forest",
    "a golden retriever running on the beach",
    "an astronaut riding a horse on the moon",
    "a photo of a cat",
    "a red cube on a blue sphere",
    "a wooden sign reading 'welcome home' hanging on a front door",
    "a portrait of a samurai in the rain, highly detailed digital art, trending on artstation",
]
SURFACE = 6  # the first copies are surface matches: no embedder needed
# Each copy, the kind of match the default rules make, and the eval prompt it copies.
COPIES = [
    ("a red bicycle leaning against a brick wall at sunset", "eval_exact", EVAL[0]),
    ("A RED bicycle leaning against a brick wall at sunset!", "eval_exact", EVAL[0]),  # case, punctuation
    ("an old fisherman mending his nets on a wooden dock at dawn", "eval_ngram", EVAL[1]),  # a word changed
    ("a glass teapot filled with blooming pink flowers on a marble kitchen counter", "eval_ngram", EVAL[2]),  # adjective
    ("through a misty forest, a knight in silver armor riding a black horse", "eval_ngram", EVAL[3]),  # clause moved
    ("a red bicycle leaning against a stone wall at sunset", "eval_ngram", EVAL[0]),  # a word changed, 10 words
    ("a golden retriever runs along the beach", "eval_semantic", EVAL[4]),  # paraphrases
    ("an astronaut on horseback on the moon", "eval_semantic", EVAL[5]),
]
# Prompts that share a phrase, a template or their words with an eval prompt, and are other prompts.
OTHERS = [
    "a dragon flying over a village at sunset",
    "a photo of a dog",
    "a blue cube on a red sphere",
    "a wooden sign reading 'gone fishing' hanging on a front door",
    "a bowl of ramen on a wooden table, highly detailed digital art, trending on artstation",
    "an old man reading a newspaper on a park bench",
    "a bicycle parked outside a bakery in the morning",
    "three wooden chairs around a round glass table",
    "a cyclist riding through a rainy city street at night",
    "a cozy cabin in a snowy pine forest",
    "a macro photo of a dewdrop on a leaf",
    "two penguins standing on an iceberg",
]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> Context:
    return Context(seed=0, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)  # bundled MiniLM


def test_circular_ngrams_give_each_word_n_and_ignore_where_the_prompt_starts():
    assert word_ngrams("A red, CAR!", 3) == {"a red car", "red car a", "car a red"}
    assert word_ngrams("at sunset, a red car", 3) == word_ngrams("a red car at sunset", 3)
    assert word_ngrams("...", 3) == set()


def test_ngram_rule_alone_catches_light_rewordings_and_not_shared_phrases():
    index = EvalIndex(EVAL, semantic_threshold=None)
    found = index.match([text for text, _, _ in COPIES] + OTHERS)
    assert [(m.kind, m.eval_text) for m in found[:SURFACE]] == [(kind, copied) for _, kind, copied in COPIES[:SURFACE]]
    assert found[SURFACE:] == [None] * (len(COPIES) - SURFACE + len(OTHERS))


def test_semantic_rule_skips_rearrangements_and_other_rendered_text(ctx):
    index = EvalIndex(EVAL, ngram_threshold=None, embed=ctx.embed_texts, semantic_threshold=0.9)
    found = index.match([COPIES[SURFACE][0], "a blue cube on a red sphere", "a wooden sign reading 'gone fishing' hanging on a front door"])
    assert found[0].kind == "eval_semantic" and found[0].eval_text == EVAL[4] and found[0].score >= 0.9
    assert found[1:] == [None, None]


def _build(tmp_path, eval_sets: list[str], name: str = "out"):
    pool = tmp_path / "pool.txt"
    pool.write_text("\n".join([text for text, _, _ in COPIES] + OTHERS) + "\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "size": 100, "on_shortfall": "warn", "embedder": {"kind": "hf"},
        "sources": {"quality": [{"uri": str(pool)}]}, "quotas": {"quality": {"fraction": 1.0}},
        "steps": {"decontaminate": {"eval_sets": eval_sets}},
    }))
    recipe_name, data = resolve_recipe(str(recipe))
    out = tmp_path / name
    build(recipe_name, data, out, progress=False, log=lambda message: None)
    return out


def test_a_planted_eval_set_and_its_rewordings_never_reach_the_set(tmp_path):
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "first.txt").write_text("\n".join(EVAL[:6]) + "\n")
    (tmp_path / "evals" / "rest.jsonl").write_text("".join(f'{{"prompt": "{t}"}}\n' for t in EVAL[6:]))
    out = _build(tmp_path, [str(tmp_path / "evals")])
    kept = sorted(row["text"] for row in iter_rows(out, "data"))
    assert kept == sorted(OTHERS)
    reasons = {row["text"]: row["reason"] for row in iter_rows(out, "rejected")}
    for text, kind, copied in COPIES:
        assert reasons[text].startswith(f"decontaminate: {kind} "), reasons[text]
        assert f"of '{copied[:57]}" in reasons[text] and str(tmp_path / "evals") in reasons[text]
    step = next(s for s in read_manifest(out)["steps"] if s["name"] == "decontaminate")
    assert step["dropped"] == len(COPIES) and set(step["reasons"]) == {"eval_exact", "eval_ngram", "eval_semantic"}


def test_a_missing_eval_set_is_a_one_line_error_naming_it(tmp_path):
    missing = str(tmp_path / "evals" / "parti.txt")
    with pytest.raises(ConfigError) as exc:
        resolve_recipe("tiny", [f"steps.decontaminate.eval_sets=[{missing}]"])
    assert missing in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="ngram_threshold must be in"):
        build_step("decontaminate", {"eval_sets": [], "ngram_threshold": 2})


def test_with_no_eval_sets_the_step_reads_and_loads_nothing():
    # No reader and an embedder that cannot be built: either would fail if the step touched it.
    records = [Prompt(text=t, criterion="quality", source="t") for t in OTHERS]
    result = build_step("decontaminate", {"eval_sets": []}).run(records, Context(embedder_spec={"kind": "none"}))
    assert result.kept == records and not result.dropped


def test_the_shipped_recipes_carry_the_step_and_build_the_same_rows_without_eval_sets(tmp_path):
    for recipe in ("tiny", "balanced", "compbench", "commontext", "quality"):
        assert resolve_recipe(recipe)[1]["steps"]["decontaminate"] == {"eval_sets": []}, recipe
    sets = []
    for name, overrides in (("with", []), ("without", ["steps.decontaminate=null"])):
        recipe_name, data = resolve_recipe("tiny", overrides)
        build(recipe_name, data, tmp_path / name, progress=False, log=lambda message: None)
        sets.append({part: [row for row in iter_rows(tmp_path / name, part)] for part in ("data", "rejected")})
    assert sets[0] == sets[1] and sets[0]["data"]
