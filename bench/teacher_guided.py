"""Teacher-guided curation at equal compute: fixed mixture vs adaptive mixture vs fixed + one mined stage.

On each tiny teacher and seed, three runs of the shipped `tiny` recipe on the same curated pool, scored on
the same held-out set (a separate curated set, decontaminated out of the pool), each spending the same
number of transformer passes (a backward counted as two; per prompt and trajectory: N no-grad forwards
along the teacher's trajectory plus K x (forward + backward) at the regressed steps):

  fixed     the recipe as shipped: `--budget` steps on the pool;
  adaptive  the same with mixture.adaptive: true (train/mixture.py; validation every 10 steps in all runs,
            so its signal costs nothing extra);
  mined     `--budget x --mine-at` steps on the pool, then `curate mine` (train/mine.py) scores the whole pool
            by that student's gap (3 passes a prompt and sigma, counted) and selects `--mine-size` prompts
            under the recipe's quotas, then the run resumes with the mined set as a second stage for the
            steps the budget has left. The lr schedule spans both stages from the start, as a two-stage recipe.

Reported per teacher and variant, mean and sample standard deviation over seeds: the final held-out gap and
the gap of the worst category (the highest per-category gap of each run), the passes spent, and the change
against the fixed run of the same seed (paired: the same student initialisation, pool and held-out set).

    python bench/teacher_guided.py                                  # tiny:flux + tiny:sd3, seeds 0,1,2 (~10 min)
    python bench/teacher_guided.py --teachers tiny:flux --seeds 0 --budget 40 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curate.pipeline import build, resolve_recipe  # noqa: E402
from curate.curated_set import read_manifest  # noqa: E402
from train.config import resolve  # noqa: E402
from train.distill import train  # noqa: E402
from train.mine import PASSES_PER_SIGMA, mine  # noqa: E402

VARIANTS = ("fixed", "adaptive", "mined")


def make_sets(folder: Path, pool_size: int, heldout_size: int) -> tuple[Path, Path]:
    """A held-out curated set and a pool with every held-out prompt decontaminated out of it."""
    heldout, pool = folder / "heldout", folder / "pool"
    name, data = resolve_recipe("tiny", size=heldout_size, seed=101)
    build(name, data, heldout, progress=False, log=lambda m: None)
    name, data = resolve_recipe("tiny", [f"steps.decontaminate.eval_sets=[{heldout}]"], size=pool_size, seed=0)
    build(name, data, pool, progress=False, log=lambda m: None)
    return heldout, pool


def forward_passes_per_step(cfg: dict) -> int:
    dist = cfg["distill"]
    n, k = dist["sampling_steps"], dist["train_steps"] or dist["sampling_steps"]
    return (n + 3 * k) * cfg["optim"]["batch_size"]


def base_config(teacher: str, seed: int, pool: Path, heldout: Path, sets: list[str]) -> dict:
    return resolve("tiny", [f"seed={seed}", f"validation.data={heldout}", "validation.num_prompts=1000",
                            "validation.every=10", "checkpoint.every=100000", "log.tensorboard=false", *sets],
                   data=str(pool), teacher=teacher)[1]


def final(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    per_category = summary["gap_final_per_category"]
    worst = max(per_category, key=per_category.get)
    return {"gap": summary["gap_final"], "worst": per_category[worst], "worst_category": worst}


def run_variant(variant: str, cfg: dict, budget: int, out: Path, pool: Path, mine_at: float, mine_size: int) -> dict:
    per_step = forward_passes_per_step(cfg)
    if variant != "mined":
        cfg = {**cfg, "stages": [{**cfg["stages"][0], "steps": budget}],
               "mixture": {**cfg["mixture"], "adaptive": variant == "adaptive"}}
        train(cfg, out, progress=False)
        return {**final(out), "passes": budget * per_step, "steps": budget}
    pool_prompts = read_manifest(pool)["counts"]["kept"]
    mining_passes = pool_prompts * PASSES_PER_SIGMA  # one sigma
    first = max(1, round(budget * mine_at))
    second = budget - first - math.ceil(mining_passes / per_step)
    if second < 1:
        raise SystemExit(f"--budget {budget}: mining {pool_prompts} prompts costs {mining_passes} passes, "
                         f"{math.ceil(mining_passes / per_step)} steps; nothing is left for the mined stage")
    stage = cfg["stages"][0]
    cfg = {**cfg, "stages": [{**stage, "name": "pool", "steps": first}, {**stage, "name": "mined", "steps": second}]}
    train(cfg, out, max_steps=first, progress=False)  # stops after stage 1, with a checkpoint
    mined = out.parent / f"{out.name}-mined"
    mine(str(out), [str(pool)], mined, recipe="tiny", size=mine_size, seed=cfg["seed"], progress=False)
    cfg["stages"][1] = {**cfg["stages"][1], "data": str(mined)}
    train(cfg, out, resume=True, progress=False)
    return {**final(out), "passes": (first + second) * per_step + mining_passes, "steps": first + second}


def spread(values: list[float], signed: bool = False) -> str:
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:+.4f} ± {sd:.4f}" if signed else f"{mean:.4f} ± {sd:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teachers", default="tiny:flux,tiny:sd3")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--budget", type=int, default=80, help="steps of the fixed run (batch 4, 8 regressed steps)")
    parser.add_argument("--mine-at", type=float, default=0.5, help="fraction of the budget trained before mining")
    parser.add_argument("--mine-size", type=int, default=120, help="prompts in the mined set")
    parser.add_argument("--pool-size", type=int, default=400)
    parser.add_argument("--heldout-size", type=int, default=96)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--set", dest="sets", action="append", default=[], help="recipe override for every run")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()  # the tiny CLIP tokenizer's truncation notes, once a batch
    transformers_logging.set_verbosity_error()
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    results: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        heldout, pool = make_sets(Path(tmp), args.pool_size, args.heldout_size)
        for teacher in args.teachers.split(","):
            for variant in variants:
                for seed in seeds:
                    cfg = base_config(teacher, seed, pool, heldout, args.sets)
                    out = Path(tmp) / f"{teacher.replace(':', '_')}-{variant}-{seed}"
                    row = run_variant(variant, cfg, args.budget, out, pool, args.mine_at, args.mine_size)
                    results.setdefault(teacher, {}).setdefault(variant, []).append({"seed": seed, **row})
                    print(f"{teacher} {variant} seed {seed}: {row}", file=sys.stderr, flush=True)
    print(f"\n{len(seeds)} seeds, budget {args.budget} steps of the fixed run; mean ± sd over seeds\n")
    print("| teacher | variant | steps | passes | held-out gap | worst-category gap | Δ gap vs fixed | "
          "Δ worst vs fixed | worst category (per seed) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for teacher, by_variant in results.items():
        fixed = {r["seed"]: r for r in by_variant.get("fixed", [])}
        for variant, rows in by_variant.items():
            paired = [r for r in rows if r["seed"] in fixed and variant != "fixed"]
            deltas = [spread([r[key] - fixed[r["seed"]][key] for r in paired], signed=True) if paired else ""
                      for key in ("gap", "worst")]
            print(f"| {teacher} | {variant} | {rows[0]['steps']} | {rows[0]['passes']:,} | "
                  f"{spread([r['gap'] for r in rows])} | {spread([r['worst'] for r in rows])} | {deltas[0]} | "
                  f"{deltas[1]} | {', '.join(r['worst_category'] for r in rows)} |")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
