"""What each shipped student size costs to serve, beside T5-XXL: parameters, bf16 bytes on disk, encode
latency and peak memory at the pipelines' token lengths (77: SD3's default / CLIP's; 512: FLUX.1-dev's).
The table users look for when choosing a size.

One row per size (flan-T5 and T5-v1.1 of one size share the architecture: train/presets.py): small, base,
large as the DistillT5 student (train.student.DistillT5EncoderModel: the T5 encoder + the head
d_model -> 4096 -> 4096), xxl as the teacher's own encoder (transformers.T5EncoderModel, no head).
Real architectures, random weights: each model is built on the meta device, materialised in the
measured dtype and filled with N(0, 0.02) (seed 0; norm weights 1), so nothing is downloaded and T5's
initialiser never runs over XXL's 4.76 B parameters.

Every measurement is train.footprint.encode_footprint, as the series' scaling report makes it: batch 1,
random ids padded to the length, inference mode, a warm-up call (the compile, for compiled rows), then the
median of --repeats calls; peak memory is the weights plus what the encodes add (CPU: peak RSS via
/proc/self/clear_refs; CUDA: the allocator's peak). Each length is its own encode_footprint call, and a
compiled row resets dynamo between lengths, so every length gets its own static graph, as a pipeline
serving one fixed length would. Each (size, dtype, mode) runs in a fresh subprocess (this script with
--one), so one model's peak and the 9.5 GB of bf16 XXL weights do not carry into the next.

Rows: bf16 for every size (what the pipelines serve in), fp32 for the students (fp32 XXL, 19 GB of
weights, is left out), each eager and torch.compile'd (default mode; on a CPU inductor needs a C++
compiler; each row compiles cold, in a fresh inductor cache). `vs XXL` is the row's ms over bf16-eager
XXL's at the same length. Threads: torch's default.

A CPU timing is only as good as the machine is quiet: with 2 threads on 2 cores, one other busy process
slows an encode several times over. So on a CPU each row first waits (--quiet-wait) for other processes
to go quiet, the `busy` column says how many cores they used on average during the row (/proc/stat, less
this bench's own processes), and a row above 0.2 is measured again (--retries), keeping the quieter.

    python bench/student_sizes.py --sizes small --lengths 8 --repeats 1 --no-compile   # seconds, smoke
    python bench/student_sizes.py --json out/student_sizes.json                        # 2-core CPU: ~9 min
    python bench/student_sizes.py --device cuda                                        # one GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.footprint import head_parameters, t5_encoder_parameters  # noqa: E402
from train.presets import PRESETS  # noqa: E402

SIZES = ("small", "base", "large", "xxl")
HEAD_WIDTH = 4096  # FLUX / SD3's T5 width: the published head's output
RESULT = "RESULT "  # the line a --one child prints its measurement on
BUSY = 0.2  # CPU: a row during which other processes used more cores than this on average is retried


def preset_for(size: str):
    """The first preset of this size (they share the architecture): its T5 config fields and name."""
    return next(p for p in PRESETS.values() if p.size == size)


def expected_parameters(size: str) -> int:
    preset = preset_for(size)
    c = preset.config
    return t5_encoder_parameters(c) + (head_parameters(c["d_model"], HEAD_WIDTH) if preset.student else 0)


# ---- one measurement (the child process) ------------------------------------------------------------


def build(size: str, device: str, dtype_name: str):
    """The model of this size on `device` in `dtype`, random weights, without running T5's initialiser."""
    import torch
    from transformers import T5Config, T5EncoderModel

    from bench.train_step import materialize
    from train.student import DistillT5EncoderModel

    preset = preset_for(size)
    dtype = getattr(torch, {"bf16": "bfloat16", "fp32": "float32"}[dtype_name])
    config = T5Config(**preset.config, is_encoder_decoder=False, use_cache=False,
                      **({"project_out_dim": HEAD_WIDTH} if preset.student else {}))
    with torch.device("meta"):
        model = DistillT5EncoderModel(config) if preset.student else T5EncoderModel(config)
    torch.manual_seed(0)
    materialize(model, torch.device(device), dtype)  # to_empty, the tied embedding restored, N(0, 0.02), norms 1
    return model.eval().requires_grad_(False), config.vocab_size


def measure_one(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from train.footprint import encode_footprint, parameter_count

    started = time.perf_counter()
    model, vocab = build(spec["size"], spec["device"], spec["dtype"])
    out: dict[str, Any] = {"parameters": parameter_count(model), "build_s": round(time.perf_counter() - started, 1),
                           "lengths": {}}
    compile_s = 0.0
    for length in spec["lengths"]:
        if spec["compiled"]:
            torch._dynamo.reset()  # a static graph for this length, as a pipeline at one length compiles
        found = encode_footprint(model, [length], vocab, compiled=spec["compiled"], repeats=spec["repeats"])
        out["lengths"].update(found.pop("lengths"))
        compile_s += found.pop("compile_s", 0.0)
        found["torch_dtype"] = found.pop("dtype")
        out.update(found)
    out["compile_s"] = round(compile_s, 1) if spec["compiled"] else None
    out["threads"] = torch.get_num_threads()
    out["total_s"] = round(time.perf_counter() - started, 1)
    return out


# ---- the parent: one subprocess per row --------------------------------------------------------------


def run_row(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """This script with --one spec in a fresh interpreter; its RESULT line, or what went wrong."""
    started, busy, ours = time.perf_counter(), _busy_cpu_s(), _children_cpu_s()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(spec)]
    with tempfile.TemporaryDirectory(prefix="student_sizes-inductor-") as cache:  # a cold compile, every row
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout,
                                  env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache})
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "note": f"over {timeout:.0f} s"}
    wall = time.perf_counter() - started
    # cores other processes kept busy meanwhile, on average: a CPU timing is only as good as this is small
    other = None if busy is None else max(0.0, (_busy_cpu_s() - busy) - (_children_cpu_s() - ours)) / wall
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT):
            return {"status": "ok", "wall_s": round(wall, 1), "other_cores": other and round(other, 2),
                    **json.loads(line[len(RESULT):])}
    died = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
    return {"status": "error", "wall_s": wall, "note": died + (" (killed: out of memory?)" if proc.returncode == -9 else "")}


def _busy_cpu_s() -> float | None:
    """CPU seconds all processes have used (Linux /proc/stat: everything but idle and iowait)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _busy(row: dict[str, Any]) -> float:
    return row.get("other_cores") or 0.0


def _wait_quiet(max_wait: float, window: float = 3.0) -> float:
    """Seconds spent waiting (at most max_wait) until other processes use under BUSY / 2 cores for `window`
    seconds: another process on one of two cores can slow a 2-thread encode several times over."""
    started = time.perf_counter()
    while (busy := _busy_cpu_s()) is not None and time.perf_counter() - started < max_wait:
        time.sleep(window)
        if (_busy_cpu_s() - busy) / window < BUSY / 2:
            break
    return time.perf_counter() - started


def _children_cpu_s() -> float:
    t = os.times()
    return t.children_user + t.children_system


def plan(args) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows to measure, in table order, and notes on what is left out."""
    rows, notes = [], []
    for size in args.sizes:
        student = preset_for(size).student
        for dtype in ("bf16", "fp32") if student else ("bf16",):
            for compiled in (False, True):
                if compiled and args.no_compile:
                    continue
                repeats = args.xxl_repeats if not student and args.xxl_repeats else args.repeats
                rows.append({"size": size, "dtype": dtype, "compiled": compiled, "device": args.device,
                             "lengths": args.lengths, "repeats": repeats})
    if "xxl" in args.sizes:
        notes.append("xxl fp32: not measured (19 GB of fp32 weights; the pipelines serve T5-XXL in bf16)")
        if args.xxl_repeats and args.xxl_repeats != args.repeats:
            notes.append(f"xxl rows: median of {args.xxl_repeats} repeats (others {args.repeats}), each after one warm-up")
    return rows, notes


def fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(res: dict[str, Any]) -> str:
    lengths = [str(n) for n in res["lengths"]]
    xxl = next((r for r in res["rows"] if r["size"] == "xxl" and r["dtype"] == "bf16" and not r["compiled"]
                and r["status"] == "ok"), None)
    header = (["size", "dtype", "mode", "params", "bf16 disk"] + [f"ms@{n}" for n in lengths]
              + [f"peak MiB@{n}" for n in lengths] + [f"vs XXL@{n}" for n in lengths] + ["compile s"]
              + (["busy"] if res["device"] == "cpu" else []))
    lines = [header]
    for r in res["rows"]:
        ok = r["status"] == "ok"
        params = r.get("parameters") or r["expected_parameters"]
        cells = [r["size"], r["dtype"], "compiled" if r["compiled"] else "eager", f"{params / 1e6:,.1f} M",
                 f"{params * 2 / 2**20:,.0f} MiB" if params * 2 < 2**30 else f"{params * 2 / 2**30:,.2f} GiB"]
        per = [r["lengths"].get(n, {}) if ok else {} for n in lengths]
        cells += [fmt(p.get("ms"), ",.1f") if ok else r["status"] for p in per]
        cells += [fmt(p.get("peak_mib"), ",.0f") if ok else "" for p in per]
        cells += [fmt(p["ms"] / xxl["lengths"][n]["ms"], ".3f") if ok and xxl and n in xxl["lengths"] and p.get("ms") else "-"
                  for n, p in zip(lengths, per)]
        cells.append(fmt(r.get("compile_s"), ".1f") if ok and r["compiled"] else "-")
        if res["device"] == "cpu":
            cells.append(fmt(r.get("other_cores"), ".2f"))
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    left = 3  # size, dtype, mode left-aligned; numbers right-aligned
    rendered = ["  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                for line in lines]
    return "\n".join([rendered[0], "-" * len(rendered[0])] + rendered[1:])


def report(res: dict[str, Any]) -> str:
    threads = sorted({r["threads"] for r in res["rows"] if r.get("threads")})
    out = [f"encode cost per student size vs T5-XXL  device={res['device_name']}  threads={','.join(map(str, threads)) or '?'}  "
           f"batch 1  repeats={res['repeats']}  torch {res['torch']}  transformers {res['transformers']}",
           "random weights, real architectures; students = T5 encoder + head d_model->4096->4096 (xxl: encoder only)",
           "params = encoder (+ head); bf16 disk = params x 2 bytes; ms = median encode of one prompt",
           "peak MiB = weights + what an encode adds on top (CPU: peak RSS; CUDA: allocator peak)",
           "vs XXL = ms / bf16-eager XXL ms at that length; compile s = first calls, cold inductor cache"
           + ("\nbusy = cores other processes used during the row (the timings need it near 0)" if res["device"] == "cpu" else ""),
           "", table(res), ""]
    out += [f"note: {n}" for n in res["notes"]]
    for r in res["rows"]:
        if r["status"] != "ok":
            out.append(f"note: {r['size']} {r['dtype']} {'compiled' if r['compiled'] else 'eager'}: {r['status']} "
                       f"{r.get('note', '')}".rstrip())
            continue
        if r["attempts"] > 1:
            out.append(f"note: {r['size']} {r['dtype']} {'compiled' if r['compiled'] else 'eager'}: "
                       f"other processes were busy; kept the quieter of {r['attempts']} attempts")
        if r.get("parameters") != r["expected_parameters"]:
            out.append(f"note: {r['size']}: built {r['parameters']:,} parameters, train.footprint's count says "
                       f"{r['expected_parameters']:,}")
    out.append(f"total {res['total_s'] / 60:.1f} min (each row in its own process; build + warm-up included)")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=",".join(SIZES), help="comma-separated subset of " + ",".join(SIZES))
    p.add_argument("--lengths", default="77,512", help="token lengths, comma-separated")
    p.add_argument("--repeats", type=int, default=5, help="timed encodes per length (median), after one warm-up")
    p.add_argument("--xxl-repeats", type=int, default=None, help="repeats for the xxl rows (default: --repeats)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--no-compile", action="store_true", help="eager rows only")
    p.add_argument("--retries", type=int, default=1,
                   help=f"CPU: measure a row again (keeping the quieter) when other processes used over {BUSY} cores")
    p.add_argument("--quiet-wait", type=float, default=120,
                   help="CPU: before each row, wait up to this many seconds for other processes to go quiet")
    p.add_argument("--timeout", type=float, default=1800, help="seconds one row may take")
    p.add_argument("--json", type=Path, default=None, help="also write the results here (after every row)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one row, print RESULT
    args = p.parse_args(argv)

    if args.one:
        print(RESULT + json.dumps(measure_one(json.loads(args.one))), flush=True)
        return None

    import torch  # not before --one's child imports it: the parent holds no model

    import transformers

    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if unknown := [s for s in args.sizes if s not in SIZES]:
        p.error(f"--sizes: unknown {unknown}; choose from {','.join(SIZES)}")
    args.lengths = [int(n) for n in args.lengths.split(",")]
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    specs, notes = plan(args)
    cpu = args.device == "cpu"
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else (
        f"cpu ({_cpu_model()}, {os.cpu_count()} cores)")
    res: dict[str, Any] = {"device": args.device, "device_name": device_name, "lengths": args.lengths,
                           "repeats": args.repeats, "torch": torch.__version__, "transformers": transformers.__version__,
                           "python": platform.python_version(), "rows": [], "notes": notes, "total_s": 0.0}
    started = time.perf_counter()
    for spec in specs:
        name = f"{spec['size']} {spec['dtype']} {'compiled' if spec['compiled'] else 'eager'}"
        best: dict[str, Any] | None = None
        for attempt in range(1 + (args.retries if cpu else 0)):
            waited = _wait_quiet(args.quiet_wait) if cpu else 0.0
            print(f"[student_sizes] {name} ..." + (f" (waited {waited:.0f} s for a quiet CPU)" if waited >= 5 else ""),
                  file=sys.stderr, flush=True)
            row = {**spec, "expected_parameters": expected_parameters(spec["size"]), **run_row(spec, args.timeout)}
            print(f"[student_sizes] {name}: {row['status']} {json.dumps(row.get('lengths', row.get('note')))} "
                  f"({row.get('wall_s', '?')} s, other processes {fmt(row.get('other_cores'), '.2f')} cores)",
                  file=sys.stderr, flush=True)
            if best is None or (row["status"] == "ok" and (best["status"] != "ok" or _busy(row) < _busy(best))):
                best = row
            if row["status"] != "ok" or _busy(row) <= BUSY:
                break
        res["rows"].append({**best, "attempts": attempt + 1})
        res["total_s"] = round(time.perf_counter() - started, 1)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(res, indent=2) + "\n")
    print(report(res), flush=True)
    return res


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
