"""Pairs of similar rows and the keep-first rule that the dedup steps share (filters/dedup_semantic.py
describes the search; filters/dedup_near.py pairs its records by MinHash banding instead)."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from filters.lib.spill import PASS_ROWS, release_pages

_QUERY_CHUNK = 8192  # bounds the range-search result buffers


def _range_pairs(base: np.ndarray, base_ids: np.ndarray, queries: np.ndarray, query_ids: np.ndarray,
                 threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    out = []
    for s in range(0, len(query_ids), _QUERY_CHUNK):
        lims, sims, hits = index.range_search(queries[s : s + _QUERY_CHUNK], threshold)
        q = np.repeat(query_ids[s : s + _QUERY_CHUNK], np.diff(lims).astype(np.int64))
        r = base_ids[hits]
        other = q != r
        out.append((np.minimum(q, r)[other], np.maximum(q, r)[other], sims[other]))
    return _concat(out)


def _concat(parts: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    lo, hi, cos = (np.concatenate(a) for a in zip(*parts))
    return lo, hi, cos


def _ivf_pairs(x: np.ndarray, threshold: float, nlist: int, nprobe: int, seed: int):
    from filters.lib.kmeans import search_in_chunks, spherical_kmeans

    # 64 points per centroid and 10 iterations: the cells need only be compact, not optimal.
    km = spherical_kmeans(x, nlist, niter=10, seed=seed, max_points_per_centroid=64)
    sims, probe = search_in_chunks(km.index, x, min(nprobe, nlist))
    # Skip probes that provably hold no duplicate. If cos(x, y) >= t then |x - y| <= r =
    # sqrt(2 - 2t), and y can only be nearer centroid c_k than x's home c_1 if
    # <x, c_1> - <x, c_k> <= r |c_k - c_1|. No recall is lost; on clustered data most
    # extra probes go (on random vectors few do).
    c = km.centroids / np.linalg.norm(km.centroids, axis=1, keepdims=True)
    centroid_dist = np.sqrt(np.maximum(0.0, 2 - 2 * (c @ c.T)))
    r = math.sqrt(max(0.0, 2 - 2 * threshold))
    useful = ((sims[:, :1] - sims) <= r * centroid_dist[probe[:, :1], probe] + 1e-6).ravel()
    home = np.argsort(probe[:, 0], kind="stable")
    home_at = np.searchsorted(probe[home, 0], np.arange(nlist + 1))
    asked = np.flatnonzero(useful)
    asked = asked[np.argsort(probe.ravel()[asked], kind="stable")]
    asked_at = np.searchsorted(probe.ravel()[asked], np.arange(nlist + 1))
    asked //= probe.shape[1]  # flat position -> row
    parts = []
    gathered = 0  # rows of a spilled x read since its pages were last released
    for cell in range(nlist):
        members, queries = home[home_at[cell] : home_at[cell + 1]], asked[asked_at[cell] : asked_at[cell + 1]]
        if len(members) and len(queries):
            parts.append(_range_pairs(x[members], members, x[queries], queries, threshold))
            gathered += len(members) + len(queries)
        if gathered >= PASS_ROWS:
            release_pages(x)
            gathered = 0
    release_pages(x)
    return _concat(parts)


def similar_pairs(x: np.ndarray, threshold: float, exact_max: int = 20000, nlist: int | None = None,
                  nprobe: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (lo, hi, cos) with lo < hi and cos >= threshold among the rows of x
    (float32, L2-normalised): exact up to exact_max rows, IVF (see module) above."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if n <= exact_max:
        ids = np.arange(n)
        lo, hi, cos = _range_pairs(x, ids, x, ids, threshold)
    else:
        lo, hi, cos = _ivf_pairs(x, threshold, min(n, nlist or max(1, round(math.sqrt(n)))), nprobe, seed)
    # A pair can be found from both ends (and from several probes): keep one copy.
    key = lo.astype(np.int64) * n + hi
    _, first = np.unique(key, return_index=True)
    return lo[first], hi[first], cos[first]


def keep_first(earlier: dict[int, list[int]], similarity: Callable[[int, int], float],
               threshold: float) -> dict[int, tuple[int, float]]:
    """The rule of both dedup steps: {dropped index: (kept index, similarity)}. `earlier[b]` lists the
    records before b that the search paired it with. Records are settled in input order, each against
    the kept ones, most similar first (ties: the earliest). A dropped record among b's partners stands
    for its kept twin, which is compared too: an approximate search that paired b only with copies of
    a group's first still finds the first (the same rule, more recall)."""
    dup_of: dict[int, tuple[int, float]] = {}
    for b in sorted(earlier):
        partners = {dup_of[a][0] if a in dup_of else a for a in earlier[b]}  # all kept and before b
        best = max(((similarity(a, b), -a) for a in partners), default=(-math.inf, 0))
        if best[0] >= threshold:
            dup_of[b] = (-best[1], best[0])
    return dup_of
