"""Held-out conditioning gap of the reference DistillT5 training algorithm, next to ours.

The reference (LifuWang-66/DistillT5, train_flux.py), reimplemented on our teacher/metric code:
  - the student is a randomly initialised T5EncoderWithProjection (its script loads flan-T5-base and
    then replaces it with a fresh random model built from the config);
  - every denoising step of every trajectory is its own optimizer step (20 updates a batch);
  - the pooled CLIP embedding is zeroed for both the teacher and the student passes;
  - guidance is drawn per batch from the grid 2.0, 2.5, ..., 5.0; AdamW lr 1e-4 constant, weight
    decay 1e-3, 77 tokens, 20 sampling steps, projection dropout 0.1;
  - its gradient clipping touches only frozen models, so the student is effectively unclipped.
The teacher encoder re-run at every step in the reference gives the same numbers as encoding once per
batch (frozen, eval mode), so it is encoded once here. Both students are scored with the same
GapEvaluator on the same held-out prompts (the tiny recipe's split of --data).

Compare at equal compute: the reference's --steps counts updates, one regressed denoising step each, while
ours counts trajectories of K regressed steps, so give the reference K x ours' steps (or use
bench/distill_efficiency.py, which equalises compute for every configuration itself).

    python bench/reference_gap.py --teacher DIR --data DIR --steps 3200 --ours runs/ours   # ours: 400 x K=8
    (runs/ours from: train run --recipe tiny --teacher DIR --data DIR --max-steps 400 --output runs/ours,
     optionally exported: train export --checkpoint runs/ours --output ours-dt5 --format distillt5)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from train.config import resolve  # noqa: E402
from train.data import PromptStream, heldout_split, load_stage_data  # noqa: E402
from train.evaluate import GapEvaluator  # noqa: E402
from train.runs import load_student_dir  # noqa: E402
from train.student import build_student  # noqa: E402
from train.teachers.base import Cond  # noqa: E402
from train.teachers.registry import load_teacher  # noqa: E402


def train_reference(teacher, prompts, steps: int, batch_size: int, resolution: int, max_len: int = 77,
                    sampling_steps: int = 20, lr: float = 1e-4, zero_pooled: bool = True, seed: int = 0,
                    after_update=None):
    """The reference loop for `steps` updates; `after_update(student, updates_so_far)` is called after each
    one (bench/distill_efficiency.py measures the gap curve with it)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    student = build_student("config", teacher.width, teacher.vocab_size, base_config=teacher.t5_config,
                            projection_dropout=0.1).to(teacher.device).train()
    opt = torch.optim.AdamW(student.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=1e-3, eps=1e-8)
    guidance_grid = [2.0 + 0.5 * i for i in range(7)]
    stream = PromptStream(prompts, seed)
    done, pos = 0, 0
    while done < steps:
        texts = [p["text"] for p in stream.take(pos, batch_size)]
        pos += batch_size
        tcond = teacher.encode(texts, max_len)
        if zero_pooled:
            tcond = Cond(tcond.embeds, torch.zeros_like(tcond.pooled))
        ids = teacher.tokenize(texts, max_len).to(teacher.device)
        guidance = rng.choice(guidance_grid)
        x = teacher.noise(len(texts), resolution, torch.Generator().manual_seed(seed * 100_003 + done))
        done = reference_trajectory(student, opt, teacher, tcond, ids, x, max_len, sampling_steps, guidance,
                                    max_updates=steps - done, after_update=after_update, done=done)
    return student


def reference_trajectory(student, optimizer, teacher, tcond, ids, x, max_len: int, n_steps: int, guidance: float,
                         clip: float | None = None, max_updates: int | None = None, after_update=None,
                         done: int = 0) -> int:
    """One trajectory of the reference loop: the student re-run and an optimizer step at every denoising
    step (clip: max student grad norm, None as published). Stops after max_updates; returns `done` plus the
    updates made, and calls after_update(student, that count) after each."""
    updates = 0
    for t in teacher.timesteps(n_steps, x):
        if max_updates is not None and updates >= max_updates:
            break
        with torch.no_grad():
            target = teacher.predict(x, t, tcond, guidance)
        scond = teacher.student_cond(student(ids)[0], tcond, max_len)
        loss = F.mse_loss(teacher.predict(x, t, scond, guidance).float(), target.float())
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(student.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        updates += 1
        if after_update is not None:
            after_update(student, done + updates)
        with torch.no_grad():
            x = teacher.step(teacher.velocity(x, t, target, guidance, max_len), t, x)
    return done + updates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=400, help="optimizer steps of the reference")
    ap.add_argument("--ours", default=None, help="our run / checkpoint / exported student to score alongside")
    ap.add_argument("--lr", type=float, default=1e-4, help="reference learning rate (published: 1e-4)")
    ap.add_argument("--keep-pooled", action="store_true", help="do not zero the pooled CLIP embedding (fixes one defect)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    _, cfg = resolve("tiny", data=args.data, teacher=args.teacher)
    stage, val = cfg["stages"][-1], cfg["validation"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher = load_teacher(cfg["teacher"]["path"], device=device)
    heldout, (train_rows,) = heldout_split([load_stage_data(stage["data"])], val["data"], val["num_prompts"])
    evaluator = GapEvaluator(teacher, heldout, stage["max_sequence_length"], stage["resolution"], val["sigmas"],
                             val["guidance"], val["batch_size"], seed=cfg["seed"])
    t0 = time.time()
    ref = train_reference(teacher, train_rows, args.steps, cfg["optim"]["batch_size"], stage["resolution"],
                          max_len=77, lr=args.lr, zero_pooled=not args.keep_pooled, seed=cfg["seed"])
    report = {"held_out_prompts": len(heldout), "reference": {"steps": args.steps, "lr": args.lr,
              "zero_pooled": not args.keep_pooled, "seconds": round(time.time() - t0, 1), **evaluator(ref)}}
    if args.ours:
        ours, _, meta = load_student_dir(args.ours)
        report["ours"] = {"path": args.ours, "step": meta.get("step"), **evaluator(ours.to(device).float())}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"held-out prompts: {len(heldout)}")
    print(f"reference ({args.steps} steps, lr {args.lr}): gap {report['reference']['gap']:.4f}")
    if args.ours:
        print(f"ours ({report['ours']['step']} steps):        gap {report['ours']['gap']:.4f}")


if __name__ == "__main__":
    main()
