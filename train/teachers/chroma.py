"""Chroma teacher: a FLUX.1-schnell derivative conditioned on T5-XXL alone; the student replaces
`text_encoder`.

From diffusers' `ChromaPipeline`: T5 is called with the tokenizer's attention mask (unlike FLUX), and the
transformer masks every text position after the first padding token (the mask of real tokens plus one,
extended with ones over the image tokens). The student is called with the same mask and the gap is
computed under the transformer's (`base.MaskedT5`). Latents, image ids and the shifted flow-matching
timesteps are FLUX's (`FluxTeacher`); there is no pooled vector and no guidance input: Chroma samples with
true classifier-free guidance against the empty prompt "" (default scale 5.0), so, as for SD3, recipes
replace a share of prompts with "" and the student learns the negative prompt's embedding too.
"""

from __future__ import annotations

import torch

from .base import ClassifierFreeGuidance, Cond, MaskedT5
from .flux import FluxTeacher


class ChromaTeacher(MaskedT5, ClassifierFreeGuidance, FluxTeacher):
    kind = "chroma"
    pipeline_class = "ChromaPipeline"
    t5_slot = "text_encoder"
    tokenizer_slot = "tokenizer"
    text_encoder_slots = ("text_encoder",)

    @torch.no_grad()
    def encode(self, prompts: list[str], max_len: int) -> Cond:
        embeds, _, mask, *_ = self.pipe.encode_prompt(
            list(prompts), device=self.device, do_classifier_free_guidance=False, max_sequence_length=max_len)
        return Cond(embeds, mask.to(embeds.dtype))

    def predict(self, x, t, cond: Cond, guidance: float | None = None) -> torch.Tensor:
        batch, image_tokens = x.shape[0], x.shape[1]
        t = torch.as_tensor(t, device=self.device, dtype=torch.float32).expand(batch)
        mask = torch.cat([cond.pooled.bool(), torch.ones(batch, image_tokens, device=self.device, dtype=torch.bool)], 1)
        return self.transformer(
            hidden_states=x.to(self.dtype),
            timestep=(t / 1000).to(self.dtype),
            encoder_hidden_states=cond.embeds.to(self.dtype),
            txt_ids=torch.zeros(cond.embeds.shape[1], 3, device=self.device, dtype=self.dtype),
            img_ids=self._image_ids(image_tokens),
            attention_mask=mask,
            return_dict=False,
        )[0]
