"""Spherical k-means (faiss) over L2-normalised rows: the cluster step's centroids and dedup_semantic's IVF cells.

Rows may be a spilled array (filters/lib/spill.py): training reads only the rows faiss samples, and the
searches go a chunk at a time, releasing each, so the whole pool is never resident at once."""

from __future__ import annotations

import numpy as np

from filters.lib.spill import release_pages, row_chunks


def spherical_kmeans(x: np.ndarray, k: int, niter: int, seed: int, max_points_per_centroid: int):
    """A trained faiss spherical k-means on float32 rows x (its `index` searches the centroids)."""
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False,
                      max_points_per_centroid=max_points_per_centroid, min_points_per_centroid=1)
    if hasattr(km.cp, "check_input_data_for_NaNs"):  # faiss >= 1.9
        # Its NaN check reads every row before sampling k x max_points_per_centroid of them; embeddings are
        # finite (normalised, and the cache refuses NaN), and skipping it keeps a spilled pool on disk.
        km.cp.check_input_data_for_NaNs = False
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    release_pages(x)
    return km


def top_k(x: np.ndarray, centres: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices) of each row's k nearest centroids by inner product, nearest first (ties: the
    lowest index), a chunk of rows at a time with each released after; a row's answer depends on the row
    alone, so an engine may compute it in any batches."""
    sims, labels = np.empty((len(x), k), np.float32), np.empty((len(x), k), np.int64)
    for part in row_chunks(len(x)):
        s = np.asarray(x[part], np.float32) @ centres.T
        release_pages(x)
        top = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < s.shape[1] else np.broadcast_to(np.arange(s.shape[1]), s.shape)
        top = np.take_along_axis(top, np.lexsort((top, -np.take_along_axis(s, top, 1)), axis=1), 1)
        sims[part], labels[part] = np.take_along_axis(s, top, 1), top
    return sims, labels


def centroids(x: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    """(k, d) unit centroids of spherical k-means trained on every row of x, in its order (the caller
    samples: the cluster step trains on a hash-ranked sample, so both engines train on the same rows)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if k <= 1 or len(x) <= 1:
        return x[:1].copy()
    return spherical_kmeans(x, min(k, len(x)), niter, seed, max_points_per_centroid=len(x)).centroids.copy()


def nearest(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The index of each row's nearest centroid by inner product (ties: the lowest), a chunk at a time;
    a row's answer depends on the row alone, so an engine may assign rows in any batches."""
    if len(centres) <= 1:
        return np.zeros(len(x), np.int64)
    return top_k(x, centres, 1)[1][:, 0]
