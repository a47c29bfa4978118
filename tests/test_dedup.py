"""Near (MinHash/LSH) and semantic (FAISS) dedup: planted duplicate groups collapse to their
first member, distinct prompts all survive, and every drop names its kept twin."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import ConfigError, describe_value
from core.records import Prompt, canonical_key, dedup_key
from filters.base import Context, build_step
from filters.dedup_near import shingles
from filters.lib.similar_pairs import keep_first, similar_pairs

# Each group: the first member must stay, the others must go (by the step in the comment).
GROUPS = [
    [  # case, punctuation, spacing: dedup_exact (dedup_key) or dedup_near
        "A red car parked next to a blue bench",
        "a red car parked next to a blue bench.",
        "A  red car parked next to a blue bench!!",
        "A RED CAR, parked next to a blue bench",
    ],
    [  # order-swapped pair: dedup_key (lead's dedup_exact) and dedup_semantic
        "a green apple and a yellow banana",
        "a yellow banana and a green apple",
    ],
    [  # one word changed in a long (33-word) caption: dedup_near
        "an oil painting of an old stone lighthouse standing on a rocky cliff during a violent storm at night, with "
        "huge crashing waves, dark clouds and a single beam of light cutting through the rain",
        "an oil painting of an old stone lighthouse standing on a rocky cliff during a violent storm at night, with "
        "giant crashing waves, dark clouds and a single beam of light cutting through the rain",
    ],
    [  # close paraphrase: dedup_semantic
        "a golden retriever running on the beach at sunset",
        "a golden retriever runs along the beach at sunset",
    ],
]
DISTINCT = [
    "a sculptor holding a sign reading 'open'",
    "a sculptor holding a sign reading 'closed'",  # differs only in the word to render
    "three wooden chairs around a round glass table",
    "a bowl of ramen with a soft boiled egg",
    "a cyclist riding through a rainy city street at night",
    "a watercolor portrait of an old fisherman",
    "two penguins standing on an iceberg",
    "a red cube on top of a blue sphere",
    "a blue cube on top of a red sphere",
    "a futuristic skyline with flying cars",
    "a cozy cabin in a snowy pine forest",
    "a macro photo of a dewdrop on a leaf",
]


def _records() -> list[Prompt]:
    texts = [t for g in GROUPS for t in g] + DISTINCT
    return [Prompt(text=t, criterion="semantic", source="test") for t in texts]


def _exact(records: list[Prompt]) -> list[Prompt]:
    """The lead's dedup_exact, emulated: first record per dedup_key."""
    seen: dict[str, Prompt] = {}
    return [seen.setdefault(dedup_key(r.text), r) for r in records if dedup_key(r.text) not in seen]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> Context:
    return Context(seed=0, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)  # bundled MiniLM


def test_shingles_need_no_nltk_data_and_ignore_case_and_punctuation():
    assert shingles("A  red CAR, parked!", 3) == {"a red car", "red car parked"}
    assert shingles("Hello!", 3) == {"hello"} and shingles("!!", 3) == set()


def test_near_collapses_surface_variants_and_keeps_distinct(ctx):
    recs = _records()
    result = build_step("dedup_near", {}).run(recs, ctx)
    dropped = {r.text: why for r, why in result.dropped}
    assert set(dropped) == set(GROUPS[0][1:]) | set(GROUPS[2][1:])
    assert dropped[GROUPS[0][2]] == f"dedup_near: near_dup of {recs[0].id} jaccard=1.00 {describe_value(recs[0].text)}"
    assert dropped[GROUPS[2][1]].startswith(f"dedup_near: near_dup of {recs[6].id} jaccard=0.")
    assert len(result.kept) + len(result.dropped) == len(recs)
    assert [r.text for r in result.kept] == [r.text for r in recs if r.text not in dropped]  # order kept


def test_near_matches_brute_force_exact_jaccard(ctx):
    """The banded index must find what comparing every pair finds, under the same rule."""
    rng = np.random.default_rng(0)
    vocab = [f"word{i}" for i in range(3000)]
    texts = [" ".join(rng.choice(vocab, 40)) for _ in range(300)]
    for _ in range(60):  # near copies: a word appended, or one replaced (Jaccard 0.95 or 0.85)
        words = texts[rng.integers(len(texts))].split()
        if rng.random() < 0.5:
            words.append("extra")
        else:
            words[int(rng.integers(3, 37))] = "swapped"
        texts.append(" ".join(words))
    recs = [Prompt(text=t, criterion="quality", source="t") for t in texts]
    result = build_step("dedup_near", {}).run(recs, ctx)

    sets = [shingles(t, 3) for t in texts]
    kept: list[int] = []
    expected = {}
    for i, s in enumerate(sets):
        best = max(((len(s & sets[k]) / len(s | sets[k]), -k) for k in kept), default=(0.0, 0))
        if best[0] >= 0.8:
            expected[texts[i]] = (f"dedup_near: near_dup of {recs[-best[1]].id} jaccard={best[0]:.2f} "
                                  f"{describe_value(recs[-best[1]].text)}")
        else:
            kept.append(i)
    assert len(expected) >= 50
    assert {r.text: why for r, why in result.dropped} == expected


def test_near_never_merges_different_rendered_text(ctx):
    a = Prompt(text="a neon sign reading 'OPEN' in a shop window", criterion="text", source="t",
               rendered_text=["OPEN"])
    b = Prompt(text="a neon sign reading 'open' in a shop window", criterion="text", source="t",
               rendered_text=["open"])
    assert len(build_step("dedup_near", {}).run([a, b], ctx).kept) == 2
    assert len(build_step("dedup_near", {"same_rendered_text": False}).run([a, b], ctx).kept) == 1


def test_near_chain_does_not_cascade(ctx):
    # A~B and B~C (Jaccard 0.8 on 3-grams) but A and C share less: only B goes.
    words = [f"w{i}" for i in range(12)]
    a = " ".join(words)
    b = " ".join(words[:11] + ["x"])
    c = " ".join(words[:10] + ["x", "y"])
    recs = [Prompt(text=t, criterion="quality", source="t") for t in (a, b, c)]
    result = build_step("dedup_near", {"threshold": 0.75}).run(recs, ctx)
    assert [r.text for r in result.kept] == [a, c]


def test_full_dedup_chain_collapses_every_group_and_loses_no_distinct(ctx):
    recs = _records()
    after_exact = _exact(recs)
    near = build_step("dedup_near", {}).run(after_exact, ctx)
    semantic = build_step("dedup_semantic", {"threshold": 0.95}).run(near.kept, ctx)
    survivors = [r.text for r in semantic.kept]
    assert survivors == [g[0] for g in GROUPS] + DISTINCT
    reasons = [why for _, why in semantic.dropped]
    assert all(why.startswith("dedup_semantic: semantic_dup of ") and " cos=0.9" in why for why in reasons)


def test_semantic_catches_order_swaps_and_paraphrases_without_exact_dedup(ctx):
    recs = [Prompt(text=t, criterion="semantic", source="t") for t in GROUPS[1] + GROUPS[3] + DISTINCT]
    result = build_step("dedup_semantic", {}).run(recs, ctx)
    assert {r.text for r, _ in result.dropped} == {GROUPS[1][1], GROUPS[3][1]}
    why = dict((r.text, w) for r, w in result.dropped)[GROUPS[1][1]]
    assert why.startswith(f"dedup_semantic: semantic_dup of {recs[0].id} cos=")


def _planted(n: int, pairs: int, seed: int = 0) -> tuple[np.ndarray, set[tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    src = rng.choice(n // 2, pairs, replace=False)
    dst = n // 2 + np.arange(pairs)
    noise = rng.standard_normal((pairs, 64)).astype(np.float32)
    x[dst] = x[src] + 0.2 * noise / np.linalg.norm(noise, axis=1, keepdims=True)  # cos ~ 0.98
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, {(int(a), int(b)) for a, b in zip(src, dst)}


def test_ivf_search_finds_what_exact_search_finds():
    x, planted = _planted(6000, 150)
    exact = similar_pairs(x, 0.95, exact_max=10**9)
    ivf = similar_pairs(x, 0.95, exact_max=0, nprobe=4, seed=0)
    exact_set = set(zip(exact[0].tolist(), exact[1].tolist()))
    ivf_set = set(zip(ivf[0].tolist(), ivf[1].tolist()))
    assert exact_set == planted  # random 64-d vectors are otherwise far apart
    assert ivf_set <= exact_set and len(ivf_set) >= 0.95 * len(planted)
    assert (ivf[0] < ivf[1]).all() and (ivf[2] >= 0.95).all()


@pytest.mark.parametrize("exact_max", [10**9, 0])  # exact search, IVF cells
def test_max_partners_bounds_the_pairs_of_a_look_alike_group_and_keeps_its_first(exact_max):
    rng = np.random.default_rng(1)
    x, _ = _planted(2000, 0)
    centre = x[7]
    noise = rng.standard_normal((300, 64)).astype(np.float32)
    group = 100 + 3 * np.arange(300)  # 300 look-alikes of row 7, spread through the pool
    x[group] = centre + 0.05 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rule = []
    for partners in (0, 5):
        lo, hi, cos = similar_pairs(x, 0.95, exact_max=exact_max, seed=0, partners=partners)
        rule.append(keep_first(lo, hi, lambda a, b: float(x[a] @ x[b]), 0.95, known=cos))
        assert partners == 0 or len(lo) <= 2 * 301 * partners * 4  # at most `partners` a row, per cell searched
    assert len(lo) < 301 * 300 / 2 / 10  # all pairs: 45,150
    assert {k: v[0] for k, v in rule[1].items()} == {k: v[0] for k, v in rule[0].items()} == {i: 7 for i in group}


def test_keep_first_rule():
    # 0~1, 1~2 (not 0~2): 1 goes, 2 stays. 3~4 and 3~5 and 4~5: 4 and 5 both name 3.
    sim = {(0, 1): 0.97, (1, 2): 0.96, (3, 4): 0.99, (3, 5): 0.96, (4, 5): 0.995}
    lo, hi = np.array([4, 0, 1, 3, 3, 4]), np.array([5, 1, 2, 4, 5, 5])  # any order, repeats allowed
    dup = keep_first(lo, hi, lambda a, b: sim.get((a, b), 0.0), 0.95)
    assert {k: v[0] for k, v in dup.items()} == {1: 0, 4: 3, 5: 3}
    # The search paired 2 only with 1, a dropped copy of 0: 0, its kept twin, is compared too. 3 is paired
    # only with 2 as well, but is not close enough to 0: it stays (no cascade through dropped copies).
    sim = {(0, 1): 0.99, (1, 2): 0.99, (0, 2): 0.97, (2, 3): 0.99, (0, 3): 0.90}
    dup = keep_first(np.array([0, 1, 2]), np.array([1, 2, 3]), lambda a, b: sim.get((a, b), 0.0), 0.95)
    assert dup == {1: (0, 0.99), 2: (0, 0.97)}
    # A similarity the search measured is taken as it is; only the kept twin's is measured afterwards.
    dup = keep_first(np.array([0, 1]), np.array([1, 2]), lambda a, b: sim.get((a, b), 0.0), 0.95,
                     known=np.array([0.96, 0.5]))
    assert dup == {1: (0, 0.96), 2: (0, 0.97)}
    assert keep_first(np.zeros(0, int), np.zeros(0, int), lambda a, b: 1.0, 0.5) == {}


def test_bad_keys_fail_loudly():
    with pytest.raises(ConfigError, match="dedup_near.thresh"):
        build_step("dedup_near", {"thresh": 0.8})
    with pytest.raises(ConfigError, match="threshold"):
        build_step("dedup_semantic", {"threshold": 1.5})


def test_semantic_keeps_rearranged_words_unless_told(ctx):
    # MiniLM scores this attribute-binding pair 0.99: only the rearrangement guard keeps both.
    pair = ["a red cube on top of a blue sphere", "a blue cube on top of a red sphere"]
    recs = [Prompt(text=t, criterion="semantic", source="t") for t in pair]
    assert len(build_step("dedup_semantic", {}).run(recs, ctx).kept) == 2
    assert len(build_step("dedup_semantic", {"keep_rearrangements": False}).run(recs, ctx).kept) == 1


def test_exact_keeps_the_first_in_canonical_order_whatever_the_input_order(ctx):
    # The same pair in two criteria: the pipeline visits quality before semantic, and so does dedup_exact,
    # even when the semantic twin has the smaller id.
    quality = Prompt(text="a red cube and a blue sphere", criterion="quality", source="b")
    semantic = Prompt(text="a blue sphere and a red cube", criterion="semantic", source="a")
    assert semantic.id < quality.id
    step = build_step("dedup_exact", {})
    for records in ([quality, semantic], [semantic, quality]):
        result = step.run(list(records), ctx)
        assert result.kept == [quality]
        assert result.dropped == [(semantic, f"dedup_exact: exact_dup of {quality.id} {describe_value(quality.text)}")]
    same = [Prompt(text=t, criterion="semantic", source="s") for t in GROUPS[0][:3]]  # one dedup_key
    first = min(same, key=canonical_key)
    assert step.run(same, ctx).kept == step.run(same[::-1], ctx).kept == [first]


def test_near_keeps_one_of_a_group_larger_than_the_bucket_window(ctx):
    # Past the window a copy meets only copies dropped already; the group's first must still be found.
    from filters.dedup_near import _WINDOW

    base = "a quiet mountain valley with a winding river, tall pine trees, snow capped peaks and soft golden light"
    records = [Prompt(text=f"{base} number{i}", criterion="quality", source="x") for i in range(3 * _WINDOW)]
    result = build_step("dedup_near", {}).run(records, ctx)
    assert result.kept == [records[0]]
    assert all(why.startswith(f"dedup_near: near_dup of {records[0].id} ") for _, why in result.dropped)
