"""`train run --recipe tiny` on a busy CPU: the default thread choice against fixed thread counts.

    python bench/train_threads.py                      # 1 busy-loop process beside the runs, 2 repeats
    python bench/train_threads.py --busy 0 --repeats 1 # an idle machine

Another CPU-heavy process (a Python busy loop, `--busy` of them) runs for the whole bench, started
`--settle` seconds before the first run so the 1-minute load average shows it, as it would for a
competitor that has been running a while. Each setting then runs the tiny recipe in a fresh process,
the settings interleaved within each repeat so drifting load hits them alike:

  default  no OMP_NUM_THREADS: `train run` chooses from the free cores (train.config.choose_cpu_threads)
  N        OMP_NUM_THREADS=N (N = 1 .. cores)

The table gives the median wall time of the whole command (imports included), the median time of the
training loop alone (log.jsonl's elapsed_s at the last step), the thread count each run reported, and
each setting's wall time against the best setting's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREADS_LINE = re.compile(r"^cpu threads: (\d+)", re.M)


def run_tiny(out: Path, threads: int | None, max_steps: int | None) -> dict:
    """One `train run --recipe tiny` in a fresh process; wall seconds, loop seconds and threads used."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "RAYON_RS_NUM_CPUS")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "train.cli", "run", "--recipe", "tiny", "--output", str(out), "--quiet"]
    cmd += ["--max-steps", str(max_steps)] if max_steps else []
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"train run failed ({done.returncode}): {done.stderr[-2000:]}")
    loop = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if '"elapsed_s"' in line]
    chosen = THREADS_LINE.search(done.stderr)
    return {"wall_s": wall, "loop_s": loop[-1]["elapsed_s"], "threads": int(chosen.group(1)) if chosen else None}


def start_busy(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def table(results: dict[str, list[dict]]) -> list[dict]:
    rows = []
    for name, runs in results.items():
        rows.append({"setting": name, "threads": sorted({r["threads"] for r in runs}),
                     "wall_s": statistics.median(r["wall_s"] for r in runs),
                     "loop_s": statistics.median(r["loop_s"] for r in runs), "runs": runs})
    best = min(r["wall_s"] for r in rows)
    for row in rows:
        row["vs_best"] = row["wall_s"] / best
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", type=int, default=1, help="busy-loop processes beside the runs [1]")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds the busy loops run before the first run [60]")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=None, help="shorten each run (default: the recipe's 60 steps)")
    parser.add_argument("--threads", default=None, help="fixed counts to compare, e.g. 1,2 [1 .. cores]")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    fixed = [int(t) for t in args.threads.split(",")] if args.threads else list(range(1, cores + 1))
    settings: list[tuple[str, int | None]] = [("default", None)] + [(str(t), t) for t in fixed]
    # the tiny teacher is built once before timing, so no run pays for building it
    subprocess.run([sys.executable, "-c", "from train.tiny import tiny_teacher_path; tiny_teacher_path('flux')"], check=True)
    busy = start_busy(args.busy)
    try:
        time.sleep(args.settle if busy else 0)
        results: dict[str, list[dict]] = {name: [] for name, _ in settings}
        with tempfile.TemporaryDirectory() as tmp:
            for rep in range(args.repeats):
                for name, threads in settings:
                    run = run_tiny(Path(tmp) / f"{name}-{rep}", threads, args.max_steps)
                    results[name].append(run)
                    print(f"  repeat {rep + 1} {name:>7}: {run['wall_s']:6.1f} s wall, {run['loop_s']:6.1f} s loop, "
                          f"{run['threads']} threads", file=sys.stderr, flush=True)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    rows = table(results)
    print(f"train run --recipe tiny, {cores} cores, {args.busy} busy-loop process(es), median of {args.repeats}")
    print("| setting | threads | wall s | training loop s | wall vs best |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['setting']} | {','.join(map(str, row['threads']))} | {row['wall_s']:.1f} | {row['loop_s']:.1f} "
              f"| {row['vs_best']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"cores": cores, "busy": args.busy, "rows": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
