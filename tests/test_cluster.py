"""Spherical k-means clustering and cluster-balanced selection."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import ConfigError
from core.records import Prompt
from filters.base import Context, build_step
from filters.cluster import cluster_balanced_sample
from filters.lib.ranked import _hash, rank_key

SIZES = [600, 200, 80, 40, 20]  # a skewed fixture: one cluster holds 64%


def _skewed(sizes=SIZES) -> list[Prompt]:
    recs = [Prompt(text=f"prompt {c}-{i}", criterion="quality", source="t")
            for c, n in enumerate(sizes) for i in range(n)]
    for r in recs:
        r.cluster = int(r.text.split()[1].split("-")[0])
    random.Random(1).shuffle(recs)
    return recs


def _share_ratio(picked: list[Prompt]) -> float:
    counts = Counter(r.cluster for r in picked)
    return max(counts.values()) / min(counts.get(c, 0) or 0.5 for c in range(len(SIZES)))


def test_balanced_sample_halves_the_skew_of_random_selection():
    recs = _skewed()
    balanced = cluster_balanced_sample(recs, 100, seed=0)
    uniform = random.Random(0).sample(recs, 100)
    assert len(balanced) == 100 and len({r.id for r in balanced}) == 100
    assert _share_ratio(balanced) <= 0.5 * _share_ratio(uniform)
    assert Counter(r.cluster for r in balanced) == {c: 20 for c in range(5)}


def test_small_clusters_exhausted_then_rest_spread():
    picked = cluster_balanced_sample(_skewed(), 300, seed=3)
    # 20 + 40 all taken; 240 left for three clusters: 80 each (the 80-cluster is exhausted too).
    assert Counter(r.cluster for r in picked) == {0: 80, 1: 80, 2: 80, 3: 40, 4: 20}
    odd = Counter(r.cluster for r in cluster_balanced_sample(_skewed(), 301, seed=3))
    assert sorted(odd.values()) == [20, 40, 80, 80, 81]


def test_deterministic_for_seed_and_in_input_order():
    recs = _skewed()
    a = cluster_balanced_sample(recs, 50, seed=7)
    assert [r.id for r in a] == [r.id for r in cluster_balanced_sample(recs, 50, seed=7)]
    assert [r.id for r in a] != [r.id for r in cluster_balanced_sample(recs, 50, seed=8)]
    position = {r.id: i for i, r in enumerate(recs)}
    assert [position[r.id] for r in a] == sorted(position[r.id] for r in a)
    shuffled = random.Random(2).sample(recs, len(recs))  # the input order changes nothing but the output's
    assert sorted(r.id for r in cluster_balanced_sample(shuffled, 50, seed=7)) == sorted(r.id for r in a)
    assert cluster_balanced_sample(recs, 5000, seed=0) == recs and cluster_balanced_sample(recs, 0, seed=0) == []


def _round_robin(records: list[Prompt], n: int, seed: int) -> list[Prompt]:
    """The definition, dealt one by one (slow): the sampler must match it. Clusters in hash order of
    (seed, cluster), each cluster's records in rank_key order (filters/lib/ranked.py)."""
    groups: dict = {}
    for i, r in enumerate(records):
        groups.setdefault(r.cluster, []).append(i)
    order = [sorted(groups[c], key=lambda i: rank_key(seed, records[i]))
             for c in sorted(groups, key=lambda c: _hash(seed, "group", c))]
    picked: list[int] = []
    while len(picked) < n:
        for g in order:
            if g and len(picked) < n:
                picked.append(g.pop(0))
    return [records[i] for i in sorted(picked)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([0, 1, 2, 3, None]), min_size=1, max_size=60), st.integers(0, 70), st.integers(0, 9))
def test_sampler_equals_round_robin_dealing(clusters, n, seed):
    recs = [Prompt(text=f"p{i}", criterion="quality", source="t", cluster=c) for i, c in enumerate(clusters)]
    expected = _round_robin(recs, min(n, len(recs)), seed)
    assert [r.id for r in cluster_balanced_sample(recs, n, seed)] == [r.id for r in expected]


TOPICS = {
    "animals": (["dog", "cat", "horse", "rabbit", "parrot", "fox"],
                ["sleeping in a barn", "running through a meadow", "playing in the garden", "resting under a tree",
                 "drinking from a stream"]),
    "food": (["bowl of soup", "plate of pasta", "chocolate cake", "pizza", "salad", "sushi platter"],
             ["served on a white plate", "on a restaurant table", "freshly cooked in a kitchen",
              "with herbs and spices", "in a bakery display"]),
    "vehicles": (["car", "bus", "motorcycle", "truck", "bicycle", "train"],
                 ["driving on a highway", "parked in a garage", "crossing a bridge", "stuck in city traffic",
                  "at a gas station"]),
}


@pytest.fixture(scope="module")
def topical() -> list[Prompt]:
    recs = [Prompt(text=f"a {thing} {where}", criterion="quality", source="t", category=topic)
            for topic, (things, places) in TOPICS.items() for thing in things for where in places]
    random.Random(0).shuffle(recs)
    return recs


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> Context:
    return Context(seed=0, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)  # bundled MiniLM


def test_cluster_step_recovers_topics(topical, ctx):
    result = build_step("cluster", {"k": 3}).run(topical, ctx)
    assert result.kept == topical and not result.dropped
    by_cluster: dict[int, Counter] = {}
    for r in topical:
        by_cluster.setdefault(r.cluster, Counter())[r.category] += 1
    purity = sum(c.most_common(1)[0][1] for c in by_cluster.values()) / len(topical)
    assert set(by_cluster) == {0, 1, 2} and purity >= 0.9
    first = [r.cluster for r in topical]
    build_step("cluster", {"k": 3}).run(topical, ctx)
    assert [r.cluster for r in topical] == first  # same seed, same labels
    shuffled = [Prompt(text=r.text, criterion=r.criterion, source="t") for r in random.Random(4).sample(topical, len(topical))]
    build_step("cluster", {"k": 3}).run(shuffled, ctx)  # trained on the same hash-ranked sample: same labels
    assert {r.text: r.cluster for r in shuffled} == {r.text: r.cluster for r in topical}


def test_auto_k_per_criterion_with_ids_unique_across_criteria(topical, ctx):
    recs = [Prompt(text=r.text, criterion="quality" if i % 3 else "semantic", source="t")
            for i, r in enumerate(topical)]
    build_step("cluster", {}).run(recs, ctx)
    sem = {r.cluster for r in recs if r.criterion == "semantic"}
    qual = {r.cluster for r in recs if r.criterion == "quality"}
    n_sem, n_qual = sum(r.criterion == "semantic" for r in recs), sum(r.criterion == "quality" for r in recs)
    assert not sem & qual  # "quality" sorts first: 0..k1-1, then "semantic" from k1
    assert max(qual) < min(sem) and max(sem) < round(n_qual**0.5) + round(n_sem**0.5)
    assert len(qual) <= round(n_qual**0.5) and len(qual) >= 2


def test_bad_cluster_keys():
    for bad in (0, -3, "many", 2.5):
        with pytest.raises(ConfigError, match="k must be"):
            build_step("cluster", {"k": bad})
    with pytest.raises(ConfigError, match="unknown key"):
        build_step("cluster", {"clusters": 4})


def test_balance_selects_by_rank_whatever_the_input_order():
    from curate.balance import balance

    recs = _skewed()
    quotas = {"quality": {"fraction": 1.0}}
    picked, dropped, _ = balance(recs, 100, quotas, seed=5)
    again, _, _ = balance(random.Random(9).sample(recs, len(recs)), 100, quotas, seed=5)
    assert [r.id for r in again] == [r.id for r in picked]  # same records, same (rank) order
    assert Counter(r.cluster for r in picked) == {c: 20 for c in range(5)} and len(dropped) == len(recs) - 100
    for r in recs:
        r.cluster = None  # no clusters: the 100 lowest ranks of the pool
    plain, _, _ = balance(recs, 100, quotas, seed=5)
    assert [r.id for r in plain] == [r.id for r in sorted(recs, key=lambda r: rank_key(5, r))[:100]]
