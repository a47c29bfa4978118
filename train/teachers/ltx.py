"""LTX-Video teacher (a video family): the student replaces `text_encoder` (T5-XXL, its only text encoder).

From diffusers' `LTXPipeline`: T5 is called *without* a mask (the student too), and the transformer takes
the tokenizer's padding mask (`encoder_attention_mask`, carried in Cond.pooled: `base.TextMask`). Latents
are frames x h x w of the video VAE, packed into tokens; the sampler is flow matching with the shift of
`calculate_shift(video tokens)`, and timesteps go to the transformer on the 0..1000 scale with the
pipeline's RoPE interpolation scale (temporal compression / frame rate, spatial compression).
Classifier-free guidance against the empty prompt (default 3.0), so recipes replace a share of prompts
with "". Training clips are short (`teacher.frames`, default 9: two latent frames at LTX's 8x temporal
compression) at low resolution; previews and the evaluation suite take the middle frame of each clip.
"""

from __future__ import annotations

import math

import torch

from .base import ClassifierFreeGuidance, Cond, Teacher, TextMask, flow_timesteps


class LTXVideoTeacher(TextMask, ClassifierFreeGuidance, Teacher):
    kind = "ltx-video"
    pipeline_class = "LTXPipeline"
    t5_slot = "text_encoder"
    tokenizer_slot = "tokenizer"
    text_encoder_slots = ("text_encoder",)
    frames = 9
    frame_rate = 25  # LTXPipeline's default: it sets the temporal RoPE scale

    @torch.no_grad()
    def encode(self, prompts: list[str], max_len: int) -> Cond:
        embeds, mask, _, _ = self.pipe.encode_prompt(
            list(prompts), do_classifier_free_guidance=False, max_sequence_length=max_len, device=self.device)
        return Cond(embeds, mask.to(embeds.dtype))

    def _latent_frames(self) -> int:
        ratio = self.pipe.vae_temporal_compression_ratio
        if (self.frames - 1) % ratio:
            raise ValueError(f"teacher.frames {self.frames} must be 1 + a multiple of {ratio} for this LTX-Video pipeline")
        return (self.frames - 1) // ratio + 1

    def check_resolution(self, resolution: int) -> None:
        multiple = self.pipe.vae_spatial_compression_ratio * self.pipe.transformer_spatial_patch_size
        if resolution % multiple:
            raise ValueError(f"resolution {resolution} must be a multiple of {multiple} for this LTX-Video pipeline")

    def noise(self, batch: int, resolution: int, generator: torch.Generator) -> torch.Tensor:
        self.check_resolution(resolution)
        side = resolution // self.pipe.vae_spatial_compression_ratio
        shape = (batch, self.transformer.config.in_channels, self._latent_frames(), side, side)
        x = torch.randn(shape, generator=generator, dtype=torch.float32)
        return self.pipe._pack_latents(x, self.pipe.transformer_spatial_patch_size,
                                       self.pipe.transformer_temporal_patch_size).to(self.device)

    def _latent_shape(self, tokens: int) -> tuple[int, int, int]:
        """(frames, height, width) of the latent video behind `tokens` packed tokens."""
        frames = self._latent_frames() // self.pipe.transformer_temporal_patch_size
        side = math.isqrt(tokens // frames)
        return frames, side, side

    def timesteps(self, num_steps: int, latents: torch.Tensor) -> torch.Tensor:
        return flow_timesteps(self.scheduler, num_steps, latents.shape[1], self.device)

    def predict(self, x, t, cond: Cond, guidance: float | None = None) -> torch.Tensor:
        batch = x.shape[0]
        frames, height, width = self._latent_shape(x.shape[1])
        ratio_t, ratio_s = self.pipe.vae_temporal_compression_ratio, self.pipe.vae_spatial_compression_ratio
        t = torch.as_tensor(t, device=self.device, dtype=torch.float32).expand(batch)
        return self.transformer(
            hidden_states=x.to(self.dtype), encoder_hidden_states=cond.embeds.to(self.dtype), timestep=t,
            encoder_attention_mask=cond.pooled.to(self.dtype), num_frames=frames, height=height, width=width,
            rope_interpolation_scale=(ratio_t / self.frame_rate, ratio_s, ratio_s), return_dict=False,
        )[0]

    @torch.no_grad()
    def decode(self, x: torch.Tensor, resolution: int):
        """The middle frame of each clip, as a PIL image (the previews and the image metrics take stills)."""
        pipe, vae = self.pipe, self.pipe.vae
        latents = pipe._unpack_latents(x.float(), *self._latent_shape(x.shape[1]), pipe.transformer_spatial_patch_size,
                                       pipe.transformer_temporal_patch_size)
        latents = pipe._denormalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        timestep = torch.zeros(len(latents), device=self.device, dtype=vae.dtype) if vae.config.timestep_conditioning else None
        video = vae.decode(latents.to(vae.dtype), timestep, return_dict=False)[0]
        clips = pipe.video_processor.postprocess_video(video, output_type="pil")
        return [clip[len(clip) // 2] for clip in clips]
