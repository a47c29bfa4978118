"""train.fp8: frozen linears stored in float8, with a gradient for the input only."""

from __future__ import annotations

import weakref

import pytest
import torch
from shared_helpers import needs_cpu_float8

import train.fp8
from train.fp8 import E4M3, Float8FrozenLinear, quantize_rows, transformer_to_fp8

pytestmark = needs_cpu_float8


def frozen_linear(k: int = 64, n: int = 48, bias: bool = True) -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(k, n, bias=bias).requires_grad_(False)


def test_forward_is_the_product_of_the_rowwise_quantised_input_and_weight():
    linear = frozen_linear()
    layer = Float8FrozenLinear(linear)
    x = torch.randn(2, 5, 64)
    xq, x_scale = quantize_rows(x.reshape(-1, 64))
    expected = (xq.float() * x_scale) @ layer.dequantized_weight().t() + linear.bias
    out = layer(x)
    assert out.shape == (2, 5, 48) and out.dtype == torch.float32
    assert torch.allclose(out.reshape(-1, 48), expected, rtol=1e-5, atol=1e-5)
    assert (out - linear(x)).norm() < 0.06 * linear(x).norm()  # e4m3: about 2 significant digits
    assert layer.weight_fp8.dtype == E4M3 and layer.weight_fp8.shape == (48, 64)  # 1 byte a weight
    # a later cast of the whole model (float8 counts as floating) leaves the stored weight alone
    layer.to(torch.bfloat16)
    assert layer.weight_fp8.dtype == E4M3 and (layer(x.bfloat16()).float() - out).norm() < 0.05 * out.norm()


def test_backward_gives_the_input_gradient_of_the_stored_weight_and_keeps_no_activation():
    layer = Float8FrozenLinear(frozen_linear())
    x = torch.randn(3, 7, 64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = layer(x)
    grad = torch.randn_like(out)
    out.backward(grad)
    # float8 too: grad_out times the weight's row scales, cast per row, against the stored e4m3 weight
    gq, g_scale = quantize_rows(grad.reshape(-1, 48) * layer.weight_scale)
    expected = (gq.float() * g_scale) @ layer.weight_fp8.float()
    assert torch.allclose(x.grad.reshape(-1, 64), expected, rtol=1e-5, atol=1e-5)
    exact = grad @ layer.dequantized_weight()
    assert (x.grad - exact).norm() < 0.06 * exact.norm()
    # only the layer's own buffers are kept for backward: no copy of the input, no weight gradient
    buffers = {layer.weight_bits.data_ptr(), layer.weight_scale.data_ptr()}
    assert saved and {t.data_ptr() for t in saved} <= buffers
    assert not any(p.requires_grad for p in layer.parameters())


def test_autocast_output_dtype_and_edge_rows():
    layer = Float8FrozenLinear(frozen_linear(bias=False))
    x = torch.randn(4, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    strided = x.detach().t().contiguous().t()  # a column-major view: the GEMM needs rows, so it is copied
    assert not strided.is_contiguous() and torch.equal(layer(strided), layer(x.detach()))
    # an all-zero row, and a row with one huge value, stay finite
    edge = torch.zeros(2, 64)
    edge[1, 0] = 1e6
    assert torch.isfinite(layer(edge)).all() and layer(edge)[0].abs().max() == 0


def test_transformer_to_fp8_swaps_eligible_frozen_linears_only():
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 10),
                                torch.nn.Sequential(torch.nn.Linear(10, 16)))
    with pytest.raises(ValueError, match="frozen"):
        transformer_to_fp8(model)
    model.requires_grad_(False)
    x = torch.randn(3, 32)
    before = model(x)
    assert transformer_to_fp8(model) == 1  # 64x10 and 10x16 are not multiples of 16
    assert isinstance(model[0], Float8FrozenLinear) and type(model[2]) is torch.nn.Linear
    assert (model(x) - before).norm() < 0.06 * before.norm()


def test_a_device_without_row_scaled_float8_is_refused_before_any_swap(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Linear(32, 32)).requires_grad_(False)

    def unsupported(*args, **kwargs):  # what torch 2.11 says on the CPU
        raise RuntimeError("Now _scaled_mm only supports per-tensor scaling for CPU backend.")

    monkeypatch.setattr(torch, "_scaled_mm", unsupported)
    with pytest.raises(ValueError, match=r"teacher.fp8: torch .* has no row-scaled float8 matmul on cpu.*per-tensor"):
        transformer_to_fp8(model)
    assert type(model[0]) is torch.nn.Linear


def test_tiny_rows_keep_their_precision_and_fp16_inputs_stay_finite():
    # gradients scaled by the weight's row scales can be tiny: they must not be flushed to zero
    for dtype in (torch.float32, torch.bfloat16):
        rows = (torch.randn(4, 64) * 1e-20).to(dtype)
        values, scale = quantize_rows(rows)
        assert (values.float() * scale - rows.float()).norm() < 0.05 * rows.float().norm()
    layer = Float8FrozenLinear(frozen_linear(bias=False))
    x = torch.randn(3, 64) * 1e-3  # 448 / 1e-3 overflows fp16: the scales are computed in float32
    x[1] = 0
    x = x.half().requires_grad_(True)
    out = layer(x)
    out.float().sum().backward()
    assert out.dtype == torch.float16 and torch.isfinite(out).all() and out[1].abs().max() == 0
    assert torch.isfinite(x.grad).all()
    expected = x.detach().float() @ layer.dequantized_weight().t()
    assert (out.float() - expected).norm() < 0.06 * expected.norm()


def test_conversion_frees_each_replaced_layer_before_the_next(monkeypatch):
    model = torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(3)]).requires_grad_(False)
    originals = [weakref.ref(layer) for layer in model]
    alive = []  # originals still referenced while each replacement is built

    class Recording(Float8FrozenLinear):
        def __init__(self, linear):
            super().__init__(linear)
            alive.append(sum(ref() is not None for ref in originals))

    monkeypatch.setattr(train.fp8, "Float8FrozenLinear", Recording)
    assert transformer_to_fp8(model) == 3
    assert alive[-3:] == [3, 2, 1]  # (the first entry is the support probe's layer)
