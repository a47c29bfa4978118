"""Held-out conditioning gap per unit of compute: the reference loop shape vs ours, and the K of ours.

Every configuration trains a fresh student (same seed, same prompts in the same order, same noise,
same guidance draws, same AdamW at the same constant learning rate, student-only gradient clipping, pooled
CLIP kept) on the same teacher, and differs only in the loop shape:

  reference      every denoising step of the trajectory is regressed and is its own optimizer step
                 (the student re-encodes the prompt each time), as in LifuWang-66/DistillT5: the loop of
                 bench/reference_gap.py, written independently of the trainer;
  step K=k       train.distill.distill_trajectory with update: step (the default): k of the N steps
                 regressed, an optimizer update after each (k=N is the reference's shape);
  traj K=k       the same with update: trajectory: the student once per batch, the k steps' gradients
                 summed into one optimizer update.

Compute is counted in teacher-forward units at real scale: following the trajectory costs one
transformer forward per denoising step up to the last regressed one (the trainer stops there); a
regressed step adds a forward + backward into the text input,
`--pass-cost` units (2.12 = 358 ms / 169 ms, FLUX.1-dev on an H100 at batch 4, 512 px, 77 tokens; the
student T5-base and the reference's per-step T5-XXL re-encode are not charged, which favours the
reference). Each configuration runs until it has spent `--budget` units; the gap is measured at 25, 50 and
100% of it. CPU seconds are printed too, but at tiny scale they are dominated by Python overhead.

    python bench/distill_efficiency.py                         # tiny:flux + builtin:tiny, ~9 min on 2 cores
    python bench/distill_efficiency.py --teacher DIR --data DIR --budget 20000 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from train.config import resolve  # noqa: E402
from train.data import PromptStream, heldout_split, load_stage_data  # noqa: E402
from train.distill import MicroBatch, distill_trajectory, step_generator  # noqa: E402
from train.evaluate import GapEvaluator  # noqa: E402
from train.student import build_student  # noqa: E402
from train.teachers.registry import load_teacher  # noqa: E402

from reference_gap import reference_trajectory  # noqa: E402  (bench/: the reference loop, written once)


def trajectory_cost(n_steps: int, regressed: int, pass_cost: float) -> float:
    return n_steps + regressed * pass_cost


def run_config(name: str, mode: str, k: int, teacher, cfg: dict, rows, evaluator, budget: float, pass_cost: float) -> dict:
    """mode: reference | step | trajectory; k regressed steps per trajectory (the reference: all N)."""
    seed, opt, stage = cfg["seed"], cfg["optim"], cfg["stages"][-1]
    n_steps, max_len, res = cfg["distill"]["sampling_steps"], stage["max_sequence_length"], stage["resolution"]
    gmin, gmax = cfg["teacher"]["guidance"]
    torch.manual_seed(seed)
    student = build_student("config", teacher.width, teacher.vocab_size, base_config=teacher.t5_config,
                            projection_dropout=0.0).to(teacher.device).train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=opt["lr"], betas=tuple(opt["betas"]), eps=opt["eps"],
                                  weight_decay=opt["weight_decay"])
    updates = 0

    def update(loss: float) -> bool:
        nonlocal updates
        torch.nn.utils.clip_grad_norm_(student.parameters(), opt["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        updates += 1
        return True  # applied (False would end the trajectory)

    stream = PromptStream(rows, seed)
    marks = [budget * f for f in (0.25, 0.5, 1.0)]
    spent, traj, seconds, gaps = 0.0, 0, 0.0, []
    while marks:
        t0 = time.perf_counter()
        texts = [p["text"] for p in stream.take(traj * opt["batch_size"], opt["batch_size"])]
        gen = step_generator(seed, traj)  # the trainer's per-batch draws, so every config sees the same ones
        guidance = gmin + (gmax - gmin) * torch.rand((), generator=gen).item()
        train_idx = set(torch.randperm(n_steps, generator=gen)[:k].tolist())
        noise = teacher.noise(len(texts), res, step_generator(seed, traj, 1))
        tcond = teacher.encode(texts, max_len)
        ids = teacher.tokenize(texts, max_len).to(teacher.device)
        if mode == "reference":
            updates += reference_trajectory(student, optimizer, teacher, tcond, ids, noise, max_len, n_steps, guidance,
                                            clip=opt["grad_clip"])
        else:
            distill_trajectory(student, teacher, [MicroBatch(tcond, ids, noise)], max_len, n_steps, train_idx, guidance,
                               contextlib.nullcontext, update, per_step=mode == "step")
        seconds += time.perf_counter() - t0
        traj += 1
        spent += trajectory_cost(n_steps if mode == "reference" else max(train_idx) + 1, k, pass_cost)
        while marks and spent >= marks[0] - 1e-9:
            gaps.append(round(evaluator(student)["gap"], 4))
            marks.pop(0)
    return {"config": name, "update": mode, "k": k, "sampling_steps": n_steps, "trajectories": traj, "updates": updates,
            "cost_units": round(spent, 1), "gap": gaps, "cpu_seconds": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default=None, help="tiny FLUX/SD3 folder (default: the tiny recipe's tiny:flux)")
    ap.add_argument("--data", default=None, help="prompts (default: the tiny recipe's builtin:tiny)")
    ap.add_argument("--sampling-steps", type=int, default=8, help="N, the trajectory length")
    ap.add_argument("--ks", default="8,4,2,1", help="K values of ours (comma separated)")
    ap.add_argument("--modes", default="step,trajectory", help="update modes of ours (comma separated)")
    ap.add_argument("--budget", type=float, default=6000, help="compute per configuration, teacher-forward units")
    ap.add_argument("--pass-cost", type=float, default=2.12, help="regressed pass (fwd + bwd) / teacher forward")
    ap.add_argument("--lr", type=float, default=None, help="learning rate for all (default: the tiny recipe's)")
    ap.add_argument("--seed", type=int, default=0, help="student init, prompt order, noise and guidance draws")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    sets = [f"distill.sampling_steps={args.sampling_steps}", f"seed={args.seed}"] + ([f"optim.lr={args.lr}"] if args.lr else [])
    _, cfg = resolve("tiny", sets, data=args.data, teacher=args.teacher)
    stage, val = cfg["stages"][-1], cfg["validation"]
    teacher = load_teacher(cfg["teacher"]["path"], device="cuda" if torch.cuda.is_available() else "cpu")
    heldout, (rows,) = heldout_split([load_stage_data(stage["data"])], val["data"], val["num_prompts"])
    evaluator = GapEvaluator(teacher, heldout, stage["max_sequence_length"], stage["resolution"], val["sigmas"],
                             val["guidance"], val["batch_size"], seed=cfg["seed"])
    configs = [("reference", "reference", args.sampling_steps)]
    configs += [(f"{m[:4]} K={k}", m, int(k)) for m in args.modes.split(",") for k in args.ks.split(",")]
    results = []
    print(f"seed {args.seed}, teacher {cfg['teacher']['path']}, {len(rows)} train / {len(heldout)} held-out prompts, N={args.sampling_steps}, "
          f"lr {cfg['optim']['lr']}, budget {args.budget:g} units, regressed pass = {args.pass_cost} units")
    print(f"{'config':<14}{'traj':>6}{'updates':>9}{'gap@25%':>9}{'gap@50%':>9}{'gap@100%':>10}{'cpu s':>8}")
    for name, mode, k in configs:
        r = run_config(name, mode, k, teacher, cfg, rows, evaluator, args.budget, args.pass_cost)
        results.append(r)
        print(f"{name:<14}{r['trajectories']:>6}{r['updates']:>9}" + "".join(f"{g:>9.4f}" for g in r["gap"][:2])
              + f"{r['gap'][2]:>10.4f}{r['cpu_seconds']:>8.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"budget": args.budget, "pass_cost": args.pass_cost, "lr": cfg["optim"]["lr"],
                                               "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
