"""Throughput (prompts/s) and peak memory of the curation stages that scale with data size.

    python bench/curation_throughput.py --n 100000
    python bench/curation_throughput.py --n 1000000 --stages dedup_semantic,cluster

Each stage runs in its own process, so its peak RSS (ru_maxrss) is its own; the figure
includes that process's inputs (the prompts, and for the FAISS stages the n x 384 float32
embeddings: 1.5 GB at 1M). What each stage measures:

- embed: bundled MiniLM on a sample (--embed-sample, uncached); the time for n is
  EXTRAPOLATED from the sample's rate.
- embed_cached: encode() of n texts whose vectors are all in the on-disk cache (sha1 of
  every text, index, checksum-verified shard reads). The cache is filled with random
  vectors first (not timed).
- dedup_near: the dedup_near step on n synthetic prompts (5% planted near copies).
- dedup_semantic, cluster: the steps on RANDOM unit vectors (384-d), not MiniLM embeddings,
  with 2% planted near copies (cos ~0.97); recall of those is reported. Random vectors
  have no cluster structure: real embeddings give uneven IVF cells and cost more.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = ("embed", "embed_cached", "dedup_near", "dedup_semantic", "cluster")
_SUBJECTS = "cat dog fox owl horse robot knight dragon sailor dancer chef astronaut wizard child tiger whale".split()
_ADJ = "red blue green golden tiny giant ancient futuristic wooden glass neon misty cozy gloomy bright".split()
_PLACES = ("in a forest", "on a beach", "in a city street", "on the moon", "in a kitchen", "under the sea",
           "on a mountain top", "in a library", "at a train station", "in a desert", "in a greenhouse")
_STYLES = ("oil painting", "photograph", "watercolor", "3d render", "pencil sketch", "anime still", "pixel art")
_EXTRA = ("at sunset", "at night", "in the rain", "with dramatic lighting", "highly detailed", "wide angle",
          "soft focus", "in winter")


def synthetic_prompts(n: int, seed: int = 0, near_copies: float = 0.05) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = []
    for i in range(n):
        if out and rng.random() < near_copies:  # a near copy: one extra word in an earlier prompt
            words = rng.choice(out).split()
            words.insert(rng.randrange(len(words)), rng.choice(_ADJ))
            out.append(" ".join(words))
            continue
        extras = ", ".join(rng.sample(_EXTRA, rng.randint(1, 4)))
        out.append(f"a {rng.choice(_STYLES)} of a {rng.choice(_ADJ)} {rng.choice(_SUBJECTS)} with a "
                   f"{rng.choice(_ADJ)} {rng.choice(_SUBJECTS)} {rng.choice(_PLACES)}, {extras}, #{i}")
    return out


def random_unit_vectors(n: int, d: int = 384, seed: int = 0, planted: float = 0.02):
    """Unit rows; the last `planted` share are noisy copies (cos ~0.97) of earlier rows.
    Built in chunks so that making the data never outgrows the stage being measured."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = np.empty((n, d), np.float32)
    m = int(n * planted)
    src = np.sort(rng.choice(n - m, m, replace=False))
    for s in range(0, n, 65536):
        e = min(n, s + 65536)
        x[s:e] = rng.standard_normal((e - s, d), dtype=np.float32)
        x[s:e] /= np.linalg.norm(x[s:e], axis=1, keepdims=True)
    for s in range(n - m, n, 65536):  # copy + a unit of noise at a quarter the length: cos ~0.97
        e = min(n, s + 65536)
        x[s:e] = x[src[s - (n - m) : e - (n - m)]] * 4.0 + x[s:e]
        x[s:e] /= np.linalg.norm(x[s:e], axis=1, keepdims=True)
    return x, n - m


class _Fixed:
    """Stands in for the context's embedder: the bench's vectors, one row per record."""

    def __init__(self, x):
        self.x, self.name = x, "bench-random"

    def encode(self, texts):
        assert len(texts) == len(self.x)
        return self.x


def run_stage(stage: str, n: int, embed_sample: int, threads: int) -> dict:
    import faiss
    import numpy as np

    from core.records import Prompt
    from filters.base import Context, build_step

    faiss.omp_set_num_threads(threads)
    info: dict = {"stage": stage, "n": n}
    if stage == "embed":
        import torch

        from filters.lib.embed import build_embedder

        torch.set_num_threads(threads)
        texts = synthetic_prompts(embed_sample)
        emb = build_embedder(progress=False)
        t = time.perf_counter()
        emb.encode(texts)
        rate = embed_sample / (time.perf_counter() - t)
        info.update(seconds=n / rate, prompts_per_s=rate, note=f"EXTRAPOLATED from {embed_sample} prompts, batch 256")
    elif stage == "embed_cached":
        from filters.lib.embed import SHARD_ROWS, build_embedder, text_keys

        texts = synthetic_prompts(n)
        with tempfile.TemporaryDirectory() as tmp:
            emb = build_embedder(cache_dir=tmp, progress=False)
            cache = emb._cache()
            rng = np.random.default_rng(0)
            for s in range(0, n, SHARD_ROWS):
                part = texts[s : s + SHARD_ROWS]
                cache.write(text_keys(part), {"vectors": rng.standard_normal((len(part), emb.dim), dtype=np.float32)})
            emb = build_embedder(cache_dir=tmp, progress=False)  # a new build: reads the index from disk
            t = time.perf_counter()
            out = emb.encode(texts)
            info.update(seconds=time.perf_counter() - t, note="all hits, index load included", shape=list(out.shape))
    elif stage == "dedup_near":
        recs = [Prompt(text=t, criterion="quality", source="bench") for t in synthetic_prompts(n)]
        t = time.perf_counter()
        res = build_step("dedup_near", {}).run(recs, Context(progress=False))
        info.update(seconds=time.perf_counter() - t, dropped=len(res.dropped),
                    note="synthetic prompts, 5% near copies")
    else:
        x, first_copy = random_unit_vectors(n)
        recs = [Prompt(text="", criterion="quality", source="bench", id=str(i)) for i in range(n)]
        ctx = Context(seed=0, progress=False, _embedder=_Fixed(x))
        t = time.perf_counter()
        res = build_step(stage, {}).run(recs, ctx)
        info["seconds"] = time.perf_counter() - t
        info["note"] = "RANDOM unit vectors (384-d), 2% planted copies"
        if stage == "dedup_semantic":
            info["dropped"] = len(res.dropped)
            info["planted_recall"] = sum(int(r.id) >= first_copy for r, _ in res.dropped) / (n - first_copy)
        else:
            info["clusters"] = len({r.cluster for r in recs})
    info.setdefault("prompts_per_s", n / info["seconds"])
    info["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {', '.join(STAGES)}")
    ap.add_argument("--embed-sample", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_stage(args.child, args.n, args.embed_sample, args.threads)))
        return
    for stage in args.stages.split(","):
        if stage not in STAGES:
            ap.error(f"unknown stage {stage!r}")
        cmd = [sys.executable, __file__, "--n", str(args.n), "--embed-sample", str(args.embed_sample),
               "--threads", str(args.threads), "--child", stage]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(json.dumps({"stage": stage, "n": args.n, "error": proc.stderr.strip().splitlines()[-1:]}))
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{r['stage']:15s} n={r['n']:>9,d}  {r['seconds']:8.1f} s  {r['prompts_per_s']:>10,.0f} prompts/s  "
              f"peak {r['peak_rss_mib']:7,.0f} MiB  " + "  ".join(f"{k}={v}" for k, v in r.items()
              if k not in ("stage", "n", "seconds", "prompts_per_s", "peak_rss_mib")), flush=True)


if __name__ == "__main__":
    main()
