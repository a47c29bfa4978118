"""Spherical k-means (faiss) over L2-normalised rows: the cluster step's labels and dedup_semantic's IVF cells.

Rows may be a spilled array (filters/lib/spill.py): training reads only the rows faiss samples, and the
searches go a chunk at a time, releasing each, so the whole pool is never resident at once."""

from __future__ import annotations

import numpy as np

from filters.lib.spill import PASS_ROWS, release_pages


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


def kmeans_labels(x: np.ndarray, k: int, niter: int, seed: int, max_points_per_centroid: int = 256) -> np.ndarray:
    """Nearest-centroid label per row of x after spherical k-means; k is clipped to len(x)."""
    k = max(1, min(k, len(x)))
    if k == 1:
        return np.zeros(len(x), np.int64)
    x = np.ascontiguousarray(x, dtype=np.float32)
    return search_in_chunks(spherical_kmeans(x, k, niter, seed, max_points_per_centroid).index, x, 1)[1][:, 0]
