"""What the trainer needs from a teacher pipeline: the surface every family implements (`Teacher`) and
the conditioning it trades in (`Cond`). Which families exist, and loading one, is train/teachers/registry.py."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Cond:
    """Everything text the transformer sees: the sequence (B, S, D) and a per-prompt side input (B, P):
    the pooled CLIP vector (FLUX, SD3), or the T5 attention mask for families without one (base.TextMask)."""

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

    A family (one file in this package, one line in registry.FAMILIES) declares what the loader,
    the export and the offloading read, and implements the latent layout, timesteps and the
    transformer call.
    """

    kind = ""  # the family's name: `tiny:<kind>`, and teacher_kind in a student's notes
    pipeline_class = ""  # the diffusers class model_index.json names (`_class_name`) and the loader builds
    t5_slot = ""  # the pipeline attribute the student replaces (a diffusers export's component folder)
    tokenizer_slot = ""  # the T5 tokenizer's attribute (exported beside the student)
    text_encoder_slots: tuple[str, ...] = ()  # every text encoder, T5 included (offloaded once cached)
    frames: int | None = None  # video families: frames of a clip (teacher.frames in a recipe); None: images

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
        """The text width the transformer reads: the student's project_out_dim (4096 for FLUX/SD3). MMDiT-style
        transformers name it joint_attention_dim, cross-attention ones (PixArt, LTX-Video) caption_channels."""
        config = self.transformer.config
        return int(getattr(config, "joint_attention_dim", None) or config.caption_channels)

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

    def student_sequence(self, student: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        """The student's (B, L, D) sequence for the teacher's ids, called as the pipeline calls its T5
        (FLUX, SD3: ids alone; families whose pipeline passes the padding mask override this)."""
        return student(ids)[0]

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
        for slot in self.text_encoder_slots:
            module = getattr(self.pipe, slot, None)
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

    def noised(self, x0: torch.Tensor, eps: torch.Tensor, sigma: float) -> tuple[torch.Tensor, float]:
        """A state at noise level sigma in (0, 1] as the teacher's training made them, and its timestep
        (the held-out gap's probes): flow matching's (1 - sigma) x0 + sigma eps here."""
        return (1 - sigma) * x0 + sigma * eps, self.sigma_to_timestep(sigma)

    def decode(self, x: torch.Tensor, resolution: int) -> list:
        """Final latents -> PIL images with the pipeline's VAE and image processor (preview grids)."""
        raise NotImplementedError


class TextMask:
    """For pipelines whose transformer takes the T5 padding mask (PixArt, Chroma, LTX-Video): the mask
    travels in Cond.pooled (they have no pooled vector) and is the teacher's for the student's sequence too."""

    def student_cond(self, seq: torch.Tensor, teacher: Cond, max_len: int) -> Cond:
        return Cond(seq, teacher.pooled)

    def student_uncond(self, student: torch.nn.Module, max_len: int) -> Cond:
        """The empty prompt through the student, with the mask the pipeline gives it (the teacher's)."""
        ids = self.tokenize([""], max_len).to(self.device)
        return Cond(self.student_sequence(student, ids), self.uncond(max_len).pooled)


class MaskedT5(TextMask):
    """For pipelines that also pass T5 itself the tokenizer's attention mask (PixArt, Chroma): the student
    is called with the same mask."""

    def padding_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """The tokenizer's attention mask, from the ids: T5 pads with pad_token_id, which no text token has."""
        return (ids != self.tokenizer.pad_token_id).long()

    def student_sequence(self, student: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        return student(ids, attention_mask=self.padding_mask(ids))[0]


class SpatialLatents:
    """Latents as (B, C, h, w) at the VAE's scale, patchified inside the transformer (SD3, PixArt)."""

    def check_resolution(self, resolution: int) -> None:
        multiple = self.pipe.vae_scale_factor * self.transformer.config.patch_size
        if resolution % multiple:
            raise ValueError(f"resolution {resolution} must be a multiple of {multiple} for this {self.pipeline_class}")

    def noise(self, batch: int, resolution: int, generator: torch.Generator) -> torch.Tensor:
        self.check_resolution(resolution)
        side = resolution // self.pipe.vae_scale_factor
        channels = self.transformer.config.in_channels
        return torch.randn(batch, channels, side, side, generator=generator, dtype=torch.float32).to(self.device)


class ClassifierFreeGuidance:
    """For families that sample with two branches (SD3, PixArt, Chroma, LTX-Video): uncond + g * (cond - uncond), the
    unconditional branch being the empty prompt's embedding (the teacher's, or the student's own)."""

    @torch.no_grad()
    def velocity(self, x, t, cond_pred, guidance, max_len, uncond=None):
        if guidance is None or guidance <= 1:
            return cond_pred
        u = uncond if uncond is not None else self.uncond(max_len)
        uncond = Cond(u.embeds.expand(x.shape[0], -1, -1), u.pooled.expand(x.shape[0], -1))
        uncond_pred = self.predict(x, t, uncond)
        return uncond_pred + guidance * (cond_pred - uncond_pred)


def flow_timesteps(scheduler: Any, num_steps: int, seq_len: int, device: torch.device) -> torch.Tensor:
    """Flow-matching timesteps as the FLUX, Chroma and LTX-Video pipelines set them: sigmas linspace(1, 1/N, N)
    (unless the scheduler makes its own flow sigmas), shifted by calculate_shift(latent tokens) with the
    scheduler's config."""
    import numpy as np
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

    cfg = scheduler.config
    sigmas = None if cfg.get("use_flow_sigmas", False) else np.linspace(1.0, 1 / num_steps, num_steps)
    mu = calculate_shift(seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                         cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
    timesteps, _ = retrieve_timesteps(scheduler, num_steps, device, sigmas=sigmas, mu=mu)
    scheduler.set_begin_index(0)
    return timesteps


def compile_transformer_blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """torch.compile each block of a FLUX / SD3 transformer in place (regional compilation): blocks of a
    kind share one compiled graph, so the compile costs two blocks rather than the whole model, and
    the elementwise work around each matmul (norms, modulation, float8 casts) is fused. Returns the blocks."""
    blocks = [block for name in ("transformer_blocks", "single_transformer_blocks")
              for block in getattr(transformer, name, [])]
    for block in blocks:
        block.compile()
    return blocks


def square_side(tokens: int) -> int:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"{tokens} latent tokens are not a square image")
    return side
