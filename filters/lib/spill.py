"""Whole-pool embeddings on disk instead of in RAM: a memory-mapped float32 array, and chunked passes over it.

`spilled_array(shape, folder)` is an ordinary (n, d) float32 ndarray whose rows live in a memory-mapped
temp file in `folder` (core.paths.cache_dir()/spill in a build). The file is unlinked as soon as it is
made, so it never shows in the folder and a crash leaves nothing behind; the disk space is returned
when the array is garbage collected. Code that reads it is the same code that reads an in-RAM array,
so results are the same by construction.

Pages of a mapping that have been touched count in the process's resident memory until they are
unmapped, so a pass over the whole array would bring it all back into RSS. `release_pages(x)` tells
the kernel the process no longer needs them (madvise DONTNEED: written rows stay in the page cache and
the file, and come back on the next access); the passes below call it after each chunk. For an
in-RAM array it does nothing, so callers need not know which kind they hold.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

SPILL_MIN_ROWS = 65_536  # below this (96 MiB at 384-d) an array stays in RAM: a file buys nothing
PASS_ROWS = 65_536  # rows a chunked pass touches before it releases them: 96 MiB at 384-d


def spilled_array(shape: tuple[int, int], folder: str | os.PathLike | None) -> np.ndarray:
    """A zeroed float32 array of `shape` in a memory-mapped, already unlinked temp file in `folder`
    (the system temp folder when None)."""
    nbytes = shape[0] * shape[1] * 4
    if not nbytes:
        return np.zeros(shape, np.float32)
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder) as handle:  # mmap keeps its own descriptor of the file
        handle.truncate(nbytes)  # sparse: reads as zeros, takes disk only where written
        mapping = mmap.mmap(handle.fileno(), nbytes)
    return np.frombuffer(mapping, np.float32).reshape(shape)


def release_pages(x: np.ndarray) -> None:
    """Drop the pages of the spill file under `x` from this process's resident memory; a no-op for an
    in-RAM array, or where the platform has no madvise."""
    base = x
    while isinstance(base, (np.ndarray, memoryview)):  # numpy 2 keeps a memoryview of the mmap as the base
        base = base.base if isinstance(base, np.ndarray) else base.obj
    if isinstance(base, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        base.madvise(mmap.MADV_DONTNEED)


def row_chunks(n: int, size: int | None = None) -> Iterator[slice]:
    """Consecutive row slices of at most `size` (default PASS_ROWS) rows covering range(n)."""
    size = size or PASS_ROWS
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def take_rows(x: np.ndarray, rows: np.ndarray, folder: str | os.PathLike | None) -> np.ndarray:
    """x[rows] (rows ascending), spilled like x when it is large: a copy that stays out of RAM."""
    if len(rows) < SPILL_MIN_ROWS:
        out = x[rows]
        release_pages(x)
        return out
    out = spilled_array((len(rows), x.shape[1]), folder)
    for part in row_chunks(len(rows)):
        out[part] = x[rows[part]]
        release_pages(x)
        release_pages(out)
    return out
