"""The built-in prompt generators: exact counts, distinct dedup keys, determinism, category shares,
what each category's prompts contain, rendered_text, a/an grammar, and the errors."""

from __future__ import annotations

import functools
import importlib.resources
import random
import re
from collections import Counter

import pytest

from core.records import CATEGORIES, CRITERIA, dedup_key
from curate.sources.generators import (COMPOSITIONAL_CATEGORIES, CRITERION_OF, GENERATORS, Generator, _Category, _pick,
                                       generate, load_lexicon, pluralize, with_article)

N = {"compositional": 8003, "text_rendering": 4000, "quality": 4000}


@pytest.fixture(scope="module")
def made() -> dict[str, list]:
    return {name: generate(name, n, seed=7) for name, n in N.items()}


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("name", list(N))
def test_exact_n_distinct_keys_and_fields(made, name):
    prompts = made[name]
    assert len(prompts) == N[name]
    assert len({dedup_key(p.text) for p in prompts}) == N[name]
    for p in prompts:
        assert p.source == f"generator:{name}"
        assert p.criterion == CRITERION_OF[name] and p.criterion in CRITERIA
        assert p.category in CATEGORIES and p.tags[0] == p.category
        assert len(set(p.tags)) == len(p.tags) and set(p.tags) <= set(CATEGORIES)
        assert p.text == p.text.strip() and "  " not in p.text and "{" not in p.text


@pytest.mark.parametrize("name", list(N))
def test_deterministic_and_seed_dependent(made, name):
    again = generate(name, N[name], seed=7)
    assert [p.to_dict() for p in again] == [p.to_dict() for p in made[name]]
    other = {p.text for p in generate(name, N[name], seed=8)}
    mine = {p.text for p in made[name]}
    assert other != mine
    assert len(other & mine) < 0.05 * len(mine)


def test_zero_and_small_n():
    assert generate("quality", 0, seed=0) == []
    assert len(generate("compositional", 3, seed=0)) == 3  # fewer prompts than categories


def test_even_split_remainder_to_first_categories(made):
    counts = Counter(p.category for p in made["compositional"])
    # 8003 = 8 x 1000 + 3: the first three categories (in the canonical order) get one more.
    assert [counts[c] for c in COMPOSITIONAL_CATEGORIES] == [1001] * 3 + [1000] * 5


def test_category_subset_is_order_free_and_matches_full_run(made):
    a = generate("compositional", 5, seed=7, categories=["numeracy", "color"])
    b = generate("compositional", 5, seed=7, categories=["color", "numeracy", "color"])
    assert [p.text for p in a] == [p.text for p in b]
    assert [p.category for p in a] == ["color"] * 3 + ["numeracy"] * 2
    # Each category draws from its own stream: a subset gives the start of the full run's block.
    full_color = [p.text for p in made["compositional"] if p.category == "color"]
    assert [p.text for p in a[:3]] == full_color[:3]


def test_single_category_generators(made):
    assert {p.category for p in made["text_rendering"]} == {"text_rendering"}
    assert {p.category for p in made["quality"]} == {"general"}
    assert generate("quality", 10, seed=1, categories=["general"]) == generate("quality", 10, seed=1)


# --------------------------------------------------------------------------- errors


def test_unknown_generator():
    with pytest.raises(ValueError, match="unknown generator 'nope'.*compositional"):
        generate("nope", 1, seed=0)


@pytest.mark.parametrize(
    ("name", "categories"),
    [("compositional", ["colour"]), ("compositional", ["text_rendering"]), ("text_rendering", ["color"]),
     ("quality", ["text_rendering"])],
)  # fmt: skip
def test_unknown_category(name, categories):
    with pytest.raises(ValueError, match=f"has no category '{categories[0]}'"):
        generate(name, 1, seed=0, categories=categories)


def test_empty_category_list_and_negative_n():
    with pytest.raises(ValueError, match="empty category list"):
        generate("compositional", 1, seed=0, categories=[])
    with pytest.raises(ValueError, match="n must be >= 0"):
        generate("quality", -1, seed=0)


@pytest.mark.parametrize("name", list(N))
def test_impossible_n_fails_before_drawing(name):
    with pytest.raises(ValueError, match="at most about"):
        generate(name, 10**30, seed=0)


def test_impossible_n_found_while_drawing():
    # 4 distinct template fills, but "red cup" and "red cup." share a dedup key: only 2 exist.
    cat = _Category("general", ["{style} cup", "{style} cup."], {"style": _pick(["red", "blue"])}, {"style": 2})
    gen = Generator("quality", lambda: {"general": cat}, ("general",))
    assert gen.capacity("general") == 4
    assert len(gen.generate(2, seed=0)) == 2
    with pytest.raises(ValueError, match="found only 2 distinct prompts of 3"):
        gen.generate(3, seed=0)


# --------------------------------------------------------------------------- what prompts look like


def _has_any(text: str, words) -> bool:
    return any(re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", text, re.IGNORECASE) for w in words)


@pytest.fixture(scope="module")
def attrs():
    a = load_lexicon("attributes")
    return {
        "color": a["colors"],
        "shape": [e["word"] for e in a["shapes"]] + [e["word"] for e in a["sizes"]],
        "texture": [e["word"] for e in a["materials"]],
    }


def test_compositional_categories_say_what_they_test(made, attrs):
    comp = load_lexicon("compositional")
    numbers = comp["numbers"]["words"] + comp["numbers"]["digits"]
    must = {
        **attrs,
        "spatial": comp["relations_2d"],
        "3d_spatial": comp["relations_3d"],
        "numeracy": numbers,
    }
    by_cat: dict[str, list] = {}
    for p in made["compositional"]:
        by_cat.setdefault(p.category, []).append(p)
    for cat, words in must.items():
        missing = [p.text for p in by_cat[cat] if not _has_any(p.text, words)]
        assert not missing, f"{cat}: {missing[:5]}"
    # Several attributes or relations in each complex prompt.
    assert all(len(p.tags) >= 3 for p in by_cat["complex"]), [p.tags for p in by_cat["complex"] if len(p.tags) < 3]
    # Every non_spatial prompt has an agent doing something ("a chef tasting soup").
    assert all(re.search(r"\b\w+ing\b", p.text) for p in by_cat["non_spatial"])
    # Two-object prompts are common in the attribute-binding categories.
    for cat in ("color", "shape", "texture"):
        two = sum(" and " in p.text or " with " in p.text or "alongside" in p.text for p in by_cat[cat])
        assert two > 0.5 * len(by_cat[cat])


def test_tags_follow_what_was_drawn(made, attrs):
    for p in made["compositional"]:
        if p.category == "spatial" and "color" in p.tags:
            assert _has_any(p.text, attrs["color"]), p.text
    cats = Counter(t for p in made["compositional"] if p.category == "complex" for t in p.tags)
    for tag in ("color", "shape", "texture", "spatial", "3d_spatial", "non_spatial", "numeracy"):
        assert cats[tag] > 0, tag


def test_numeracy_plural_agreement(made):
    objects = load_lexicon("objects")
    singular = {n for nouns in objects["groups"].values() for n in nouns}
    plural = {pluralize(n, objects["plurals"]) for n in singular}
    comp = load_lexicon("compositional")
    value = {w: i + 1 for i, w in enumerate(comp["numbers"]["words"])}
    value |= {d: i + 1 for i, d in enumerate(comp["numbers"]["digits"])}
    checked = 0
    for p in made["compositional"]:
        if p.category != "numeracy":
            continue
        text = re.sub(r"^(there are|exactly|a photo of) |( lined up in a row)?\.?$", "", p.text, flags=re.I)
        for part in re.split(r",? and |, ", text):
            count, _, phrase = part.partition(" ")
            forms = singular if value[count] == 1 else plural
            assert any(phrase == f or phrase.endswith(" " + f) for f in forms), (p.text, part)
            checked += 1
    assert checked > 1000


def test_pluralize():
    irregular = load_lexicon("objects")["plurals"]
    cases = {"apple": "apples", "bus": "buses", "box": "boxes", "peach": "peaches", "cherry": "cherries",
             "key": "keys", "knife": "knives", "old man": "old men", "fisherman": "fishermen", "mouse": "mice",
             "sheep": "sheep", "loaf of bread": "loaves of bread", "wine glass": "wine glasses"}  # fmt: skip
    assert {s: pluralize(s, irregular) for s in cases} == cases


_QUOTE_PAIRS = (("'", "'"), ('"', '"'), ("\u2018", "\u2019"), ("\u201c", "\u201d"))
_QUOTE_CHARS = set("'\"\u2018\u2019\u201c\u201d")


def _unquote(text: str, rendered: list[str]) -> str:
    """`text` with each rendered string and the quote pair around it cut out, in order; fails if
    a rendered string is not quoted verbatim."""
    for r in rendered:
        at = [(text.find(o + r + c), o + r + c) for o, c in _QUOTE_PAIRS if o + r + c in text]
        assert at, (r, text)
        i, quoted = min(at)
        text = text[:i] + "<q>" + text[i + len(quoted) :]
    return text


def test_rendered_text_is_exactly_the_quoted_text(made):
    for p in made["text_rendering"]:
        assert p.rendered_text and all(r.strip() == r and r for r in p.rendered_text), p.text
        # Outside the quoted strings no quote mark is left: nothing else asks to be rendered.
        assert not _QUOTE_CHARS & set(_unquote(p.text, p.rendered_text)), (p.text, p.rendered_text)
    assert any("'" in r and f"'{r}'" in p.text for p in made["text_rendering"] for r in p.rendered_text)
    for name in ("compositional", "quality"):
        for p in made[name]:
            assert p.rendered_text == [] and not _QUOTE_CHARS & set(p.text), p.text


def test_project_extractor_reads_back_rendered_text(made):
    from filters.lib.rendered_text import extract_rendered_text

    for p in made["text_rendering"]:
        assert extract_rendered_text(p.text) == p.rendered_text, p.text
    for name in ("compositional", "quality"):
        assert not [p.text for p in made[name] if extract_rendered_text(p.text)]


def test_text_rendering_variety(made):
    prompts = made["text_rendering"]
    styles = Counter(next(o for o, c in _QUOTE_PAIRS if o + p.rendered_text[0] + c in p.text) for p in prompts)
    assert set(styles) == set("'\"\u2018\u201c") and min(styles.values()) > 0.05 * len(prompts)
    rendered = [r for p in prompts for r in p.rendered_text]
    words = [r for r in rendered if " " not in r]
    phrases = [r for r in rendered if " " in r]
    assert 0.7 < len(words) / len(rendered) < 0.9  # mostly single words
    assert {len(r.split()) for r in phrases} >= {2, 3, 4, 5}
    assert any("'" in r for r in phrases)  # apostrophes inside: "don't panic"
    assert sum(len(p.rendered_text) == 2 for p in prompts) > 0  # a few prompts show two strings
    lex = load_lexicon("text_rendering")
    n_words, n_phrases = len(set(lex["words"].split())), len(lex["phrases"].splitlines())
    assert n_words >= 500 and n_phrases >= 100
    assert len({r.lower() for r in rendered}) > 0.6 * (n_words + n_phrases)  # the lexicon is used


def test_quality_prompts(made):
    lex = load_lexicon("quality")
    for p in made["quality"]:
        assert p.tags == ["general"]
        assert _has_any(p.text, lex["lighting"] + lex["details"] + lex["composition"]), p.text
    # Every sentence starts with a capital.
    assert not [p.text for p in made["quality"] if re.search(r"\. [a-z]", p.text)]


# --------------------------------------------------------------------------- a / an

# An independent oracle: the letter rule, plus every word said otherwise than it is spelt that the
# lexicons use. A new word starting with a digit, a lone letter or an acronym must be added here.
_SAID_OTHERWISE = {
    "unicorn": "a", "uniform": "a", "unicycle": "a", "ukulele": "a", "one": "a", "useful": "a",
    "hour": "an", "hourglass": "an", "honest": "an",
    "x-ray": "an", "l-shaped": "an", "u-shaped": "a", "t-shirt": "a", "t-rex": "a", "led": "an",
    "hdr": "an", "dslr": "a", "dj": "a", "8k": "an", "3d": "a", "35mm": "a",
}  # fmt: skip


def _article_errors(text: str) -> list[str]:
    errors = []
    for art, word in re.findall(r"(?<![\w'-])(a|an|A|An) ([\w-]+)", text):
        w = word.lower()
        if w in _SAID_OTHERWISE:
            want = _SAID_OTHERWISE[w]
        else:
            assert not (w[0].isdigit() or len(w.split("-")[0]) == 1 or word.split("-")[0].isupper()), (
                f"{word!r} in {text!r}: add it to _SAID_OTHERWISE"
            )
            want = "an" if w[0] in "aeiou" else "a"
        if art.lower() != want:
            errors.append(f"{art} {word}: {text}")
    return errors


def test_articles_are_grammatical(made):
    # Quoted text is judged as words: "IT'S A SIGN" is shouting, not an acronym.
    errors = [
        e
        for prompts in made.values()
        for p in prompts
        for e in _article_errors(functools.reduce(lambda t, r: t.replace(r, r.lower()), p.rendered_text, p.text))
    ]
    assert not errors, errors[:10]


def test_with_article_edge_cases():
    cases = ["an orange umbrella", "a unicorn", "an umbrella", "an hourglass", "a hexagonal table",
             "an L-shaped sofa", "a U-shaped desk", "a T-shirt", "an LED display", "an 8k photograph",
             "a 35mm film photograph", "an 11-year-old", "a 3D render", "an x-ray", "an uninvited guest",
             "a eucalyptus tree", "a one-eyed cat", "an oval mirror"]  # fmt: skip
    for case in cases:
        art, phrase = case.split(" ", 1)
        assert with_article(phrase) == case


# --------------------------------------------------------------------------- size of the space


def test_spaces_are_large():
    for name, gen in GENERATORS.items():
        total = sum(gen.capacity(c) for c in gen.categories)
        assert total >= 1_000_000, name
        for c in gen.categories:
            assert gen.capacity(c) >= 100_000, (name, c)


def test_draws_rarely_repeat():
    # Raw draws (before dedup): few repeat in 5k, for every category; bench/generators.py measures more.
    for name, gen in GENERATORS.items():
        for c in gen.categories:
            rng = random.Random(0)
            keys = {dedup_key(gen.draw(c, rng)) for _ in range(5_000)}
            assert len(keys) > 0.97 * 5_000, (name, c, len(keys))


def test_lexicons_are_commented_yaml_of_strings():
    folder = importlib.resources.files("curate") / "lexicons"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".yaml"))
    assert names == ["attributes.yaml", "compositional.yaml", "objects.yaml", "quality.yaml", "text_rendering.yaml"]
    for name in names:
        assert (folder / name).read_text(encoding="utf-8").startswith("# "), name
        load_lexicon(name.removesuffix(".yaml"))  # raises on a non-string leaf
