"""Small builders and probes shared by several test modules (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest


def save_tiny_clip(folder: Path, embed_dim: int, patch_size: int, image_size: int = 32) -> str:
    """A random one-layer open_clip model saved as a `local-dir:` folder (fixed seed, RNG restored)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    cfg = {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": 1, "width": 32, "head_width": 16, "patch_size": patch_size},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    with torch.random.fork_rng():
        torch.manual_seed(0)
        save_file(open_clip.CLIP(**cfg).state_dict(), str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {"size": image_size}}))
    return f"local-dir:{folder}"


def count_calls(obj: Any, method: str) -> list[int]:
    """Wrap obj.method so each call appends the length of its first argument to the returned list."""
    calls: list[int] = []
    real = getattr(obj, method)
    setattr(obj, method, lambda items, *a, **kw: (calls.append(len(items)), real(items, *a, **kw))[1])
    return calls


def cpu_float8() -> bool:
    """Whether this torch runs teacher.fp8's row-scaled float8 GEMMs on the CPU (2.14 does, 2.11 does not)."""
    import torch

    from train.fp8 import check_float8_support

    try:
        check_float8_support(torch.device("cpu"))
    except ValueError:
        return False
    return True


needs_cpu_float8 = pytest.mark.skipif(
    not cpu_float8(), reason="this torch has no row-scaled float8 matmul on the CPU (torch 2.14 has)")

# torch.compile on the CPU (inductor) builds C++: a machine without a compiler cannot run those tests
needs_cpp_compiler = pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                                        reason="torch.compile on the CPU needs a C++ compiler")


def published_keys(num_layers: int) -> set[str]:
    """The published DistillT5 key set, written out by hand (not derived from our model)."""
    keys = {"encoder.shared.weight", "encoder.encoder.final_layer_norm.weight",
            "final_projection.0.weight", "final_projection.3.weight",
            "encoder.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"}
    for i in range(num_layers):
        b = f"encoder.encoder.block.{i}.layer"
        keys |= {f"{b}.0.SelfAttention.{w}.weight" for w in "qkvo"}
        keys |= {f"{b}.0.layer_norm.weight", f"{b}.1.layer_norm.weight"}
        keys |= {f"{b}.1.DenseReluDense.{w}.weight" for w in ("wi_0", "wi_1", "wo")}
    return keys
