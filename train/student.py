"""The student: a small T5 encoder plus a projection head to the teacher's text width.

Layout (compatible with the published DistillT5 weights):

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
import math
import re
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
        from train.weights import load_safetensors

        folder = _local_folder(path, subfolder)
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"{folder}: no config.json (not a student folder)")
        config = load_config(folder)
        weights = folder / WEIGHTS_NAME
        if not weights.exists():
            raise FileNotFoundError(f"{folder}: no {WEIGHTS_NAME}")
        check_t5_folder(folder, config)  # before building: an inflated config.json must not allocate
        model = cls(config)
        try:
            missing, unexpected = load_student_state_dict(model, load_safetensors(weights))
        except ValueError as exc:
            raise ValueError(str(exc) if str(weights) in str(exc) else f"{weights}: {exc}") from None
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
        cfg = local / "config.json"  # bytes: a config.json that is not UTF-8 is reported by load_config
        return cfg.is_file() and b"project_out_dim" in cfg.read_bytes()
    if local.exists() or str(path) == "config":
        return False
    try:
        from huggingface_hub import hf_hub_download

        return "project_out_dim" in Path(hf_hub_download(str(path), "config.json")).read_text()
    except Exception:  # not reachable / not a repo: let the T5 loader report it
        return False


def load_config(folder: str | Path) -> T5Config:
    """A folder's config.json as a T5Config; anything unreadable is one error naming the file."""
    from train.weights import read_json

    path = Path(folder) / "config.json"
    data = read_json(path, "a T5 config.json")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object; fix config.json")
    if "project_out_dim" not in data and "out_dim" in data:
        data["project_out_dim"] = data["out_dim"]
    for key in ("architectures", "transformers_version"):
        data.pop(key, None)
    try:
        return T5Config.from_dict(data)
    except Exception as exc:  # an unknown feed_forward_proj, transformers' type validation of a field, ...
        raise ValueError(f"{path}: {' '.join(str(exc).split())[:300] or type(exc).__name__}; fix config.json") from None


# ---- config.json against the weights, before anything is built -----------------------------------

# Far above any T5 (T5-XXL: d_model 4096, d_ff 10240, 24 layers, 64 heads of 64; mT5's vocabulary has
# 250,112 tokens), far below sizes that exhaust a machine before the first shape error.
T5_LIMITS = {"d_model": 65_536, "d_kv": 4_096, "d_ff": 262_144, "num_layers": 1_024, "num_heads": 1_024,
             "vocab_size": 2_097_152, "relative_attention_num_buckets": 16_384, "project_in_dim": 65_536,
             "project_out_dim": 65_536}
MAX_PARAMETERS = 20_000_000_000  # the whole T5-XXL (encoder and decoder) has 11 B
_BLOCK = re.compile(r"(?:^|\.)encoder\.block\.(\d+)\.")
# (tensor name pattern, the config keys its axes give); the first tensor that matches a pattern is used.
# Names are matched at their end, so a student's `encoder.encoder.*`, a T5EncoderModel's `encoder.*`
# and a full T5's encoder half all read alike. `inner` is num_heads * d_kv.
_EVIDENCE = [
    (r"(?:^|\.)shared\.weight$", ("vocab_size", "d_model")),
    (r"(?:^|\.)encoder\.embed_tokens\.weight$", ("vocab_size", "d_model")),
    (r"(?:^|\.)encoder\.final_layer_norm\.weight$", ("d_model",)),
    (r"encoder\.block\.\d+\.layer\.0\.SelfAttention\.q\.weight$", ("inner", "d_model")),
    (r"encoder\.block\.\d+\.layer\.0\.SelfAttention\.relative_attention_bias\.weight$",
     ("relative_attention_num_buckets", "num_heads")),
    (r"encoder\.block\.\d+\.layer\.1\.DenseReluDense\.wi(?:_0)?\.weight$", ("d_ff", "d_model")),
    (r"^final_projection\.0\.weight$", ("project_out_dim", "project_in_dim")),
]


def _config_values(config: T5Config) -> dict[str, Any]:
    values = {k: getattr(config, k, None) for k in T5_LIMITS}
    values["project_in_dim"] = values["project_in_dim"] or values["d_model"]
    if not values["project_out_dim"]:  # a plain T5: no head
        values.pop("project_out_dim")
        values.pop("project_in_dim")
    return values


def _weights_dims(shapes: dict[str, tuple[int, ...]], where: str) -> dict[str, tuple[int, str]]:
    """Config key -> (its value in the weights, the evidence in words), from tensor shapes alone."""
    dims: dict[str, tuple[int, str]] = {}
    layers = {int(m.group(1)) for k in shapes if (m := _BLOCK.search(k))}
    if layers:
        dims["num_layers"] = (len(layers), f"{len(layers)} layers")
    for pattern, keys in _EVIDENCE:
        name = next((k for k in shapes if re.search(pattern, k)), None)
        if name is None:
            continue
        if len(shapes[name]) != len(keys):
            raise ValueError(f"{where}: tensor {name} has shape {list(shapes[name])}, not {len(keys)}-D; "
                             "the weights are not a T5 encoder's")
        for key, size in zip(keys, shapes[name]):
            shown = "num_heads*d_kv" if key == "inner" else key
            dims.setdefault(key, (size, f"{shown}={size} ({name} is {list(shapes[name])})"))
    return dims


def check_t5_folder(folder: str | Path, config: T5Config, need_safetensors: bool = True) -> None:
    """Refuse a config.json that its weights contradict or that is absurd, from the weights' headers only.
    A model built from an inflated config (num_layers 10,000,000) allocates until the machine gives out
    before any shape check, so this runs before building. need_safetensors=False admits a folder whose
    weights are another format (pytorch_model.bin): its config is then only bounded."""
    from train.weights import folder_shapes

    folder = Path(folder)
    shapes, source = folder_shapes(folder)
    has_other = any(folder.glob("*.bin"))
    if not shapes and (need_safetensors or not has_other):
        raise FileNotFoundError(f"{folder}: no {WEIGHTS_NAME} (or its .index.json) beside config.json")
    values = _config_values(config)
    for key, (size, evidence) in _weights_dims(shapes, f"{folder}/{source}").items():
        if key == "inner":
            if not _whole(values, "num_heads", "d_kv"):
                continue  # the bounds below name the bad one
            value, shown = values["num_heads"] * values["d_kv"], f"num_heads*d_kv={values['num_heads']}*{values['d_kv']}"
        else:
            value = values.get(key, size)
            shown = f"{key}={value!r}"
        if value != size:
            raise ValueError(f"{folder}: config.json {shown} but {source} holds {evidence}; "
                             "fix config.json or pair it with its own weights")
    for key, value in values.items():
        if type(value) is not int or not 1 <= value <= T5_LIMITS[key]:
            raise ValueError(f"{folder}: config.json {key}={value!r} is not a whole number from 1 to "
                             f"{T5_LIMITS[key]:,}; fix config.json")
    _check_size(folder, values, shapes, source)


def _whole(values: dict[str, Any], *keys: str) -> bool:
    return all(type(values.get(k)) is int for k in keys)


def _check_size(folder: Path, values: dict[str, Any], shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """A lower bound on the parameters config.json describes must fit in the weights (and in reason)."""
    d, inner = values["d_model"], values["num_heads"] * values["d_kv"]
    params = values["vocab_size"] * d + values["num_layers"] * (2 * d * inner + 2 * d * values["d_ff"])
    if "project_out_dim" in values:
        params += values["project_out_dim"] * (values["project_in_dim"] + values["project_out_dim"])
    held = sum(math.prod(s) for s in shapes.values())
    if params > MAX_PARAMETERS:
        raise ValueError(f"{folder}: config.json describes over {params:,} parameters (limit {MAX_PARAMETERS:,}); "
                         "fix config.json")
    if shapes and params > held:
        raise ValueError(f"{folder}: config.json describes over {params:,} parameters but {source} holds {held:,}; "
                         "fix config.json or pair it with its own weights")


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
    from core.paths import hub_error, local_path_or_hub_id

    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    hub_id = init != "config" and local_path_or_hub_id(init, "student.init") is None
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
        if Path(init).is_dir():  # a local T5 folder: checked before transformers builds it (hub ids: not here)
            check_t5_folder(init, load_config(init), need_safetensors=False)
        try:
            pretrained = T5EncoderModel.from_pretrained(init, trust_remote_code=trust_remote_code)
        except OSError as exc:  # what transformers raises for a repo it cannot fetch names neither key nor cure
            if hub_id:
                raise hub_error(init, "student.init", exc) from exc
            raise
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
