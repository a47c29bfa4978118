"""Exporting a trained student (`train export`; finding and loading one is train/runs.py).

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

from core.errors import ConfigError
from core.fileio import staging_path, swap_into_place
from train.runs import load_student_dir, resolve_student_dir
from train.student import DTYPES, META_NAME, published_state_dict
from train.teachers.flux import FluxTeacher
from train.teachers.sd3 import SD3Teacher
from train.weights import read_header

SLOTS = {t.kind: (t.t5_slot, t.tokenizer_slot) for t in (FluxTeacher, SD3Teacher)}  # where each pipeline's T5 sits
ENCODER_SLOTS = [encoder for encoder, _ in SLOTS.values()]
TOKENIZER_SLOTS = [tokenizer for _, tokenizer in SLOTS.values()]
COMFY_T5_BASE = {"d_model": 768, "num_layers": 12, "num_heads": 12, "d_ff": 2048, "project_out_dim": 4096}

EXPORT_FILES = {"t5shrink.json", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "spiece.model", "special_tokens_map.json", "added_tokens.json", "generation_config.json",
                *ENCODER_SLOTS, *TOKENIZER_SLOTS}


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
        kind = meta.get("teacher_kind")
        if kind not in SLOTS:
            raise ConfigError(f"{checkpoint}: unknown teacher kind (no {META_NAME}); cannot pick text_encoder_2 vs _3")
        slot, tok_slot = SLOTS[kind]
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
