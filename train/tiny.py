"""Tiny random FLUX and SD3 pipelines built from configs, for tests and the `tiny` smoke recipe.

Nothing here is downloaded: tokenizers are trained on the fly with `tokenizers` from the built-in
prompt list, models are random, and the result is saved to a folder that is then loaded back through
the same `from_pretrained` code a real checkpoint takes (`teacher: tiny:flux` resolves to that folder).
The models are far too small to draw anything; they exist so the distillation loop, the metric and
the exports can be exercised end to end on a CPU in about a minute.
"""

from __future__ import annotations

import json
from pathlib import Path

# Bump when the architecture below changes so stale cached folders are rebuilt.
TINY_VERSION = 1

_COLORS = ["red", "blue", "green", "yellow", "black", "white", "purple", "orange", "pink", "brown"]
_OBJECTS = ["cat", "dog", "car", "cup", "chair", "bird", "apple", "house", "tree", "book", "clock", "boat"]
_TEXTURES = ["wooden", "metallic", "fluffy", "glass", "leather", "plastic"]
_SHAPES = ["round", "square", "triangular", "oval"]
_RELATIONS = ["on the left of", "on the right of", "on top of", "below", "next to"]
_WORDS = ["hello", "open", "sale", "stop", "love", "coffee", "welcome", "exit", "peace", "music"]
_HOLDERS = ["holding a sign reading", "carrying a banner with the words", "next to a board that says"]


def builtin_prompts() -> list[dict[str, str]]:
    """A deterministic list of ~560 short prompts with categories (color, texture, shape, spatial,
    numeracy, text_rendering), the data of the `tiny` recipe. Order is fixed; callers shuffle."""
    rows: list[dict[str, str]] = []
    for i, obj in enumerate(_OBJECTS):
        for col in _COLORS:
            rows.append({"text": f"a {col} {obj}", "category": "color"})
        for tex in _TEXTURES:
            rows.append({"text": f"a {tex} {obj}", "category": "texture"})
        for shp in _SHAPES:
            rows.append({"text": f"a {shp} {obj}", "category": "shape"})
        for k, rel in enumerate(_RELATIONS):
            other = _OBJECTS[(i + k + 1) % len(_OBJECTS)]
            rows.append({"text": f"a {obj} {rel} a {other}", "category": "spatial"})
            col = _COLORS[(i + k) % len(_COLORS)]
            rows.append({"text": f"a {col} {obj} {rel} a {_COLORS[(i + 2 * k + 3) % 10]} {other}", "category": "spatial"})
        for word in ["two", "three", "four", "five"]:
            rows.append({"text": f"{word} {obj}s", "category": "numeracy"})
        for k, holder in enumerate(_HOLDERS):
            for w in _WORDS[k::3]:
                rows.append({"text": f"a {obj} {holder} '{w}'", "category": "text_rendering"})
    return rows


def _corpus() -> list[str]:
    words = _COLORS + _OBJECTS + _TEXTURES + _SHAPES + _WORDS + ["a", "the", "of", "with", "and"]
    return [r["text"] for r in builtin_prompts()] + words + [w + "s" for w in _OBJECTS]


def train_t5_tokenizer(vocab_size: int = 400):
    """A T5-style (Unigram, `<pad>`=0, `</s>`=1, `<unk>`=2) tokenizer trained on the built-in prompts."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", shrinking_factor=0.9
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    vocab = [(piece, float(score)) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)


def train_clip_tokenizer(vocab_size: int = 400):
    """A CLIP-style byte-level BPE (`</w>` word ends, 77 tokens) trained on the built-in prompts."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    bos, eos = "<|startoftext|>", "<|endoftext|>"
    tok = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>", unk_token=eos))
    # The same normaliser and pre-tokeniser CLIPTokenizer builds, so learnt merges apply there.
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[bos, eos],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return CLIPTokenizer(vocab=model["vocab"], merges=merges, model_max_length=77)


def _clip_config(tokenizer, hidden: int, projection: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=projection,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _t5_encoder(tokenizer, d_model: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=d_model,
            d_kv=8,
            d_ff=2 * d_model,
            num_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
            is_encoder_decoder=False,
        )
    )


def _flux_scheduler():
    """FLUX.1-dev's scheduler settings (Chroma keeps them)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                           base_image_seq_len=256, max_image_seq_len=4096)


def _vae(shift: float, scale: float):
    from diffusers import AutoencoderKL

    # Three blocks: an 8x downsampling VAE would need 64 px images; 4x keeps 32 px usable.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=scale,
        shift_factor=shift,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def build_flux(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random FluxPipeline (guidance-embedded, like FLUX.1-dev) to out_dir."""
    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    clip_tok, t5_tok = train_clip_tokenizer(), train_t5_tokenizer()
    with torch.random.fork_rng():  # leave the caller's random state alone
        torch.manual_seed(seed)
        pipe = FluxPipeline(
            scheduler=_flux_scheduler(),
            vae=_vae(shift=0.1159, scale=0.3611),
            text_encoder=CLIPTextModel(_clip_config(clip_tok, hidden=32, projection=32)),
            tokenizer=clip_tok,
            text_encoder_2=_t5_encoder(t5_tok, d_model=32),
            tokenizer_2=t5_tok,
            transformer=FluxTransformer2DModel(
                patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
                axes_dims_rope=(4, 6, 6),
            ),
        )
    return _save(pipe, out_dir)


def build_sd3(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random StableDiffusion3Pipeline (CLIP-L, CLIP-G, T5) to out_dir."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    clip_tok, t5_tok = train_clip_tokenizer(), train_t5_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        # CLIP-L and CLIP-G hidden states (16 + 16) are concatenated and zero-padded to the T5 width (32).
        pipe = StableDiffusion3Pipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=_vae(shift=0.0609, scale=1.5305),
            text_encoder=CLIPTextModelWithProjection(_clip_config(clip_tok, hidden=16, projection=16)),
            tokenizer=clip_tok,
            text_encoder_2=CLIPTextModelWithProjection(_clip_config(clip_tok, hidden=16, projection=16)),
            tokenizer_2=clip_tok,
            text_encoder_3=_t5_encoder(t5_tok, d_model=32),
            tokenizer_3=t5_tok,
            transformer=SD3Transformer2DModel(
                sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
                joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=32, out_channels=4,
                pos_embed_max_size=16,
            ),
        )
    return _save(pipe, out_dir)


def build_pixart(out_dir: str | Path, seed: int = 0, sigma: bool = False) -> Path:
    """Write a tiny random PixArtAlphaPipeline (or PixArtSigmaPipeline) to out_dir: T5 only, learned
    variance (out_channels = 2 x in_channels) and DPM-Solver++, as the released models ship."""
    import diffusers
    import torch
    from diffusers import DPMSolverMultistepScheduler, PixArtTransformer2DModel

    t5_tok = train_t5_tokenizer()
    pipeline = diffusers.PixArtSigmaPipeline if sigma else diffusers.PixArtAlphaPipeline
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        pipe = pipeline(
            scheduler=DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                                                  algorithm_type="dpmsolver++", solver_order=2),
            vae=_vae(shift=0.0, scale=0.18215),
            text_encoder=_t5_encoder(t5_tok, d_model=32),
            tokenizer=t5_tok,
            transformer=PixArtTransformer2DModel(
                num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=1,
                cross_attention_dim=32, sample_size=8, patch_size=2, caption_channels=32, norm_num_groups=4,
            ),
        )
    return _save(pipe, out_dir)


def build_pixart_sigma(out_dir: str | Path, seed: int = 0) -> Path:
    return build_pixart(out_dir, seed, sigma=True)


def build_chroma(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random ChromaPipeline (T5 only, FLUX-style latents, no guidance input) to out_dir."""
    import torch
    from diffusers import ChromaPipeline, ChromaTransformer2DModel

    t5_tok = train_t5_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        pipe = ChromaPipeline(
            scheduler=_flux_scheduler(),
            vae=_vae(shift=0.1159, scale=0.3611),
            text_encoder=_t5_encoder(t5_tok, d_model=32),
            tokenizer=t5_tok,
            transformer=ChromaTransformer2DModel(
                patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 6, 6),
                approximator_num_channels=8, approximator_hidden_dim=32, approximator_layers=1,
            ),
        )
    return _save(pipe, out_dir)


def build_ltx_video(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random LTXPipeline (video: 4x spatial and temporal compression, T5 only) to out_dir."""
    import torch
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel

    t5_tok = train_t5_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = AutoencoderKLLTXVideo(
            latent_channels=8, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
            layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
            spatio_temporal_scaling=(True, True, False, False), decoder_spatio_temporal_scaling=(True, True, False, False),
            decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4, upsample_factor=(1,) * 4,
            patch_size=1, patch_size_t=1,
        )
        pipe = LTXPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(
                shift=1.0, use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
                base_image_seq_len=1024, max_image_seq_len=4096,
            ),
            vae=vae,
            text_encoder=_t5_encoder(t5_tok, d_model=32),
            tokenizer=t5_tok,
            transformer=LTXVideoTransformer3DModel(
                in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=16,
                cross_attention_dim=32, num_layers=1, caption_channels=32,
            ),
        )
    return _save(pipe, out_dir)


def _save(pipe, out_dir: str | Path) -> Path:
    from core.fileio import staging_path, swap_into_place

    out = Path(out_dir)
    tmp = staging_path(out)
    pipe.save_pretrained(tmp)
    swap_into_place(tmp, out)
    return out


BUILDERS = {"flux": build_flux, "sd3": build_sd3, "pixart-alpha": build_pixart, "pixart-sigma": build_pixart_sigma,
            "chroma": build_chroma, "ltx-video": build_ltx_video}


def tiny_teacher_path(kind: str) -> Path:
    """Folder of the tiny `kind` pipeline, built on first use (and rebuilt when TINY_VERSION changes)."""
    if kind not in BUILDERS:
        raise ValueError(f"unknown tiny teacher {kind!r} (known: {', '.join(BUILDERS)})")
    from core.paths import cache_dir

    from filelock import FileLock  # huggingface_hub's own dependency

    path = cache_dir() / f"tiny-{kind}-v{TINY_VERSION}"
    if (path / "model_index.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if _distributed_rank() > 0:  # transformers writes weights on rank 0 only, so rank 0 builds and the rest wait
        return _wait_for(path / "model_index.json")
    # separate runs may reach this together: one builds, the rest wait for it, rather than each swapping in
    # its own copy while another loads from the folder
    with FileLock(str(path.parent / f".{path.name}.lock")):
        if not (path / "model_index.json").exists():
            BUILDERS[kind](path)
    return path


def _distributed_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _wait_for(marker: Path, timeout_s: float = 600) -> Path:
    import time

    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{marker.parent}: rank 0 did not finish building the tiny teacher in {timeout_s:.0f} s")
        time.sleep(0.2)
    return marker.parent
