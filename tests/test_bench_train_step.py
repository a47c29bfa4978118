"""bench/train_step.py and bench/fp8_linears.py at tiny scale on CPU: both loop shapes run, the JSON holds
times and ratios; the float8 comparison holds its memory claims. bench/distill_efficiency.py gives ours and
the reference the same compute."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from shared_helpers import cpu_float8, needs_cpp_compiler, needs_cpu_float8

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench(name: str):
    """A bench/ script as a module (bench/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_bench("train_step")


@pytest.mark.parametrize("scale, configs", [("tiny", None), ("tiny-sd3", "reference,ours")])
def test_tiny_cpu_run_writes_both_configurations(bench, tmp_path, capsys, scale, configs):
    out = tmp_path / "bench.json"
    argv = ["--scale", scale, "--device", "cpu", "--iters", "2", "--warmup", "1", "--batch", "2", "--json", str(out)]
    bench.main(argv + (["--configs", configs] if configs else []))
    res = json.loads(out.read_text())
    assert res["scale"] == scale and res["device"] == "cpu"
    for name in ("reference", "ours"):
        row = res["train"][name]
        assert row["status"] == "ok", row
        assert row["ms_per_iter"] > 0
        assert "peak_mem_gib" in row  # None on CPU
    ratio = res["ratios"]["ours"]["reference"]
    assert ratio["time"] > 0 and "memory" in ratio
    assert res["encode"]["student eager"]["ms"] > 0 and res["encode"]["t5_xxl eager"]["ms"] > 0
    if configs is None:  # CPU skips what needs CUDA or --compile, with a reason
        assert res["train"]["ours+ckpt"]["status"] == "ok" and res["ratios"]["ours+ckpt"]["reference+ckpt"]["time"] > 0
        for name in ("ours+fp8", "ours+fp8+ckpt"):  # train.fp8's float8 linears run on CPU too (torch 2.14+)
            assert res["train"][name]["status"] == ("ok" if cpu_float8() else "error"), res["train"][name]
        assert res["train"]["ours+compile"]["status"] == res["train"]["ours+fp8+compile"]["status"] == "skipped"
        # the torchao comparison row runs where torchao is installed (the device script carries it)
        if importlib.util.find_spec("torchao") is None:
            assert res["train"]["ours+fp8-torchao"]["status"] == "skipped"
    assert "ours" in capsys.readouterr().out  # the table


@needs_cpp_compiler
def test_compile_row_leaves_the_transformer_eager_for_the_next_rows(bench):
    """ours+compile compiles the transformer's blocks in place; the fp8 rows after it must run eager."""
    args = bench.argparse.Namespace(scale="tiny", batch=2, resolution=None, tokens=16, iters=1, warmup=1, compile=True)
    setup = bench.Setup(args, torch.device("cpu"))
    try:
        assert bench.run_train("ours+compile", setup, args)["status"] == "ok"
    finally:
        torch._dynamo.reset()
    blocks = [*setup.transformer.transformer_blocks, *setup.transformer.single_transformer_blocks]
    assert blocks and all(block._compiled_call_impl is None for block in blocks)


def test_out_of_memory_is_reported_not_raised(bench):
    def oom():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    def wrapped():
        raise RuntimeError("backend compiler failed: CUDA out of memory")

    assert bench.guarded(oom) == {"status": "OOM"}
    assert bench.guarded(wrapped) == {"status": "OOM"}
    assert bench.guarded(lambda: 1 / 0)["status"] == "error"


@needs_cpu_float8
def test_fp8_linears_halve_the_weights_and_keep_no_more_for_backward(capsys):
    report = load_bench("fp8_linears").main(["--double", "1", "--single", "1", "--width", "1", "--resolution", "64", "--tokens", "16"])
    ours, bf16 = report["train.fp8"], report["bf16"]
    assert ours["weights_mib"] < 0.6 * bf16["weights_mib"]  # e4m3 + a scale per row, against bf16
    assert ours["saved_mib"] <= bf16["saved_mib"]  # no input kept for a weight gradient
    assert ours["grad_cosine"] > 0.95 and 0 < ours["out_rel_err"] < 0.2
    if "torchao float8" in report:  # float8 training linears keep their inputs for the weight gradient
        assert report["torchao float8"]["saved_mib"] > bf16["saved_mib"]
    assert "train.fp8" in capsys.readouterr().out


def test_equal_compute_harness_gives_both_loops_the_same_prompt_passes(tmp_path, capsys):
    bench = load_bench("distill_efficiency")
    out, again = tmp_path / "eq.json", tmp_path / "again.json"
    argv = ["--teachers", "tiny:sd3", "--seeds", "0", "--budgets", "64,128", "--threads", "1"]
    bench.main(argv + ["--ref-lrs", "1e-3,1e-2", "--json", str(out)])
    table = capsys.readouterr().out
    (run,) = json.loads(out.read_text())["results"]
    for budget in ("64", "128"):
        ours = run["ours"][budget]
        assert ours["passes"] == int(budget) and ours["curve"][-1][0] == int(budget)
        assert 0 < ours["gap"] < 1.5 and ours["seconds"] > 0
    for ref in run["reference"]:  # a gap measured at every budget, after exactly that many passes
        assert {int(budget) for budget, _, _ in ref["curve"]} >= {64, 128}
        assert all(later[1] >= earlier[1] for earlier, later in zip(ref["curve"], ref["curve"][1:]))  # seconds grow
    assert "ours / ref" in table and "reference lr 0.01" in table
    # the reference does not depend on ours' recipe: a second run reuses its curves instead of training it again
    bench.main(argv + ["--ref-lrs", "", "--reference", str(out), "--set", "optim.lr=1e-3", "--json", str(again)])
    (rerun,) = json.loads(again.read_text())["results"]
    assert rerun["reference"] == run["reference"] and rerun["ours"]["64"]["gap"] != run["ours"]["64"]["gap"]
