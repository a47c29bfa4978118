"""Finding, loading and exporting a trained student (`train export`; `train eval` is in train/evaluate.py).

Formats:
  distillt5  the DistillT5 layout (README, "Evaluate and export"): config.json + model.safetensors (published key set) + tokenizer files.
  diffusers  OUT/text_encoder_2 + OUT/tokenizer_2 (FLUX) or OUT/text_encoder_3 + OUT/tokenizer_3 (SD3):
             the pipeline's component folders, loadable with DistillT5EncoderModel.from_pretrained(OUT,
             subfolder=...) and passed to the pipeline's from_pretrained under that name.
  comfyui    one .safetensors with the published DistillT5 keys (encoder.shared.weight,
             encoder.encoder.*, final_projection.0/3.weight), the file the LifuWang-66/DistillT5ComfyUI
             "DualCLIPLoader for T5Base" node reads from models/clip: its loader renames
             encoder.encoder.* -> encoder.*, *shared.weight -> shared.weight, and builds T5-base from a
             fixed config (d_model 768, 12 layers, 12 heads, d_ff 2048, gated-gelu, project_out 4096),
             so only a student of that shape loads there (others are written with a warning).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.fileio import staging_path, swap_into_place
from train.student import DTYPES, META_NAME, DistillT5EncoderModel, is_student_folder, published_state_dict
from train.teachers.registry import FAMILIES
from train.weights import read_header, read_json

COMFY_T5_BASE = {"d_model": 768, "num_layers": 12, "num_heads": 12, "d_ff": 2048, "project_out_dim": 4096}


def _is_student(folder: Path) -> bool:
    return folder.is_dir() and is_student_folder(folder)


def resolve_student_dir(path: str | Path, what: str = "student") -> Path:
    """A student folder from: a student folder, a diffusers export, a checkpoint, or a run folder
    (its final student if training finished, else its newest complete checkpoint), or a hub id of a
    student or diffusers export (fetched). `what` names the argument in errors (the one "not found"
    rule: a path that does not exist is an error naming it, a hub id that cannot be fetched says so)."""
    from core.paths import local_path_or_hub_id
    from train.distill import find_checkpoint

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
    try:  # notes only: an unreadable one ranks the folder last instead of failing the export
        meta = json.loads((folder / META_NAME).read_text())
        return int(meta.get("step", -1)) if isinstance(meta, dict) else -1
    except (OSError, ValueError, TypeError):
        return -1


def _tokenizer_dir(student_dir: Path) -> Path | None:
    for c in (student_dir, *(student_dir.parent / family.tokenizer_slot for family in FAMILIES.values())):
        if (c / "tokenizer_config.json").is_file():
            return c
    return None


def load_student_dir(path: str | Path) -> tuple[DistillT5EncoderModel, Any, dict[str, Any]]:
    """(student, tokenizer or None, meta) from anything resolve_student_dir accepts."""
    from transformers import AutoTokenizer

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
                "spiece.model", "special_tokens_map.json", "added_tokens.json", "generation_config.json",
                *(slot for family in FAMILIES.values() for slot in (family.t5_slot, family.tokenizer_slot))}


def _atomic_dir(out: Path):
    """A temp folder beside `out`; refuses an `out` that holds anything but a previous export,
    since committing replaces the whole folder."""
    if out.exists():
        entries = {p.name for p in out.iterdir()} if out.is_dir() else {out.name}
        foreign = sorted(entries - EXPORT_FILES) if "t5shrink.json" in entries or not entries else sorted(entries)
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
    try:
        ours = "t5shrink_config" in read_header(path).metadata
    except ValueError:  # unreadable: not provably ours
        ours = False
    if not ours:
        raise ValueError(f"{path} exists and was not written by t5shrink's comfyui export; "
                         "choose another --output path (it would be overwritten)")


def export_student(checkpoint: str | Path, output: str | Path, fmt: str = "distillt5", dtype: str = "fp32") -> Path:
    """Write the student found at `checkpoint` to `output` in `fmt`; returns the written path."""
    student, tokenizer, meta = load_student_dir(resolve_student_dir(checkpoint, "checkpoint"))
    student = student.to(DTYPES[dtype])
    out = Path(output)
    if fmt == "distillt5":
        tmp = _atomic_dir(out)
        student.save_pretrained(tmp, tokenizer=tokenizer, meta=meta)
        swap_into_place(tmp, out)
        return out
    if fmt == "diffusers":
        family = FAMILIES.get(meta.get("teacher_kind"))
        if family is None:
            slots = " or ".join(known.t5_slot for known in FAMILIES.values())
            raise ConfigError(f"{checkpoint}: unknown teacher kind (no {META_NAME}); cannot pick {slots}")
        slot, tok_slot = family.t5_slot, family.tokenizer_slot
        tmp = _atomic_dir(out)
        student.save_pretrained(tmp / slot, meta=meta)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / tok_slot))
        (tmp / META_NAME).write_text(json.dumps({**meta, "format": "diffusers", "component": slot}, indent=2) + "\n")
        swap_into_place(tmp, out)
        return out
    if fmt == "comfyui":
        from safetensors.torch import save_file

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
    raise ConfigError(f"unknown export format {fmt!r} (diffusers, distillt5, comfyui)")
