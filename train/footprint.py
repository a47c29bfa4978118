"""What a text encoder costs to serve: parameters, bytes on disk, encode latency and peak memory.

Shared by the series' scaling report (train/series.py) and bench/student_sizes.py, so both measure alike:
one prompt (batch 1) padded to the length the pipeline uses, a median over repeats after warm-up, in
inference mode. Peak memory is the weights' bytes plus what an encode adds on top: on a GPU
torch.cuda's allocator peak, on a CPU the process's peak resident memory during the encodes above where
it stood before them (Linux: the peak is reset through /proc/self/clear_refs; elsewhere not measured).
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

MIB = 2**20


def t5_encoder_parameters(config: dict[str, Any]) -> int:
    """Parameters of a transformers T5EncoderModel with these config fields (its shared embedding counted once)."""
    d, inner = config["d_model"], config["num_heads"] * config["d_kv"]
    ff_mats = 3 if str(config.get("feed_forward_proj", "relu")).startswith("gated") else 2
    per_layer = 4 * d * inner + ff_mats * d * config["d_ff"] + 2 * d  # attention, feed-forward, two layer norms
    relative_bias = config.get("relative_attention_num_buckets", 32) * config["num_heads"]  # first layer only
    return config["vocab_size"] * d + config["num_layers"] * per_layer + relative_bias + d


def head_parameters(d_model: int, width: int) -> int:
    """The DistillT5 projection head: Linear d -> D and Linear D -> D, no biases."""
    return d_model * width + width * width


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weights_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def human_bytes(n: float) -> str:
    """1536 -> "1.5 KiB"."""
    if n < 1024:
        return f"{n:,.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:,.1f} {unit}"


def folder_bytes(folder: str | Path, pattern: str = "*.safetensors") -> int:
    """Bytes of a folder's weight files (what a user downloads or ships)."""
    return sum(p.stat().st_size for p in Path(folder).glob(pattern))


# ---- resident memory on Linux -----------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        found = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(found.group(1)) if found else None


def _reset_peak_rss() -> bool:
    """Make the process's peak resident set (VmHWM) its current one; False where that is not possible.
    Memory freed but kept by malloc is handed back first, so the warm-up's leftovers do not count as the
    baseline (they would hide what an encode takes)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """Bytes an encode adds at its peak, over the block: CUDA's allocator peak, or peak RSS on Linux."""

    def __init__(self, device: torch.device):
        self.device, self.added = device, None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.start = _status_kib("VmRSS") if _reset_peak_rss() else None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.added = torch.cuda.max_memory_allocated(self.device) - self.start
        elif self.start is not None and (peak := _status_kib("VmHWM")) is not None:
            self.added = max(0, peak - self.start) * 1024


# ---- latency and peak memory ------------------------------------------------------------------------


def encode_footprint(encoder: torch.nn.Module, lengths: Sequence[int], vocab_size: int, compiled: bool = False,
                     repeats: int = 5, batch_size: int = 1) -> dict[str, Any]:
    """Encode latency (median ms) and peak memory (MiB: weights + what the encode adds) at each token
    length, on the encoder's own device and dtype. compiled: torch.compile'd first; `compile_s` is the
    time the first call of each length took (the compile itself; after the first length, dynamo may
    compile a dynamic-shape graph, which the bench measured as fast as one per length)."""
    encoder.eval()  # dropout off: what serving runs
    device = next(encoder.parameters()).device
    model = torch.compile(encoder) if compiled else encoder
    weights = weights_bytes(encoder)
    generator = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {"device": device.type, "dtype": str(next(encoder.parameters()).dtype).removeprefix("torch."),
                           "compiled": compiled, "threads": torch.get_num_threads() if device.type == "cpu" else None,
                           "weights_mib": round(weights / MIB, 3), "lengths": {}}
    compile_s = 0.0
    with torch.inference_mode():
        for length in lengths:
            ids = torch.randint(0, vocab_size, (batch_size, length), generator=generator).to(device)
            started = time.perf_counter()
            _sync(model(input_ids=ids), device)  # warm-up (and the compile, for this shape)
            compile_s += time.perf_counter() - started
            times = []
            with PeakMemory(device) as peak:
                for _ in range(repeats):
                    started = time.perf_counter()
                    _sync(model(input_ids=ids), device)
                    times.append((time.perf_counter() - started) * 1000)
            out["lengths"][str(length)] = {
                "ms": round(statistics.median(times), 2),
                "peak_mib": None if peak.added is None else round((weights + peak.added) / MIB, 3)}
    if compiled:
        out["compile_s"] = round(compile_s, 1)
    return out


def _sync(outputs: Any, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
