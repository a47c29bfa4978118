"""`cluster`: spherical k-means (faiss) over the shared prompt embeddings, and the
cluster-balanced sampler that the balance step uses inside each quota.

Each criterion is clustered on its own (quality captions and text-rendering templates
would otherwise fight over centroids), criteria in sorted order, and the ids are offset
so they are unique across criteria: criterion "quality" with k=3 gets 0..2, "semantic"
then 3..., and so on. Turn that off with per_criterion=False.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

from filters.base import Context, Step, StepResult, register
from filters.lib.kmeans import centroids, nearest
from filters.lib.ranked import lowest, rank_key, spread
from filters.lib.spill import release_pages, take_rows

if TYPE_CHECKING:
    from core.records import Prompt


@register
class Cluster(Step):
    """Sets record.cluster on every record; keeps them all, drops none.

    k: clusters per criterion, or "auto" for round(sqrt(n)) of that criterion's records.
    niter: k-means iterations. max_points_per_centroid: k-means trains on the k times this many
    records of lowest hash rank (filters/lib/ranked.py: a sample that depends on the records alone,
    so the Ray engine trains on the same one), then every record goes to its nearest centroid;
    64 keeps 1M prompts, k=1000 to about a minute on 2 cores, and centroids for balancing need not
    be precise.
    """

    kind = "cluster"
    embeds = True

    def __init__(self, k: int | str = "auto", niter: int = 20, per_criterion: bool = True,
                 max_points_per_centroid: int = 64):
        if k != "auto" and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"k must be a positive integer or 'auto', got {k!r}")
        if niter < 1 or max_points_per_centroid < 1:
            raise ValueError("niter and max_points_per_centroid must be >= 1")
        self.k, self.niter, self.per_criterion = k, niter, per_criterion
        self.max_points_per_centroid = max_points_per_centroid

    def group(self, record: Prompt) -> str:
        return record.criterion if self.per_criterion else ""

    def plan(self, sizes: dict[str, int]) -> dict[str, tuple[int, int, int]]:
        """Per group (a criterion, or "" for all) of the given size: (k, the offset of its cluster ids,
        how many records of lowest rank k-means trains on). Groups in sorted order get consecutive ids."""
        plan, offset = {}, 0
        for group in sorted(sizes):
            n = sizes[group]
            k = max(1, round(math.sqrt(n))) if self.k == "auto" else min(self.k, n)
            plan[group] = (k, offset, min(n, k * self.max_points_per_centroid))
            offset += k
        return plan

    def centroids(self, sample: np.ndarray, k: int, seed: int) -> np.ndarray:
        return centroids(sample, k, self.niter, seed)

    def run(self, records: list[Prompt], ctx: Context) -> StepResult:
        if not records:
            return StepResult(kept=[])
        x = ctx.embed(records)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, rec in enumerate(records):
            groups[self.group(rec)].append(i)
        for group, (k, offset, m) in self.plan({g: len(idx) for g, idx in groups.items()}).items():
            idx = groups[group]
            sample = sorted(idx, key=lambda i: rank_key(ctx.seed, records[i]))[:m]
            centres = self.centroids(x[np.asarray(sample)], k, ctx.seed)
            release_pages(x)
            # One group assigns x itself; a criterion's rows are copied out, spilled like x when large.
            rows = x if len(idx) == len(records) else take_rows(x, np.asarray(idx), ctx.spill_dir())
            for i, label in zip(idx, nearest(rows, centres).tolist()):
                records[i].cluster = offset + label
        return StepResult(kept=list(records))


def cluster_balanced_sample(records: list[Prompt], n: int, seed: int) -> list[Prompt]:
    """n records spread as evenly as possible over record.cluster (records without one form
    their own group), returned in input order. Equivalent to dealing round-robin over the
    clusters in hash order, each cluster's records in hash-rank order (filters/lib/ranked.py):
    small clusters are exhausted first and the rest is shared evenly by the larger ones.
    Deterministic for a given seed, and independent of the input order."""
    if n >= len(records):
        return list(records)
    if n <= 0:
        return []
    by_cluster: dict[int | None, list[Prompt]] = defaultdict(list)
    for rec in records:
        by_cluster[rec.cluster].append(rec)
    takes = spread({c: len(g) for c, g in by_cluster.items()}, n, seed)
    chosen = {id(r) for c, group in by_cluster.items() for r in lowest(group, takes[c], seed)}
    return [r for r in records if id(r) in chosen]
