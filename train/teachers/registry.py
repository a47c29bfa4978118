"""The teacher families, and loading a teacher from a folder, a hub id or `tiny:<family>`.

A family is a `Teacher` subclass in its own file beside this one, declaring its diffusers pipeline class,
the slot its student replaces, its tokenizer slot and its text-encoder slots (see `base.Teacher`); the
one line below that names it is all the loader, the export and the offloading need to know of it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .base import Teacher
from .chroma import ChromaTeacher
from .flux import FluxTeacher
from .ltx import LTXVideoTeacher
from .pixart import PixArtAlphaTeacher, PixArtSigmaTeacher
from .sd3 import SD3Teacher

FAMILIES: dict[str, type[Teacher]] = {family.kind: family for family in (
    FluxTeacher,
    SD3Teacher,
    PixArtAlphaTeacher,
    PixArtSigmaTeacher,
    ChromaTeacher,
    LTXVideoTeacher,
)}


def family_of_pipeline(class_name: str, source: str) -> type[Teacher]:
    """The family whose pipeline class model_index.json names; any other pipeline is refused, naming them."""
    for family in FAMILIES.values():
        if family.pipeline_class == class_name:
            return family
    supported = ", ".join(family.pipeline_class for family in FAMILIES.values())
    raise ValueError(f"{source}: pipeline class {class_name!r} is not supported (supported: {supported})")


def resolve_source(source: str) -> str:
    """`tiny:<family>` -> the folder the tiny factory builds; anything else unchanged."""
    if source.startswith("tiny:"):
        from train.tiny import tiny_teacher_path

        return str(tiny_teacher_path(source.split(":", 1)[1]))
    return source


def detect_family(source: str) -> type[Teacher]:
    """The family of a pipeline folder or hub id, from the pipeline class named in its model_index.json."""
    from train.config import check_teacher_path

    check_teacher_path(source)  # a path that does not exist: an error naming it, never a hub lookup
    path = Path(source).expanduser()
    if path.is_dir():
        index = path / "model_index.json"
        if not index.exists():
            raise ValueError(f"{source}: no model_index.json (not a diffusers pipeline folder)")
        class_name = json.loads(index.read_text()).get("_class_name", "")
    else:
        from diffusers import DiffusionPipeline

        from core.paths import hub_error

        try:
            class_name = DiffusionPipeline.load_config(source).get("_class_name", "")
        except OSError as exc:  # offline, no such repo, gated: diffusers' message names no cure
            raise hub_error(source, "teacher", exc) from exc
    return family_of_pipeline(class_name, source)


def load_teacher(
    source: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> Teacher:
    """Load a frozen teacher pipeline from a folder, a hub id, or `tiny:<family>`."""
    import diffusers

    source = resolve_source(source)
    family = detect_family(source)
    if Path(source).expanduser().is_dir():
        check_pipeline_folder(Path(source).expanduser())
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    kwargs: dict[str, Any] = {_dtype_kwarg(): dtype}
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    pipeline_class = getattr(diffusers, family.pipeline_class)
    try:
        pipe = pipeline_class.from_pretrained(source, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:  # what diffusers raises names no folder
        from core.errors import one_line
        from core.paths import hub_error

        if isinstance(exc, OSError) and not Path(source).expanduser().exists():  # a hub id: its files could not come
            raise hub_error(source, "teacher", exc) from exc
        raise ValueError(f"{source}: the {pipeline_class.__name__} cannot be loaded ({one_line(exc, 300)})") from exc
    pipe.set_progress_bar_config(disable=True)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
            module.eval()
    pipe.to(device)
    return family(pipe, source, device)


def check_pipeline_folder(folder: Path) -> None:
    """Every component's config.json against its weights' headers, before diffusers builds anything from
    them (an inflated config would allocate until the machine gives out): a T5 exactly
    (train.student.check_t5_folder), any other model by bounds (train.weights.check_config_bounds)."""
    from train.student import check_t5_folder, load_config
    from train.weights import check_config_bounds, read_json

    for component in sorted(p for p in folder.iterdir() if (p / "config.json").is_file()):
        config = read_json(component / "config.json", "a model config.json")
        if isinstance(config, dict) and config.get("model_type") == "t5":
            check_t5_folder(component, load_config(component), need_safetensors=False)
        else:
            check_config_bounds(component)


def _dtype_kwarg() -> str:
    """diffusers renamed `torch_dtype` to `dtype` (the old name warns); use whichever it reads."""
    import inspect

    from diffusers import DiffusionPipeline

    return "dtype" if 'kwargs.pop("dtype"' in inspect.getsource(DiffusionPipeline.from_pretrained) else "torch_dtype"
