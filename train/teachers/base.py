"""What the trainer needs from a teacher pipeline, and loading one from a path or hub id."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class Cond:
    """Everything text the transformer sees: the sequence (B, S, D) and the pooled vector (B, P)."""

    embeds: torch.Tensor
    pooled: torch.Tensor

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> "Cond":
        return Cond(self.embeds.to(device=device, dtype=dtype), self.pooled.to(device=device, dtype=dtype))

    def __getitem__(self, idx: Any) -> "Cond":
        return Cond(self.embeds[idx], self.pooled[idx])

    def __len__(self) -> int:
        return self.embeds.shape[0]

    @staticmethod
    def cat(conds: list["Cond"]) -> "Cond":
        return Cond(torch.cat([c.embeds for c in conds]), torch.cat([c.pooled for c in conds]))


class Teacher:
    """A frozen diffusers pipeline seen through the operations distillation needs.

    Subclasses set `kind`, `t5_slot` (the pipeline attribute the student replaces) and
    `tokenizer_slot`, and implement the latent layout, timesteps and the transformer call.
    """

    kind = ""
    t5_slot = ""
    tokenizer_slot = ""

    def __init__(self, pipe: Any, source: str, device: torch.device):
        self.pipe = pipe
        self.source = source
        self.device = torch.device(device)
        self.transformer = pipe.transformer
        self.scheduler = pipe.scheduler
        self.dtype = self.transformer.dtype
        if getattr(pipe, self.t5_slot, None) is None:
            raise ValueError(f"{source}: the pipeline has no {self.t5_slot}; there is no T5 to distil")
        t5 = getattr(pipe, self.t5_slot)
        self.t5_config: dict[str, Any] = t5.config.to_dict()
        self.tokenizer = getattr(pipe, self.tokenizer_slot)
        self._uncond: dict[int, Cond] = {}

    # ---- text ----------------------------------------------------------------------------------

    @property
    def width(self) -> int:
        """The text width the transformer reads: the student's project_out_dim (4096 for FLUX/SD3)."""
        return int(self.transformer.config.joint_attention_dim)

    @property
    def vocab_size(self) -> int:
        return max(len(self.tokenizer), int(self.t5_config.get("vocab_size", 0)))

    def tokenize(self, prompts: list[str], max_len: int) -> torch.Tensor:
        """T5 ids exactly as the pipeline makes them (padded to max_len, truncated, no mask)."""
        return self.tokenizer(
            prompts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt"
        ).input_ids

    @torch.no_grad()
    def encode(self, prompts: list[str], max_len: int) -> Cond:
        """Teacher embeddings through the pipeline's own encode_prompt."""
        raise NotImplementedError

    def student_cond(self, seq: torch.Tensor, teacher: Cond, max_len: int) -> Cond:
        """The conditioning with the student's T5 sequence in place of the teacher's, built as the
        pipeline builds it (FLUX: the T5 sequence alone; SD3: CLIP part, then T5)."""
        raise NotImplementedError

    def zero_cond(self, teacher: Cond, max_len: int) -> Cond:
        """The T5 part replaced by zeros (the gap's 'no text' reference); CLIP parts are kept because
        the student never replaces them."""
        seq = torch.zeros(teacher.embeds.shape[0], max_len, teacher.embeds.shape[-1], dtype=teacher.embeds.dtype,
                          device=teacher.embeds.device)
        return self.student_cond(seq, teacher, max_len)

    def uncond(self, max_len: int) -> Cond:
        """Empty-prompt embeddings (SD3's classifier-free guidance branch), computed once."""
        if max_len not in self._uncond:
            self._uncond[max_len] = self.encode([""], max_len)
        return self._uncond[max_len]

    def student_uncond(self, student: torch.nn.Module, max_len: int) -> Cond | None:
        """The sampler's unconditional branch with the student in the T5 slot, as a pipeline with the
        student plugged in would build it; None when the sampler has no such branch (FLUX)."""
        return None

    def offload_text_encoders(self) -> None:
        """Move the text encoders to the CPU once their outputs are cached (frees the device)."""
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            module = getattr(self.pipe, name, None)
            if module is not None:
                module.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ---- image side ----------------------------------------------------------------------------

    def check_resolution(self, resolution: int) -> None:
        raise NotImplementedError

    def compile_transformer(self) -> int:
        """torch.compile the transformer's blocks in place (`compile_transformer_blocks`); returns the count."""
        return len(compile_transformer_blocks(self.transformer))

    def transformer_to_fp8(self) -> int:
        """The frozen transformer's linears stored and run in float8 (`train.fp8.transformer_to_fp8`)."""
        from train.fp8 import transformer_to_fp8

        return transformer_to_fp8(self.transformer)

    def noise(self, batch: int, resolution: int, generator: torch.Generator) -> torch.Tensor:
        """Starting noise in the transformer's input layout (drawn on the CPU, so it is the same on
        every device), in float32."""
        raise NotImplementedError

    def timesteps(self, num_steps: int, latents: torch.Tensor) -> torch.Tensor:
        """Set the teacher's scheduler as its pipeline does for num_steps and return its timesteps."""
        raise NotImplementedError

    def predict(self, x: torch.Tensor, t: torch.Tensor | float, cond: Cond, guidance: float | None) -> torch.Tensor:
        """The transformer's conditional output at scheduler timestep t (0..1000 scale)."""
        raise NotImplementedError

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond_pred: torch.Tensor, guidance: float, max_len: int,
                 uncond: Cond | None = None) -> torch.Tensor:
        """The prediction the teacher's sampler follows, given its conditional output (SD3 adds the
        guided unconditional branch, by default the teacher's empty-prompt embedding)."""
        return cond_pred

    def step(self, v: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # float32 in and out: the scheduler casts its result to the model output's dtype.
        return self.scheduler.step(v.float(), t, x, return_dict=False)[0]

    def sigma_to_timestep(self, sigma: float) -> float:
        return sigma * self.scheduler.config.num_train_timesteps

    def decode(self, x: torch.Tensor, resolution: int) -> list:
        """Final latents -> PIL images with the pipeline's VAE and image processor (preview grids)."""
        raise NotImplementedError


KINDS = {"FluxPipeline": "flux", "StableDiffusion3Pipeline": "sd3"}


def compile_transformer_blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """torch.compile each block of a FLUX / SD3 transformer in place (regional compilation): blocks of a
    kind share one compiled graph, so the compile costs two blocks rather than the whole model, and
    the elementwise work around each matmul (norms, modulation, float8 casts) is fused. Returns the blocks."""
    blocks = [block for name in ("transformer_blocks", "single_transformer_blocks")
              for block in getattr(transformer, name, [])]
    for block in blocks:
        block.compile()
    return blocks


def resolve_source(source: str) -> str:
    """`tiny:flux` / `tiny:sd3` -> the folder the tiny factory builds; anything else unchanged."""
    if source.startswith("tiny:"):
        from train.tiny import tiny_teacher_path

        return str(tiny_teacher_path(source.split(":", 1)[1]))
    return source


def teacher_kind(source: str) -> str:
    """'flux' or 'sd3', from the pipeline class named in model_index.json."""
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
    if class_name not in KINDS:
        raise ValueError(f"{source}: pipeline class {class_name!r} is not supported (supported: {', '.join(KINDS)})")
    return KINDS[class_name]


def load_teacher(
    source: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> Teacher:
    """Load a frozen teacher pipeline from a folder, a hub id, or `tiny:flux` / `tiny:sd3`."""
    source = resolve_source(source)
    kind = teacher_kind(source)
    if Path(source).expanduser().is_dir():
        check_pipeline_folder(Path(source).expanduser())
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    kwargs: dict[str, Any] = {_dtype_kwarg(): dtype}
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    if kind == "flux":
        from diffusers import FluxPipeline as pipeline_class

        from .flux import FluxTeacher as cls
    else:
        from diffusers import StableDiffusion3Pipeline as pipeline_class

        from .sd3 import SD3Teacher as cls
    try:
        pipe = pipeline_class.from_pretrained(source, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:  # what diffusers raises names no folder
        from core.errors import one_line
        from core.paths import hub_error

        if isinstance(exc, OSError) and not Path(source).expanduser().exists():  # a hub id: its files could not come
            raise hub_error(source, "teacher", exc) from exc
        raise ValueError(f"{source}: the {pipeline_class.__name__} cannot be loaded ({one_line(exc, 300)})") from exc
    pipe.set_progress_bar_config(disable=True)
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
            module.eval()
    pipe.to(device)
    return cls(pipe, source, device)


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


def square_side(tokens: int) -> int:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"{tokens} latent tokens are not a square image")
    return side
