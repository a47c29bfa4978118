"""PixArt-α and PixArt-Σ teachers: the student replaces `text_encoder` (T5-XXL, their only text encoder).

From diffusers' `PixArtAlphaPipeline` / `PixArtSigmaPipeline`:
- Text: the prompt is preprocessed (`_text_preprocessing`: lower-cased, or cleaned when bs4 and ftfy
  are installed, as `__call__`'s clean_caption=True does), padded to max_sequence_length (α 120,
  Σ 300) and encoded *with* its attention mask; the transformer gets the mask too
  (`encoder_attention_mask`), so padding tokens are invisible to it. The student is called the same way
  and the gap is computed under the same mask (`base.MaskedT5`).
- Sampling: epsilon prediction (the learned-variance half of the output is dropped, as the pipeline
  does), classifier-free guidance against the empty prompt "" (its embedding and mask: the student must
  learn it too, so recipes replace a share of prompts with "": teacher.empty_prompt_prob), and the
  pipeline's own scheduler (DPM-Solver++ multistep as shipped) with its timesteps.
- α's 1024 px model (sample_size 128) takes resolution and aspect-ratio micro-conditions; Σ takes none.
"""

from __future__ import annotations

import torch

from .base import ClassifierFreeGuidance, Cond, MaskedT5, SpatialLatents, Teacher


class PixArtAlphaTeacher(MaskedT5, SpatialLatents, ClassifierFreeGuidance, Teacher):
    kind = "pixart-alpha"
    pipeline_class = "PixArtAlphaPipeline"
    t5_slot = "text_encoder"
    tokenizer_slot = "tokenizer"
    text_encoder_slots = ("text_encoder",)
    micro_conditions = True  # α's 1024 px model (sample_size 128) reads resolution and aspect ratio

    def __init__(self, pipe, source, device):
        super().__init__(pipe, source, device)
        if float(getattr(self.scheduler, "init_noise_sigma", 1.0)) != 1.0:
            # a sigma-scaled scheduler (Euler, Heun) would need scale_model_input at every probe of the gap too
            raise ValueError(f"{source}: scheduler {type(self.scheduler).__name__} scales its states "
                             "(init_noise_sigma != 1); use the pipeline's DPMSolverMultistepScheduler, DDIM or DDPM")
        self.learned_sigma = self.transformer.config.out_channels == 2 * self.transformer.config.in_channels

    @property
    def clean_caption(self) -> bool:
        """What `__call__`'s default clean_caption=True amounts to here: cleaning needs bs4 and ftfy."""
        from diffusers.utils import is_bs4_available, is_ftfy_available

        return is_bs4_available() and is_ftfy_available()

    def _texts(self, prompts: list[str]) -> list[str]:
        return self.pipe._text_preprocessing(list(prompts), clean_caption=self.clean_caption)

    def tokenize(self, prompts: list[str], max_len: int) -> torch.Tensor:
        return super().tokenize(self._texts(prompts), max_len)

    @torch.no_grad()
    def encode(self, prompts: list[str], max_len: int) -> Cond:
        embeds, mask, _, _ = self.pipe.encode_prompt(
            list(prompts), do_classifier_free_guidance=False, device=self.device, clean_caption=self.clean_caption,
            max_sequence_length=max_len)
        return Cond(embeds, mask.to(embeds.dtype))

    def timesteps(self, num_steps: int, latents: torch.Tensor) -> torch.Tensor:
        from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import retrieve_timesteps

        timesteps, _ = retrieve_timesteps(self.scheduler, num_steps, self.device)
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(0)
        return timesteps

    def sigma_to_timestep(self, sigma: float) -> float:
        return float(min(self.scheduler.config.num_train_timesteps - 1, round(sigma * self.scheduler.config.num_train_timesteps)))

    def noised(self, x0: torch.Tensor, eps: torch.Tensor, sigma: float) -> tuple[torch.Tensor, float]:
        """DDPM's forward process at the timestep sigma maps to: sqrt(a) x0 + sqrt(1 - a) eps."""
        t = self.sigma_to_timestep(sigma)
        alpha = self.scheduler.alphas_cumprod[int(t)].item()
        return alpha**0.5 * x0 + (1 - alpha) ** 0.5 * eps, t

    def _added_cond(self, x: torch.Tensor) -> dict:
        if not (self.micro_conditions and self.transformer.config.sample_size == 128):
            return {"resolution": None, "aspect_ratio": None}
        side = float(x.shape[-1] * self.pipe.vae_scale_factor)
        batch = x.shape[0]
        return {"resolution": torch.tensor([[side, side]], device=self.device, dtype=self.dtype).expand(batch, 2),
                "aspect_ratio": torch.ones(batch, 1, device=self.device, dtype=self.dtype)}

    def predict(self, x, t, cond: Cond, guidance: float | None = None) -> torch.Tensor:
        batch = x.shape[0]
        t = torch.as_tensor(t, device=self.device).expand(batch)
        out = self.transformer(
            x.to(self.dtype), encoder_hidden_states=cond.embeds.to(self.dtype),
            encoder_attention_mask=cond.pooled.to(self.dtype), timestep=t, added_cond_kwargs=self._added_cond(x),
            return_dict=False,
        )[0]
        return out.chunk(2, dim=1)[0] if self.learned_sigma else out

    @torch.no_grad()
    def decode(self, x: torch.Tensor, resolution: int):
        vae = self.pipe.vae
        image = vae.decode((x / vae.config.scaling_factor).to(vae.dtype), return_dict=False)[0]
        return self.pipe.image_processor.postprocess(image, output_type="pil")


class PixArtSigmaTeacher(PixArtAlphaTeacher):
    kind = "pixart-sigma"
    pipeline_class = "PixArtSigmaPipeline"
    micro_conditions = False  # PixArtSigmaPipeline passes none at any size
