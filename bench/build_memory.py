"""Peak memory of `curate build` against the number of input prompts: does reading stream?

    python bench/build_memory.py                      # 250k, 1M, 2M one-line prompts
    python bench/build_memory.py --sizes 100000 --keep-steps tag,visual   # spaCy steps too (slow)
    python bench/build_memory.py --sizes 100000,1000000 --engines local,ray:1,ray:2   # the Ray engine too

Each size is a fresh `curate build --recipe quality` in its own process on a .txt file of N distinct
one-line prompts (about 47 bytes each, as scraped captions are), with the steps that need a model
switched off by default: tag and visual (spaCy), dedup_semantic and cluster (MiniLM vectors: n x 384
float32 is 1.5 KB a prompt by itself, 3 GB at 2M, and hours of CPU). What runs is reading, aesthetic
(column mode), length, dedup_exact, dedup_near (MinHash), balance and the writer. Printed per engine
and size: peak RSS of the build process (ru_maxrss; under Ray, the driver), under Ray also the largest
peak RSS of one of Ray's processes (workers, raylet, GCS; sampled every 0.2 s, shared object-store pages
counted in each process that maps them) and the peak of their sum, wall seconds and rows per second.
`ray:N` starts a local Ray head with N CPUs (`ray start`) and builds with `--engine ray --ray-address auto`.

Measured on the 2-core development machine (Python 3.11, one build at a time; before --engines, the
growth column is the bytes of peak per row above the smallest size's peak):

      rows  peak MiB  seconds    kept  rejected  bytes/row over first
   250,000       430     64.0  20,000   230,000
 1,000,000       811    261.2  20,000   980,000                   532
 2,000,000     1,377    448.2  20,000 1,980,000                   567

So 2,000,000 prompts peak at 1.44 GB (1,377 MiB), growing by about 550 bytes a row: the records that reach
dedup (a one-line record is ~300 bytes) and dedup_near's hashes and band keys. Before reading streamed, the
same script measured ~1,040 bytes a row (417 MiB at 100,000 rows, 713 MiB at 400,000): 2.3 GB at 2,000,000.
The peak is when balance has dropped all but 20,000 and the writer writes them out in parts.

Local vs Ray (`--engines local,ray:1,ray:2`, same pool, 20,000 kept of each):

 engine       rows  peak MiB  ray max  ray sum  seconds  rows/s
  local    100,000       353        0        0     18.5   5,395
  ray:1    100,000       423    1,624    2,576     82.4   1,213
  ray:2    100,000       424    1,121    3,048     63.2   1,583
  local  1,000,000       789        0        0    178.9   5,590
  ray:2  1,000,000       768    6,277   13,225    531.3   1,882

From 100k to 1M the local engine's time grows 9.7x and its peak 2.2x; Ray's time 8.4x (2 CPUs) with
the driver flat (the records stay in the object store until balance selects), while Ray's processes grow
with the pool: the object store holds each stage's output (the sum counts shared pages once per process
that maps them, so it overstates). On one machine the local engine is ~3x faster: Ray pays a pickled
record per row and a shuffle per dedup stage, which buys scaling out to more machines, not speed here.

With dedup_semantic and cluster on (`--keep-steps dedup_semantic,cluster`; MiniLM embeddings, spilled to
disk locally; this pool's template makes 79% of it semantic duplicates):

 engine       rows  peak MiB  ray max  ray sum  seconds  rows/s    kept  rejected data/ as local
  local    100,000     1,488        0        0    131.1     763  20,000    80,000              -
  ray:2    100,000       602    2,129    4,789    113.4     882  20,000    80,000      identical
  local  1,000,000     3,012        0        0    404.8   2,471  20,000   980,000              -

The 1M row read its embeddings from a warm $T5SHRINK_CACHE (the encoder did not run), as did Ray's 100k
row (from the local run before it); "data/ as local" compares the written parquet files byte for byte.
"""

from __future__ import annotations

import argparse
import contextlib
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
               cache: Path | None = None, extra: list[str] = ()) -> tuple[float, float, dict]:
    """(peak RSS in MiB, seconds, manifest) of one `curate build` in a child process, the pool as its quality
    source, `steps_off` switched off, $T5SHRINK_CACHE at `cache` when given, and `extra` arguments."""
    overrides = [f"--set=steps.{s}=null" for s in steps_off] + list(extra)
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


class RaySampler:
    """Peak RSS of Ray's processes (raylet, GCS, workers) while a build runs: each one's own peak, the largest
    of them, and the peak of their sum, sampled every 0.2 s (the driver's own peak is its ru_maxrss)."""

    def __init__(self):
        import threading

        self.largest = self.total = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self.stop.wait(0.2):
            rss = []
            for proc in psutil.process_iter(["name", "cmdline", "memory_info"]):
                line = " ".join(proc.info["cmdline"] or [])
                if proc.info["memory_info"] and ("ray::" in line or "raylet" in line or "gcs_server" in line
                                                 or "default_worker.py" in line or "ray::" in (proc.info["name"] or "")):
                    rss.append(proc.info["memory_info"].rss / 2**20)
            self.largest, self.total = max(self.largest, *rss, 0.0), max(self.total, sum(rss))

    def __enter__(self) -> "RaySampler":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


@contextlib.contextmanager
def ray_cluster(cpus: int):
    """A local Ray head with `cpus` CPUs, stopped afterwards; yields the build arguments that join it."""
    subprocess.run(["ray", "start", "--head", f"--num-cpus={cpus}", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, capture_output=True)
    try:
        yield ["--engine", "ray", "--ray-address", "auto"]
    finally:
        subprocess.run(["ray", "stop", "--force"], capture_output=True)


def same_data(tmp: Path, n: int, engine: str) -> str:
    """Whether the build wrote byte-identical data/ files to the local engine's on the same pool ("-" for the
    local engine itself, or when it did not run)."""
    local, other = tmp / f"out-{n}-local" / "data", tmp / f"out-{n}-{engine}" / "data"
    if engine == "local" or not local.is_dir():
        return "-"
    files = sorted(p.name for p in local.iterdir())
    same = files == sorted(p.name for p in other.iterdir()) and all(
        (local / f).read_bytes() == (other / f).read_bytes() for f in files)
    return "identical" if same else "DIFFERS"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="250000,1000000,2000000", help="input rows per build")
    parser.add_argument("--set-size", type=int, default=20_000, help="prompts kept (the recipe's size)")
    parser.add_argument("--keep-steps", default="", help=f"model steps to leave on ({', '.join(MODEL_STEPS)})")
    parser.add_argument("--engines", default="local", help="local and/or ray:N (a local Ray with N CPUs), comma separated")
    args = parser.parse_args()
    keep = {s for s in args.keep_steps.split(",") if s}
    sizes = [int(n) for n in args.sizes.split(",")]
    print(f"curate build --recipe quality, steps off: {', '.join(s for s in MODEL_STEPS if s not in keep) or 'none'}")
    print(f"{'engine':>7} {'rows':>10} {'peak MiB':>9} {'ray max':>8} {'ray sum':>8} {'seconds':>8} {'rows/s':>7} "
          f"{'kept':>7} {'rejected':>9} {'data/ as local':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            pool = Path(tmp) / f"pool-{n}.txt"
            write_prompts(pool, n)
            for engine in args.engines.split(","):
                cpus = int(engine.split(":")[1]) if engine.startswith("ray") else 0
                with (ray_cluster(cpus) if cpus else contextlib.nullcontext([])) as extra, RaySampler() as ray_rss:
                    peak, seconds, manifest = build_peak(pool, Path(tmp) / f"out-{n}-{engine}", args.set_size,
                                                         [s for s in MODEL_STEPS if s not in keep], extra=extra)
                print(f"{engine:>7} {n:>10,} {peak:>9,.0f} {ray_rss.largest:>8,.0f} {ray_rss.total:>8,.0f} "
                      f"{seconds:>8.1f} {n / seconds:>7,.0f} {manifest['counts']['kept']:>7,} "
                      f"{manifest['counts']['rejected']:>9,} {same_data(Path(tmp), n, engine):>14}", flush=True)
            pool.unlink()


if __name__ == "__main__":
    main()
