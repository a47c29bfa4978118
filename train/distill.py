"""Vision-guided distillation of a T5 student from a frozen FLUX/SD3 teacher (`train run`).

One step (one batch of prompts, one trajectory):
  1. get the teacher's embeddings once for the batch (from the disk cache when enabled; never again
     per denoising step);
  2. start from noise at the stage's resolution and follow the teacher's own sampler for N steps with
     the teacher-conditioned prediction (FLUX: guidance input g; SD3: CFG at scale g; g drawn per batch);
  3. at K sampled steps of that trajectory, run the student on the teacher's token ids, push its
     embeddings through the frozen transformer and regress the output onto the teacher-conditioned
     output (MSE; the target is computed under no_grad). Gradients reach only the student;
  4. after each regressed step (distill.update: step, the default and the published shape) or once after
     the trajectory with the K gradients summed (update: trajectory): average the gradient over ranks,
     clip the student's gradient norm, AdamW step on float32 master weights.

Around it: warmup + constant/cosine LR, bf16 autocast on CUDA, accelerate for devices and processes, tqdm,
JSONL + tensorboard logs, the held-out conditioning gap every N steps, atomic checkpoints with optimizer,
RNG and data position (`--resume` continues from the last complete one), and skipping of non-finite updates.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from core.errors import ConfigError
from core.recipe import recipe_hash
from train.cache import EmbeddingCache, teacher_cache_id
from train.config import choose_cpu_threads, t5_config_fields, total_steps
from train.data import PromptStream, heldout_split, load_stage_data, recorded_sources
from train.evaluate import GapEvaluator, preview_grid
from train.mixture import StratifiedStream, mixture_weights, update_excess
from train.runs import (Logger, TrainingError, check_output, checkpoint_path, log_path, mark_run_folder, preview_path,
                        resume_checkpoint, save_checkpoint, save_final_student, student_path, truncate_log,
                        write_summary)
from train.student import DTYPES, build_student
from train.teachers.base import Cond, Teacher
from train.teachers.registry import load_teacher

STATE_FORMAT = 2  # 2: a step is one trajectory (batch); 1 counted optimizer updates
MIXTURE_STREAM = 999_983  # step_generator stream of mixture.adaptive's stratum draws (noise uses 1 + index)


class Interrupted(KeyboardInterrupt):
    """SIGINT stopped the run between two steps, after a checkpoint at `step` was written to `checkpoint`."""

    def __init__(self, step: int, checkpoint: Path):
        super().__init__(f"interrupted at step {step}; checkpoint {checkpoint}")
        self.step, self.checkpoint = step, checkpoint


class StopRequest:
    """While armed (the training loop), the first SIGINT (Ctrl-C) only asks the run to stop after the step
    in progress, so the checkpoint it then writes is consistent (optimizer, data position and RNG all
    between two steps); a second one, or one while disarmed (loading, the final validation), interrupts
    at once as usual. Outside the main thread (where no signal handler can be installed) it never asks."""

    def __init__(self, announce: bool):
        self.armed, self.asked, self.announce, self._previous = False, False, announce, None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.asked or not self.armed:
            raise KeyboardInterrupt
        self.asked = True
        if self.announce:
            print("\nCtrl-C: stopping after this step and writing a checkpoint (Ctrl-C again: stop at once, "
                  "without one)", file=sys.stderr, flush=True)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def agreed(self, accelerator: Any) -> bool:
        """Whether to stop now; with several processes, when any of them was asked (all stop together,
        since writing a checkpoint is a collective step)."""
        if accelerator.num_processes == 1:
            return self.asked
        flag = torch.tensor([1.0 if self.asked else 0.0], device=accelerator.device)
        return accelerator.reduce(flag, reduction="sum").item() > 0


def lr_at(update: int, cfg: dict[str, Any], total: int, per_step: int = 1) -> float:
    """The lr of optimizer update `update` (0-based) of a run of `total` steps with `per_step` updates
    each: linear warmup over warmup_steps * per_step updates, then constant or cosine down to
    min_lr_ratio * lr. A pure function of the update index, so resuming needs no scheduler state, and
    an update per regressed step ramps smoothly instead of in blocks of a trajectory."""
    lr, warm, total = cfg["lr"], cfg["warmup_steps"] * per_step, total * per_step
    if warm and update < warm:
        return lr * (update + 1) / warm
    if cfg["schedule"] == "constant":
        return lr
    progress = min(1.0, (update - warm) / max(1, total - warm))
    floor = lr * cfg["min_lr_ratio"]
    return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """Per-step CPU generator: the noise, guidance and sampled steps of step s depend only on
    (seed, s, stream), so resumed and uninterrupted runs draw the same numbers on any device."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + stream)


# ---- one trajectory -----------------------------------------------------------------------------


def forward_context(device: torch.device, amp_on: bool) -> Callable[[], contextlib.AbstractContextManager]:
    """What every forward of a batch runs under: bf16 autocast when on, and on CUDA attention pinned to
    flash attention (memory-efficient or math only where flash cannot run, e.g. float32): torch's default
    choice crashed with an illegal memory access in the backward pass through FLUX on an H200, and
    bench/train_step.py's flash-pinned runs did not."""
    if device.type != "cuda":
        return contextlib.nullcontext

    @contextlib.contextmanager
    def context():
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
        with sdpa_kernel(backends), (torch.autocast("cuda", dtype=torch.bfloat16) if amp_on else contextlib.nullcontext()):
            yield

    return context


class MicroBatch(NamedTuple):
    tcond: Cond  # the teacher's conditioning (computed once per batch, or from the cache)
    ids: torch.Tensor  # the teacher's T5 token ids, which the student reads
    noise: torch.Tensor  # the trajectory's starting point


def distill_trajectory(student: torch.nn.Module, teacher: Teacher, parts: list[MicroBatch], max_len: int, n_steps: int,
                       train_idx: set[int], guidance: float, amp: Any, update: Callable[[float], bool | None],
                       per_step: bool = True) -> None:
    """Follow the teacher's sampler from each micro-batch's noise (all micro-batches in lockstep, up to
    the last step in train_idx); at the steps in train_idx regress the transformer output under the
    student's embeddings onto the output under the teacher's (MSE, target under no_grad; gradients reach
    only the student). Micro-batches are weighted by their number of prompts, so any split of a batch
    gives the gradient of the whole batch.

    per_step: `update(loss)` after every regressed step, with that step's gradient, as the published
    recipe does. Otherwise one `update(loss)` after the trajectory with the K steps' gradients averaged: the
    student then runs once per micro-batch and its output is a leaf for the K transformer passes (the
    student graphs of all micro-batches are held until the end). At equal compute and learning rate,
    per-step updates reach a given gap with fewer transformer passes (bench/distill_efficiency.py
    --set distill.update=trajectory), so it is the default. `update` returns False when the update was
    skipped as non-finite: the trajectory is abandoned then, since non-finite latents would stay so."""
    k, last = len(train_idx), max(train_idx)
    prompts = sum(len(p.ids) for p in parts)
    weights = [len(p.ids) / prompts / (1 if per_step else k) for p in parts]
    xs = [p.noise for p in parts]
    sizes, velocities = [len(x) for x in xs], [None] * len(parts)
    seqs = leaves = None
    if not per_step:
        with amp():
            seqs = [teacher.student_sequence(student, p.ids) for p in parts]
        leaves = [s.detach().requires_grad_(True) for s in seqs]
    total = 0.0
    for i, t in enumerate(teacher.timesteps(n_steps, xs[0])):
        step_loss = 0.0
        for pi, part in enumerate(parts):
            with torch.no_grad(), amp():
                target = teacher.predict(xs[pi], t, part.tcond, guidance)
            if i in train_idx:
                with amp():
                    seq = leaves[pi] if leaves else teacher.student_sequence(student, part.ids)
                    pred = teacher.predict(xs[pi], t, teacher.student_cond(seq, part.tcond, max_len), guidance)
                loss = F.mse_loss(pred.float(), target.float()) * weights[pi]
                loss.backward()
                step_loss += loss.item()
            if i < last:
                with torch.no_grad(), amp():
                    velocities[pi] = teacher.velocity(xs[pi], t, target, guidance, max_len)
        if i in train_idx:
            total += step_loss
            if per_step and update(step_loss) is False:
                return
        if i == last:
            break  # nothing after the last regressed step feeds the loss
        # One scheduler step for all micro-batches: the scheduler counts its calls.
        xs = list(teacher.step(torch.cat(velocities), t, torch.cat(xs)).split(sizes))
    if not per_step:
        for seq, leaf in zip(seqs, leaves):
            seq.backward(leaf.grad)
        update(total)


def average_gradients(model: torch.nn.Module) -> None:
    """Mean of the gradients over all ranks, in place (one all-reduce over a flat buffer)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    torch.distributed.all_reduce(flat)
    flat /= torch.distributed.get_world_size()
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


# ---- the run ------------------------------------------------------------------------------------


class Batch(NamedTuple):
    """One step's work on this rank."""

    stage: dict[str, Any]
    parts: list[MicroBatch]  # this rank's share of the batch
    train_idx: set[int]  # the trajectory's regressed steps
    guidance: float


@dataclass
class BatchUpdates:
    """The optimizer updates of one batch so far: the lr of the latest, how many were tried (skipped ones
    too: they keep the lr on schedule) and (loss, grad norm) of each one applied."""

    first: int  # the run's index of the batch's first update
    lr: float = math.nan
    attempts: int = 0
    applied: list[tuple[float, float]] = field(default_factory=list)

    @property
    def mean_loss(self) -> float:
        return _mean([loss for loss, _ in self.applied])

    @property
    def mean_grad_norm(self) -> float:
        return _mean([norm for _, norm in self.applied])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


class Trainer:
    """One `train run`, phase by phase: run() lists them in order. That order is part of the run's random
    numbers (building a tiny teacher draws some; the student is seeded after it), and so is each
    step's: a resumed run matches an uninterrupted one bit for bit only while both stay as they are."""

    def __init__(self, cfg: dict[str, Any], output: Path, resume: bool, max_steps: int | None, progress: bool,
                 recipe_name: str, stopper: StopRequest):
        from accelerate import Accelerator

        self.cfg, self.output, self.resume, self.max_steps = cfg, output, resume, max_steps
        self.progress, self.recipe_name, self.stopper = progress, recipe_name, stopper
        self.accelerator = Accelerator(mixed_precision="no", cpu=not torch.cuda.is_available())
        self.device, self.main = self.accelerator.device, self.accelerator.is_main_process
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.seed, self.opt, self.dist, self.val = cfg["seed"], cfg["optim"], cfg["distill"], cfg["validation"]
        self.mixture = cfg["mixture"]
        self.stages = cfg["stages"]
        self.n_steps = self.dist["sampling_steps"]
        self.k_steps = self.dist["train_steps"] or self.n_steps
        self.updates_per_step = self.k_steps if self.dist["update"] == "step" else 1
        self.offloaded = False  # the text encoders left the device: the cache is then the only source
        self.latest_gap: float | None = None  # the latest held-out gap, for the progress bar

    def run(self) -> dict[str, Any]:
        """The whole run; returns its summary."""
        self.setup_teacher()
        self.setup_data()
        self.setup_cache()
        self.setup_student()
        if self.main:  # only now: a run that cannot load its teacher, data or student leaves no folder behind
            mark_run_folder(self.output, self.cfg)
        self.restore()
        self.plan()
        self.describe_student()
        self.fill_cache()
        self.setup_validation()
        self.offload_text_encoders()
        self.logger = Logger(self.output, self.cfg["log"]["tensorboard"], self.main)
        try:  # whatever stops the run, the log file and tensorboard's writer thread are closed
            self.gap_initial = self.first_gap()
            self.loop()
            return self.finish()
        finally:
            self.logger.close()

    # -- setup, in this order --

    def setup_teacher(self) -> None:
        """The frozen pipeline (bf16 weights on CUDA; the student's master weights stay float32) and autocast."""
        tcfg = self.cfg["teacher"]
        dtype = DTYPES.get(tcfg["dtype"]) if tcfg["dtype"] != "auto" else None
        self.teacher = teacher = load_teacher(tcfg["path"], device=self.device, dtype=dtype,
                                              trust_remote_code=tcfg["trust_remote_code"])
        if tcfg["frames"] is not None:
            if teacher.frames is None:
                raise ConfigError(f"teacher.frames is for video teachers; {tcfg['path']} is a {teacher.kind} "
                                  "(image) pipeline: remove it")
            teacher.frames = tcfg["frames"]
        if tcfg["gradient_checkpointing"]:
            teacher.transformer.enable_gradient_checkpointing()
        if tcfg["fp8"]:  # targets, predictions and the validation gap all go through the fp8 transformer
            teacher.transformer_to_fp8()
        if tcfg["compile"]:
            teacher.compile_transformer()
        elif tcfg["fp8"]:
            warnings.warn("teacher.fp8 without teacher.compile is slower than bf16 on a GPU: the float8 casts run as "
                          "separate kernels (H100, FLUX.1-dev, bench/train_step.py: 988 ms an iteration vs 596 ms in "
                          "bf16, 318 ms with both); set teacher.compile: true")
        precision = self.opt["mixed_precision"]
        amp_on = self.device.type == "cuda" and precision in ("auto", "bf16") and torch.cuda.is_bf16_supported()
        if precision == "bf16" and not amp_on:
            warnings.warn("bf16 autocast needs a CUDA device with bf16; training in float32")
        self.amp = forward_context(self.device, amp_on)

    def setup_data(self) -> None:
        """Each stage's prompts, the held-out prompts removed from every stage."""
        for s in self.stages:
            self.teacher.check_resolution(s["resolution"])
        self.stage_rows = [load_stage_data(s["data"]) for s in self.stages]
        self.heldout, train_rows = heldout_split(self.stage_rows, self.val["data"], self.val["num_prompts"])
        if self.mixture["adaptive"]:
            if not self.val["every"]:
                warnings.warn("mixture.adaptive with validation.every 0: the weights follow the first validation only")
            self.streams = [StratifiedStream(rows, self.seed + 7 * i) for i, rows in enumerate(train_rows)]
        else:
            self.streams = [PromptStream(rows, self.seed + 7 * i) for i, rows in enumerate(train_rows)]

    def setup_cache(self) -> None:
        """The teacher embeddings' disk cache, when cache.dir is set (teacher_cond reads through it)."""
        folder = self.cfg["cache"]["dir"]
        self.cache_id = teacher_cache_id(self.teacher.source, self.teacher.dtype) if folder else None
        self.cache = EmbeddingCache(folder, self.cache_id) if self.cache_id else None

    def setup_student(self) -> None:
        """The student (from a pretrained T5, a student folder, or a config shaped like the teacher's T5)
        and its optimizer."""
        scfg, opt = self.cfg["student"], self.opt
        torch.manual_seed(self.seed)  # here, not earlier (building a tiny teacher draws numbers); the same on every rank
        self.student = student = build_student(
            scfg["init"], project_out_dim=self.teacher.width, vocab_size=self.teacher.vocab_size,
            base_config=self.teacher.t5_config, overrides=scfg["config"], projection_dropout=scfg["projection_dropout"],
            trust_remote_code=self.cfg["teacher"]["trust_remote_code"], teacher_tokenizer=self.teacher.tokenizer,
        ).to(self.device)
        t5_config_fields()  # transformers is loaded now: cache the fields a later recipe check needs without it
        if scfg["gradient_checkpointing"]:
            # transformers 5 renamed it; fall back to the old name on older versions
            getattr(student, "activation_checkpointing_enable", student.gradient_checkpointing_enable)()
        student.train()
        if scfg["compile"]:  # in place: parameter names, save_pretrained and resume are unchanged
            student.compile()
        torch.manual_seed(self.seed + 1 + self.rank)  # each rank its own dropout
        # fused: one kernel for all parameters on CUDA; with an update per regressed step it runs 20 times a batch
        self.optimizer = torch.optim.AdamW(student.parameters(), lr=opt["lr"], betas=tuple(opt["betas"]), eps=opt["eps"],
                                           weight_decay=opt["weight_decay"], fused=self.device.type == "cuda")
        # No DDP wrapper: gradients are averaged over ranks by hand before every update, because one
        # trajectory interleaves several forwards and backwards per micro-batch, which DDP's hooks do not model.
        if self.world > 1 and opt["batch_size"] % self.world:
            raise TrainingError(f"optim.batch_size ({opt['batch_size']}) must be a multiple of the {self.world} processes")

    def restore(self) -> None:
        """The run's state: fresh, or (--resume) from the newest checkpoint that loads, keeping the length of
        a run that --max-steps extended."""
        planned, output = total_steps(self.cfg), self.output
        self.state = {"format": STATE_FORMAT, "step": 0, "positions": [0] * len(self.stages), "bad_steps": 0,
                      "recipe_hash": recipe_hash(self.cfg)}
        if self.mixture["adaptive"]:  # the running excess gaps and each stage's position in each stratum
            self.state["mixture"] = {"excess": {}, "positions": [{} for _ in self.stages]}
        if not self.resume:
            return
        loaded = resume_checkpoint(output, self.student, self.optimizer, self.accelerator)
        if loaded is None:
            warnings.warn(f"--resume: no complete checkpoint in {output / 'checkpoints'}; starting from step 0")
            if self.main and log_path(output).exists():
                truncate_log(log_path(output), -1)  # the run starts over: so does its log
            return
        ckpt, state = loaded
        if state.get("format") != STATE_FORMAT:
            raise TrainingError(f"{ckpt} was written by an older t5shrink whose steps counted updates, not "
                                "trajectories; it cannot be resumed (its student/ folder still loads)")
        length = state.get("total", planned)
        if self.max_steps is None and length > planned:
            self.max_steps = length  # the run was extended with --max-steps: keep its length and schedule
        elif self.max_steps is not None and max(self.max_steps, planned) != length:
            warnings.warn(f"--resume: --max-steps {self.max_steps} changes the run's length ({length} steps), so "
                          "its lr schedule and stage bounds change too; the resumed run will not match an "
                          "uninterrupted one")
        if state.get("recipe_hash") != recipe_hash(self.cfg):
            warnings.warn("--resume: the recipe differs from the checkpoint's; continuing with the new one")
        if self.main:
            print(f"resuming from {ckpt} (step {state['step']})", file=sys.stderr, flush=True)
        if self.mixture["adaptive"] and "mixture" not in state:
            warnings.warn("--resume: mixture.adaptive was off in the checkpoint's run; its weights start now")
        self.state = {**self.state, **state}

    def plan(self) -> None:
        """The step plan: where the run stops and where each stage ends (--max-steps truncates, or extends the
        last stage); a resumed run's log is cut back to its checkpoint."""
        planned, max_steps = total_steps(self.cfg), self.max_steps
        self.total = max_steps if max_steps is not None and max_steps > planned else planned
        self.stop = min(max_steps, self.total) if max_steps is not None else self.total
        self.state["total"] = self.total
        self.step = self.state["step"]
        if self.resume and self.step >= self.stop:
            warnings.warn(f"--resume: the checkpoint is at step {self.step}, the run stops at {self.stop}; nothing to train")
        self.logged: list[dict[str, Any]] = []  # a resumed run's log up to its checkpoint
        if self.resume and self.step > 0 and self.main and log_path(self.output).exists():
            self.logged = truncate_log(log_path(self.output), self.step, revalidate=self.step >= self.stop)
        steps = [s["steps"] for s in self.stages]
        steps[-1] += self.total - planned
        self.bounds = list(itertools.accumulate(steps))

    def describe_student(self) -> None:
        """What every saved student records of its training (t5shrink.json), and the validation's length and
        resolution: the last stage's unless the recipe says otherwise."""
        last = self.stages[-1]
        self.val_len = self.val["max_sequence_length"] or last["max_sequence_length"]
        self.val_res = self.val["resolution"] or last["resolution"]
        self.meta = {"teacher": self.cfg["teacher"]["path"], "teacher_kind": self.teacher.kind,
                     "t5_slot": self.teacher.t5_slot, "max_sequence_length": self.val_len, "resolution": self.val_res,
                     "guidance": self.cfg["teacher"]["guidance"], "frames": self.teacher.frames, "recipe": self.recipe_name,
                     "recipe_hash": self.state["recipe_hash"],
                     "training_data": [recorded_sources(s["data"]) for s in self.stages],
                     "heldout": {"data": recorded_sources(self.val["data"])[0] if self.val["data"] else None,
                                 "num_prompts": self.val["num_prompts"]}}
        if any(s["max_sequence_length"] != self.val_len for s in self.stages):
            warnings.warn("stages use different max_sequence_length; inference should use the last stage's "
                          f"({self.val_len}), which is what the student records")

    def fill_cache(self) -> None:
        """cache.precompute: encode every stage prompt (and "" when empty prompts are drawn) not yet in the
        cache before training, the processes taking turns."""
        if self.cache is None or not self.cfg["cache"]["precompute"]:
            return
        todo = [(p["text"], s["max_sequence_length"]) for rows, s in zip(self.stage_rows, self.stages) for p in rows]
        if self.cfg["teacher"]["empty_prompt_prob"] > 0:
            todo += [("", s["max_sequence_length"]) for s in self.stages]
        todo = sorted({t for t in todo if not self.cache.has([t[0]], t[1])})
        bs = self.opt["micro_batch_size"] or max(1, self.opt["batch_size"] // self.world)
        for i in tqdm(range(self.rank * bs, len(todo), bs * self.world), desc="caching teacher embeddings",
                      disable=not (self.progress and self.main)):
            chunk = todo[i : i + bs]
            for max_len in sorted({m for _, m in chunk}):
                texts = [t for t, m in chunk if m == max_len]
                self.cache.put(texts, max_len, self.teacher.encode(texts, max_len))
        self.accelerator.wait_for_everyone()
        self.cache = EmbeddingCache(self.cfg["cache"]["dir"], self.cache_id)  # pick up the other ranks' shards

    def setup_validation(self) -> None:
        """The held-out gap's fixed inputs (the teacher's side, computed once)."""
        val = self.val
        self.evaluator = GapEvaluator(self.teacher, self.heldout, self.val_len, self.val_res, val["sigmas"],
                                      val["guidance"], val["batch_size"], seed=self.seed, encode=self.teacher_cond)

    def offload_text_encoders(self) -> None:
        """cache.offload_text_encoders: the teacher's text encoders leave the device once every prompt is cached."""
        if not self.cfg["cache"]["offload_text_encoders"]:
            return
        if not (self.cache is not None and self.cache.enabled and self.cache.writable):
            warnings.warn("cache.offload_text_encoders: cache.dir cannot be written, so the text "
                          "encoders stay on the device to encode every batch")
            return
        for s in self.stages:
            self.teacher.uncond(s["max_sequence_length"])  # SD3's empty prompt, before the encoders leave
        self.teacher.offload_text_encoders()
        self.offloaded = True

    def first_gap(self) -> float | None:
        """The run's first held-out gap: measured now, or (resumed) read back from its log with the latest."""
        if self.step == 0:
            return self.validate()["gap"]
        self.latest_gap = next((r["val_gap"] for r in reversed(self.logged) if "val_gap" in r), None)
        return next((r["val_gap"] for r in self.logged if r.get("step") == 0 and "val_gap" in r), None)

    # -- training --

    def loop(self) -> None:
        """Steps until `stop`. From here the first Ctrl-C stops between two steps, after a checkpoint."""
        self.bar = tqdm(total=self.stop, initial=self.step, desc="distil", disable=not (self.progress and self.main),
                        dynamic_ncols=True, file=sys.stderr)
        started = time.time()
        self.stopper.armed = True
        while self.step < self.stop:
            batch = self.next_batch()
            self.updates = BatchUpdates(first=self.step * self.updates_per_step)
            distill_trajectory(self.student, self.teacher, batch.parts, batch.stage["max_sequence_length"], self.n_steps,
                               batch.train_idx, batch.guidance, self.amp, self.update,
                               per_step=self.dist["update"] == "step")
            self.step += 1
            self.state["step"], self.state["lr"] = self.step, self.updates.lr
            self.report(batch, time.time() - started)
            if self.val["every"] and self.step % self.val["every"] == 0 and self.step != self.stop:
                self.validate()
            every = self.cfg["checkpoint"]["every"]
            saved = bool(every) and (self.step % every == 0 or self.step == self.stop)
            if saved:
                self.checkpoint()
            if self.step < self.stop and self.stopper.agreed(self.accelerator):  # between two steps: consistent
                self.bar.close()
                if not saved:  # even with checkpoint.every off: the newest, so `keep` never drops it
                    self.checkpoint()
                self.logger.close()
                raise Interrupted(self.step, checkpoint_path(self.output, self.step))
        self.stopper.armed = False
        self.bar.close()

    def next_batch(self) -> Batch:
        """The next batch of the current stage, its per-batch draws (identical on every rank: guidance, which
        steps to regress, empty prompts) and this rank's contiguous share of it in micro-batches (gradient
        accumulation across them)."""
        si = self.stage_at(self.step)
        stage, opt, world = self.stages[si], self.opt, self.world
        self.bar.set_description(f"{stage['name']} {si + 1}/{len(self.stages)}" if len(self.stages) > 1 else stage["name"])
        max_len, res = stage["max_sequence_length"], stage["resolution"]
        micro = stage["micro_batch_size"] or opt["micro_batch_size"] or max(1, opt["batch_size"] // world)
        if self.mixture["adaptive"]:
            rows = self.streams[si].take(self.state["mixture"]["positions"][si], opt["batch_size"],
                                         self.mixture_weights(si), step_generator(self.seed, self.step, MIXTURE_STREAM))
        else:
            rows = self.streams[si].take(self.state["positions"][si], opt["batch_size"])
            self.state["positions"][si] += opt["batch_size"]

        gen = step_generator(self.seed, self.step)
        gmin, gmax = self.cfg["teacher"]["guidance"]
        guidance = gmin + (gmax - gmin) * torch.rand((), generator=gen).item()
        train_idx = set(torch.randperm(self.n_steps, generator=gen)[: self.k_steps].tolist())
        drop = torch.rand(len(rows), generator=gen) < self.cfg["teacher"]["empty_prompt_prob"]
        texts = ["" if d else p["text"] for p, d in zip(rows, drop.tolist())]
        # Each prompt's noise is keyed by its place in the batch, so any split over ranks and micro-batches
        # draws the same numbers.
        share = len(texts) // world
        parts = []
        for i in range(self.rank * share, (self.rank + 1) * share, micro):
            idx = range(i, min(i + micro, (self.rank + 1) * share))
            chunk = [texts[j] for j in idx]
            noise = torch.cat([self.teacher.noise(1, res, step_generator(self.seed, self.step, 1 + j)) for j in idx])
            parts.append(MicroBatch(self.teacher_cond(chunk, max_len), self.teacher.tokenize(chunk, max_len).to(self.device),
                                    noise))
        return Batch(stage, parts, train_idx, guidance)

    def stage_at(self, step: int) -> int:
        """The index of the stage that step `step` (0-based) trains in; the last stage from the run's end on."""
        return next((i for i, b in enumerate(self.bounds) if step < b), len(self.stages) - 1)

    def mixture_weights(self, stage: int) -> dict[str, float]:
        """mixture.adaptive: stage `stage`'s sampling weights now (train/mixture.py)."""
        return mixture_weights(self.streams[stage].shares, self.state["mixture"]["excess"], self.mixture["floor"],
                               self.mixture["power"])

    def teacher_cond(self, texts: list[str], max_len: int) -> Cond:
        """The teacher's conditioning of `texts`: from the cache when there is one (filling it), else encoded."""
        if self.cache is None:
            return self.teacher.encode(texts, max_len)
        hit = self.cache.get(texts, max_len)
        if hit is None and self.offloaded:
            raise TrainingError(f"the teacher embedding cache lost entries mid-run ({self.cache.dir}) and the text "
                                "encoders are offloaded; run again with --resume (or cache.offload_text_encoders: false)")
        if hit is None:
            hit = self.teacher.encode(texts, max_len)
            self.cache.put(texts, max_len, hit)
        return hit.to(self.device)

    def update(self, loss: float) -> bool:
        """distill_trajectory's `update`: one optimizer update with the gradient it left, at its place in the lr
        schedule. False when skipped as non-finite on any rank (every rank then skips it)."""
        updates, opt, world = self.updates, self.opt, self.world
        updates.lr = lr_at(updates.first + updates.attempts, opt, self.total, self.updates_per_step)
        updates.attempts += 1
        # Average the loss over ranks; every rank must agree to skip an update.
        stats = torch.tensor([loss, 0.0 if math.isfinite(loss) else 1.0], device=self.device)
        stats = self.accelerator.reduce(stats, reduction="sum") if world > 1 else stats
        loss, finite = stats[0].item() / world, stats[1].item() == 0
        grad_norm = float("nan")
        if finite:
            if world > 1:
                average_gradients(self.student)
            # max_norm inf only measures: the finiteness check needs the norm
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.student.parameters(), opt["grad_clip"] or math.inf))
            finite = math.isfinite(grad_norm)
        if finite:
            for group in self.optimizer.param_groups:
                group["lr"] = updates.lr
            self.optimizer.step()
            updates.applied.append((loss, grad_norm))
        self.optimizer.zero_grad(set_to_none=True)
        if not finite:
            self.count_bad_batch()
        return finite

    def count_bad_batch(self) -> None:
        """A non-finite update: the rest of its batch is skipped too, and the batch counts once; more than
        optim.max_bad_steps of them end the run."""
        self.state["bad_steps"] += 1
        bad = self.state["bad_steps"]
        warnings.warn(f"step {self.step}: non-finite loss or gradient; rest of the batch skipped ({bad} so far)")
        if bad > self.opt["max_bad_steps"]:
            self.logger.close()
            raise TrainingError(f"aborting at step {self.step}: {bad} non-finite batches "
                                f"(optim.max_bad_steps={self.opt['max_bad_steps']})")

    def report(self, batch: Batch, elapsed: float) -> None:
        """The step just made, on the progress bar and (every log.every steps, and the last) in the log."""
        loss, lr = self.updates.mean_loss, self.updates.lr
        # a dict keeps this order (keyword arguments would be sorted); gap: the latest held-out one
        self.bar.set_postfix({"loss": f"{loss:.4g}", "lr": f"{lr:.2e}",
                              "gap": "-" if self.latest_gap is None else f"{self.latest_gap:.4f}"}, refresh=False)
        self.bar.update(1)
        if self.step % self.cfg["log"]["every"] == 0 or self.step == self.stop:
            record = {"step": self.step, "stage": batch.stage["name"], "loss": loss, "lr": lr,
                      "grad_norm": self.updates.mean_grad_norm, "updates": len(self.updates.applied),
                      "guidance": batch.guidance, "elapsed_s": round(elapsed, 2)}
            if self.device.type == "cuda":  # the run's peak so far: what a smaller card must hold
                record["peak_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)
            self.logger.log(record)

    def validate(self) -> dict[str, Any]:
        """The held-out gap now (logged, and shown on the bar), and a preview grid when validation.images."""
        val, started = self.val, time.perf_counter()
        report = self.evaluator(self.student)
        self.latest_gap = report["gap"]
        record = {"step": self.step, "val_gap": report["gap"], "val_gap_per_category": report["per_category"],
                  "val_s": round(time.perf_counter() - started, 2)}
        if self.mixture["adaptive"]:  # the weights the next steps sample with
            mix = self.state["mixture"]
            mix["excess"] = update_excess(mix["excess"], report, self.mixture["rate"])
            record["mixture_weights"] = self.mixture_weights(self.stage_at(self.step))
        self.logger.log(record)
        if val["images"] and self.main:
            texts = [p["text"] for p in self.heldout[: val["image_prompts"]]]
            preview_grid(self.teacher, self.student, texts, self.teacher_cond(texts, self.val_len).to(self.device),
                         self.val_len, self.val_res, val["image_steps"], val["guidance"], val["image_seeds"],
                         preview_path(self.output, self.step))
        return report

    def checkpoint(self) -> None:
        save_checkpoint(self.output, self.step, self.student, self.optimizer, self.state, self.teacher.tokenizer,
                        self.meta, self.accelerator, self.cfg["checkpoint"]["keep"])

    def finish(self) -> dict[str, Any]:
        """The final validation, student and summary."""
        final = self.validate()
        if self.main:
            save_final_student(self.output, self.student, self.teacher.tokenizer, {**self.meta, "step": self.step})
        self.logger.close()
        self.accelerator.wait_for_everyone()
        summary = {"output": str(self.output), "steps": self.step, "student": str(student_path(self.output)),
                   "gap_initial": self.gap_initial, "gap_final": final["gap"],
                   "gap_final_per_category": final["per_category"]}
        if self.main:
            write_summary(self.output, summary)
        return summary


def train(cfg: dict[str, Any], output: str | Path, resume: bool = False, max_steps: int | None = None,
          progress: bool = True, recipe_name: str = "custom", cpu_threads: tuple[int, str] | None = None
          ) -> dict[str, Any]:
    """Run a resolved recipe (train.config.resolve) into `output`; returns a summary dict.

    `output` is a run folder (train/runs.py): student/ the final student (DistillT5 layout),
    checkpoints/step-N/ the checkpoints, log.jsonl + tb/ the logs, val/ the preview grids. It must be
    absent, empty, or (with `resume`) a run folder (train.runs.check_output). `cpu_threads` (threads,
    why) sets torch's intra-op threads for the run (`train run` chooses them from the free cores before
    torch loads: train.config.choose_cpu_threads), else the recipe's cpu_threads does, else the caller's
    setting stands; the caller's is put back at the end. SIGINT stops the run between two steps with a
    checkpoint and raises Interrupted."""
    output = Path(output)
    if max_steps is not None and (type(max_steps) is not int or max_steps < 1):
        raise ConfigError(f"--max-steps must be a whole number >= 1, got {max_steps!r}")
    check_output(output, resume)  # before any process of the run has written anything
    threads_before = torch.get_num_threads()
    try:
        if cpu_threads is None and cfg.get("cpu_threads"):
            cpu_threads = choose_cpu_threads(cfg["cpu_threads"])
        if cpu_threads is not None:
            _use_cpu_threads(*cpu_threads)
        with StopRequest(announce=os.environ.get("RANK", "0") == "0") as stopper:
            return Trainer(cfg, output, resume, max_steps, progress, recipe_name, stopper).run()
    finally:
        torch.set_num_threads(threads_before)


def _use_cpu_threads(threads: int, why: str) -> None:
    """Set torch's intra-op threads and say so in one line; the tokenizers' pool gets as many unless the
    user set its own (RAYON_RS_NUM_CPUS, read when that pool first starts)."""
    torch.set_num_threads(threads)
    os.environ.setdefault("RAYON_RS_NUM_CPUS", str(threads))
    if os.environ.get("RANK", "0") == "0":
        print(f"cpu threads: {threads} ({why})", file=sys.stderr, flush=True)
