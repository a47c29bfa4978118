"""The real trainer end to end, as a user's first run goes: a pipeline folder on disk, `train run` through
the CLI (embedding cache precomputed, text encoders offloaded, compile and fp8 when asked), SIGKILL in the
middle of a step, `--resume` to the end, `train export --format diffusers`, the exported student inside
FluxPipeline drawing one image, and `train eval`. One table: each phase ok or failed with its time, the
trainer's own ms a step and peak GiB (CUDA), and whether the resumed run's student is bit-identical to an
uninterrupted one's.

    python bench/device_e2e.py --scale tiny --out /tmp/e2e --no-compile         # CPU rehearsal, ~1 min
    bash bench/device_e2e.sh                                                    # FLUX.1-dev size on one GPU

--scale flux-dev writes a FLUX.1-dev-sized FluxPipeline with random weights (19 double + 38 single blocks,
T5-v1.1-XXL, CLIP-L, the 16-channel VAE; bf16 safetensors shards) to local disk first, and trains a
random flan-T5-base-shaped student (`student.preset=flan-t5-base`, `student.init=config`: no download).
The prompts are the tiny recipe's built-in ones, written to a .jsonl file: nothing to carry.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_flux_dev(out: Path, device: str) -> None:
    """A FLUX.1-dev-sized FluxPipeline, random bf16 weights, saved as safetensors shards."""
    import torch
    from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from bench.train_step import CLIP_L, FLUX_DEV, T5_XXL, build
    from train.tiny import _flux_scheduler, train_clip_tokenizer, train_t5_tokenizer

    dtype, dev = torch.bfloat16, torch.device(device)
    clip_tok, t5_tok = train_clip_tokenizer(), train_t5_tokenizer()
    torch.manual_seed(0)
    clip = CLIPTextConfig(**CLIP_L, vocab_size=49408, max_position_embeddings=77, bos_token_id=clip_tok.bos_token_id,
                          eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.pad_token_id)
    vae = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
               scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)
    pipe = FluxPipeline(
        scheduler=_flux_scheduler(), vae=build(AutoencoderKL, vae, dev, dtype),
        text_encoder=build(CLIPTextModel, clip, dev, dtype), tokenizer=clip_tok,
        text_encoder_2=build(T5EncoderModel, T5Config(**T5_XXL, is_encoder_decoder=False, use_cache=False), dev, dtype),
        tokenizer_2=t5_tok, transformer=build(FluxTransformer2DModel, FLUX_DEV, dev, dtype))
    pipe.save_pretrained(str(out), safe_serialization=True, max_shard_size="5GB")


def write_prompts(path: Path) -> None:
    from train.tiny import builtin_prompts

    path.write_text("".join(json.dumps(p) + "\n" for p in builtin_prompts()))


def train_args(a: argparse.Namespace, teacher: Path, data: Path, out: Path) -> list[str]:
    """`train run` with flux-t5-base's settings, shortened: a few steps of a few sampling steps."""
    sets = [f"distill.sampling_steps={a.sampling_steps}", f"optim.batch_size={a.batch}", f"optim.micro_batch_size={a.batch}",
            "validation.every=0", "validation.num_prompts=8", "validation.images=false", f"checkpoint.every={a.kill_after}",
            "checkpoint.keep=0", "log.every=1", "log.tensorboard=false", f"cache.dir={a.out / 'emb-cache'}",
            "cache.precompute=true", "cache.offload_text_encoders=true", f"stages.0.resolution={a.resolution}",
            "optim.warmup_steps=1", "student.init=config",
            f"teacher.compile={str(a.compile).lower()}", f"student.compile={str(a.compile).lower()}",
            f"teacher.fp8={str(a.fp8).lower()}", f"teacher.gradient_checkpointing={str(a.ckpt).lower()}"]
    if a.scale == "flux-dev":
        sets.append("student.preset=flan-t5-base")
    args = [sys.executable, "-m", "train.cli", "run", "--recipe", "flux-t5-base", "--teacher", str(teacher), "--data", str(data),
            "--output", str(out), "--max-steps", str(a.steps), "--quiet"]
    return args + [x for s in sets for x in ("--set", s)]


def same_student(a: Path, b: Path) -> str:
    """Whether two runs' final students are the same bytes (SHA-256 of model.safetensors)."""
    digest = [hashlib.sha256((run / "student" / "model.safetensors").read_bytes()).hexdigest() for run in (a, b)]
    if digest[0] != digest[1]:
        raise AssertionError(f"the resumed student differs from the uninterrupted one ({digest[0][:12]} vs {digest[1][:12]})")
    return f"bit-identical (sha256 {digest[0][:12]})"


class Phases:
    """Each phase's outcome and time; a failed phase is reported, and the phases after it still try."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def run(self, name: str, fn, *args) -> Any:
        started = time.perf_counter()
        try:
            detail = fn(*args)
            detail = None if detail is None else str(detail).strip()
            ok = True
        except Exception as exc:  # the table says what broke; the next phases still run
            detail, ok = " ".join(str(exc).split())[-300:], False
        self.rows.append({"phase": name, "ok": ok, "s": round(time.perf_counter() - started, 1), "detail": detail})
        print(f"[e2e] {name}: {'ok' if ok else 'FAILED'} ({self.rows[-1]['s']} s) {detail or ''}", file=sys.stderr, flush=True)
        return detail if ok else None


def cli(args: list[str], timeout: float) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {(done.stderr or done.stdout)[-1500:]}")
    return done.stdout


def killed_then_resumed(args: list[str], run: Path, kill_after: int, timeout: float) -> str:
    """Start the run, SIGKILL it in the step after its first checkpoint, then `--resume` it to the end."""
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    marker = run / "checkpoints" / f"step-{kill_after:08d}" / "state.json"
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended (exit {proc.returncode}) before its step-{kill_after} checkpoint: "
                               f"{proc.stderr.read()[-1000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError("no checkpoint in time")
        time.sleep(0.05)
    logged = lambda: sum('"loss"' in line for line in (run / "log.jsonl").read_text().splitlines())  # noqa: E731
    while logged() <= kill_after and proc.poll() is None:  # into the next step, not between two
        time.sleep(0.05)
    time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    cli(args + ["--resume"], timeout)
    return f"killed after step {kill_after}, resumed"


def step_stats(run: Path) -> str:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    later = [r["elapsed_s"] for r in rows[1:]] or [rows[0]["elapsed_s"]]  # the first step compiles
    ms = 1000 * sorted(later)[len(later) // 2]
    peak = max((r.get("peak_gib") or 0 for r in rows), default=0)
    return f"{ms:.0f} ms/step (median after the first), peak {peak:.1f} GiB" if peak else f"{ms:.0f} ms/step"


def generate(export: Path, teacher: Path, resolution: int, device: str, out_png: Path) -> str:
    import torch
    from diffusers import FluxPipeline

    from train.student import DistillT5EncoderModel

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    student = DistillT5EncoderModel.from_pretrained(export, subfolder="text_encoder_2", dtype=dtype)
    pipe = FluxPipeline.from_pretrained(str(teacher), text_encoder_2=student, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red cat holding a sign that says hello", height=resolution, width=resolution, num_inference_steps=4,
                 max_sequence_length=77, generator=torch.Generator().manual_seed(0)).images[0]
    image.save(out_png)
    return f"{image.size[0]}x{image.size[1]} -> {out_png.name}"


def eval_gap(export: Path, teacher: Path, data: Path, timeout: float) -> str:
    report = json.loads(cli([sys.executable, "-m", "train.cli", "eval", "--student", str(export), "--teacher", str(teacher),
                             "--data", str(data), "--max-prompts", "8", "--images", "1", "--steps", "2", "--json", "--quiet"],
                            timeout))
    return f"held-out gap {report['models'][1]['overall']['gap']:.4f} on 8 prompts"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=["tiny", "flux-dev"], default="tiny")
    p.add_argument("--out", type=Path, required=True, help="working folder (pipeline, runs, export, table)")
    p.add_argument("--device", default=None, help="cuda or cpu [cuda when there is one]")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--kill-after", type=int, default=2, help="SIGKILL in the step after this checkpoint")
    p.add_argument("--sampling-steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--resolution", type=int, default=None, help="[512 flux-dev, 32 tiny]")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--fp8", action="store_true", help="teacher.fp8 (H100-class GPUs)")
    p.add_argument("--ckpt", action="store_true", help="teacher.gradient_checkpointing")
    p.add_argument("--timeout", type=float, default=540)
    a = p.parse_args(argv)
    import torch

    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    a.resolution = a.resolution or (512 if a.scale == "flux-dev" else 32)
    a.out.mkdir(parents=True, exist_ok=True)
    teacher, data = a.out / "pipeline", a.out / "prompts.jsonl"
    phases = Phases()
    if a.scale == "flux-dev":
        phases.run("build FLUX.1-dev-sized folder", build_flux_dev, teacher, a.device)
    else:
        from train.tiny import build_flux

        phases.run("build tiny FLUX folder", build_flux, teacher)
    write_prompts(data)
    ref, run = a.out / "run-uninterrupted", a.out / "run-killed"
    phases.run("train run (uninterrupted)", cli, train_args(a, teacher, data, ref), a.timeout)
    phases.run("ms/step, peak", step_stats, ref)
    phases.run("train run, SIGKILL, --resume", killed_then_resumed, train_args(a, teacher, data, run), run, a.kill_after,
               a.timeout)
    phases.run("resumed == uninterrupted", same_student, ref, run)
    export = a.out / "export"
    phases.run("train export --format diffusers", cli, [sys.executable, "-m", "train.cli", "export", "--checkpoint", str(run),
                                                        "--output", str(export), "--format", "diffusers"], a.timeout)
    phases.run("FluxPipeline image", generate, export, teacher, a.resolution, a.device, a.out / "student.png")
    phases.run("train eval", eval_gap, export, teacher, data, a.timeout)
    print(f"\ndevice_e2e  scale={a.scale}  device={a.device}  compile={a.compile}  fp8={a.fp8}  steps={a.steps}  "
          f"batch={a.batch}  {a.resolution} px")
    for r in phases.rows:
        print(f"{r['phase']:<34} {'ok' if r['ok'] else 'FAILED':<7} {r['s']:>7.1f} s  {r['detail'] or ''}")
    (a.out / "e2e.json").write_text(json.dumps(phases.rows, indent=2) + "\n")
    return phases.rows


if __name__ == "__main__":
    rows = main()
    sys.exit(0 if all(r["ok"] for r in rows) else 1)
