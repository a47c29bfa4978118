"""One training iteration, reference loop shape vs t5shrink's, at real FLUX.1-dev / SD3 sizes.

Random weights only: every model is built on the meta device from its config and materialised on the
target device (nothing is downloaded). Sizes: FLUX.1-dev transformer (19 double + 38 single blocks, 24 x
128 heads), or SD3-medium's (24 blocks); T5-XXL (T5 v1.1 XXL encoder, 4.8 B); CLIP-L (+ CLIP-G for SD3);
a flan-t5-base-shaped student (train.student.DistillT5EncoderModel, project_out_dim 4096). Frozen models
are bf16 on CUDA; the student keeps float32 master weights under bf16 autocast, as in train/distill.py.
On CPU everything is float32 without autocast (what the trainer does there).

Configurations (same batch / resolution / tokens; each has a fresh student + AdamW). An iteration is one
regressed denoising step and one optimizer update in both loops: the trainer's default (distill.update:
step) makes the same updates as the reference; bench/distill_efficiency.py --set distill.update=trajectory
shows why (at equal compute it beats one update per trajectory).
  reference        T5-XXL + CLIP encode again, teacher transformer forward (no_grad), student forward +
                   transformer forward + backward into the student, AdamW step; T5-XXL resident.
  ours             train.distill.distill_trajectory's step (update: step): teacher embeddings from the
                   cache (already on the device, T5-XXL/CLIP freed), then the same forward/backward, AdamW.
  +ckpt            gradient checkpointing of the transformer;  +compile: student.compile + teacher.compile,
                   torch.compile of the student and, block by block (regional compilation: one graph for
                   all blocks of a kind, compiled once), of the transformer, which fuses the float8 casts
                   with their neighbours;
  ours+fp8         teacher.fp8: the frozen transformer's linears as train.fp8.Float8FrozenLinear (weights
                   stored in e4m3 with rowwise scales, forward GEMM in fp8, input gradient only, nothing
                   saved). Run last: they convert in place. ours+fp8+compile is the whole stack.
  ours+fp8-torchao the same with torchao's float8 *training* linears (rowwise), for comparison: bf16 weights
                   re-cast every call, input saved, a grad-weight GEMM although the weights are frozen
                   (on the H100 that unneeded GEMM failed: it needs the token count, 4 x 1101, to be a
                   multiple of 16).
Ratios are ours / reference per iteration, against both reference rows. A configuration that runs
out of GPU memory reports OOM and the run goes on. Also: student encode latency at batch 1 x 512 tokens,
eager vs torch.compile (CUDA, or CPU with --compile), beside T5-XXL.
Backward passes through the transformer run under sdpa_kernel(FLASH_ATTENTION) on CUDA (the default
backend crashed with an illegal memory access on an H100).

    python bench/train_step.py --scale tiny --device cpu --iters 2 --warmup 1          # seconds, smoke
    python bench/train_step.py --scale flux-dev --device cuda --json out/flux.json     # one H100, ~3 min
    bash bench/device_train_step.sh          # the same on a lent device machine (wheels to carry: see there)

Measured on one H100 (torch 2.11, batch 4, 512 px; README's table): reference 664 ms / 52.0 GiB, ours
593 / 42.9, ours+compile 385 / 40.7 (another run, reference 634), ours+fp8 988 / 31.9, ours+fp8+compile
318 / 29.7 (0.480x time, 0.570x memory); student encode at 1 x 512 tokens 16-21 ms eager, 1.5-1.8 ms
compiled (T5-XXL eager 27-38 ms).

The device machine (Python 3.12, torch 2.11, transformers 5.17, requests and Pillow, as last listed) lacks
diffusers and torchao, so carry their wheels (rehearsed on CPU in a venv with exactly torch 2.11.0 +
transformers 5.17.0 + accelerate 1.15.0 + these two: every configuration ran, torch.compile included;
the fp8 rows need CUDA there, since torch 2.11's CPU _scaled_mm has no rowwise scales; torch 2.14's has):
    python3 -m pip download --no-deps --only-binary=:all: -d .whl diffusers==0.42.1
    python3 -m pip download --no-deps --only-binary=:all: -d .whl torchao==0.18.0    # the comparison row
This script imports only train.student, train.fp8 and train.teachers.base from the repo (torch +
transformers at module level), so the repo plus those wheels suffice. Results go to --json after
every configuration (a killed run keeps them).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

T5_XXL = dict(d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64, feed_forward_proj="gated-gelu", vocab_size=32128)
T5_BASE = dict(d_model=768, d_ff=2048, num_layers=12, num_heads=12, d_kv=64, feed_forward_proj="gated-gelu", vocab_size=32128)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768)
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, projection_dim=1280, hidden_act="gelu")
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
                joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
SD3_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
                  joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
                  pos_embed_max_size=192)
TINY_T5 = dict(d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8, feed_forward_proj="gated-gelu", vocab_size=400)
TINY_CLIP = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, projection_dim=16, vocab_size=400)
SCALES = {  # kind, transformer, T5 teacher, student, CLIP encoders, default resolution
    "flux-dev": ("flux", FLUX_DEV, T5_XXL, T5_BASE, [CLIP_L], 512),
    "sd3": ("sd3", SD3_MEDIUM, T5_XXL, T5_BASE, [CLIP_L, CLIP_G], 512),
    "tiny": ("flux", dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                          joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True, axes_dims_rope=(4, 6, 6)),
             TINY_T5, {**TINY_T5, "d_model": 16, "d_ff": 32}, [TINY_CLIP], 64),
    "tiny-sd3": ("sd3", dict(sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
                             joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=32, out_channels=4,
                             pos_embed_max_size=16),
                 TINY_T5, {**TINY_T5, "d_model": 16, "d_ff": 32}, [TINY_CLIP, TINY_CLIP], 64),
}
# fp8 last, torchao's first: each converts the transformer in place (ours from torchao's bf16-weight linears);
# the full stack (ours+fp8+compile) comes last because compiling takes longest
CONFIGS = ["reference", "reference+ckpt", "ours", "ours+ckpt", "ours+compile", "ours+fp8-torchao", "ours+fp8",
           "ours+fp8+ckpt", "ours+fp8+compile"]


def materialize(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Meta-built model -> real tensors on `device` with a cheap random init (no CPU copy, no download).
    to_empty unties shared parameters (T5's embedding), so ties are restored by hand."""
    torch.nn.Module.to(model, dtype)  # not ModelMixin.to, which warns about fp32 modules
    ties: dict[int, list] = {}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            ties.setdefault(id(p), []).append((module, name))
    model.to_empty(device=device)
    for group in ties.values():
        for module, name in group[1:]:
            setattr(module, name, getattr(*group[0]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.fill_(1.0 if name.endswith("weight") else 0.0)  # norms 1, biases 0
            else:
                p.normal_(std=0.02)
        for b in model.buffers():  # CLIP's position ids, SD3's sin-cos table
            if b.is_floating_point():
                b.normal_(std=0.02)
            else:
                b.copy_(torch.arange(b.shape[-1], device=device).expand_as(b))
    return model


def build(cls, config, device, dtype, trainable=False):
    with torch.device("meta"):
        model = cls(config) if not isinstance(config, dict) else cls(**config)
    model = materialize(model, device, dtype)
    model.requires_grad_(trainable)
    return model.train(trainable)


def make_student(shape: dict, width: int, device, dtype=torch.float32):
    from transformers import T5Config

    from train.student import DistillT5EncoderModel

    cfg = T5Config(**shape, is_encoder_decoder=False, use_cache=False, dropout_rate=0.1, project_in_dim=shape["d_model"],
                   project_out_dim=width, projection_dropout=0.1)
    return build(DistillT5EncoderModel, cfg, device, dtype, trainable=True)


def gib(n_bytes: float) -> float:
    return round(n_bytes / 2**30, 3)


class Setup:
    """The frozen models, the inputs of one batch, and the transformer call (as train/teachers/*.py make it)."""

    def __init__(self, args, device: torch.device):
        from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

        self.kind, tcfg, t5cfg, self.student_shape, clips, default_res = SCALES[args.scale]
        self.device, self.cuda, self.tokens = device, device.type == "cuda", args.tokens
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        cls = FluxTransformer2DModel if self.kind == "flux" else SD3Transformer2DModel
        self.transformer = build(cls, tcfg, device, self.dtype)
        self.width = self.transformer.config.joint_attention_dim
        self.t5 = build(T5EncoderModel, T5Config(**t5cfg, is_encoder_decoder=False, use_cache=False), device, self.dtype)
        clip_cls = CLIPTextModel if self.kind == "flux" else CLIPTextModelWithProjection
        self.clips = [build(clip_cls, CLIPTextConfig(**c, bos_token_id=0, eos_token_id=2, pad_token_id=1), device, self.dtype)
                      for c in clips]
        self.params = {"transformer": sum(p.numel() for p in self.transformer.parameters()),
                       "t5_xxl": sum(p.numel() for p in self.t5.parameters()),
                       "clip": sum(p.numel() for c in self.clips for p in c.parameters())}
        B, res = args.batch, args.resolution or default_res
        self.resolution = res
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(3, t5cfg["vocab_size"], (B, args.tokens), generator=gen).to(device)
        self.clip_ids = torch.randint(3, clips[0].get("vocab_size", 49408), (B, 77), generator=gen).to(device)
        if self.kind == "flux":
            side = res // 16  # VAE /8, then 2x2 patches packed into channels
            self.x0 = torch.randn(B, side * side, tcfg["in_channels"], generator=gen)
            rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
            self.img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).to(device, self.dtype)
            self.txt_ids = torch.zeros(args.tokens, 3, device=device, dtype=self.dtype)
        else:
            self.x0 = torch.randn(B, tcfg["in_channels"], res // 8, res // 8, generator=gen)
        self.x0 = self.x0.to(device)
        with torch.no_grad(), self.amp():
            self.cached = self.encode(self.ids, self.clip_ids)  # what the embedding cache would hold
            self.uncond = tuple(t[:1].expand_as(t).clone() for t in self.cached)  # SD3's empty-prompt branch

    def amp(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else contextlib.nullcontext()

    def flash(self):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.FLASH_ATTENTION) if self.cuda else contextlib.nullcontext()

    def encode(self, ids, clip_ids):
        """Teacher conditioning (embeds, pooled) as FluxPipeline / StableDiffusion3Pipeline.encode_prompt build it."""
        seq = self.t5(input_ids=ids).last_hidden_state
        if self.kind == "flux":
            return seq, self.clips[0](input_ids=clip_ids).pooler_output
        outs = [c(input_ids=clip_ids, output_hidden_states=True) for c in self.clips]
        clip_seq = torch.cat([o.hidden_states[-2] for o in outs], -1)
        clip_seq = F.pad(clip_seq, (0, seq.shape[-1] - clip_seq.shape[-1]))
        return torch.cat([clip_seq, seq], 1), torch.cat([o.text_embeds for o in outs], -1)

    def student_cond(self, seq, cached):
        """The student's sequence in the T5 slot (SD3: after the teacher's CLIP part)."""
        if self.kind == "flux":
            return seq, cached[1]
        return torch.cat([cached[0][:, : -self.tokens].to(seq.dtype), seq], 1), cached[1]

    def predict(self, x, t: float, cond):
        embeds, pooled = cond
        B = x.shape[0]
        kw = dict(hidden_states=x.to(self.dtype), encoder_hidden_states=embeds.to(self.dtype),
                  pooled_projections=pooled.to(self.dtype), return_dict=False)
        if self.kind == "flux":
            g = torch.full((B,), 3.5, device=self.device, dtype=torch.float32)
            return self.transformer(timestep=torch.full((B,), t, device=self.device, dtype=self.dtype), guidance=g,
                                    txt_ids=self.txt_ids, img_ids=self.img_ids, **kw)[0]
        return self.transformer(timestep=torch.full((B,), t * 1000, device=self.device, dtype=self.dtype), **kw)[0]

    @torch.no_grad()
    def sampler_step(self, x, t, dt, target):
        """Euler flow-matching step on the teacher's velocity (SD3: with CFG at 5.0, one more no_grad pass)."""
        if self.kind == "sd3":
            with self.amp(), self.flash():
                u = self.predict(x, t, self.uncond)
            target = u + 5.0 * (target - u)
        return x + dt * target.float()


def train_iteration(s: Setup, student, opt, state, reencode: bool):
    """One iteration: the teacher's conditioning (reference: T5-XXL + CLIP encode again; ours, as
    train.distill.distill_trajectory with update: step: the cached embeddings, T5-XXL/CLIP off the device),
    teacher forward, student + transformer forward/backward, clip, AdamW, one Euler step of the trajectory."""
    x, i = state
    t = 1.0 - (i % 20) / 20
    with torch.no_grad(), s.amp():
        tcond = s.encode(s.ids, s.clip_ids) if reencode else s.cached
        with s.flash():
            target = s.predict(x, t, tcond)
    with s.amp():
        seq = student(s.ids)[0]  # outside the flash-only context: T5's position bias is an attention mask
        with s.flash():
            loss = F.mse_loss(s.predict(x, t, s.student_cond(seq, tcond)).float(), target.float())
    with s.flash():
        loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    state[0], state[1] = s.sampler_step(x, t, -1 / 20, target), i + 1


def to_torchao_float8(transformer: torch.nn.Module) -> None:
    """The comparison rows: torchao's float8 training linears (rowwise recipe), in place, on the layers
    teacher.fp8 converts too. ImportError without torchao."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    from train.fp8 import fits_float8_gemm

    convert_to_float8_training(transformer, config=Float8LinearConfig.from_recipe_name("rowwise"),
                               module_filter_fn=lambda module, _name: fits_float8_gemm(module))


def timed(fn, iters: int, warmup: int, cuda: bool) -> float:
    """Median ms of fn() over iters calls after warmup calls (synchronised on CUDA)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def run_train(name: str, s: Setup, args) -> dict:
    ref, ckpt = name.startswith("reference"), "+ckpt" in name
    if ref and s.t5 is None:
        return {"status": "skipped", "note": "T5-XXL already freed"}
    if "+compile" in name and not (s.cuda or args.compile):
        return {"status": "skipped", "note": "CPU: pass --compile to include torch.compile"}
    if "+fp8-torchao" in name:  # for comparison: float8 training linears (bf16 weights, grad-weight GEMM)
        try:
            to_torchao_float8(s.transformer)
        except ImportError:
            return {"status": "skipped", "note": "torchao not importable"}
    elif "+fp8" in name:
        from train.fp8 import transformer_to_fp8  # the trainer's own teacher.fp8 conversion

        transformer_to_fp8(s.transformer)
    s.transformer.enable_gradient_checkpointing() if ckpt else s.transformer.disable_gradient_checkpointing()
    torch.manual_seed(0)
    student = make_student(s.student_shape, s.width, s.device)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, fused=s.cuda and not ref)  # ours: as train/distill.py
    blocks = []
    if "+compile" in name:  # as the trainer does with student.compile and teacher.compile
        from train.teachers.base import compile_transformer_blocks

        student.compile()
        blocks = compile_transformer_blocks(s.transformer)
    state = [s.x0, 0]
    step = lambda: train_iteration(s, student, opt, state, reencode=ref)  # noqa: E731
    try:
        if s.cuda:
            torch.cuda.reset_peak_memory_stats()
        ms = timed(step, args.iters, args.warmup, s.cuda)
    finally:
        for block in blocks:  # eager again for the rows after this one (Module.compile has no public undo)
            block._compiled_call_impl = None
    return {"status": "ok", "ms_per_iter": round(ms, 2), "peak_mem_gib": gib(torch.cuda.max_memory_allocated()) if s.cuda else None}


def run_encode(name: str, model, s: Setup, args) -> dict:
    """Batch 1 x 512 tokens, inference: median ms, weights and activation peak above the resident models."""
    ids = torch.randint(3, 400 if args.scale.startswith("tiny") else 32128, (1, 512), device=s.device)
    if name.endswith("compiled"):
        if not (s.cuda or args.compile):
            return {"status": "skipped", "note": "CPU: pass --compile"}
        model = torch.compile(model, mode=args.compile_mode if s.cuda else None)
    base = torch.cuda.memory_allocated() if s.cuda else 0
    if s.cuda:
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        ms = timed(lambda: model(input_ids=ids)[0], args.iters * 3, args.warmup + (3 if "compiled" in name else 0), s.cuda)
    return {"status": "ok", "ms": round(ms, 3), "weights_gib": gib(sum(p.numel() * p.element_size() for p in model.parameters())),
            "act_peak_gib": gib(torch.cuda.max_memory_allocated() - base) if s.cuda else None}


def guarded(fn, *a) -> dict:
    """Run one configuration; out of memory -> 'OOM', another failure -> 'error', and go on."""
    try:
        return fn(*a)
    except torch.OutOfMemoryError:
        return {"status": "OOM"}
    except Exception as exc:  # a compile or fp8 failure must not lose the other rows
        if "out of memory" in str(exc).lower():  # OOM wrapped by dynamo/inductor
            return {"status": "OOM"}
        traceback.print_exc()
        return {"status": "error", "note": f"{type(exc).__name__}: {exc}"[:300]}
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        torch._dynamo.reset()


def ratios(train: dict) -> dict:
    """Each ours row against the published loop shape (reference) and against reference+ckpt."""
    out = {}
    for name, r in train.items():
        if not name.startswith("ours") or r["status"] != "ok":
            continue
        out[name] = {}
        for base in ("reference", "reference+ckpt"):
            b = train.get(base, {})
            ok = b.get("status") == "ok"
            mem = r["peak_mem_gib"] / b["peak_mem_gib"] if ok and r["peak_mem_gib"] and b["peak_mem_gib"] else None
            out[name][base] = {"time": round(r["ms_per_iter"] / b["ms_per_iter"], 3) if ok else None,
                               "memory": mem and round(mem, 3)}
    return out


def fmt(v, spec=".1f") -> str:
    return "n/a" if v is None else format(v, spec)


def report(res: dict) -> None:
    print(f"\ntrain iteration  scale={res['scale']}  device={res['device_name']}  batch={res['batch']}  "
          f"resolution={res['resolution']}  tokens={res['tokens']}  torch {res['torch']}  cuda {res['cuda']}")
    print("params (M): " + ", ".join(f"{k} {v / 1e6:.4g}" for k, v in res["params"].items()))
    print(f"{'':<47}{'vs reference':>16}{'vs reference+ckpt':>20}")
    print(f"{'config':<18}{'status':<9}{'ms/iter':>10}{'peak GiB':>10}{'time':>8}{'memory':>8}{'time':>10}{'memory':>10}")
    for name, r in res["train"].items():
        q = res["ratios"].get(name, {})
        line = f"{name:<18}{r['status']:<9}{fmt(r.get('ms_per_iter')):>10}{fmt(r.get('peak_mem_gib'), '.2f'):>10}"
        if q:
            a, b = q["reference"], q["reference+ckpt"]
            line += f"{fmt(a['time'], '.3f'):>8}{fmt(a['memory'], '.3f'):>8}{fmt(b['time'], '.3f'):>10}{fmt(b['memory'], '.3f'):>10}"
        print(line + (f"  ({r['note']})" if r.get("note") else ""))
    print(f"\nencode, batch 1 x 512 tokens{'':<4}{'status':<9}{'ms':>10}{'weights GiB':>13}{'act GiB':>9}")
    for name, r in res["encode"].items():
        print(f"{name:<32}{r['status']:<9}{fmt(r.get('ms'), '.3f'):>10}{fmt(r.get('weights_gib'), '.3f'):>13}"
              f"{fmt(r.get('act_peak_gib'), '.3f'):>9}" + (f"  ({r['note']})" if r.get("note") else ""))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=list(SCALES), default="tiny")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--resolution", type=int, default=None, help="pixels (default 512; tiny: 64)")
    p.add_argument("--tokens", type=int, default=77)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    p.add_argument("--compile", action="store_true", help="run the torch.compile rows on CPU too")
    p.add_argument("--compile-mode", default="reduce-overhead", help="encode compile mode (e.g. max-autotune)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    wanted = [c for c in CONFIGS if c in args.configs.split(",")]  # fixed order: fp8 quantises in place, last
    s = Setup(args, device)
    res = {"scale": args.scale, "device": device.type, "batch": args.batch, "resolution": s.resolution, "tokens": args.tokens,
           "iters": args.iters, "warmup": args.warmup, "torch": torch.__version__, "cuda": torch.version.cuda, "params": s.params,
           "device_name": torch.cuda.get_device_name(device) if s.cuda else "cpu", "train": {}, "ratios": {}, "encode": {}}

    def save(section: str, name: str, row: dict) -> None:
        res[section][name] = row
        res["ratios"] = ratios(res["train"])
        print(f"[{section}] {name}: {row}", file=sys.stderr, flush=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(res, indent=2) + "\n")

    save("encode", "t5_xxl eager", guarded(run_encode, "t5_xxl eager", s.t5, s, args))
    dtype = torch.bfloat16 if s.cuda else torch.float32
    enc = make_student(s.student_shape, s.width, device, dtype).eval()
    res["params"]["student"] = sum(p.numel() for p in enc.parameters())
    for name in ("student eager", "student compiled"):
        save("encode", name, guarded(run_encode, name, enc, s, args))
    del enc
    for name in [c for c in wanted if c.startswith("reference")]:
        save("train", name, guarded(run_train, name, s, args))
    s.t5, s.clips = None, []  # ours reads cached embeddings: the text encoders leave the device
    gc.collect()
    if s.cuda:
        torch.cuda.empty_cache()
    for name in [c for c in wanted if c.startswith("ours")]:
        save("train", name, guarded(run_train, name, s, args))
    report(res)
    return res


if __name__ == "__main__":
    main()
