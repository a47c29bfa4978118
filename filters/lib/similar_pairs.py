"""Pairs of similar rows and the keep-first rule that the dedup steps share (filters/dedup_semantic.py
describes the search; filters/dedup_near.py pairs its records by MinHash banding instead)."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from filters.lib.spill import PASS_ROWS, release_pages

_QUERY_CHUNK = 2048  # bounds the range-search result buffers (a chunk x its cell's members, at worst)


def _range_pairs(base: np.ndarray, base_ids: np.ndarray, queries: np.ndarray, query_ids: np.ndarray,
                 threshold: float, partners: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    out = []
    for s in range(0, len(query_ids), _QUERY_CHUNK):
        lims, sims, hits = index.range_search(queries[s : s + _QUERY_CHUNK], threshold)
        q = np.repeat(query_ids[s : s + _QUERY_CHUNK], np.diff(lims).astype(np.int64))
        r = base_ids[hits]
        other = q != r
        q, r, sims = q[other], r[other], sims[other]
        if partners:
            q, r, sims = _most_similar(q, r, sims, partners)
        out.append((np.minimum(q, r), np.maximum(q, r), sims))
    return _concat(out)


def _most_similar(q: np.ndarray, r: np.ndarray, sims: np.ndarray, k: int):
    """Of the hits (q, r, sims), grouped by query q, each query's k most similar (ties: the lowest r)."""
    order = np.lexsort((r, -sims, q))
    q, r, sims = q[order], r[order], sims[order]
    keep = np.arange(len(q)) - np.searchsorted(q, q) < k  # each hit's rank among its query's
    return q[keep], r[keep], sims[keep]


def _concat(parts: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    lo, hi, cos = (np.concatenate(a) for a in zip(*parts))
    return lo, hi, cos


def probes(x: np.ndarray, centres: np.ndarray, nprobe: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(cells, useful) of each row of x: its `nprobe` nearest IVF cells, nearest first (its home cell, then
    the rest; ties: the lowest cell), and which of them can hold a duplicate. A row's answer depends on the
    row alone, so an engine may compute it in any batches.

    A probe that provably holds no duplicate is skipped: if cos(x, y) >= t then |x - y| <= r =
    sqrt(2 - 2t), and y can only be nearer centroid c_k than x's home c_1 if
    <x, c_1> - <x, c_k> <= r |c_k - c_1|. No recall is lost; on clustered data most extra probes go
    (on random vectors few do)."""
    from filters.lib.kmeans import top_k

    sims, cells = top_k(x, centres, min(nprobe, len(centres)))
    centroid_dist = np.sqrt(np.maximum(0.0, 2 - 2 * (centres @ centres.T)))
    r = math.sqrt(max(0.0, 2 - 2 * threshold))
    useful = (sims[:, :1] - sims) <= r * centroid_dist[cells[:, :1], cells] + 1e-6
    return cells, useful


def cell_pairs(members: np.ndarray, member_ids: np.ndarray, queries: np.ndarray, query_ids: np.ndarray,
               threshold: float, partners: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs (lo, hi, cos) one IVF cell yields: each query row against the cell's member rows, ids in
    the pool's order (members and queries in that order too), each query keeping its `partners` most
    similar (0: all), each pair once (its first finding)."""
    lo, hi, cos = _range_pairs(members, member_ids, queries, query_ids, threshold, partners)
    return _first_of_each(lo, hi, cos)


def _first_of_each(lo: np.ndarray, hi: np.ndarray, cos: np.ndarray):
    """Each pair once, the first finding's cosine, sorted by (lo, hi) (a pair can be found from both ends)."""
    if not len(lo):
        return lo, hi, cos
    _, first = np.unique(lo.astype(np.int64) * (int(hi.max()) + 1) + hi, return_index=True)
    return lo[first], hi[first], cos[first]


def ivf_centroids(sample: np.ndarray, nlist: int, seed: int) -> np.ndarray:
    """The IVF cells' unit centroids: spherical k-means, 10 iterations (the cells need only be compact, not
    optimal), on the sample's rows in their order."""
    from filters.lib.kmeans import centroids

    return centroids(sample, nlist, niter=10, seed=seed)


def ivf_size(n: int, nlist: int | None) -> tuple[int, int]:
    """(cells, training rows) of an IVF search over n rows: ~sqrt(n) cells unless given, 64 rows a cell."""
    cells = min(n, nlist or max(1, round(math.sqrt(n))))
    return cells, min(n, 64 * cells)


def _ivf_pairs(x: np.ndarray, threshold: float, nlist: int, nprobe: int, seed: int, sample: np.ndarray,
               partners: int):
    centres = ivf_centroids(x[sample], nlist, seed)
    release_pages(x)
    cells, useful = probes(x, centres, nprobe, threshold)
    home = np.argsort(cells[:, 0], kind="stable")
    home_at = np.searchsorted(cells[home, 0], np.arange(len(centres) + 1))
    asked = np.flatnonzero(useful.ravel())
    asked = asked[np.argsort(cells.ravel()[asked], kind="stable")]
    asked_at = np.searchsorted(cells.ravel()[asked], np.arange(len(centres) + 1))
    asked //= cells.shape[1]  # flat position -> row
    parts = []
    gathered = 0  # rows of a spilled x read since its pages were last released
    for cell in range(len(centres)):
        members, queries = home[home_at[cell] : home_at[cell + 1]], asked[asked_at[cell] : asked_at[cell + 1]]
        if len(members) and len(queries):
            parts.append(cell_pairs(x[members], members, x[queries], queries, threshold, partners))
            gathered += len(members) + len(queries)
        if gathered >= PASS_ROWS:
            release_pages(x)
            gathered = 0
    release_pages(x)
    return _concat(parts)


def similar_pairs(x: np.ndarray, threshold: float, exact_max: int = 20000, nlist: int | None = None,
                  nprobe: int = 4, seed: int = 0, sample: np.ndarray | None = None, partners: int = 0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (lo, hi, cos) with lo < hi and cos >= threshold among the rows of x (float32,
    L2-normalised), sorted by (lo, hi): exact up to exact_max rows, IVF (see filters/dedup_semantic.py)
    above, its k-means trained on the rows `sample` lists (ivf_size's count of them; None: the first rows).
    A pair found in several cells keeps the cosine of the lowest cell's finding. partners > 0: each row
    keeps only its `partners` most similar in each cell it searches (a pair stands when either end keeps
    it), so a group of g look-alike rows yields ~g x partners pairs instead of g^2 / 2."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if n <= exact_max:
        ids = np.arange(n)
        return cell_pairs(x, ids, x, ids, threshold, partners)
    nlist, m = ivf_size(n, nlist)
    sample = np.arange(m) if sample is None else np.asarray(sample[:m])
    return _first_of_each(*_ivf_pairs(x, threshold, nlist, nprobe, seed, sample, partners))


def runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, stops) of the runs of equal values in a sorted, non-empty array."""
    edges = np.flatnonzero(np.diff(values)) + 1
    return np.r_[0, edges], np.r_[edges, len(values)]


def keep_first(lo: np.ndarray, hi: np.ndarray, similarity: Callable[[int, int], float], threshold: float,
               known: np.ndarray | None = None) -> dict[int, tuple[int, float]]:
    """The rule of both dedup steps: {dropped index: (kept index, similarity)}. (lo[k], hi[k]) are the
    pairs the search found, lo before hi (repeats allowed); known[k], when given, is their similarity as
    the search measured it, else similarity(a, b) measures it. Records are settled in input order, each
    against the kept ones, most similar first (ties: the earliest). A dropped record among b's partners
    stands for its kept twin, which is compared too: an approximate search that paired b only with copies
    of a group's first still finds the first (the same rule, more recall). The pairs stay in arrays: as
    Python tuples they cost ~200 bytes each, gigabytes for a large pool of look-alike prompts."""
    dup_of: dict[int, tuple[int, float]] = {}
    if not len(hi):
        return dup_of
    order = np.lexsort((lo, hi))
    lo, hi = lo[order], hi[order]
    known = known[order] if known is not None else None
    for start, stop in zip(*(bounds.tolist() for bounds in runs(hi))):
        b, met = int(hi[start]), lo[start:stop].tolist()
        measured = dict(zip(met, known[start:stop].tolist())) if known is not None else {}
        partners = {dup_of[a][0] if a in dup_of else a for a in met}  # all kept and before b
        best = max(((measured[a] if a in measured else similarity(a, b), -a) for a in partners),
                   default=(-math.inf, 0))
        if best[0] >= threshold:
            dup_of[b] = (-best[1], best[0])
    return dup_of
