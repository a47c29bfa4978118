"""Stable Diffusion 3 teacher: the student replaces `text_encoder_3` (T5-XXL).

- Conditioning, as `StableDiffusion3Pipeline.encode_prompt` builds it: the CLIP-L and CLIP-G
  penultimate hidden states are concatenated on the feature axis, zero-padded to the T5 width
  (4096), and put before the T5 sequence: (B, 77 + L, 4096). Pooled = [CLIP-L pooled, CLIP-G
  pooled]. The student's sequence takes the T5 slot only; the CLIP parts are the teacher's own.
- Classifier-free guidance: SD3 samples with two branches, uncond + g * (cond - uncond), where the
  unconditional branch is the empty prompt "" through all three encoders. With the student in place
  the empty prompt also goes through the student, so it must reproduce T5("") too. The trainer
  therefore (1) follows the teacher's full CFG trajectory (scale drawn per batch from the range) so
  the states it trains on are the ones sampling visits, (2) regresses the conditional branch,
  transformer(x, t, student) -> transformer(x, t, teacher), and (3) replaces a fraction of the
  prompts with "" (`teacher.empty_prompt_prob`, 0.1 in the SD3 recipe), which distils the
  unconditional branch with the same loss.
"""

from __future__ import annotations

import torch

from .base import ClassifierFreeGuidance, Cond, SpatialLatents, Teacher


class SD3Teacher(SpatialLatents, ClassifierFreeGuidance, Teacher):
    kind = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"
    t5_slot = "text_encoder_3"
    tokenizer_slot = "tokenizer_3"
    text_encoder_slots = ("text_encoder", "text_encoder_2", "text_encoder_3")

    @torch.no_grad()
    def encode(self, prompts: list[str], max_len: int) -> Cond:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, prompt_3=None, device=self.device,
            do_classifier_free_guidance=False, max_sequence_length=max_len,
        )
        return Cond(embeds, pooled)

    def student_cond(self, seq: torch.Tensor, teacher: Cond, max_len: int) -> Cond:
        clip_part = teacher.embeds[:, : teacher.embeds.shape[1] - max_len]
        return Cond(torch.cat([clip_part.to(seq.dtype), seq], dim=1), teacher.pooled)

    def student_uncond(self, student: torch.nn.Module, max_len: int) -> Cond:
        seq = self.student_sequence(student, self.tokenize([""], max_len).to(self.device))
        return self.student_cond(seq, self.uncond(max_len), max_len)

    def timesteps(self, num_steps: int, latents: torch.Tensor) -> torch.Tensor:
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift, retrieve_timesteps

        cfg = self.scheduler.config
        kwargs = {}
        if cfg.get("use_dynamic_shifting", None):
            patch = self.transformer.config.patch_size
            seq_len = (latents.shape[2] // patch) * (latents.shape[3] // patch)
            kwargs["mu"] = calculate_shift(seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                                           cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.16))
        timesteps, _ = retrieve_timesteps(self.scheduler, num_steps, self.device, **kwargs)
        self.scheduler.set_begin_index(0)
        return timesteps

    def predict(self, x, t, cond: Cond, guidance: float | None = None) -> torch.Tensor:
        batch = x.shape[0]
        t = torch.as_tensor(t, device=self.device, dtype=torch.float32).expand(batch)
        return self.transformer(
            hidden_states=x.to(self.dtype),
            timestep=t.to(self.dtype),
            encoder_hidden_states=cond.embeds.to(self.dtype),
            pooled_projections=cond.pooled.to(self.dtype),
            return_dict=False,
        )[0]

    @torch.no_grad()
    def decode(self, x: torch.Tensor, resolution: int):
        vae = self.pipe.vae
        latents = x / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        return self.pipe.image_processor.postprocess(image, output_type="pil")
