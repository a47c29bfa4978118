"""teacher.fp8's frozen float8 linears against bf16 and torchao's float8 training linears, on a slice of
FLUX.1-dev at full width (random weights), on CUDA or on a CPU whose torch has row-scaled float8 GEMMs
(2.14 does): weight memory, bytes kept for backward in the student's path (gradient to the text input
only), and how far output and text gradient move from bf16.

One transformer is built, run in bf16, converted to torchao's Float8Linear (if installed) and run, then
converted to train.fp8.Float8FrozenLinear and run, so all rows share weights and inputs. Speed is not
measured here (CPU float8 GEMMs are emulated): bench/train_step.py times the rows on the GPU.

    python bench/fp8_linears.py                                  # 1 double + 2 single blocks, 256 px, CPU
    python bench/fp8_linears.py --double 2 --single 4 --resolution 512 --device cuda
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from train_step import FLUX_DEV, build, to_torchao_float8  # noqa: E402


def measure(transformer: torch.nn.Module, inputs: dict, text: torch.Tensor) -> dict:
    """One forward + backward to the text input: weight bytes, bytes saved for backward, output, gradient."""
    resident = list(transformer.parameters()) + list(transformer.buffers())
    weights = {t.untyped_storage().data_ptr() for t in resident}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    text = text.detach().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = transformer(encoder_hidden_states=text, **inputs)[0]
    out.float().square().mean().backward()
    return {"weights_mib": sum(t.numel() * t.element_size() for t in resident) / 2**20,
            "saved_mib": sum(saved.values()) / 2**20, "out": out.detach().float(), "grad": text.grad.float()}


def main(argv: list[str] | None = None) -> dict:
    from diffusers import FluxTransformer2DModel

    from train.fp8 import transformer_to_fp8

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--double", type=int, default=1, help="double-stream blocks (FLUX.1-dev: 19)")
    p.add_argument("--single", type=int, default=2, help="single-stream blocks (FLUX.1-dev: 38)")
    p.add_argument("--width", type=int, default=24, help="attention heads of 128 (FLUX.1-dev: 24)")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--tokens", type=int, default=77)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    device, side = torch.device(args.device), args.resolution // 16
    config = dict(FLUX_DEV, num_layers=args.double, num_single_layers=args.single, num_attention_heads=args.width)
    torch.manual_seed(0)
    transformer = build(FluxTransformer2DModel, config, device, torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    bf16 = dict(dtype=torch.bfloat16, device=device)
    inputs = dict(hidden_states=torch.randn(1, side * side, 64, generator=gen).to(**bf16),
                  pooled_projections=torch.randn(1, 768, generator=gen).to(**bf16),
                  timestep=torch.full((1,), 0.5, **bf16), guidance=torch.full((1,), 3.5, device=device),
                  txt_ids=torch.zeros(args.tokens, 3, **bf16),
                  img_ids=torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).to(**bf16),
                  return_dict=False)
    text = torch.randn(1, args.tokens, 4096, generator=gen).to(**bf16)

    rows_out = {"bf16": measure(transformer, inputs, text)}
    if importlib.util.find_spec("torchao") is not None:
        to_torchao_float8(transformer)
        rows_out["torchao float8"] = measure(transformer, inputs, text)
    swapped = transformer_to_fp8(transformer)
    rows_out["train.fp8"] = measure(transformer, inputs, text)

    base = rows_out["bf16"]
    print(f"FLUX.1-dev slice: {args.double} double + {args.single} single blocks, {args.width * 128} wide, "
          f"{side * side} image + {args.tokens} text tokens, {device.type}; {swapped} linears in float8")
    print(f"{'linears':<16}{'weights MiB':>12}{'saved MiB':>11}{'out rel err':>13}{'grad cosine':>13}")
    report = {}
    for name, r in rows_out.items():
        err = float((r["out"] - base["out"]).norm() / base["out"].norm())
        cos = float(torch.nn.functional.cosine_similarity(r["grad"].flatten(), base["grad"].flatten(), dim=0))
        report[name] = {"weights_mib": round(r["weights_mib"], 1), "saved_mib": round(r["saved_mib"], 1),
                        "out_rel_err": round(err, 4), "grad_cosine": round(cos, 4)}
        print(f"{name:<16}{r['weights_mib']:>12.1f}{r['saved_mib']:>11.1f}{err:>13.4f}{cos:>13.4f}")
    return report


if __name__ == "__main__":
    main()
