"""Finding, loading and exporting a trained student (`train export`; `train eval` is in train/evaluate.py).

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

if TYPE_CHECKING:
    from train.student import DistillT5EncoderModel

COMFY_T5_BASE = {"d_model": 768, "num_layers": 12, "num_heads": 12, "d_ff": 2048, "project_out_dim": 4096}


def _is_student(folder: Path) -> bool:
    from train.student import is_student_folder

    return folder.is_dir() and is_student_folder(folder)


def resolve_student_dir(path: str | Path, what: str = "student") -> Path:
    """A student folder from: a student folder, a diffusers export, a checkpoint, or a run folder
    (its final student if training finished, else its newest complete checkpoint), or a hub id of a
    student or diffusers export (fetched). `what` names the argument in errors (the one "not found"
    rule: a path that does not exist is an error naming it, a hub id that cannot be fetched says so)."""
    from core.paths import local_path_or_hub_id
    from train.distill import find_checkpoint
    from train.teachers.registry import FAMILIES

    local = local_path_or_hub_id(str(path), what)
    path = local if local is not None else fetch_student(str(path), what)
    for c in (path, *(path / family.t5_slot for family in FAMILIES.values())):
        if _is_student(c):
            return c
    # a run folder: the final student, unless a later (resumed, unfinished) run checkpointed past it
    final = path / "student" if _is_student(path / "student") else None
    ckpt = find_checkpoint(path) if (path / "checkpoints").is_dir() else None
    if final and ckpt and _meta_step(ckpt / "student") > _meta_step(final):
        return ckpt / "student"
    if final or ckpt:
        return final or ckpt / "student"
    raise ConfigError(f"{path}: not a student, checkpoint or run folder (no config.json with project_out_dim)")


def fetch_student(repo_id: str, what: str) -> Path:
    """The local snapshot of a hub repo holding a student (config, weights, tokenizer and notes only)."""
    from huggingface_hub import snapshot_download

    from core.paths import hub_error

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model"]))
    except Exception as exc:  # offline, no such repo, gated, a malformed id: all "cannot be fetched"
        raise hub_error(repo_id, what, exc) from exc


def _meta_step(folder: Path) -> int:
    from train.student import META_NAME

    try:  # notes only: an unreadable one ranks the folder last instead of failing the export
        meta = json.loads((folder / META_NAME).read_text())
        return int(meta.get("step", -1)) if isinstance(meta, dict) else -1
    except (OSError, ValueError, TypeError):
        return -1


def _tokenizer_dir(student_dir: Path) -> Path | None:
    from train.teachers.registry import FAMILIES

    for c in (student_dir, *(student_dir.parent / family.tokenizer_slot for family in FAMILIES.values())):
        if (c / "tokenizer_config.json").is_file():
            return c
    return None


def load_student_dir(path: str | Path) -> tuple[DistillT5EncoderModel, Any, dict[str, Any]]:
    """(student, tokenizer or None, meta) from anything resolve_student_dir accepts."""
    from transformers import AutoTokenizer

    from train.student import META_NAME, DistillT5EncoderModel
    from train.weights import read_json

    folder = resolve_student_dir(path)
    student = DistillT5EncoderModel.from_pretrained(folder)
    tok_dir = _tokenizer_dir(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir)) if tok_dir else None
    except Exception as exc:  # a damaged tokenizer.json: the library's message names no file
        from core.errors import one_line

        raise ValueError(f"{tok_dir}: the tokenizer files cannot be loaded ({one_line(exc, 200)}); "
                         "restore them from the teacher's tokenizer folder") from None
    meta_file = next((p for p in (folder / META_NAME, folder.parent / META_NAME) if p.is_file()), None)
    meta = read_json(meta_file, "t5shrink's notes on the student") if meta_file else {}
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_file}: not a JSON object; restore it or delete it (it only holds notes)")
    return student, tokenizer, meta


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
