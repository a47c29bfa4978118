"""Peak memory of `curate build` with the semantic steps ON (dedup_semantic, cluster) against the pool size.

    python bench/semantic_memory.py                        # 20k, 50k, 100k one-line prompts
    python bench/semantic_memory.py --sizes 200000 --recipe balanced

Each size is a fresh `curate build` (quality recipe by default) in its own process on a .txt pool of N
distinct one-line prompts (bench/build_memory.py's), with dedup_semantic and cluster on and the spaCy
steps (tag, visual) off. The embedding cache is PRE-FILLED with random unit vectors for every prompt of
the pool (not timed), so the encoder never runs: what is measured is everything but MiniLM (reading the
cache, the FAISS searches, k-means, the pipeline). With random vectors dedup_semantic finds no duplicate
and the IVF cells are even; real embeddings give uneven cells. Printed per size: peak RSS (ru_maxrss of
the build), wall seconds, prompts/s, peak bytes per input row, and the bytes of peak per row above the
smallest size's peak (what grows with the pool).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.build_memory import build_peak, write_prompts  # noqa: E402

SPACY_STEPS = ("tag", "visual")


def fill_embedding_cache(pool: Path, cache: Path, seed: int = 0) -> None:
    """Random unit vectors for every prompt of `pool` as the build will read it, in the recipe embedder's cache."""
    import numpy as np

    from curate.pipeline import read_prompts
    from filters.lib.embed import SHARD_ROWS, build_embedder, text_keys

    texts = read_prompts(str(pool))
    embedder = build_embedder(cache_dir=cache, progress=False)  # the recipes' {kind: hf}: the bundled MiniLM
    store = embedder._cache()
    rng = np.random.default_rng(seed)
    for start in range(0, len(texts), SHARD_ROWS):
        part = texts[start : start + SHARD_ROWS]
        vectors = rng.standard_normal((len(part), embedder.dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.write(text_keys(part), {"vectors": vectors})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="20000,50000,100000", help="input rows per build")
    parser.add_argument("--recipe", default="quality", help="quality or balanced (its quality pool is the .txt)")
    parser.add_argument("--set-size", type=int, default=20_000, help="prompts kept (the recipe's size)")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    print(f"curate build --recipe {args.recipe}, dedup_semantic + cluster ON, {', '.join(SPACY_STEPS)} off; "
          "embedding cache PRE-FILLED with random unit vectors (encoder time not included)")
    print(f"{'rows':>10} {'peak MiB':>9} {'seconds':>8} {'prompts/s':>10} {'peak B/row':>11} "
          f"{'B/row over first':>17} {'semantic_dup':>13}")
    first = None
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            pool, cache = Path(tmp) / f"pool-{n}.txt", Path(tmp) / f"cache-{n}"
            write_prompts(pool, n)
            fill_embedding_cache(pool, cache)
            peak, seconds, manifest = build_peak(pool, Path(tmp) / f"out-{n}", args.set_size, list(SPACY_STEPS),
                                                 args.recipe, cache)
            growth = "" if first is None else f"{(peak - first[1]) * 2**20 / (n - first[0]):17,.0f}"
            first = first or (n, peak)
            semantic = next((s["dropped"] for s in manifest["steps"] if s["name"] == "dedup_semantic"), 0)
            print(f"{n:>10,} {peak:>9,.0f} {seconds:>8.1f} {n / seconds:>10,.0f} {peak * 2**20 / n:>11,.0f} "
                  f"{growth:>17} {semantic:>13,}", flush=True)


if __name__ == "__main__":
    main()
