"""The run folder `train run` writes, and everything that reads one back.

    OUT/recipe.json                 the resolved recipe, written first: it marks OUT as a run folder
    OUT/log.jsonl, OUT/tb/          one JSON record a line (Logger), tensorboard when asked for
    OUT/checkpoints/step-XXXXXXXX/  student/, optimizer.pt, rng-RANK.safetensors, state.json
    OUT/val/step-XXXXXXXX.png       preview grids
    OUT/student/                    the final student (DistillT5 layout)
    OUT/summary.json                the run's summary, written last

Also: finding and loading a student from a run, a checkpoint, a student folder or a diffusers export
(`train eval`, `train export`). Kept light at import (torch loads inside the functions that need it), so
`train run` checks --output before torch loads.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from core.errors import ConfigError, one_line
from core.fileio import atomic_write_text, staging_path, swap_into_place

if TYPE_CHECKING:
    from train.student import DistillT5EncoderModel

# recipe.json (the resolved recipe, a JSON object with these top-level keys) is written first, atomically,
# before anything else, so every folder a run has written into holds it: it is the mark of a run folder.
RUN_MARKER = "recipe.json"
RUN_MARKER_KEYS = ("teacher", "student", "optim", "stages")
RUN_ENTRIES = ("recipe.json", "log.jsonl", "summary.json", "student", "checkpoints", "val", "tb")
CKPT_RE = re.compile(r"^step-(\d{8})$")
CKPT_FILES = ("state.json", "student/model.safetensors", "optimizer.pt")


class TrainingError(RuntimeError):
    """A run that cannot go on (too many non-finite losses, nothing to resume, ...)."""


# ---- the folder -----------------------------------------------------------------------------------


def is_run_folder(folder: str | Path) -> bool:
    """Whether `folder` holds a t5shrink training run: its recipe.json is a resolved train recipe."""
    try:
        recipe = json.loads((Path(folder) / RUN_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(recipe, dict) and all(key in recipe for key in RUN_MARKER_KEYS)


def check_output(output: str | Path, resume: bool) -> None:
    """The rule for `train run --output` (curate's rule for its output, for a folder written into
    rather than replaced): absent or empty starts a run; a run folder is continued only with --resume
    (one that holds nothing but its recipe.json never trained, and may start over); anything else is
    refused, since the run's student/, checkpoints/ and log.jsonl would replace files of the same
    names. Files a user added to a run folder (an export, a grid) are left alone."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file; choose a folder")
    entries = sorted(p.name for p in output.iterdir()) if output.is_dir() else []
    if not entries:
        if resume:
            where = "is an empty folder" if output.exists() else "does not exist"
            raise ConfigError(f"--resume: there is no run to continue in {output} (it {where}); check the "
                              "--output path, or drop --resume to start a new run")
        return
    if not is_run_folder(output):
        raise ConfigError(f"--output {output} is not empty and is not a t5shrink run folder (no {RUN_MARKER} "
                          "written by `train run`); " + ("--resume continues only a run" if resume else
                                                         "choose a new or empty folder"))
    held = [name for name in RUN_ENTRIES if name in entries and name != RUN_MARKER]
    if held and not resume:  # its checkpoints would outrank the new run's in export, eval and --resume
        raise ConfigError(f"{output} already holds a run ({', '.join(held)}); pass --resume to continue it, "
                          "or choose a new --output")


def mark_run_folder(output: Path, cfg: dict[str, Any]) -> None:
    """Write recipe.json, the mark of a run folder."""
    atomic_write_text(output / RUN_MARKER, json.dumps(cfg, indent=2) + "\n")


def preview_path(output: Path, step: int) -> Path:
    return output / "val" / f"step-{step:08d}.png"


def student_path(output: Path) -> Path:
    return output / "student"


def save_final_student(output: Path, student: DistillT5EncoderModel, tokenizer: Any, meta: dict[str, Any]) -> Path:
    """OUT/student/, replaced as a whole."""
    final = student_path(output)
    staging = staging_path(final)
    student.save_pretrained(staging, tokenizer=tokenizer, meta=meta)
    swap_into_place(staging, final)
    return final


def write_summary(output: Path, summary: dict[str, Any]) -> None:
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


# ---- checkpoints ------------------------------------------------------------------------------------


def checkpoint_path(output: Path, step: int) -> Path:
    return output / "checkpoints" / f"step-{step:08d}"


def complete_checkpoints(output: Path) -> Iterator[Path]:
    """The complete checkpoints, newest first; a folder cut off mid-write is skipped with a warning.
    Complete means all files present; whether they load is load_checkpoint's to find out."""
    root = output / "checkpoints"
    if not root.is_dir():
        return
    for leftover in sorted(root.glob(".step-*")):  # staging folders of killed writes
        warnings.warn(f"ignoring {leftover.name}: a checkpoint cut off mid-write")
    for path in sorted((p for p in root.iterdir() if CKPT_RE.match(p.name)), reverse=True):
        absent = [name for name in CKPT_FILES if not (path / name).is_file()]
        if absent:
            warnings.warn(f"skipping checkpoint {path.name}: incomplete (no {absent[0]})")
            continue
        yield path


def find_checkpoint(output: Path) -> Path | None:
    """The newest complete checkpoint (see complete_checkpoints)."""
    return next(complete_checkpoints(output), None)


def save_checkpoint(output: Path, step: int, student: DistillT5EncoderModel, optimizer: Any, state: dict[str, Any],
                    tokenizer: Any, meta: dict[str, Any], accelerator: Any, keep: int) -> Path:
    """Assemble checkpoints/step-XXXXXXXX in a staging folder (core.fileio), then swap it into place: a
    folder of that name is always complete, and the staging of a killed write is cleared when that step
    is written again. Every process adds its RNG state; `keep` > 0 then keeps that many newest."""
    import torch
    from accelerate.utils import broadcast_object_list
    from safetensors.torch import save_file

    final = checkpoint_path(output, step)
    # the staging folder's name is the main process's to choose; the others write their RNG state into it
    shared = broadcast_object_list([str(staging_path(final)) if accelerator.is_main_process else None])
    staging = Path(shared[0])
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and accelerator.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(accelerator.device)
    save_file(rng, str(staging / f"rng-{accelerator.process_index}.safetensors"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        student.save_pretrained(staging / "student", tokenizer=tokenizer, meta={**meta, "step": step})
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        (staging / "state.json").write_text(json.dumps(state, indent=2) + "\n")
        swap_into_place(staging, final)
        done = sorted(p for p in final.parent.iterdir() if CKPT_RE.match(p.name))
        for old in done[: max(0, len(done) - keep)] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(path: Path, student: DistillT5EncoderModel, optimizer: Any, accelerator: Any) -> dict[str, Any]:
    """Restore a checkpoint into student, optimizer and RNG; returns its state. Every file is read and
    checked before anything is changed, and each error is one line naming the damaged file."""
    import torch

    from train.student import load_student_state_dict
    from train.weights import load_safetensors, load_torch, read_json

    weights = load_safetensors(path / "student" / "model.safetensors")
    # map to the CPU: load_state_dict moves the state to the parameters' device ("cpu:0" under torchrun
    # cannot be restored by torch.load)
    opt_state = load_torch(path / "optimizer.pt", "optimizer state")
    if not isinstance(opt_state, dict) or not {"state", "param_groups"} <= set(opt_state):
        raise ValueError(f"{path / 'optimizer.pt'}: not an optimizer state (no state/param_groups)")
    state = read_json(path / "state.json", "the checkpoint's state")
    if not isinstance(state, dict) or type(state.get("step")) is not int or not isinstance(state.get("positions"), list):
        raise ValueError(f"{path / 'state.json'}: not a checkpoint state (needs step and positions)")
    rng_file = path / f"rng-{accelerator.process_index}.safetensors"
    rng = load_safetensors(rng_file, finite=False) if rng_file.exists() else {}
    if rng and ("cpu" not in rng or rng["cpu"].dtype != torch.uint8):
        raise ValueError(f"{rng_file}: no CPU random state (a uint8 tensor 'cpu')")
    missing, unexpected = load_student_state_dict(student, weights)
    if missing or unexpected:
        raise TrainingError(f"{path}: student weights do not match (missing {missing[:3]}, unexpected {unexpected[:3]})")
    optimizer.load_state_dict(opt_state)
    if rng:
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and accelerator.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], accelerator.device)
    return state


def resume_checkpoint(output: Path, student: DistillT5EncoderModel, optimizer: Any,
                      accelerator: Any) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest checkpoint that loads: a damaged one (truncated or corrupt files) is passed over
    with one warning naming it, for the one before. None when there is no complete checkpoint at all;
    an error when there are some but none loads (starting over would silently discard the run)."""
    damaged: list[str] = []
    for ckpt in complete_checkpoints(output):
        try:
            return ckpt, load_checkpoint(ckpt, student, optimizer, accelerator)
        except TrainingError:
            raise  # a checkpoint of another run (other student shape): not damage, and older ones are no better
        except (OSError, ValueError, RuntimeError, KeyError) as exc:  # RuntimeError: torch refusing a state
            damaged.append(f"{ckpt.name}: {one_line(exc)}")
            warnings.warn(f"--resume: skipping damaged checkpoint {ckpt.name} ({one_line(exc)}); "
                          "trying the one before it")
    if damaged:
        raise TrainingError(f"--resume: none of the {len(damaged)} checkpoint(s) in {output / 'checkpoints'} loads "
                            f"(newest {damaged[0]}); restore them, or move the folder away to start over")
    return None


# ---- the log ----------------------------------------------------------------------------------------


def log_path(output: Path) -> Path:
    return output / "log.jsonl"


def read_log(path: Path) -> list[dict[str, Any]]:
    """The log's records, skipping (with a warning) lines a kill mid-write cut off."""
    records, unreadable = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            unreadable += 1
    if unreadable:
        warnings.warn(f"{path}: dropped {unreadable} unreadable line(s), as a kill mid-write leaves them")
    return records


def truncate_log(path: Path, step: int, revalidate: bool = False) -> list[dict[str, Any]]:
    """Drop the records written after the checkpoint being resumed (and a line cut off by a kill). With
    `revalidate` the validation at the checkpoint's own step goes too: the final one, which runs again.
    Returns the records kept."""
    records = read_log(path)
    keep = [r for r in records if r.get("step", 0) < step
            or (r.get("step", 0) == step and not (revalidate and "val_gap" in r))]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
    return keep


class Logger:
    """Appends to log.jsonl always; to tensorboard (OUT/tb) when available and asked for."""

    def __init__(self, output: Path, tensorboard: bool, enabled: bool):
        self.enabled = enabled
        self.file = open(log_path(output), "a", encoding="utf-8") if enabled else None
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(output / "tb"))
            except ImportError:
                warnings.warn("tensorboard is not installed; logging to log.jsonl only")

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(key, value, record["step"])
                elif isinstance(value, dict):
                    for sub, v in value.items():
                        if isinstance(v, (int, float)):
                            self.tb.add_scalar(f"{key}/{sub}", v, record["step"])

    def close(self) -> None:
        """Close the log (again: a no-op)."""
        if self.file:
            self.file.close()
            self.file = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None


# ---- finding and loading a student --------------------------------------------------------------------


def _pipeline_slots() -> tuple[list[str], list[str]]:
    """The folders a diffusers export puts the student and its tokenizer in: each teacher family's T5 slots."""
    from train.teachers.registry import FAMILIES

    return [f.t5_slot for f in FAMILIES.values()], [f.tokenizer_slot for f in FAMILIES.values()]


def _is_student(folder: Path) -> bool:
    from train.student import is_student_folder

    return folder.is_dir() and is_student_folder(folder)


def resolve_student_dir(path: str | Path, what: str = "student") -> Path:
    """A student folder from: a student folder, a diffusers export, a checkpoint, or a run folder
    (its final student if training finished, else its newest complete checkpoint), or a hub id of a
    student or diffusers export (fetched). `what` names the argument in errors (the one "not found"
    rule: a path that does not exist is an error naming it, a hub id that cannot be fetched says so)."""
    from core.paths import local_path_or_hub_id

    local = local_path_or_hub_id(str(path), what)
    path = local if local is not None else fetch_student(str(path), what)
    encoder_slots, _ = _pipeline_slots()
    for c in (path, *(path / slot for slot in encoder_slots)):
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
    _, tokenizer_slots = _pipeline_slots()
    for c in (student_dir, *(student_dir.parent / slot for slot in tokenizer_slots)):
        if (c / "tokenizer_config.json").is_file():
            return c
    return None


def load_student_dir(path: str | Path) -> tuple[DistillT5EncoderModel, Any, dict[str, Any]]:
    """(student, tokenizer or None, meta) from anything resolve_student_dir accepts."""
    from transformers import AutoTokenizer

    from train.student import DistillT5EncoderModel

    folder = resolve_student_dir(path)
    student = DistillT5EncoderModel.from_pretrained(folder)
    tok_dir = _tokenizer_dir(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir)) if tok_dir else None
    except Exception as exc:  # a damaged tokenizer.json: the library's message names no file
        raise ValueError(f"{tok_dir}: the tokenizer files cannot be loaded ({one_line(exc, 200)}); "
                         "restore them from the teacher's tokenizer folder") from None
    return student, tokenizer, student_notes(folder)


def student_notes(folder: Path) -> dict[str, Any]:
    """A student folder's t5shrink.json (in it or, for a diffusers export, beside it); {} when there is none."""
    from train.student import META_NAME
    from train.weights import read_json

    meta_file = next((p for p in (folder / META_NAME, folder.parent / META_NAME) if p.is_file()), None)
    meta = read_json(meta_file, "t5shrink's notes on the student") if meta_file else {}
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_file}: not a JSON object; restore it or delete it (it only holds notes)")
    return meta
