"""Spherical k-means (faiss) over L2-normalised rows: the cluster step's centroids and dedup_semantic's IVF cells.

Rows may be a spilled array (filters/lib/spill.py): training reads only the rows faiss samples, and the
searches go a chunk at a time, releasing each, so the whole pool is never resident at once."""

from __future__ import annotations

import numpy as np

from filters.lib.spill import PASS_ROWS, release_pages, row_chunks


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


def search_in_chunks(index, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """index.search(x, k), a chunk of rows at a time with each released after, with the same results: chunks
    start at multiples of faiss's BLAS query block (4096) and none is shorter than PASS_ROWS, so faiss
    runs the same kernel on the same blocks as in one call."""
    bounds = list(range(0, len(x), PASS_ROWS))[1:]
    if bounds and len(x) - bounds[-1] < PASS_ROWS:
        bounds.pop()  # a short tail joins the chunk before it
    sims, labels = [], []
    for start, stop in zip([0, *bounds], [*bounds, len(x)]):
        s, i = index.search(np.ascontiguousarray(x[start:stop], dtype=np.float32), k)
        release_pages(x)
        sims.append(s)
        labels.append(i)
    return np.concatenate(sims), np.concatenate(labels)


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
    out = np.empty(len(x), np.int64)
    for part in row_chunks(len(x)):
        out[part] = np.argmax(np.asarray(x[part], np.float32) @ centres.T, axis=1)
        release_pages(x)
    return out
