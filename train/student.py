"""The student: a small T5 encoder plus a projection head to the teacher's text width.

Layout (DESIGN.md, compatible with the published DistillT5 weights):

    encoder.*                    a transformers `T5EncoderModel` (d_model = d)
    final_projection.0.weight    Linear d -> D, no bias
    final_projection.1 / .2      ReLU, Dropout (no weights)
    final_projection.3.weight    Linear D -> D, no bias

`config.json` is the T5 encoder config plus `project_in_dim` (= d) and `project_out_dim` (= D, the
teacher's text width: 4096 for FLUX.1 and SD3). We also write `out_dim` (= D) because the published
loader's config class reads that name. The student reads the teacher's token ids, so it is saved with
the teacher's T5 tokenizer beside it.

The module is a `T5PreTrainedModel`, so diffusers accepts it in place of `text_encoder_2` (FLUX) or
`text_encoder_3` (SD3): it returns a tuple whose [0] is the (B, L, D) sequence, exactly what the
pipelines index. Loading is strict: a key that is missing or unexpected is an error, never a silent
random init.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import T5Config, T5EncoderModel, T5PreTrainedModel

WEIGHTS_NAME = "model.safetensors"
META_NAME = "t5shrink.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # recipe / CLI names
# T5EncoderModel shares one embedding between `shared` and `encoder.embed_tokens`; the published file
# stores only `encoder.shared.weight`, so the alias is optional when loading and dropped when saving.
TIED_ALIAS = "encoder.encoder.embed_tokens.weight"
TIED_SOURCE = "encoder.shared.weight"


class DistillT5EncoderModel(T5PreTrainedModel):
    """T5 encoder + `final_projection` head; a drop-in text_encoder_2 (FLUX) / text_encoder_3 (SD3)."""

    config_class = T5Config
    _no_split_modules = ["T5Block"]

    def __init__(self, config: T5Config):
        super().__init__(config)
        d_in = getattr(config, "project_in_dim", None) or config.d_model
        d_out = getattr(config, "project_out_dim", None) or getattr(config, "out_dim", None) or 4096
        config.project_in_dim, config.project_out_dim, config.out_dim = d_in, d_out, d_out
        self.encoder = T5EncoderModel(config)
        self.final_projection = nn.Sequential(
            nn.Linear(d_in, d_out, bias=False),
            nn.ReLU(),
            nn.Dropout(getattr(config, "projection_dropout", 0.1)),
            nn.Linear(d_out, d_out, bias=False),
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # T5's initialiser covers the encoder; the head keeps torch's default Linear init.
        if any(module is m for m in self.final_projection.modules()):
            return
        super()._init_weights(module)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, ...]:
        """(B, L) token ids -> ((B, L, project_out_dim),). No attention mask by default: the pipelines
        feed T5 padded ids without one, and train and inference must see the same thing."""
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, return_dict=True
        ).last_hidden_state
        return (self.final_projection(hidden),)

    # ---- saving and strict loading -------------------------------------------------------------

    def save_pretrained(self, save_directory: str | Path, tokenizer: Any = None, meta: dict | None = None, **_: Any) -> None:
        """Write config.json + model.safetensors (published key set) [+ tokenizer files, t5shrink.json]."""
        from safetensors.torch import save_file

        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        cfg = self.config.to_dict()
        cfg["architectures"] = [type(self).__name__]
        (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        save_file(published_state_dict(self), str(out / WEIGHTS_NAME), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out))
        if meta is not None:
            (out / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path, *args: Any, subfolder: str = "", **kwargs: Any) -> "DistillT5EncoderModel":
        """Load a student folder strictly. Accepts `dtype`/`torch_dtype` (what diffusers passes);
        other loading kwargs diffusers adds (device_map, low_cpu_mem_usage, ...) are ignored."""
        from safetensors.torch import load_file

        folder = _local_folder(path, subfolder)
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"{folder}: no config.json (not a student folder)")
        model = cls(load_config(folder))
        weights = folder / WEIGHTS_NAME
        if not weights.exists():
            raise FileNotFoundError(f"{folder}: no {WEIGHTS_NAME}")
        missing, unexpected = load_student_state_dict(model, load_file(str(weights)))
        if missing or unexpected:
            raise ValueError(f"{weights}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
        dtype = kwargs.get("torch_dtype") or kwargs.get("dtype")
        if isinstance(dtype, torch.dtype):
            model = model.to(dtype)
        return model.eval()


def _local_folder(path: str | Path, subfolder: str = "") -> Path:
    """A local folder as is; otherwise a hub repo id, fetched (config, weights, tokenizer files only)."""
    local = Path(path) / subfolder if subfolder else Path(path)
    if local.exists() or Path(path).exists():
        return local
    from huggingface_hub import snapshot_download

    prefix = f"{subfolder}/" if subfolder else ""
    root = snapshot_download(str(path), allow_patterns=[f"{prefix}*.json", f"{prefix}*.safetensors", f"{prefix}*.model"])
    return Path(root) / subfolder if subfolder else Path(root)


def is_student_folder(path: str | Path) -> bool:
    """Whether path (a folder or hub id) holds a student: its config.json has project_out_dim."""
    local = Path(path)
    if local.is_dir():
        cfg = local / "config.json"
        return cfg.is_file() and "project_out_dim" in cfg.read_text()
    if local.exists() or str(path) == "config":
        return False
    try:
        from huggingface_hub import hf_hub_download

        return "project_out_dim" in Path(hf_hub_download(str(path), "config.json")).read_text()
    except Exception:  # not reachable / not a repo: let the T5 loader report it
        return False


def load_config(folder: str | Path) -> T5Config:
    data = json.loads((Path(folder) / "config.json").read_text())
    if "project_out_dim" not in data and "out_dim" in data:
        data["project_out_dim"] = data["out_dim"]
    for key in ("architectures", "transformers_version"):
        data.pop(key, None)
    return T5Config.from_dict(data)


def published_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict in the published key set: the tied embedding alias dropped, tensors contiguous."""
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k != TIED_ALIAS}
    return sd


def load_student_state_dict(model: DistillT5EncoderModel, state_dict: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Load strictly; returns (missing, unexpected) with the tied-embedding alias accounted for.
    Accepts the published key set (no alias) and full torch state dicts (alias present)."""
    state_dict = dict(state_dict)
    alias = state_dict.pop(TIED_ALIAS, None)
    if alias is not None and TIED_SOURCE not in state_dict:
        state_dict[TIED_SOURCE] = alias
    elif alias is not None and not torch.equal(alias, state_dict[TIED_SOURCE]):
        warnings.warn(f"{TIED_ALIAS} differs from {TIED_SOURCE}; the model ties them, keeping {TIED_SOURCE}")
    expected = set(published_state_dict(model))
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        return missing, unexpected
    own = model.state_dict()
    with torch.no_grad():
        for key, value in state_dict.items():
            if own[key].shape != value.shape:
                raise ValueError(f"{key}: checkpoint shape {tuple(value.shape)} != model shape {tuple(own[key].shape)}")
            own[key].copy_(value.to(own[key].dtype))
    return [], []


T5_STRUCTURE = ("d_model", "d_kv", "d_ff", "num_layers", "num_heads", "feed_forward_proj", "relative_attention_num_buckets",
                "relative_attention_max_distance", "layer_norm_epsilon", "dropout_rate", "vocab_size")


def build_student(
    init: str,
    project_out_dim: int,
    vocab_size: int,
    base_config: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    projection_dropout: float = 0.1,
    trust_remote_code: bool = False,
    teacher_tokenizer: Any = None,
) -> DistillT5EncoderModel:
    """Make a student to train.

    init: "config" -> a random T5 built from `base_config` (e.g. the teacher's T5 config, for tiny
          teachers) with `overrides` applied; a student folder (has project_out_dim) -> that student,
          trained further; anything else -> a pretrained T5 name or path whose encoder weights are
          copied in (the head stays freshly initialised; the encoder is never re-randomised).
    teacher_tokenizer: when given, a pretrained T5's own tokenizer must agree with it (the student
          reads the teacher's ids).
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if init != "config" and is_student_folder(init):
        student = DistillT5EncoderModel.from_pretrained(init)
        if student.config.project_out_dim != project_out_dim:
            raise ValueError(f"student {init} projects to {student.config.project_out_dim}, teacher needs {project_out_dim}")
        return student.train()
    if init == "config":
        fields = {k: v for k, v in (base_config or {}).items() if k in T5_STRUCTURE}
        fields.update(overrides)
        fields.setdefault("vocab_size", vocab_size)
        fields["vocab_size"] = max(int(fields["vocab_size"]), vocab_size)
        config = T5Config(**fields, is_encoder_decoder=False, use_cache=False)
        pretrained = None
    else:
        pretrained = T5EncoderModel.from_pretrained(init, trust_remote_code=trust_remote_code)
        config = T5Config.from_dict({**pretrained.config.to_dict(), **overrides})
        if config.vocab_size < vocab_size:
            raise ValueError(f"{init}: vocab of {config.vocab_size} tokens cannot read the teacher's {vocab_size}-token ids")
        if teacher_tokenizer is not None:
            check_vocab(_own_tokenizer(init), teacher_tokenizer, init)
    config.project_in_dim = config.d_model
    config.project_out_dim = project_out_dim
    config.projection_dropout = projection_dropout
    student = DistillT5EncoderModel(config)
    if pretrained is not None:
        missing, unexpected = student.encoder.load_state_dict(pretrained.state_dict(), strict=False)
        missing = [k for k in missing if k != "encoder.embed_tokens.weight"]
        if missing or unexpected:
            raise ValueError(f"{init}: could not copy T5 encoder weights (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return student.train()


def _own_tokenizer(init: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(init)
    except (OSError, ValueError):  # no tokenizer files next to the weights: nothing to compare
        return None


def check_vocab(student_tokenizer: Any, teacher_tokenizer: Any, what: str) -> None:
    """The student reads the teacher's ids, so its own vocabulary must give every token the same id
    (T5's <extra_id_N> sentinels are ignored: prompts never contain them)."""
    if student_tokenizer is None:
        return
    own = student_tokenizer.get_vocab()
    wrong = [t for t, i in teacher_tokenizer.get_vocab().items() if own.get(t) != i and not t.startswith("<extra_id_")]
    if wrong:
        raise ValueError(f"{what}: its tokenizer differs from the teacher's T5 tokenizer on {len(wrong)} tokens "
                         f"(e.g. {wrong[:3]}); the student must read the teacher's ids")
