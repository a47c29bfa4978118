"""Deterministic selection by hash rank: which records a quota takes (curate/balance.py), how a quota spreads
over clusters (filters/cluster.py), and which records k-means trains on (filters/lib/kmeans.py).

A record's rank is a stable hash of the seed and the prompt (id, text: not its source, so renaming a file
changes nothing); picking "the n
lowest ranks" of a pool depends only on the pool's records, never on the order they came in or on how a
distributed engine split them, so the local engine and the Ray engine (curate/engine_ray.py) pick the same
records by the same rule, the Ray engine from per-pool counts and a rank threshold instead of a sort of
the whole pool on one machine. Records that tie on all of rank_key are the same prompt from the same source;
a stable sort keeps them in input order (the local engine's canonical, then read, order).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Hashable

import numpy as np

from core.records import canonical_key

if TYPE_CHECKING:
    from core.records import Prompt


def _hash(*parts: object) -> bytes:
    return hashlib.blake2b("\0".join(map(str, parts)).encode("utf-8", "surrogatepass"), digest_size=8).digest()


def hash_rank(seed: int, record: Prompt) -> bytes:
    """8 bytes, uniform over records: sorting by it is a seeded shuffle that no input order changes."""
    return _hash(seed, record.id, record.text)


def rank_key(seed: int, record: Prompt) -> tuple:
    """The order selection follows: hash_rank, then canonical_key for the (vanishingly rare) equal hashes."""
    return (hash_rank(seed, record), *canonical_key(record))


def lowest(records: list[Prompt], n: int, seed: int) -> list[Prompt]:
    """The n records of lowest rank_key, in rank order (stable: full ties stay in input order)."""
    return sorted(records, key=lambda r: rank_key(seed, r))[:max(0, n)]


def spread(sizes: dict[Hashable, int], n: int, seed: int) -> dict[Hashable, int]:
    """How many of n to take from each group (a cluster) of the given sizes, as evenly as they allow: the
    same as dealing one at a time round-robin over the groups in hash order of (seed, group), so small
    groups are exhausted first and the rest is shared evenly by the larger ones. Only the sizes matter."""
    total = sum(sizes.values())
    if n >= total:
        return dict(sizes)
    if n <= 0:
        return {g: 0 for g in sizes}
    order = sorted(sizes, key=lambda g: _hash(seed, "group", g))
    counts = np.array([sizes[g] for g in order])
    # Water-filling: the largest per-group level L with sum(min(size, L)) <= n, then the remainder goes
    # one each to the first groups (in hash order) that still have more.
    lo, hi = 0, int(counts.max())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if np.minimum(counts, mid).sum() <= n else (lo, mid - 1)
    take = np.minimum(counts, lo)
    extra = n - int(take.sum())
    for j in np.flatnonzero(counts > lo)[:extra]:
        take[j] += 1
    return {g: int(t) for g, t in zip(order, take.tolist())}

