"""Exporting a trained student (`train export`; finding and loading one is train/runs.py).

The formats are EXPORT_FORMATS at the end: a name, what it writes, and the function that writes it. The
CLI reads that table when it starts, so this module imports nothing heavy at the top: torch, the student
and the teacher registry load inside the functions that use them.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError
from core.fileio import staging_path, swap_into_place
from train.runs import load_student_dir, resolve_student_dir

if TYPE_CHECKING:
    from train.student import DistillT5EncoderModel

COMFY_T5_BASE = {"d_model": 768, "num_layers": 12, "num_heads": 12, "d_ff": 2048, "project_out_dim": 4096}


EXPORT_FILES = {"t5shrink.json", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "spiece.model", "special_tokens_map.json", "added_tokens.json", "generation_config.json"}


def _export_entries() -> set[str]:
    """What a previous export may hold: its files, and every teacher family's T5 and tokenizer folders."""
    from train.teachers.registry import FAMILIES

    return EXPORT_FILES | {slot for family in FAMILIES.values() for slot in (family.t5_slot, family.tokenizer_slot)}


def _atomic_dir(out: Path):
    """A temp folder beside `out`; refuses an `out` that holds anything but a previous export,
    since committing replaces the whole folder."""
    if out.exists():
        entries = {p.name for p in out.iterdir()} if out.is_dir() else {out.name}
        foreign = sorted(entries - _export_entries()) if "t5shrink.json" in entries or not entries else sorted(entries)
        if foreign:
            raise ValueError(f"{out} holds {foreign[0]!r}, which is not part of an export; "
                             "choose a new --output folder (it is replaced as a whole)")
    return staging_path(out)


def _check_comfy_target(path: Path) -> None:
    """Only a file that t5shrink's comfyui export wrote (its header carries `t5shrink_config`) may be
    replaced: anything else at that path is someone's model, which a rename would destroy."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_file():
        raise ValueError(f"{path} exists and is not a file; choose another --output path")
    from train.weights import read_header

    try:
        ours = "t5shrink_config" in read_header(path).metadata
    except ValueError:  # unreadable: not provably ours
        ours = False
    if not ours:
        raise ValueError(f"{path} exists and was not written by t5shrink's comfyui export; "
                         "choose another --output path (it would be overwritten)")


def export_student(checkpoint: str | Path, output: str | Path, fmt: str = "distillt5", dtype: str = "fp32") -> Path:
    """Write the student found at `checkpoint` to `output` in `fmt` (a name in EXPORT_FORMATS); returns the
    written path."""
    from train.student import DTYPES

    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {fmt!r} ({', '.join(EXPORT_FORMATS)})")
    student, tokenizer, meta = load_student_dir(resolve_student_dir(checkpoint, "checkpoint"))
    return EXPORT_FORMATS[fmt].write(student.to(DTYPES[dtype]), tokenizer, meta, Path(output), str(checkpoint))


def write_distillt5(student: DistillT5EncoderModel, tokenizer: Any, meta: dict[str, Any], out: Path,
                    checkpoint: str) -> Path:
    """The published DistillT5 layout (README, "Evaluate and export"): config.json + model.safetensors
    (published key set) + tokenizer files, in the folder `out`."""
    tmp = _atomic_dir(out)
    student.save_pretrained(tmp, tokenizer=tokenizer, meta=meta)
    swap_into_place(tmp, out)
    return out


def write_diffusers(student: DistillT5EncoderModel, tokenizer: Any, meta: dict[str, Any], out: Path,
                    checkpoint: str) -> Path:
    """The teacher pipeline's own component folders, OUT/<T5 slot> + OUT/<tokenizer slot> of the family the
    student was distilled from: loadable with DistillT5EncoderModel.from_pretrained(OUT, subfolder=...) and
    passed to the pipeline's from_pretrained under that name."""
    from train.student import META_NAME
    from train.teachers.registry import FAMILIES

    family = FAMILIES.get(meta.get("teacher_kind"))
    if family is None:
        slots = " or ".join(known.t5_slot for known in FAMILIES.values())
        raise ConfigError(f"{checkpoint}: unknown teacher kind (no {META_NAME}); cannot pick {slots}")
    tmp = _atomic_dir(out)
    student.save_pretrained(tmp / family.t5_slot, meta=meta)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp / family.tokenizer_slot))
    notes = {**meta, "format": "diffusers", "component": family.t5_slot}
    (tmp / META_NAME).write_text(json.dumps(notes, indent=2) + "\n")
    swap_into_place(tmp, out)
    return out


def write_comfyui(student: DistillT5EncoderModel, tokenizer: Any, meta: dict[str, Any], out: Path,
                  checkpoint: str) -> Path:
    """One .safetensors with the published DistillT5 keys (encoder.shared.weight, encoder.encoder.*,
    final_projection.0/3.weight): the file the LifuWang-66/DistillT5ComfyUI "DualCLIPLoader for T5Base" node
    reads from models/clip. Its loader renames encoder.encoder.* -> encoder.*, *shared.weight ->
    shared.weight, and builds T5-base from a fixed config (COMFY_T5_BASE, gated-gelu), so only a student of
    that shape loads there (others are written with a warning). `out` is the file, or a folder to name it in."""
    from safetensors.torch import save_file

    from train.student import published_state_dict

    cfg = student.config
    shape = {k: getattr(cfg, k) for k in COMFY_T5_BASE}
    if shape != COMFY_T5_BASE or not getattr(cfg, "is_gated_act", False):
        warnings.warn(f"the DistillT5ComfyUI loader builds T5-base {COMFY_T5_BASE}; this student is {shape}, "
                      "so that node will not load it (the file is written anyway)")
    path = out if out.suffix == ".safetensors" else out / f"t5shrink-{meta.get('teacher_kind', 'student')}-{cfg.d_model}d.safetensors"
    _check_comfy_target(path)
    tmp = staging_path(path, folder=False)
    config_json = json.dumps({k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool))})
    save_file(published_state_dict(student), str(tmp),
              metadata={"format": "pt", "t5shrink_config": config_json, "t5shrink_meta": json.dumps(meta)})
    swap_into_place(tmp, path)  # also removes the staging folder around tmp
    return path


@dataclass(frozen=True)
class ExportFormat:
    writes: str  # what lands at --output, one line: `train export --help` and the README show it
    write: Callable[[DistillT5EncoderModel, Any, dict[str, Any], Path, str], Path]  # (student, tokenizer, meta, out, checkpoint)


# Every export format, in the order `train export --format` lists them. A new format is a write_* function
# above and a line here.
EXPORT_FORMATS: dict[str, ExportFormat] = {
    "diffusers": ExportFormat("the teacher pipeline's T5 + tokenizer folders (FLUX: text_encoder_2 + tokenizer_2, "
                              "SD3: text_encoder_3 + tokenizer_3)", write_diffusers),
    "distillt5": ExportFormat("config.json + model.safetensors + tokenizer (the published DistillT5 layout)",
                              write_distillt5),
    "comfyui": ExportFormat("one .safetensors with the published keys, for the DistillT5ComfyUI loader", write_comfyui),
}


def format_list() -> str:
    """The export formats, a name and what it writes a line (`train export --help`, the README)."""
    width = max(map(len, EXPORT_FORMATS))
    return "\n".join(f"{name:<{width}}  {fmt.writes}" for name, fmt in EXPORT_FORMATS.items())
