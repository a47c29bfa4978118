"""Shipped student presets: flan-T5 and T5-v1.1 encoders at small, base and large, and T5-v1.1-XXL (the
teacher's own encoder, for comparison only).

A preset names an architecture (the T5 fields of its published config.json) and the hub weights that
go with it. `student.preset` in a training recipe selects one: the student gets that encoder and the
published DistillT5 head sized from its width (d_model -> teacher width -> teacher width). flan-T5 and
T5-v1.1 of one size share the architecture; they differ in weights (flan-T5 was instruction-tuned from
the LM-adapted T5-v1.1). Both read the teacher's T5-XXL token ids: one SentencePiece vocabulary.

Kept free of torch at import: `train.config` reads PRESETS to check a recipe in a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError

# What every T5-v1.1 / flan-T5 config.json shares.
_V11 = {"d_kv": 64, "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6, "vocab_size": 32128}
SIZES = {
    "small": {"d_model": 512, "d_ff": 1024, "num_heads": 6, "num_layers": 8},
    "base": {"d_model": 768, "d_ff": 2048, "num_heads": 12, "num_layers": 12},
    "large": {"d_model": 1024, "d_ff": 2816, "num_heads": 16, "num_layers": 24},
    "xxl": {"d_model": 4096, "d_ff": 10240, "num_heads": 64, "num_layers": 24},
}


@dataclass(frozen=True)
class StudentPreset:
    name: str
    hub_id: str      # the pretrained weights student.init takes from the hub
    size: str        # small / base / large / xxl
    student: bool = True  # False: a reference row (T5-XXL), not something to distil into

    @property
    def config(self) -> dict[str, Any]:
        """The T5Config fields of the published config.json (the encoder's; the decoder's are not used)."""
        return {**_V11, **SIZES[self.size]}


PRESETS: dict[str, StudentPreset] = {
    p.name: p for p in (
        StudentPreset("flan-t5-small", "google/flan-t5-small", "small"),
        StudentPreset("flan-t5-base", "google/flan-t5-base", "base"),
        StudentPreset("flan-t5-large", "google/flan-t5-large", "large"),
        StudentPreset("t5-v1_1-small", "google/t5-v1_1-small", "small"),
        StudentPreset("t5-v1_1-base", "google/t5-v1_1-base", "base"),
        StudentPreset("t5-v1_1-large", "google/t5-v1_1-large", "large"),
        StudentPreset("t5-v1_1-xxl", "google/t5-v1_1-xxl", "xxl", student=False),
    )
}
STUDENT_PRESETS = tuple(name for name, p in PRESETS.items() if p.student)


def apply_preset(student: dict[str, Any]) -> None:
    """Resolve `student.preset` in a recipe's student section, in place.

    init "config"      -> a randomly initialised encoder of the preset's architecture (student.config
                          fields still override it): offline runs, benchmarks, tests
    init a local folder -> kept (your own copy of the weights, or a student to train further), and its
                          config.json must have the preset's shape
    anything else      -> init becomes the preset's hub weights
    """
    name = student.get("preset")
    if not name:
        return
    preset = PRESETS[name]
    init = student["init"]
    if init == "config":
        student["config"] = {**preset.config, **student["config"]}
    elif Path(init).is_dir():
        _check_folder_shape(Path(init), preset)
    else:
        student["init"] = preset.hub_id


def _check_folder_shape(folder: Path, preset: StudentPreset) -> None:
    import json

    try:
        found = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # not readable here: the student loader reports it, naming the file
    if not isinstance(found, dict):
        return
    wrong = {k: found.get(k) for k in SIZES["base"] if found.get(k) != preset.config[k]}
    if wrong:
        raise ConfigError(f"student.init {folder} is not a {preset.name} ({', '.join(f'{k}={v}' for k, v in wrong.items())}; "
                          f"{preset.name} has {', '.join(f'{k}={preset.config[k]}' for k in wrong)}); drop student.preset "
                          "or point student.init at a matching folder")


def head_shape(d_model: int, teacher_width: int = 4096) -> str:
    """The published DistillT5 head for an encoder width, in words."""
    return f"{d_model}->{teacher_width}->{teacher_width}"


def preset_table() -> str:
    """Every preset with its architecture and parameter counts (encoder / head at the FLUX-SD3 width of 4096)."""
    from train.footprint import head_parameters, t5_encoder_parameters

    header = ("preset", "hub weights", "layers", "d_model", "d_ff", "heads", "encoder", "head (->4096)", "")
    rows = [header]
    for p in PRESETS.values():
        c = p.config
        rows.append((p.name, p.hub_id, str(c["num_layers"]), str(c["d_model"]), str(c["d_ff"]), str(c["num_heads"]),
                     f"{t5_encoder_parameters(c) / 1e6:,.1f} M",
                     f"{head_parameters(c['d_model'], 4096) / 1e6:,.1f} M" if p.student else "-",
                     "" if p.student else "(the teacher's T5; reference only)"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
