"""FLUX.1 teacher: the student replaces `text_encoder_2` (T5-XXL).

- Conditioning: the T5 sequence (B, L, 4096) goes in as `encoder_hidden_states`; the pooled CLIP-L
  vector comes from the pipeline's own CLIP encoder and is always passed through (never zeroed: the
  transformer was trained with it, and at inference the pipeline computes it).
- Guidance: FLUX.1-dev is guidance-distilled (a `guidance` input, no second branch); the trainer
  draws the scale per batch from a range (default 2.0-5.0). Schnell has no guidance input and gets None.
- Latents are packed 2x2 patches with image position ids, timesteps follow the pipeline: sigmas
  linspace(1, 1/N, N) shifted by `calculate_shift(image_seq_len)`.
"""

from __future__ import annotations

import torch

from .base import Cond, Teacher, flow_timesteps, square_side


class FluxTeacher(Teacher):
    kind = "flux"
    pipeline_class = "FluxPipeline"
    t5_slot = "text_encoder_2"
    tokenizer_slot = "tokenizer_2"
    text_encoder_slots = ("text_encoder", "text_encoder_2")

    def __init__(self, pipe, source, device):
        super().__init__(pipe, source, device)
        self.has_guidance = bool(getattr(self.transformer.config, "guidance_embeds", False))  # Chroma: none
        self._img_ids: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def encode(self, prompts: list[str], max_len: int) -> Cond:
        embeds, pooled, _ = self.pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, device=self.device, max_sequence_length=max_len
        )
        return Cond(embeds, pooled)

    def student_cond(self, seq: torch.Tensor, teacher: Cond, max_len: int) -> Cond:
        return Cond(seq, teacher.pooled)

    def check_resolution(self, resolution: int) -> None:
        multiple = self.pipe.vae_scale_factor * 2
        if resolution % multiple:
            raise ValueError(f"resolution {resolution} must be a multiple of {multiple} for this FLUX pipeline")

    def noise(self, batch: int, resolution: int, generator: torch.Generator) -> torch.Tensor:
        self.check_resolution(resolution)
        side = 2 * (resolution // (self.pipe.vae_scale_factor * 2))
        channels = self.transformer.config.in_channels // 4
        x = torch.randn(batch, channels, side, side, generator=generator, dtype=torch.float32)
        return self.pipe._pack_latents(x, batch, channels, side, side).to(self.device)

    def timesteps(self, num_steps: int, latents: torch.Tensor) -> torch.Tensor:
        return flow_timesteps(self.scheduler, num_steps, latents.shape[1], self.device)

    def _image_ids(self, tokens: int) -> torch.Tensor:
        if tokens not in self._img_ids:
            side = square_side(tokens)
            self._img_ids[tokens] = self.pipe._prepare_latent_image_ids(1, side, side, self.device, self.dtype)
        return self._img_ids[tokens]

    def predict(self, x, t, cond: Cond, guidance: float | None) -> torch.Tensor:
        batch = x.shape[0]
        t = torch.as_tensor(t, device=self.device, dtype=torch.float32).expand(batch)
        g = None
        if self.has_guidance:
            g = torch.full((batch,), float(guidance if guidance is not None else 3.5), device=self.device, dtype=torch.float32)
        return self.transformer(
            hidden_states=x.to(self.dtype),
            timestep=(t / 1000).to(self.dtype),
            guidance=g,
            pooled_projections=cond.pooled.to(self.dtype),
            encoder_hidden_states=cond.embeds.to(self.dtype),
            txt_ids=torch.zeros(cond.embeds.shape[1], 3, device=self.device, dtype=self.dtype),
            img_ids=self._image_ids(x.shape[1]),
            return_dict=False,
        )[0]

    @torch.no_grad()
    def decode(self, x: torch.Tensor, resolution: int):
        vae = self.pipe.vae
        latents = self.pipe._unpack_latents(x, resolution, resolution, self.pipe.vae_scale_factor)
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        return self.pipe.image_processor.postprocess(image, output_type="pil")
