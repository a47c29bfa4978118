"""Spilled embeddings (filters/lib/spill.py): a whole-pool step gives the same results from a memory-mapped
array as from an in-RAM one, and leaves no file behind."""

from __future__ import annotations

import os

import numpy as np
import pytest

import filters.lib.similar_pairs as similar_pairs
import filters.lib.spill as spill
from core.records import Prompt
from filters.base import Context, build_step


class _FixedVectors:
    """Stands in for the embedder: record text "i" embeds as row i of x."""

    name = "test-fixed-vectors"

    def __init__(self, x: np.ndarray):
        self.x, self.dim = x, x.shape[1]

    def encode(self, texts: list[str], out: np.ndarray | None = None) -> np.ndarray:
        rows = self.x[[int(t) for t in texts]]
        if out is None:
            return rows
        out[:] = rows
        return out


def _vectors(n: int, d: int = 32, copies: int = 400) -> np.ndarray:
    """Random unit rows, the last `copies` noisy twins (cos ~0.97) of earlier ones."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x[-copies:] = 4 * x[rng.choice(n - copies, copies, replace=False)] + x[-copies:]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _records(n: int) -> list[Prompt]:
    return [Prompt(text=str(i), criterion="quality" if i % 3 else "semantic", source="test", id=str(i))
            for i in range(n)]


def _run_steps(x: np.ndarray, tmp_path) -> tuple[list[tuple[str, str]], list[int | None]]:
    """(dropped ids and reasons of dedup_semantic over IVF, cluster labels per criterion) on x."""
    ctx = Context(seed=0, cache_dir=tmp_path, progress=False, _embedder=_FixedVectors(x))
    dedup = build_step("dedup_semantic", {"exact_max": 500}).run(_records(len(x)), ctx)
    records = _records(len(x))
    build_step("cluster", {"k": 40}).run(records, ctx)
    return [(r.id, drop.detail) for r, drop in dedup.dropped], [r.cluster for r in records]


def test_spilled_steps_give_the_in_ram_results(tmp_path, monkeypatch):
    x = _vectors(10_000)
    in_ram = _run_steps(x, tmp_path)
    assert len(in_ram[0]) > 300  # the planted twins are found
    # Spill every pool and pass over it in chunks of faiss's query block, as a large pool would be.
    monkeypatch.setattr(spill, "SPILL_MIN_ROWS", 0)
    monkeypatch.setattr(spill, "PASS_ROWS", 4096)  # kmeans' chunks
    monkeypatch.setattr(similar_pairs, "PASS_ROWS", 4096)
    assert _run_steps(x, tmp_path) == in_ram
    assert not list((tmp_path / "spill").iterdir())  # the temp files were unlinked when made


def test_spilled_array_reads_back_what_was_written_and_survives_release(tmp_path):
    x = spill.spilled_array((1000, 8), tmp_path)
    assert isinstance(x, np.ndarray) and x.dtype == np.float32 and not x.any()
    x[:] = np.arange(8000, dtype=np.float32).reshape(1000, 8)
    spill.release_pages(x[10:20])  # through a view too
    np.testing.assert_array_equal(x[999], np.arange(7992, 8000, dtype=np.float32))
    assert not list(tmp_path.iterdir())


def _resident_mib(x: np.ndarray) -> float:
    """MiB of x's spill file resident in this process (its mapping's Rss in /proc/self/smaps)."""
    start = x.__array_interface__["data"][0]
    rss, inside = 0, False
    for line in open("/proc/self/smaps"):
        if "-" in line.split()[0] and ":" not in line.split()[0]:
            low, high = (int(v, 16) for v in line.split()[0].split("-"))
            inside = low <= start < high
        elif inside and line.startswith("Rss:"):
            rss += int(line.split()[1])
    return rss / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads Linux's /proc/self/smaps")
def test_release_pages_takes_written_rows_out_of_resident_memory(tmp_path):
    x = spill.spilled_array((65_536, 256), tmp_path)  # 64 MiB
    x[:] = 1.0
    assert _resident_mib(x) > 60
    spill.release_pages(x[5:9])  # through a view, as the passes call it
    assert _resident_mib(x) < 1
    assert x[65_535, 255] == 1.0  # and the rows come back on the next read


@pytest.mark.parametrize("n", [0, 3])
def test_take_rows_copies_the_rows(tmp_path, n, monkeypatch):
    monkeypatch.setattr(spill, "SPILL_MIN_ROWS", n)  # 0: the copy is spilled too
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.testing.assert_array_equal(spill.take_rows(x, np.array([1, 4, 9]), tmp_path), x[[1, 4, 9]])
