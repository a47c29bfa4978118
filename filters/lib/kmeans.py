"""Spherical k-means (faiss) over L2-normalised rows: the cluster step's labels and dedup_semantic's IVF cells."""

from __future__ import annotations

import numpy as np


def spherical_kmeans(x: np.ndarray, k: int, niter: int, seed: int, max_points_per_centroid: int):
    """A trained faiss spherical k-means on float32 rows x (its `index` searches the centroids)."""
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False,
                      max_points_per_centroid=max_points_per_centroid, min_points_per_centroid=1)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return km


def kmeans_labels(x: np.ndarray, k: int, niter: int, seed: int, max_points_per_centroid: int = 256) -> np.ndarray:
    """Nearest-centroid label per row of x after spherical k-means; k is clipped to len(x)."""
    k = max(1, min(k, len(x)))
    if k == 1:
        return np.zeros(len(x), np.int64)
    x = np.ascontiguousarray(x, dtype=np.float32)
    return spherical_kmeans(x, k, niter, seed, max_points_per_centroid).index.search(x, 1)[1][:, 0]
