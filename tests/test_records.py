from hypothesis import given
from hypothesis import strategies as st

from core.records import Prompt, clean_text, dedup_key, normalize_text, prompt_id


def test_normalize_ignores_case_spacing_quotes_and_edge_punctuation():
    assert normalize_text("  A Red   CAR, parked.  ") == normalize_text("a red car , parked")
    assert normalize_text("a sign saying “hi”") == normalize_text('a sign saying "hi"')
    assert normalize_text("a red car") != normalize_text("a blue car")


def test_dedup_key_treats_and_pairs_as_unordered():
    assert dedup_key("a red car and a blue bench") == dedup_key("A blue bench and a red car.")
    assert dedup_key("a red car and a blue bench") != dedup_key("a blue car and a red bench")
    assert dedup_key("a red cube, and a blue sphere") == dedup_key("a blue sphere and a red cube")  # comma before "and"
    # Three-way lists keep their order: only a single top-level pair is order-free.
    assert dedup_key("a, b and c") == normalize_text("a, b and c")


def test_clean_text_removes_control_bytes_but_keeps_words():
    assert clean_text("a\x00red\tcar\u200b") == "a red car"
    assert clean_text("\ufeffcafe\u0301") == "café"


def test_prompt_id_is_stable_and_text_derived():
    assert Prompt("A red car", "semantic", "x").id == prompt_id("a red car.")
    assert len(prompt_id("x")) == 16


texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)


@given(texts)
def test_normalize_is_idempotent(text):
    once = normalize_text(text)
    assert normalize_text(once) == once


@given(texts)
def test_dedup_key_is_idempotent_on_normalised_text(text):
    assert dedup_key(dedup_key(text)) == dedup_key(text)


@given(st.text(alphabet="abc xyz", min_size=1, max_size=12), st.text(alphabet="abc xyz", min_size=1, max_size=12))
def test_and_pairs_are_order_independent(left, right):
    left, right = left.strip() or "a", right.strip() or "b"
    assert dedup_key(f"{left} and {right}") == dedup_key(f"{right} and {left}")


# --- dedup properties -------------------------------------------------------------------

from hypothesis import settings  # noqa: E402

from filters.base import Context  # noqa: E402
from filters.dedup_exact import DedupExact  # noqa: E402

variants = st.sampled_from(["a red car", "A red car.", "a  red CAR", "a blue bench and a red car",
                            "a red car and a blue bench", "the red car and a blue bench", "two cats",
                            "Two cats!", "a sign that says 'OPEN'", "a sign that says \"open\""])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(variants, st.sampled_from(["quality", "semantic"])), max_size=25), st.randoms())
def test_exact_dedup_is_order_independent_and_idempotent(rows, rnd):
    records = [Prompt(text, criterion, "src") for text, criterion in rows]
    kept = DedupExact().run(records, Context()).kept
    shuffled = list(records)
    rnd.shuffle(shuffled)
    kept_shuffled = DedupExact().run(shuffled, Context()).kept
    as_set = lambda rs: sorted((r.id, r.criterion, r.text) for r in rs)  # noqa: E731
    assert as_set(kept) == as_set(kept_shuffled)
    assert len({dedup_key(r.text) for r in kept}) == len(kept)
    again = DedupExact().run(kept, Context())
    assert again.dropped == [] and len(again.kept) == len(kept)
