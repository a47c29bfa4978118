"""Learning per unit of compute: `train run` at the shipped tiny recipe vs the reference loop at its best lr.

Compute is counted in prompt-passes through the transformer with gradients (one prompt, one regressed
denoising step, forward + backward): `train run` spends steps x K x batch_size of them, the reference loop
updates x its batch (4). Following the trajectory (no-grad forwards) is not counted, for either.

  ours       `train.distill.train` on the shipped `tiny` recipe with only the seed, the teacher, the data
             and --max-steps changed: the real trainer, every default as shipped;
  reference  the published loop (bench/reference_gap.py, written independently of the trainer: an AdamW
             update per regressed step, all 20 steps of each trajectory regressed, constant lr, batch 4,
             pooled CLIP zeroed, projection dropout 0.1) at each lr of --ref-lrs; the best lr at each budget
             (mean over seeds) is "the best-tuned reference".

Both are scored by the same GapEvaluator on the same held-out prompts (the recipe's split of the data).
Each budget is its own run of ours (its lr schedule spans the run); the reference is constant-lr, so
one run per lr gives every budget. Equal wall-clock: each loop's training seconds per 1000 passes are
measured too (evaluation excluded), and the reference's gap at ours' wall time is read off its curve.

    python bench/distill_efficiency.py                              # tiny:flux + tiny:sd3, 3 seeds (~25 min)
    python bench/distill_efficiency.py --teachers DIR1,DIR2 --seeds 0,1,2 --json out.json
    python bench/distill_efficiency.py --teachers tiny:flux --seeds 0 --set optim.lr=1e-2   # try a change
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from train.config import resolve  # noqa: E402
from train.data import heldout_split, load_stage_data  # noqa: E402
from train.distill import train  # noqa: E402
from train.evaluate import GapEvaluator  # noqa: E402
from train.runs import load_student_dir, log_path, student_path  # noqa: E402
from train.teachers.registry import load_teacher  # noqa: E402

from reference_gap import train_reference  # noqa: E402  (bench/: the reference loop, written once)

REFERENCE_BATCH = 4
CURVE_POINTS = 4  # gap measurements per run, evenly spaced in compute


def recipe(teacher: str, data: str | None, seed: int, sets: list[str]) -> dict:
    return resolve("tiny", [f"seed={seed}", *sets], data=data, teacher=teacher)[1]


def passes_per_step(cfg: dict) -> int:
    dist = cfg["distill"]
    return (dist["train_steps"] or dist["sampling_steps"]) * cfg["optim"]["batch_size"]


def run_ours(cfg: dict, passes: int, evaluator: GapEvaluator) -> dict:
    """`train run` for `passes` prompt-passes; the curve from its own validations, the end scored by `evaluator`."""
    per_step = passes_per_step(cfg)
    steps = max(1, round(passes / per_step))
    cfg = {**cfg, "validation": {**cfg["validation"], "every": max(1, steps // CURVE_POINTS)},
           "checkpoint": {**cfg["checkpoint"], "every": 0}, "log": {**cfg["log"], "tensorboard": False, "every": 1}}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        train(cfg, out, max_steps=steps, progress=False)
        rows = [json.loads(line) for line in log_path(out).read_text().splitlines()]
        student, _, _ = load_student_dir(student_path(out))
    seconds = training_seconds(rows)
    curve = [(r["step"] * per_step, r["val_gap"]) for r in rows if "val_gap" in r and 0 < r["step"] < steps]
    final = evaluator(student.float())["gap"]
    return {"passes": steps * per_step, "seconds": seconds, "curve": curve + [(steps * per_step, final)], "gap": final}


def training_seconds(rows: list[dict]) -> float:
    """The loop's time without its validations: elapsed at the last step less the validations within it."""
    last = [r for r in rows if "elapsed_s" in r][-1]
    return last["elapsed_s"] - sum(r["val_s"] for r in rows if "val_s" in r and 0 < r["step"] < last["step"])


def run_reference(teacher, rows, cfg: dict, lr: float, marks: list[int], evaluator: GapEvaluator) -> dict:
    """The reference loop up to the largest mark (in passes); the gap and training seconds at each mark."""
    stage = cfg["stages"][-1]
    updates_at = {m // REFERENCE_BATCH: m for m in marks}
    curve, clock = [], {"train": 0.0, "since": time.perf_counter()}

    def after_update(student, updates: int) -> None:
        if updates in updates_at:
            clock["train"] += time.perf_counter() - clock["since"]
            curve.append((updates_at[updates], round(clock["train"], 2), evaluator(student)["gap"]))
            clock["since"] = time.perf_counter()

    train_reference(teacher, rows, max(updates_at), REFERENCE_BATCH, stage["resolution"], max_len=77, lr=lr,
                    seed=cfg["seed"], after_update=after_update)
    return {"lr": lr, "curve": curve}


def measure(source: str, seed: int, args: argparse.Namespace, budgets: list[int], marks: list[int],
            ours_budgets: list[int], lrs: list[float], earlier: list[dict]) -> dict:
    """One teacher and seed: ours at each budget, the reference at each lr (or its curves from `earlier`)."""
    cfg = recipe(source, args.data, seed, args.sets)
    stage, val = cfg["stages"][-1], cfg["validation"]
    teacher = load_teacher(cfg["teacher"]["path"], device="cuda" if torch.cuda.is_available() else "cpu")
    heldout, (rows,) = heldout_split([load_stage_data(stage["data"])], val["data"], val["num_prompts"])
    evaluator = GapEvaluator(teacher, heldout, stage["max_sequence_length"], stage["resolution"], val["sigmas"],
                             val["guidance"], val["batch_size"], seed=seed)
    run = {"teacher": source, "seed": seed, "ours": {}, "reference": []}
    for b in ours_budgets:
        run["ours"][b] = run_ours(cfg, b, evaluator)
        print(f"{source} seed {seed} ours @{b}: gap {run['ours'][b]['gap']:.4f} ({run['ours'][b]['seconds']:.1f} s)",
              flush=True)
    reused = [r["reference"] for r in earlier if r["teacher"] == source and r["seed"] == seed]
    if reused:
        run["reference"] = [dict(x, curve=[tuple(p) for p in x["curve"]]) for x in reused[0]]
        return run
    for lr in lrs:
        run["reference"].append(run_reference(teacher, rows, cfg, lr, marks, evaluator))
        print(f"{source} seed {seed} reference lr {lr:g}: "
              + ", ".join(f"@{m}: {g:.4f}" for m, _, g in run["reference"][-1]["curve"]), flush=True)
    return run


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teachers", default="tiny:flux,tiny:sd3", help="comma-separated tiny folders or tiny:<family>")
    ap.add_argument("--data", default=None, help="prompts (default: the tiny recipe's builtin:tiny)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budgets", default="1600,6400", help="prompt-passes with gradients (1600 = the whole tiny recipe)")
    ap.add_argument("--ref-lrs", default="1e-3,3e-3,1e-2", help="the reference's learning-rate sweep")
    ap.add_argument("--reference", default=None,
                    help="reuse the reference curves of an earlier --json (they do not depend on ours' recipe)")
    ap.add_argument("--no-ours", action="store_true", help="run only the reference (to reuse with --reference)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="a recipe override for ours (repeatable)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write every measurement here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    budgets = [int(b) for b in args.budgets.split(",")]
    marks = sorted({b * i // CURVE_POINTS for b in budgets for i in range(1, CURVE_POINTS + 1)})
    lrs = [float(x) for x in args.ref_lrs.split(",") if x]  # none: ours only (trying a change)
    earlier = json.loads(Path(args.reference).read_text())["results"] if args.reference else []
    results = [measure(source, seed, args, budgets, marks, [] if args.no_ours else budgets, lrs, earlier)
               for source in args.teachers.split(",") for seed in (int(s) for s in args.seeds.split(","))]
    if not args.no_ours:
        print_tables(results, budgets)
    if args.json:
        Path(args.json).write_text(json.dumps({"sets": args.sets, "results": results}, indent=2) + "\n")


def print_tables(results: list[dict], budgets: list[int]) -> None:
    for source in dict.fromkeys(r["teacher"] for r in results):
        runs = [r for r in results if r["teacher"] == source]
        ref_curves = reference_means(runs)  # lr -> [(passes, mean gap)]
        print(f"\n{source}, {len(runs)} seeds: held-out gap, mean ± sd")
        print(f"{'passes':>7} {'ours':>16} {'reference (best lr)':>26} {'ours / ref':>11} {'ref @ ours wall-clock':>22}")
        for b in budgets:
            ours = mean_sd([r["ours"][b]["gap"] for r in runs])
            if not ref_curves:
                print(f"{b:>7} {ours[0]:>9.4f} ± {ours[1]:.4f}")
                continue
            lr = min(ref_curves, key=lambda x: dict(ref_curves[x])[b])
            curves = [next(x for x in r["reference"] if x["lr"] == lr)["curve"] for r in runs]
            ref = mean_sd([next(g for m, _, g in c if m == b) for c in curves])
            wall = mean_sd([gap_at_seconds(c, r["ours"][b]["seconds"]) for c, r in zip(curves, runs)])
            print(f"{b:>7} {ours[0]:>9.4f} ± {ours[1]:.4f} {ref[0]:>12.4f} ± {ref[1]:.4f} (lr {lr:g})"
                  f" {ours[0] / ref[0]:>10.2f} {wall[0]:>13.4f} ± {wall[1]:.4f}")
        print("curves (passes: gap, mean over seeds):")
        for b in budgets:
            points = zip(*[r["ours"][b]["curve"] for r in runs])
            print(f"  ours, {b}-pass run: " + ", ".join(f"{p[0][0]}: {statistics.fmean(g for _, g in p):.4f}"
                                                       for p in points))
        for lr, curve in ref_curves.items():
            print(f"  reference lr {lr:g}: " + ", ".join(f"{m}: {g:.4f}" for m, g in curve))
        seconds = {b: statistics.fmean(r["ours"][b]["seconds"] * 1000 / r["ours"][b]["passes"] for r in runs)
                   for b in budgets}
        ref_s = float("nan") if not ref_curves else statistics.fmean(x["curve"][-1][1] * 1000 / x["curve"][-1][0] for r in runs for x in r["reference"])
        print("training seconds per 1000 passes: ours " + ", ".join(f"{v:.2f} ({b}-pass run)" for b, v in seconds.items())
              + f"; reference {ref_s:.2f}")


def reference_means(runs: list[dict]) -> dict[float, list[tuple[int, float]]]:
    by_lr: dict[float, list[list[tuple[int, float, float]]]] = {}
    for r in runs:
        for ref in r["reference"]:
            by_lr.setdefault(ref["lr"], []).append(ref["curve"])
    return {lr: [(points[0][0], statistics.fmean(g for _, _, g in points)) for points in zip(*curves)]
            for lr, curves in by_lr.items()}


def gap_at_seconds(curve: list[tuple[int, float, float]], seconds: float) -> float:
    """The reference's gap at the last curve point it reached within `seconds` of training (its first if none)."""
    reached = [g for _, s, g in curve if s <= seconds]
    return reached[-1] if reached else curve[0][2]


if __name__ == "__main__":
    main()
