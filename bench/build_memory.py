"""Peak memory of `curate build` against the number of input prompts: does reading stream?

    python bench/build_memory.py                      # 250k, 1M, 2M one-line prompts
    python bench/build_memory.py --sizes 100000 --keep-steps tag,visual   # spaCy steps too (slow)

Each size is a fresh `curate build --recipe quality` in its own process on a .txt file of N distinct
one-line prompts (about 47 bytes each, as scraped captions are), with the steps that need a model
switched off by default: tag and visual (spaCy), dedup_semantic and cluster (MiniLM vectors: n x 384
float32 is 1.5 KB a prompt by itself, 3 GB at 2M, and hours of CPU). What runs is reading, aesthetic
(column mode), length, dedup_exact, dedup_near (MinHash), balance and the writer. Printed per size:
peak RSS (ru_maxrss of the build process), wall seconds, and the bytes of peak per input row above the
smallest size's peak, which is what grows with the pool.

Measured on the 2-core development machine (Python 3.11, one build at a time):

      rows  peak MiB  seconds    kept  rejected  bytes/row over first
   250,000       430     64.0  20,000   230,000
 1,000,000       811    261.2  20,000   980,000                   532
 2,000,000     1,377    448.2  20,000 1,980,000                   567

So 2,000,000 prompts peak at 1.44 GB (1,377 MiB), growing by about 550 bytes a row: the records that reach
dedup (a one-line record is ~300 bytes) and dedup_near's hashes and band keys. Before reading streamed, the
same script measured ~1,040 bytes a row (417 MiB at 100,000 rows, 713 MiB at 400,000): 2.3 GB at 2,000,000.
The peak is when balance has dropped all but 20,000 and the writer writes them out in parts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL_STEPS = ("tag", "visual", "dedup_semantic", "cluster")
_WORDS = ("red blue green golden tiny giant ancient wooden glass misty cozy bright old quiet wild "
          "cat dog fox owl horse robot knight dragon sailor child tiger whale house bridge tree boat").split()


def write_prompts(path: Path, n: int, seed: int = 0) -> None:
    """n distinct lines: five random words and a serial number (~47 bytes a line)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            handle.write(f"a {' '.join(rng.choice(_WORDS) for _ in range(5))} scene, photo number {i}\n")


def build_peak(pool: Path, out: Path, size: int, steps_off: list[str], recipe: str = "quality",
               cache: Path | None = None) -> tuple[float, float, dict]:
    """(peak RSS in MiB, seconds, manifest) of one `curate build` in a child process, the pool as its quality
    source, `steps_off` switched off, and $T5SHRINK_CACHE at `cache` when given."""
    overrides = [f"--set=steps.{s}=null" for s in steps_off]
    script = ("import resource, sys; from curate.cli import main\n"
              "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\nsys.exit(code)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **({"T5SHRINK_CACHE": str(cache)} if cache else {})}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script, "build", "--recipe", recipe, "--source", f"quality={pool}",
                           "--size", str(size), "--output", str(out), "--quiet", *overrides],
                          capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"build failed: {done.stderr.strip()}")
    peak_kib = int(done.stderr.strip().splitlines()[-1])
    return peak_kib / 1024, seconds, json.loads((out / "manifest.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="250000,1000000,2000000", help="input rows per build")
    parser.add_argument("--set-size", type=int, default=20_000, help="prompts kept (the recipe's size)")
    parser.add_argument("--keep-steps", default="", help=f"model steps to leave on ({', '.join(MODEL_STEPS)})")
    args = parser.parse_args()
    keep = {s for s in args.keep_steps.split(",") if s}
    sizes = [int(n) for n in args.sizes.split(",")]
    print(f"curate build --recipe quality, steps off: {', '.join(s for s in MODEL_STEPS if s not in keep) or 'none'}")
    print(f"{'rows':>10} {'peak MiB':>9} {'seconds':>8} {'kept':>7} {'rejected':>9} {'bytes/row over first':>21}")
    first = None
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            pool = Path(tmp) / f"pool-{n}.txt"
            write_prompts(pool, n)
            peak, seconds, manifest = build_peak(pool, Path(tmp) / f"out-{n}", args.set_size,
                                                 [s for s in MODEL_STEPS if s not in keep])
            pool.unlink()
            growth = "" if first is None else f"{(peak - first[1]) * 2**20 / (n - first[0]):21,.0f}"
            first = first or (n, peak)
            print(f"{n:>10,} {peak:>9,.0f} {seconds:>8.1f} {manifest['counts']['kept']:>7,} "
                  f"{manifest['counts']['rejected']:>9,} {growth}", flush=True)


if __name__ == "__main__":
    main()
