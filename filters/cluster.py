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
from filters.lib.kmeans import kmeans_labels
from filters.lib.ranked import lowest, spread
from filters.lib.spill import take_rows

if TYPE_CHECKING:
    from core.records import Prompt


@register
class Cluster(Step):
    """Sets record.cluster on every record; keeps them all, drops none.

    k: clusters per criterion, or "auto" for round(sqrt(n)) of that criterion's records.
    niter: k-means iterations. max_points_per_centroid: faiss trains on at most k times this
    many sampled points, then assigns all; 64 (faiss: 256) keeps 1M prompts, k=1000 to
    about a minute on 2 cores, and centroids for balancing need not be precise.
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

    def run(self, records: list[Prompt], ctx: Context) -> StepResult:
        if not records:
            return StepResult(kept=[])
        x = ctx.embed(records)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, rec in enumerate(records):
            groups[rec.criterion if self.per_criterion else ""].append(i)
        offset = 0
        for crit in sorted(groups):
            idx = groups[crit]
            k = max(1, round(math.sqrt(len(idx)))) if self.k == "auto" else min(self.k, len(idx))
            # One group clusters x itself; a criterion's rows are copied out, spilled like x when large.
            rows = x if len(idx) == len(records) else take_rows(x, np.asarray(idx), ctx.spill_dir())
            labels = kmeans_labels(rows, k, self.niter, ctx.seed, self.max_points_per_centroid)
            for i, label in zip(idx, labels.tolist()):
                records[i].cluster = offset + label
            offset += k
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
