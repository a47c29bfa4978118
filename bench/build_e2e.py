"""End-to-end `curate build` throughput: prompts/s and per-step seconds, cold and warm cache.

    python bench/build_e2e.py --recipe balanced --size 3000

Cold = a fresh embedding cache (every prompt embedded); warm = the same build again.
Prompts/s counts the rows read from the pools (what the pipeline processes); the
output rate (size / seconds) is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(recipe: str, size: int, out: Path, cache: Path) -> tuple[float, dict]:
    env = {**os.environ, "T5SHRINK_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "curate.cli", "build", "--recipe", recipe, "--size", str(size),
                    "--output", str(out), "--quiet"], check=True, env=env, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started, json.loads((out / "manifest.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="balanced")
    parser.add_argument("--size", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for label in ("cold", "warm"):
            seconds, manifest = run(args.recipe, args.size, tmp / label, tmp / "cache")
            rows = manifest["counts"]["rows_read"]
            print(f"{label}: {rows:,} prompts read, {manifest['counts']['kept']:,} kept in {seconds:.1f}s wall "
                  f"(process start included) -> {rows / seconds:,.0f} prompts/s in, "
                  f"{manifest['counts']['kept'] / seconds:,.0f} prompts/s out")
            steps = ", ".join(f"{s['name']} {s['seconds']:.1f}s" for s in manifest["steps"])
            print(f"  steps: {steps}")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        print(f"peak RSS of a build: {peak:.2f} GiB")


if __name__ == "__main__":
    main()
