"""Text hygiene: invisible format characters, look-alikes, and which copy dedup keeps.

clean_text removes format characters (category Cf) instead of spacing them; normalize_text and
dedup_key fold Cyrillic/Greek look-alikes and decoration/stacked combining marks onto the Latin
skeleton; lookalike_reason says why ingest should refuse a prompt; dedup keeps the cleanest copy."""

from __future__ import annotations

import json
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.records import (_LOOKALIKE, Prompt, canonical_key, clean_text, dedup_key, lookalike_reason,
                          normalization_cost, normalize_text, prompt_id)
from curate.sources.files import SourceSpec, read_source
from filters.base import Context, build_step
from filters.lib.rendered_text import extract_rendered_text

CF = "\u00ad\ufeff\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2066\u2067\u2068\u2069" \
     "\u061c\U000e0001\U000e0041\U000e007f"
MARKS = "\u0301\u0308\u0327\u0332\u0334\u0335\u0336\u0337\u0338\u20d2\u0489"
# Text built to hit the hard cases: format characters, look-alikes, marks, quotes, odd spaces and
# controls, next to Latin, Cyrillic and Greek letters that are not look-alikes.
OTHERS = "длλωµİé=\n\t\x00\u2028\u3000\uff52"  # not look-alikes; control, odd spaces, fullwidth r
LATIN = "aeopcxyKHMB ,.!?'\"\u201c\u201d\u2018\u2019"
tricky = st.text(st.sampled_from(list(LATIN + CF + MARKS + OTHERS) + list(_LOOKALIKE)), max_size=40)
anything = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
# Whole pieces, for what dedup_key does with "A and B" pairs, articles and punctuation around marks.
pieces = st.lists(st.sampled_from([" and ", "the ", "a ", ", ", ". ", "!", " ", "red", "c\u0430r", "\u039d", "\u0434",
                                   "\u0301", "\u0336", "\u0489", "\u200b", "\u0130", "\u201c", "'", "0", "\u00b4",
                                   "\u0353\u0354", "\n"]), max_size=12).map("".join)
texts = st.one_of(tricky, anything, pieces)
NORMALISERS = [clean_text, normalize_text, dedup_key]


def _has_cf(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cf" for ch in text)


@settings(max_examples=300, deadline=None)
@given(texts)
def test_normalisers_are_idempotent_and_leave_no_format_character(text):
    for normalise in NORMALISERS:
        once = normalise(text)
        assert normalise(once) == once, normalise.__name__
        assert not _has_cf(once), normalise.__name__


@settings(max_examples=200, deadline=None)
@given(st.text(st.sampled_from("abcdefghij"), min_size=1, max_size=8), st.sampled_from(CF),
       st.integers(min_value=0, max_value=8))
def test_a_format_character_inside_a_word_is_removed_not_spaced(word, cf, at):
    at = min(at, len(word))
    assert clean_text(word[:at] + cf + word[at:]) == word
    assert dedup_key(f"a {word[:at]}{cf}{word[at:]} car") == dedup_key(f"a {word} car")


@pytest.mark.parametrize("dirty, clean", [
    ("re\u200bd car", "red car"),  # zero-width space
    ("a co\u00adoperative farm", "a cooperative farm"),  # soft hyphen
    ("\ufeffa red car", "a red car"),  # BOM at the start of a file's first line
    ("a sign saying \u202eolleh\u202c", "a sign saying olleh"),  # bidi override: the stored order stays
    ("a \u2066red\u2069 car", "a red car"),  # bidi isolates
    ("a red\u2060car", "a redcar"),  # word joiner joins; it never separated
    ("a flag \U0001f3f4\U000e0067\U000e0062\U000e007f", "a flag \U0001f3f4"),  # tag characters
])
def test_format_characters_are_removed(dirty, clean):
    assert clean_text(dirty) == clean


@pytest.mark.parametrize("dirty, clean", [
    ("a\x00red\tcar", "a red car"),  # control bytes
    ("a red car\u2028parked", "a red car parked"),  # line separator
    ("a red car\u2029parked", "a red car parked"),  # paragraph separator
    ("a\u1680red car", "a red car"),  # a space NFKC keeps
    ("\uff41 \uff52\uff45\uff44 car", "a red car"),  # fullwidth: NFKC
])
def test_other_non_printables_still_become_spaces(dirty, clean):
    assert clean_text(dirty) == clean


def test_clean_ascii_is_returned_unchanged():
    for text in ["A red car.", "a sign saying 'OPEN 24/7'", "3:30 pm, 1,000 cats"]:
        assert clean_text(text) == text and normalization_cost(text) == 0 and lookalike_reason(text) is None


def test_rendered_text_of_a_quoted_word_with_a_zero_width_space_is_the_word(tmp_path):
    # The real path: a source file read at ingest (clean_text), then the tag step.
    prompt = 'a neon sign saying "he\u200bllo" above a door'
    (tmp_path / "p.txt").write_text(prompt + "\n", encoding="utf-8")
    (tmp_path / "p.jsonl").write_text(json.dumps({"text": prompt.replace('"', "'")}) + "\n", encoding="utf-8")
    records = read_source(SourceSpec(uri=str(tmp_path)), "text").records
    assert len(records) == 2
    assert [extract_rendered_text(r.text) for r in records] == [["hello"], ["hello"]]
    build_step("tag", {}).run(records, Context(progress=False))
    assert [r.rendered_text for r in records] == [["hello"], ["hello"]]


# --- look-alikes ---------------------------------------------------------------------------

CLEAN = "a red car parked next to a blue bench"
COPIES = [
    "a r\u0435d \u0441\u0430r parked next to a blue bench",  # Cyrillic е, с, а inside Latin words
    "a red car parked next to a blue b\u0435n\u0441h",
    "\u0430 red car parked next to a blue bench",  # a whole Cyrillic "а" in a Latin prompt
    "a red car \u03c1arked next to a blue bench",  # Greek rho
    "a r\u0336e\u0336d\u0336 car parked next to a blue bench",  # strike-through
    "a red c\u0338a\u0338r parked next to a blue bench",  # long solidus overlay
    "a re\u0353\u0354\u0355d car parked next to a blue bench",  # marks piled on a Latin letter
    "\uff41 red car parked next to a blue bench",  # fullwidth (NFKC)
    "A RED CAR PARKED NEXT TO A BLUE BENCH",
]


@pytest.mark.parametrize("copy", COPIES)
def test_a_lookalike_copy_has_the_clean_prompts_key_and_id(copy):
    assert normalize_text(copy) == normalize_text(CLEAN)
    assert dedup_key(copy) == dedup_key(CLEAN)
    assert prompt_id(copy) == prompt_id(CLEAN)


@pytest.mark.parametrize("text", [
    "красная машина у синей скамьи",
    "ένα κόκκινο αυτοκίνητο",
    "реклама Coca-Cola на стене",  # a Latin brand inside
    "ένα κόκκινο Ferrari",
    "Как дела? ОК",  # a short all-look-alike word in a Russian sentence
])
def test_a_russian_or_greek_prompt_is_neither_folded_nor_flagged(text):
    assert normalize_text(text) == clean_text(text).lower()
    assert lookalike_reason(text) is None
    assert normalization_cost(text) == 0


def test_a_foreign_word_in_a_latin_prompt_folds_for_dedup_but_is_not_flagged():
    moscow = "a sign reading \u041c\u041e\u0421\u041a\u0412\u0410"  # МОСКВА: every letter has a Latin twin
    assert lookalike_reason(moscow) is None
    assert dedup_key(moscow) == dedup_key("a sign reading MOCKBA")  # the two images look the same
    assert normalization_cost(moscow) > normalization_cost("a sign reading MOCKBA")


def test_micro_sign_and_accents_are_not_lookalikes():
    for text in ["a 5\u00b5m bead", "a caf\u00e9 in Hu\u1ebf", "na\u00efve art", "\u0130stanbul", "a \u2260 sign"]:
        assert lookalike_reason(text) is None, text
    assert normalize_text("a 5\u00b5m bead") != normalize_text("a 5mm bead")
    assert normalize_text("a caf\u00e9") != normalize_text("a cafe")  # composed accents are spelling


@pytest.mark.parametrize("text, kind, word", [
    ("a r\u0435d car", "mixed_script", "r\u0435d"),
    ("a red \u0441\u0430r", "mixed_script", "\u0441\u0430r"),
    ("a \u03c1ark", "mixed_script", "\u03c1ark"),
    ("a r\u0336e\u0336d\u0336 car", "combining_overlay", "r\u0336e\u0336d\u0336"),
    ("a red c\u0335ar", "combining_overlay", "c\u0335ar"),
    ("a u\u0332n\u0332d\u0332e\u0332r\u0332 word", "combining_overlay", "u\u0332n\u0332d\u0332e\u0332r\u0332"),
    ("z\u0353\u0354\u0355algo text", "combining_stack", "z\u0353\u0354\u0355algo"),  # no precomposed form
])
def test_lookalike_reason_names_the_kind_and_the_word(text, kind, word):
    assert lookalike_reason(text) == f'{kind} "{word}"'


def test_lookalike_table_folds_to_latin_and_is_closed_under_upper_case():
    # Closure keeps normalize_text idempotent: folding runs before lower-casing.
    assert all(unicodedata.name(v).startswith("LATIN") for v in _LOOKALIKE.values())
    for cp in range(0x370, 0x530):
        ch = chr(cp)
        if ch.lower() in _LOOKALIKE:
            assert ch in _LOOKALIKE, ch


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyzABC"), min_size=1, max_size=8), min_size=1,
                max_size=6), st.sampled_from(["", ".", "!"]))
def test_a_plain_clean_prompt_costs_nothing(words, end):
    text = " ".join(words) + end
    assert normalization_cost(text) == 0


@pytest.mark.parametrize("text, changed", [
    ("a r\u0435d \u0441\u0430r", "\u0435\u0441\u0430"),  # look-alike letters
    ("a r\u0336e\u0336d\u0336 car", "\u0336\u0336\u0336"),  # strike marks
    ("a \u201cred\u201d car", "\u201c\u201d"),  # curly quotes
    ("a red car , parked", " "),  # a space before a comma
    ("re\u200bd car", "\u200b"),  # what clean_text removes counts on raw text
    ("\uff41 red  car", "\uff41 "),  # fullwidth, and a doubled space
])
def test_cost_counts_the_characters_normalisation_changed(text, changed):
    assert normalization_cost(text) == len(changed)


# --- dedup keeps the cleanest copy ----------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(COPIES[:-1]), min_size=1, max_size=6), st.randoms())  # not the all-caps one
def test_dedup_exact_keeps_the_clean_twin_whatever_the_order(copies, rnd):
    records = [Prompt(clean_text(t), "quality", "scraped") for t in [*copies, CLEAN]]
    rnd.shuffle(records)
    kept = build_step("dedup_exact", {}).run(records, Context(progress=False)).kept
    assert [r.text for r in kept] == [CLEAN]


def test_the_clean_twin_wins_even_from_a_later_source():
    # Cost comes before id, source and text: a clean copy from source "zzz" beats a look-alike from "aaa".
    clean = Prompt(CLEAN.capitalize() + ".", "semantic", "zzz")
    fake = Prompt(COPIES[0], "semantic", "aaa")
    assert clean.id == fake.id and canonical_key(clean) < canonical_key(fake)
    assert build_step("dedup_exact", {}).run([fake, clean], Context(progress=False)).kept == [clean]


def test_dedup_near_keeps_the_clean_copy_in_pipeline_order():
    caption = ("an oil painting of an old stone lighthouse standing on a rocky cliff during a violent storm at "
               "night, with huge crashing waves, dark clouds and a single beam of light cutting through the rain")
    fake = caption.replace("huge", "h\u0443ge")  # Cyrillic у: the same id, and from the earlier source
    records = sorted([Prompt(fake, "quality", "a"), Prompt(caption, "quality", "b")], key=canonical_key)
    kept = build_step("dedup_near", {}).run(records, Context(progress=False)).kept
    assert [r.text for r in kept] == [caption]
