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
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import torch
import torch.nn.functional as F

from core.errors import ConfigError
from core.fileio import atomic_write_text, staging_path, swap_into_place
from train.cache import EmbeddingCache, teacher_cache_id
from train.config import check_output, choose_cpu_threads, config_hash, t5_config_fields, total_steps
from train.data import PromptStream, heldout_split, load_stage_data
from train.evaluate import GapEvaluator, preview_grid
from train.student import DTYPES, DistillT5EncoderModel, build_student, load_student_state_dict
from train.teachers.base import Cond, Teacher
from train.teachers.registry import load_teacher

CKPT_RE = re.compile(r"^step-(\d{8})$")
STATE_FORMAT = 2  # 2: a step is one trajectory (batch); 1 counted optimizer updates


class TrainingError(RuntimeError):
    """A run that cannot go on (too many non-finite losses, nothing to resume, ...)."""


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


# ---- checkpoints --------------------------------------------------------------------------------


def complete_checkpoints(output: Path) -> Iterator[Path]:
    """The complete checkpoints, newest first; a folder cut off mid-write is skipped with a warning.
    Complete means all files present; whether they load is load_checkpoint's to find out."""
    root = output / "checkpoints"
    if not root.is_dir():
        return
    for leftover in sorted(root.glob(".step-*")):
        warnings.warn(f"ignoring {leftover.name}: a checkpoint cut off mid-write")
    for path in sorted((p for p in root.iterdir() if CKPT_RE.match(p.name)), reverse=True):
        absent = [name for name in ("state.json", "student/model.safetensors", "optimizer.pt") if not (path / name).is_file()]
        if absent:
            warnings.warn(f"skipping checkpoint {path.name}: incomplete (no {absent[0]})")
            continue
        yield path


def find_checkpoint(output: Path) -> Path | None:
    """The newest complete checkpoint (see complete_checkpoints)."""
    return next(complete_checkpoints(output), None)


def save_checkpoint(output: Path, step: int, student: DistillT5EncoderModel, optimizer: Any, state: dict, teacher: Teacher,
                    meta: dict, accelerator: Any, keep: int) -> Path:
    """Write into a hidden temp folder, then rename: a folder named step-XXXXXXXX is always complete."""
    from safetensors.torch import save_file

    root = output / "checkpoints"
    final = root / f"step-{step:08d}"
    tmp = root / f".step-{step:08d}.tmp"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and accelerator.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(accelerator.device)
    save_file(rng, str(tmp / f"rng-{accelerator.process_index}.safetensors"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        student.save_pretrained(tmp / "student", tokenizer=teacher.tokenizer, meta={**meta, "step": step})
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")  # written last
        swap_into_place(tmp, final)
        done = sorted(p for p in root.iterdir() if CKPT_RE.match(p.name))
        for old in done[: max(0, len(done) - keep)] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(path: Path, student: DistillT5EncoderModel, optimizer: Any, accelerator: Any) -> dict:
    """Restore a checkpoint into student, optimizer and RNG; returns its state. Every file is read and
    checked before anything is changed, and each error is one line naming the damaged file."""
    from train.weights import load_safetensors, load_torch, read_json

    weights = load_safetensors(path / "student" / "model.safetensors")
    # map to the CPU: load_state_dict moves the state to the parameters' device ("cpu:0" under torchrun
    # cannot be restored by torch.load)
    opt_state = load_torch(path / "optimizer.pt", "optimizer state")
    if not isinstance(opt_state, dict) or not {"state", "param_groups"} <= set(opt_state):
        raise ValueError(f"{path / 'optimizer.pt'}: not an optimizer state (no state/param_groups)")
    state = read_json(path / "state.json", "the checkpoint's state")
    if not isinstance(state, dict) or type(state.get("step")) is not int or not isinstance(state.get("positions"), list):
        raise ValueError(f"{path / 'state.json'}: not a checkpoint state (needs step and positions)")
    rng_file = path / f"rng-{accelerator.process_index}.safetensors"
    rng = load_safetensors(rng_file, finite=False) if rng_file.exists() else {}
    if rng and ("cpu" not in rng or rng["cpu"].dtype != torch.uint8):
        raise ValueError(f"{rng_file}: no CPU random state (a uint8 tensor 'cpu')")
    missing, unexpected = load_student_state_dict(student, weights)
    if missing or unexpected:
        raise TrainingError(f"{path}: student weights do not match (missing {missing[:3]}, unexpected {unexpected[:3]})")
    optimizer.load_state_dict(opt_state)
    if rng:
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and accelerator.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], accelerator.device)
    return state


def resume_checkpoint(output: Path, student: DistillT5EncoderModel, optimizer: Any, accelerator: Any) -> tuple[Path, dict] | None:
    """Load the newest checkpoint that loads: a damaged one (truncated or corrupt files) is passed over
    with one warning naming it, for the one before. None when there is no complete checkpoint at all;
    an error when there are some but none loads (starting over would silently discard the run)."""
    from core.errors import one_line

    damaged: list[str] = []
    for ckpt in complete_checkpoints(output):
        try:
            return ckpt, load_checkpoint(ckpt, student, optimizer, accelerator)
        except TrainingError:
            raise  # a checkpoint of another run (other student shape): not damage, and older ones are no better
        except (OSError, ValueError, RuntimeError, KeyError) as exc:  # RuntimeError: torch refusing a state
            damaged.append(f"{ckpt.name}: {one_line(exc)}")
            warnings.warn(f"--resume: skipping damaged checkpoint {ckpt.name} ({one_line(exc)}); "
                          "trying the one before it")
    if damaged:
        raise TrainingError(f"--resume: none of the {len(damaged)} checkpoint(s) in {output / 'checkpoints'} loads "
                            f"(newest {damaged[0]}); restore them, or move the folder away to start over")
    return None


def _read_log(path: Path) -> list[dict]:
    """The log's records, skipping (with a warning) lines a kill mid-write cut off."""
    records, unreadable = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            unreadable += 1
    if unreadable:
        warnings.warn(f"{path}: dropped {unreadable} unreadable line(s), as a kill mid-write leaves them")
    return records


def _truncate_log(path: Path, step: int, revalidate: bool = False) -> list[dict]:
    """Drop the records written after the checkpoint being resumed (and a line cut off by a kill). With
    `revalidate` the validation at the checkpoint's own step goes too: the final one, which runs again.
    Returns the records kept."""
    records = _read_log(path)
    keep = [r for r in records if r.get("step", 0) < step
            or (r.get("step", 0) == step and not (revalidate and "val_gap" in r))]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
    return keep


# ---- one trajectory -----------------------------------------------------------------------------


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
    per-step updates reach a given gap with fewer transformer passes (bench/distill_efficiency.py), so it
    is the default. `update` returns False when the update was skipped as non-finite: the trajectory is
    abandoned then, since non-finite latents would stay so."""
    k, last = len(train_idx), max(train_idx)
    prompts = sum(len(p.ids) for p in parts)
    weights = [len(p.ids) / prompts / (1 if per_step else k) for p in parts]
    xs = [p.noise for p in parts]
    sizes, velocities = [len(x) for x in xs], [None] * len(parts)
    seqs = leaves = None
    if not per_step:
        with amp():
            seqs = [student(p.ids)[0] for p in parts]
        leaves = [s.detach().requires_grad_(True) for s in seqs]
    total = 0.0
    for i, t in enumerate(teacher.timesteps(n_steps, xs[0])):
        step_loss = 0.0
        for pi, part in enumerate(parts):
            with torch.no_grad(), amp():
                target = teacher.predict(xs[pi], t, part.tcond, guidance)
            if i in train_idx:
                with amp():
                    seq = leaves[pi] if leaves else student(part.ids)[0]
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


class Logger:
    """JSONL always; tensorboard when available and asked for."""

    def __init__(self, output: Path, tensorboard: bool, enabled: bool):
        self.enabled = enabled
        self.file = open(output / "log.jsonl", "a", encoding="utf-8") if enabled else None
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(output / "tb"))
            except ImportError:
                warnings.warn("tensorboard is not installed; logging to log.jsonl only")

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(key, value, record["step"])
                elif isinstance(value, dict):
                    for sub, v in value.items():
                        if isinstance(v, (int, float)):
                            self.tb.add_scalar(f"{key}/{sub}", v, record["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def train(cfg: dict[str, Any], output: str | Path, resume: bool = False, max_steps: int | None = None,
          progress: bool = True, recipe_name: str = "custom", cpu_threads: tuple[int, str] | None = None
          ) -> dict[str, Any]:
    """Run a resolved recipe (train.config.resolve) into `output`; returns a summary dict.

    output/student/ is the final student (DistillT5 layout), output/checkpoints/step-N/ the
    checkpoints, output/log.jsonl + output/tb/ the logs, output/val/ the preview grids. `output` must
    be absent, empty, or (with `resume`) a run folder (train.config.check_output). `cpu_threads`
    (threads, why) sets torch's intra-op threads for the run (`train run` chooses them from the free
    cores before torch loads: train.config.choose_cpu_threads), else the recipe's cpu_threads does, else
    the caller's setting stands; the caller's is put back at the end. SIGINT stops the run between two
    steps with a checkpoint and raises Interrupted."""
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
            return _train(cfg, output, resume, max_steps, progress, recipe_name, stopper)
    finally:
        torch.set_num_threads(threads_before)


def _use_cpu_threads(threads: int, why: str) -> None:
    """Set torch's intra-op threads and say so in one line; the tokenizers' pool gets as many unless the
    user set its own (RAYON_RS_NUM_CPUS, read when that pool first starts)."""
    torch.set_num_threads(threads)
    os.environ.setdefault("RAYON_RS_NUM_CPUS", str(threads))
    if os.environ.get("RANK", "0") == "0":
        print(f"cpu threads: {threads} ({why})", file=sys.stderr, flush=True)


def _train(cfg: dict[str, Any], output: Path, resume: bool, max_steps: int | None, progress: bool,
           recipe_name: str, stopper: StopRequest) -> dict[str, Any]:
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    accelerator = Accelerator(mixed_precision="no", cpu=not torch.cuda.is_available())
    device, main = accelerator.device, accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    seed, opt, dist, val = cfg["seed"], cfg["optim"], cfg["distill"], cfg["validation"]

    # Teacher: frozen pipeline. bf16 weights on CUDA; the student's master weights stay float32.
    tdtype = DTYPES.get(cfg["teacher"]["dtype"]) if cfg["teacher"]["dtype"] != "auto" else None
    teacher = load_teacher(cfg["teacher"]["path"], device=device, dtype=tdtype,
                           trust_remote_code=cfg["teacher"]["trust_remote_code"])
    if cfg["teacher"]["gradient_checkpointing"]:
        teacher.transformer.enable_gradient_checkpointing()
    if cfg["teacher"]["fp8"]:  # targets, predictions and the validation gap all go through the fp8 transformer
        teacher.transformer_to_fp8()
    if cfg["teacher"]["compile"]:
        teacher.compile_transformer()
    elif cfg["teacher"]["fp8"]:
        warnings.warn("teacher.fp8 without teacher.compile is slower than bf16 on a GPU: the float8 casts run as "
                      "separate kernels (H100, FLUX.1-dev, bench/train_step.py: 988 ms an iteration vs 596 ms in "
                      "bf16, 318 ms with both); set teacher.compile: true")
    amp_on = device.type == "cuda" and opt["mixed_precision"] in ("auto", "bf16") and torch.cuda.is_bf16_supported()
    if opt["mixed_precision"] == "bf16" and not amp_on:
        warnings.warn("bf16 autocast needs a CUDA device with bf16; training in float32")
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp_on else contextlib.nullcontext

    # Data: stage prompts, held-out prompts removed from every stage.
    stages = cfg["stages"]
    for s in stages:
        teacher.check_resolution(s["resolution"])
    stage_rows = [load_stage_data(s["data"]) for s in stages]
    heldout, train_rows = heldout_split(stage_rows, val["data"], val["num_prompts"])
    streams = [PromptStream(rows, seed + 7 * i) for i, rows in enumerate(train_rows)]
    # Teacher embeddings: once per batch, optionally from/to the disk cache.
    cache_id = teacher_cache_id(teacher.source, teacher.dtype) if cfg["cache"]["dir"] else None
    cache = EmbeddingCache(cfg["cache"]["dir"], cache_id) if cache_id else None

    offloaded = False  # the text encoders left the device: the cache is then the only source

    def teacher_cond(texts: list[str], max_len: int) -> Cond:
        if cache is None:
            return teacher.encode(texts, max_len)
        hit = cache.get(texts, max_len)
        if hit is None and offloaded:
            raise TrainingError(f"the teacher embedding cache lost entries mid-run ({cache.dir}) and the text "
                                "encoders are offloaded; run again with --resume (or cache.offload_text_encoders: false)")
        if hit is None:
            hit = teacher.encode(texts, max_len)
            cache.put(texts, max_len, hit)
        return hit.to(device)

    # Student: from a pretrained T5, a student folder, or a config (shape from the teacher's T5).
    scfg = cfg["student"]
    torch.manual_seed(seed)  # here, not earlier (building a tiny teacher draws numbers); the same on every rank
    student = build_student(scfg["init"], project_out_dim=teacher.width, vocab_size=teacher.vocab_size,
                            base_config=teacher.t5_config, overrides=scfg["config"],
                            projection_dropout=scfg["projection_dropout"],
                            trust_remote_code=cfg["teacher"]["trust_remote_code"],
                            teacher_tokenizer=teacher.tokenizer).to(device)
    t5_config_fields()  # transformers is loaded now: cache the fields a later recipe check needs without it
    if scfg["gradient_checkpointing"]:
        # transformers 5 renamed it; fall back to the old name on older versions
        getattr(student, "activation_checkpointing_enable", student.gradient_checkpointing_enable)()
    student.train()
    if scfg["compile"]:  # in place: parameter names, save_pretrained and resume are unchanged
        student.compile()
    torch.manual_seed(seed + 1 + rank)  # each rank its own dropout
    # fused: one kernel for all parameters on CUDA; with an update per regressed step it runs 20 times a batch
    optimizer = torch.optim.AdamW(student.parameters(), lr=opt["lr"], betas=tuple(opt["betas"]), eps=opt["eps"],
                                  weight_decay=opt["weight_decay"], fused=device.type == "cuda")
    # No DDP wrapper: gradients are averaged over ranks by hand before every update, because one
    # trajectory interleaves several forwards and backwards per micro-batch, which DDP's hooks do not model.
    if world > 1 and opt["batch_size"] % world:
        raise TrainingError(f"optim.batch_size ({opt['batch_size']}) must be a multiple of the {world} processes")

    if main:  # only now: a run that cannot load its teacher, data or student leaves no folder behind
        # atomic and first: recipe.json marks the folder as a run folder (train.config.RUN_MARKER)
        atomic_write_text(output / "recipe.json", json.dumps(cfg, indent=2) + "\n")
    planned = total_steps(cfg)
    state = {"format": STATE_FORMAT, "step": 0, "positions": [0] * len(stages), "bad_steps": 0,
             "recipe_hash": config_hash(cfg)}
    if resume:
        loaded = resume_checkpoint(output, student, optimizer, accelerator)
        if loaded is None:
            warnings.warn(f"--resume: no complete checkpoint in {output / 'checkpoints'}; starting from step 0")
            if main and (output / "log.jsonl").exists():
                _truncate_log(output / "log.jsonl", -1)  # the run starts over: so does its log
        else:
            ckpt, state = loaded
            if state.get("format") != STATE_FORMAT:
                raise TrainingError(f"{ckpt} was written by an older t5shrink whose steps counted updates, not "
                                    "trajectories; it cannot be resumed (its student/ folder still loads)")
            if max_steps is None and state.get("total", planned) > planned:
                max_steps = state["total"]  # the run was extended with --max-steps: keep its length and schedule
            elif max_steps is not None and max(max_steps, planned) != state.get("total", planned):
                warnings.warn(f"--resume: --max-steps {max_steps} changes the run's length "
                              f"({state.get('total', planned)} steps), so its lr schedule and stage bounds "
                              "change too; the resumed run will not match an uninterrupted one")
            if state.get("recipe_hash") != config_hash(cfg):
                warnings.warn("--resume: the recipe differs from the checkpoint's; continuing with the new one")
            if main:
                print(f"resuming from {ckpt} (step {state['step']})", file=sys.stderr, flush=True)

    # Step plan: stage boundaries; --max-steps truncates, or extends the last stage.
    total = max_steps if max_steps is not None and max_steps > planned else planned
    stop = min(max_steps, total) if max_steps is not None else total
    state["total"] = total
    if resume and state["step"] >= stop:
        warnings.warn(f"--resume: the checkpoint is at step {state['step']}, the run stops at {stop}; nothing to train")
    logged: list[dict] = []  # a resumed run's log up to its checkpoint
    if resume and state["step"] > 0 and main and (output / "log.jsonl").exists():
        logged = _truncate_log(output / "log.jsonl", state["step"], revalidate=state["step"] >= stop)
    bounds, acc = [], 0
    for i, s in enumerate(stages):
        acc += s["steps"] if i < len(stages) - 1 else s["steps"] + (total - planned)
        bounds.append(acc)

    last = stages[-1]
    val_len = val["max_sequence_length"] or last["max_sequence_length"]
    val_res = val["resolution"] or last["resolution"]
    meta = {"teacher": cfg["teacher"]["path"], "teacher_kind": teacher.kind, "t5_slot": teacher.t5_slot,
            "max_sequence_length": val_len, "resolution": val_res, "guidance": cfg["teacher"]["guidance"],
            "recipe": recipe_name, "recipe_hash": state["recipe_hash"]}
    if any(s["max_sequence_length"] != val_len for s in stages):
        warnings.warn("stages use different max_sequence_length; inference should use the last stage's "
                      f"({val_len}), which is what the student records")

    if cache is not None and cfg["cache"]["precompute"]:
        todo = [(p["text"], s["max_sequence_length"]) for rows, s in zip(stage_rows, stages) for p in rows]
        if cfg["teacher"]["empty_prompt_prob"] > 0:
            todo += [("", s["max_sequence_length"]) for s in stages]
        todo = sorted({t for t in todo if not cache.has([t[0]], t[1])})
        bs = opt["micro_batch_size"] or max(1, opt["batch_size"] // world)
        for i in tqdm(range(rank * bs, len(todo), bs * world), desc="caching teacher embeddings", disable=not (progress and main)):
            chunk = todo[i : i + bs]
            for max_len in sorted({m for _, m in chunk}):
                texts = [t for t, m in chunk if m == max_len]
                cache.put(texts, max_len, teacher.encode(texts, max_len))
        accelerator.wait_for_everyone()
        cache = EmbeddingCache(cfg["cache"]["dir"], cache_id)  # pick up the other ranks' shards
    evaluator = GapEvaluator(teacher, heldout, val_len, val_res, val["sigmas"], val["guidance"], val["batch_size"],
                             seed=seed, encode=teacher_cond)
    if cfg["cache"]["offload_text_encoders"] and not (cache is not None and cache.enabled and cache.writable):
        warnings.warn("cache.offload_text_encoders: cache.dir cannot be written, so the text "
                      "encoders stay on the device to encode every batch")
    elif cfg["cache"]["offload_text_encoders"]:
        for s in stages:
            teacher.uncond(s["max_sequence_length"])  # SD3's empty prompt, before the encoders leave
        teacher.offload_text_encoders()
        offloaded = True

    logger = Logger(output, cfg["log"]["tensorboard"], main)
    results: dict[str, Any] = {"initial": None, "final": None}
    shown = {"gap": None}  # the latest held-out gap, for the progress bar

    def validate(step: int) -> dict[str, Any]:
        report = evaluator(student)
        shown["gap"] = report["gap"]
        logger.log({"step": step, "val_gap": report["gap"], "val_gap_per_category": report["per_category"]})
        if val["images"] and main:
            n = val["image_prompts"]
            texts = [p["text"] for p in heldout[:n]]
            preview_grid(teacher, student, texts, teacher_cond(texts, val_len).to(device), val_len, val_res,
                         val["image_steps"], val["guidance"], val["image_seeds"], output / "val" / f"step-{step:08d}.png")
        return report

    step = state["step"]
    if step == 0:
        results["initial"] = validate(0)
    else:  # resumed: the summary keeps the run's first gap, the bar the latest
        results["initial"] = next(({"gap": r["val_gap"]} for r in logged if r.get("step") == 0 and "val_gap" in r), None)
        shown["gap"] = next((r["val_gap"] for r in reversed(logged) if "val_gap" in r), None)
    bar = tqdm(total=stop, initial=step, desc="distil", disable=not (progress and main), dynamic_ncols=True,
               file=sys.stderr)
    gmin, gmax = cfg["teacher"]["guidance"]
    n_steps = dist["sampling_steps"]
    k_steps = dist["train_steps"] or n_steps
    updates_per_step = k_steps if dist["update"] == "step" else 1
    lr = lr_at(step * updates_per_step, opt, total, updates_per_step)
    t0 = time.time()
    stopper.armed = True  # from here Ctrl-C stops after the step in progress, with a checkpoint
    while step < stop:
        si = next(i for i, b in enumerate(bounds) if step < b)
        stage = stages[si]
        bar.set_description(f"{stage['name']} {si + 1}/{len(stages)}" if len(stages) > 1 else stage["name"])
        max_len, res = stage["max_sequence_length"], stage["resolution"]
        micro = stage["micro_batch_size"] or opt["micro_batch_size"] or max(1, opt["batch_size"] // world)
        batch = streams[si].take(state["positions"][si], opt["batch_size"])
        state["positions"][si] += opt["batch_size"]

        # Per-batch draws, identical on every rank: guidance, which steps to regress, empty prompts.
        gen = step_generator(seed, step)
        guidance = gmin + (gmax - gmin) * torch.rand((), generator=gen).item()
        train_idx = set(torch.randperm(n_steps, generator=gen)[:k_steps].tolist())
        drop = torch.rand(len(batch), generator=gen) < cfg["teacher"]["empty_prompt_prob"]
        texts = ["" if d else p["text"] for p, d in zip(batch, drop.tolist())]
        # This rank's contiguous share, in micro-batches (gradient accumulation across them). Each prompt's
        # noise is keyed by its place in the batch, so any split over ranks and micro-batches draws the
        # same numbers.
        share = len(texts) // world
        parts = []
        for i in range(rank * share, (rank + 1) * share, micro):
            idx = range(i, min(i + micro, (rank + 1) * share))
            chunk = [texts[j] for j in idx]
            noise = torch.cat([teacher.noise(1, res, step_generator(seed, step, 1 + j)) for j in idx])
            parts.append(MicroBatch(teacher_cond(chunk, max_len), teacher.tokenize(chunk, max_len).to(device), noise))
        done: list[tuple[float, float]] = []  # (loss, grad norm) of this batch's updates
        attempts = 0  # updates tried in this batch, skipped ones included: they keep the lr on schedule

        def update(loss: float) -> bool:
            nonlocal attempts, lr
            lr = lr_at(step * updates_per_step + attempts, opt, total, updates_per_step)
            attempts += 1
            # Average the loss over ranks; every rank must agree to skip an update.
            stats = torch.tensor([loss, 0.0 if math.isfinite(loss) else 1.0], device=device)
            stats = accelerator.reduce(stats, reduction="sum") if world > 1 else stats
            loss, finite = stats[0].item() / world, stats[1].item() == 0
            grad_norm = float("nan")
            if finite:
                if world > 1:
                    average_gradients(student)
                # max_norm inf only measures: the finiteness check needs the norm
                grad_norm = float(torch.nn.utils.clip_grad_norm_(student.parameters(), opt["grad_clip"] or math.inf))
                finite = math.isfinite(grad_norm)
            if finite:
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.step()
                done.append((loss, grad_norm))
            optimizer.zero_grad(set_to_none=True)
            if not finite:  # the rest of this batch is skipped too, and the batch counts once
                state["bad_steps"] += 1
                warnings.warn(f"step {step}: non-finite loss or gradient; rest of the batch skipped "
                              f"({state['bad_steps']} so far)")
                if state["bad_steps"] > opt["max_bad_steps"]:
                    logger.close()
                    raise TrainingError(f"aborting at step {step}: {state['bad_steps']} non-finite batches "
                                        f"(optim.max_bad_steps={opt['max_bad_steps']})")
            return finite

        distill_trajectory(student, teacher, parts, max_len, n_steps, train_idx, guidance, amp, update,
                           per_step=dist["update"] == "step")
        loss_value = sum(d[0] for d in done) / len(done) if done else float("nan")
        grad_norm = sum(d[1] for d in done) / len(done) if done else float("nan")
        step += 1
        state["step"], state["lr"] = step, lr
        # a dict keeps this order (keyword arguments would be sorted); gap: the latest held-out one
        bar.set_postfix({"loss": f"{loss_value:.4g}", "lr": f"{lr:.2e}",
                         "gap": "-" if shown["gap"] is None else f"{shown['gap']:.4f}"}, refresh=False)
        bar.update(1)
        if step % cfg["log"]["every"] == 0 or step == stop:
            logger.log({"step": step, "stage": stage["name"], "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                        "updates": len(done), "guidance": guidance, "elapsed_s": round(time.time() - t0, 2)})
        if val["every"] and step % val["every"] == 0 and step != stop:
            validate(step)
        saved = cfg["checkpoint"]["every"] and (step % cfg["checkpoint"]["every"] == 0 or step == stop)
        if saved:
            save_checkpoint(output, step, student, optimizer, state, teacher, meta, accelerator, cfg["checkpoint"]["keep"])
        if step < stop and stopper.agreed(accelerator):  # between two steps: a consistent checkpoint
            bar.close()
            if not saved:  # even with checkpoint.every off: the newest, so `keep` never drops it
                save_checkpoint(output, step, student, optimizer, state, teacher, meta, accelerator, cfg["checkpoint"]["keep"])
            logger.close()
            raise Interrupted(step, output / "checkpoints" / f"step-{step:08d}")
    stopper.armed = False
    bar.close()
    results["final"] = validate(step)
    if main:
        final = output / "student"
        tmp = staging_path(final)
        student.save_pretrained(tmp, tokenizer=teacher.tokenizer, meta={**meta, "step": step})
        swap_into_place(tmp, final)
    logger.close()
    accelerator.wait_for_everyone()
    summary = {"output": str(output), "steps": step, "student": str(output / "student"),
               "gap_initial": results["initial"]["gap"] if results["initial"] else None,
               "gap_final": results["final"]["gap"], "gap_final_per_category": results["final"]["per_category"]}
    if main:
        (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
