"""The frozen transformer's linears in float8 (`teacher.fp8: true`).

Distillation never updates the transformer, so a linear here needs only two things: its output, and the
gradient with respect to its input (on the way back to the student's text embeddings). Float8 *training*
linears (torchao's Float8Linear) serve layers that learn: they keep the bf16 weight, re-cast it every call,
save the input for a weight gradient, and compute that gradient (a third GEMM) even when the weight is
frozen. `Float8FrozenLinear` does only what a frozen layer needs:

- the weight is stored once in float8 e4m3 with one scale per output row: half the bf16 weight memory
  (FLUX.1-dev's 12 B transformer: about 11 GiB less);
- forward: the input is scaled per row to e4m3 and multiplied on the tensor cores (`torch._scaled_mm`);
- backward: the input gradient only, also in float8: grad_out times the weight's row scales, scaled per
  row to e4m3, against the stored weight transposed for the call (Hopper's float8 GEMM reads both operands
  along the contracted dimension), with full accumulation. Nothing is saved from the forward but the
  stored weight.

Each cast is three passes over the tensor (max-abs, scale, cast), so use it with `teacher.compile`, which
fuses them with their neighbours: on an H100 at FLUX.1-dev size (`bench/train_step.py`) an iteration took
988 ms eager against 596 ms in bf16, and 318 ms compiled against 385 ms compiled bf16.

Row-scaled `torch._scaled_mm` needs a GPU with float8 tensor cores (compute capability 8.9+: H100, L40S,
RTX 4090) or, on the CPU, a recent torch (2.14 has it, 2.11 does not; slow: what the tests use). The
conversion checks first and says so.
"""

from __future__ import annotations

import math

import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows x k) -> float8 e4m3 values and the float32 (rows x 1) scales that restore them."""
    amax = torch.linalg.vector_norm(x, ord=math.inf, dim=-1, keepdim=True, dtype=torch.float32)
    # bf16 keeps the passes at 2 bytes (its largest product, 450, still casts to 448); fp16 would overflow
    dtype = torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32
    inverse = (E4M3_MAX / amax.clamp(min=1e-30)).to(dtype)
    return (x.to(dtype) * inverse).to(E4M3), inverse.float().reciprocal()


class _FrozenFloat8Matmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        ctx.save_for_backward(weight, scale)  # the layer's own buffers: nothing new is kept alive
        ctx.in_dtype = x.dtype
        xq, x_scale = quantize_rows(x.reshape(-1, x.shape[-1]).contiguous())
        # row-scaled GEMM with fast accumulation, as torchao's forward; on CUDA it writes bf16 (the only
        # output every torch version's row-scaled path has)
        out = torch._scaled_mm(xq, weight.t(), scale_a=x_scale, scale_b=scale, use_fast_accum=True,
                               out_dtype=torch.bfloat16 if x.is_cuda else out_dtype)
        return out.to(out_dtype).reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        weight, scale = ctx.saved_tensors
        # grad_x = grad_out @ (scale.T * weight): the row scales sit on the contracted dimension, so they go
        # into grad_out (in float32) before its own per-row cast
        grad = grad_out.reshape(-1, grad_out.shape[-1]).contiguous()
        gq, g_scale = quantize_rows(grad * scale)
        # unit-scaled GEMM, then the row scales by hand: the row-scaled kernel is slow without fast
        # accumulation (torchao does the same), and gradients keep full accumulation
        unit = torch.ones((), dtype=torch.float32, device=grad.device)
        mm_dtype = torch.bfloat16 if grad.dtype == torch.bfloat16 else torch.float32  # unscaled sums overflow fp16
        grad_x = torch._scaled_mm(gq, weight.t().contiguous().t(), scale_a=unit, scale_b=unit, out_dtype=mm_dtype)
        grad_x = grad_x.mul_(g_scale).to(ctx.in_dtype)
        return grad_x.reshape(*grad_out.shape[:-1], weight.shape[1]), None, None, None


class Float8FrozenLinear(torch.nn.Module):
    """A frozen `nn.Linear` whose weight is stored in float8 with per-output-row scales (see the module
    docstring). Output dtype: the autocast dtype under autocast, else the input's."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = quantize_rows(linear.weight.detach())
        # kept as raw bytes: a later module.to(dtype) casts floating buffers, and float8 counts as floating
        self.register_buffer("weight_bits", weight.view(torch.uint8))
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1 x out), as _scaled_mm takes it
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach(), requires_grad=False)

    @property
    def weight_fp8(self) -> torch.Tensor:
        return self.weight_bits.view(E4M3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            out_dtype = torch.get_autocast_dtype(x.device.type)
        else:
            out_dtype = x.dtype
        out = _FrozenFloat8Matmul.apply(x, self.weight_fp8, self.weight_scale.float(), out_dtype)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight_fp8.float() * self.weight_scale.float().t()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, float8 e4m3"


def check_float8_support(device: torch.device) -> None:
    """Run both of the layer's float8 GEMMs on a tiny input on `device`; a clear error where torch or the
    device lacks them."""
    probe = Float8FrozenLinear(torch.nn.Linear(16, 16, device=device).requires_grad_(False))
    x = torch.ones(16, 16, device=device, requires_grad=True)
    try:
        probe(x).sum().backward()
    except RuntimeError as exc:
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        raise ValueError(f"teacher.fp8: torch {torch.__version__} has no row-scaled float8 matmul on {where} (GPUs "
                         f"need compute capability 8.9+: H100, L40S, RTX 4090); set teacher.fp8: false. "
                         f"torch said: {str(exc).strip().splitlines()[0][:200]}") from exc


def fits_float8_gemm(linear: torch.nn.Linear) -> bool:
    """Whether the float8 GEMM takes this layer's sizes (both multiples of 16)."""
    return linear.in_features % 16 == 0 and linear.out_features % 16 == 0


def transformer_to_fp8(transformer: torch.nn.Module) -> int:
    """Swap a frozen transformer's linears for `Float8FrozenLinear`, in place, one at a time: nothing else
    holds the old layer, so its bf16 weight is freed before the next is converted. Layers whose sizes are
    not multiples of 16 (the GEMM's requirement) stay as they are. Returns the number swapped."""
    if any(p.requires_grad for p in transformer.parameters()):
        raise ValueError("transformer_to_fp8 is for a frozen transformer: its weights would no longer train")
    check_float8_support(next(transformer.parameters()).device)
    names = [name for name, m in transformer.named_modules() if isinstance(m, torch.nn.Linear) and fits_float8_gemm(m)]
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = transformer.get_submodule(parent)
        setattr(owner, child, Float8FrozenLinear(getattr(owner, child)))
    return len(names)
