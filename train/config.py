"""Training recipes: schema, defaults, and resolving a recipe plus command-line overrides.

A recipe names the teacher, the student, the optimiser, validation, and a list of stages, each with
its data, resolution, steps and max_sequence_length. Unknown keys fail naming the key (core.recipe).
"""

from __future__ import annotations

import copy
import difflib
import json
import os
from pathlib import Path
from typing import Any

from core.errors import ConfigError, describe_value
from core.recipe import apply_overrides, load_recipe, recipe_hash, validate

NUM = (int, float)

SCHEMA: dict[str, Any] = {
    "description": str,
    "seed": int,
    "cpu_threads": int,  # torch intra-op threads on a CPU run; null: chosen from the free cores (choose_cpu_threads)
    "teacher": {
        "path": str,  # folder, hub id, or tiny:flux / tiny:sd3
        "dtype": str,  # auto | bf16 | fp16 | fp32 (auto: bf16 on CUDA, fp32 on CPU)
        "trust_remote_code": bool,
        "guidance": [NUM],  # [min, max]: FLUX guidance input / SD3 CFG scale, drawn per batch
        "empty_prompt_prob": NUM,  # share of prompts replaced by "" (distils SD3's unconditional branch)
        "gradient_checkpointing": bool,  # recompute transformer activations in the backward pass
        "fp8": bool,  # transformer linears stored and run in float8 (train/fp8.py)
        "compile": bool,  # torch.compile the transformer block by block (regional compilation)
    },
    "student": {
        "init": str,  # "config", a T5 name/path (e.g. google/flan-t5-base), or a student folder
        "config": {"*": (int, float, str)},  # T5 fields for init: config (unset ones come from the teacher's T5)
        "projection_dropout": NUM,
        "gradient_checkpointing": bool,
        "compile": bool,  # torch.compile the student in place (its CUDA step is launch-bound when eager)
    },
    "optim": {
        "lr": NUM,
        "betas": [NUM],
        "eps": NUM,
        "weight_decay": NUM,
        "warmup_steps": int,
        "schedule": str,  # constant | cosine
        "min_lr_ratio": NUM,  # cosine floor as a fraction of lr
        "grad_clip": NUM,  # max global grad norm of the student's parameters (0: off)
        "batch_size": int,  # prompts per optimizer step, all devices together
        "micro_batch_size": int,  # prompts per device per forward; the rest is gradient accumulation
        "mixed_precision": str,  # auto | bf16 | no  (autocast; master weights stay float32)
        "max_bad_steps": int,  # abort after more than this many steps (batches) with a non-finite loss
    },
    "distill": {
        "sampling_steps": int,  # N: steps of the teacher's sampler per trajectory
        "train_steps": int,  # K: steps of each trajectory that are regressed (null: all N)
        "update": str,  # step: an optimizer update per regressed step | trajectory: one per trajectory
    },
    "cache": {
        "dir": str,  # teacher embeddings on disk (safetensors); null: no cache
        "precompute": bool,  # encode every prompt before training
        "offload_text_encoders": bool,  # then move the teacher's text encoders off the device
    },
    "validation": {
        "every": int,
        "data": str,  # held-out prompts; null: hold out num_prompts from the stage data
        "num_prompts": int,
        "batch_size": int,
        "sigmas": [NUM],
        "guidance": NUM,
        "resolution": int,  # null: the last stage's
        "max_sequence_length": int,  # null: the last stage's
        "images": bool,  # teacher-vs-student PNG grid at fixed seeds
        "image_prompts": int,
        "image_seeds": [int],
        "image_steps": int,
    },
    "checkpoint": {"every": int, "keep": int},
    "log": {"every": int, "tensorboard": bool},
    "stages": [
        {
            "name": str,
            "data": Any,  # path | [path | {path, repeat}]
            "steps": int,
            "resolution": int,
            "max_sequence_length": int,
            "micro_batch_size": int,
        }
    ],
}

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "cpu_threads": None,
    "teacher": {"dtype": "auto", "trust_remote_code": False, "guidance": [2.0, 5.0], "empty_prompt_prob": 0.0,
                "gradient_checkpointing": False, "fp8": False, "compile": False},
    "student": {"init": "google/flan-t5-base", "config": {}, "projection_dropout": 0.1, "gradient_checkpointing": False,
                "compile": False},
    "optim": {"lr": 1.0e-4, "betas": [0.9, 0.999], "eps": 1.0e-8, "weight_decay": 1.0e-3, "warmup_steps": 0,
              "schedule": "constant", "min_lr_ratio": 0.1, "grad_clip": 1.0, "batch_size": 32, "micro_batch_size": None,
              "mixed_precision": "auto", "max_bad_steps": 10},
    "distill": {"sampling_steps": 20, "train_steps": None, "update": "step"},
    "cache": {"dir": None, "precompute": False, "offload_text_encoders": False},
    "validation": {"every": 1000, "data": None, "num_prompts": 64, "batch_size": 8, "sigmas": [0.25, 0.5, 0.75],
                   "guidance": 3.5, "resolution": None, "max_sequence_length": None, "images": False, "image_prompts": 4,
                   "image_seeds": [0], "image_steps": 20},
    "checkpoint": {"every": 1000, "keep": 3},
    "log": {"every": 10, "tensorboard": True},
}

STAGE_DEFAULTS = {"resolution": 512, "max_sequence_length": 77, "micro_batch_size": None}


def recipe_keys() -> str:
    """Every key a training recipe takes, with its type and default (`train recipes --keys`)."""
    from core.recipe import render_keys, schema_keys

    return render_keys(schema_keys(SCHEMA, {**DEFAULTS, "stages": STAGE_DEFAULTS}))


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "config":
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve(
    recipe: str | dict,
    overrides: list[str] | None = None,
    data: str | None = None,
    teacher: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """Load (name or path or dict), validate, fill defaults, apply --set / --data / --teacher."""
    if isinstance(recipe, dict):
        name, raw = "custom", copy.deepcopy(recipe)
    else:
        name, raw = load_recipe(recipe, kind="train")
    validate(raw, SCHEMA)
    cfg = _merge(DEFAULTS, raw)
    cfg = apply_overrides(cfg, list(overrides or []), SCHEMA)
    if teacher:
        cfg["teacher"]["path"] = teacher
    if not cfg["teacher"].get("path"):
        raise ConfigError("the recipe names no teacher (teacher.path) and no --teacher was given")
    stages = cfg.get("stages") or []
    if not stages:
        raise ConfigError("the recipe has no stages")
    resolved = []
    for i, stage in enumerate(stages):
        stage = {**STAGE_DEFAULTS, "name": f"stage{i + 1}", **stage}
        if data:
            stage["data"] = data
        if not stage.get("data"):
            raise ConfigError(f"stage {describe_value(stage['name'])} has no data (set stages[].data or pass --data)")
        if not isinstance(stage.get("steps"), int) or stage["steps"] < 1:
            raise ConfigError(f"stage {describe_value(stage['name'])}: steps must be a positive integer")
        if not 1 <= stage["max_sequence_length"] <= 512:
            raise ConfigError(f"stage {describe_value(stage['name'])}: max_sequence_length must be in 1..512")
        resolved.append(stage)
    cfg["stages"] = resolved
    g = cfg["teacher"]["guidance"]
    if not (isinstance(g, list) and len(g) == 2 and g[0] <= g[1]):
        raise ConfigError(f"teacher.guidance must be [min, max], got {describe_value(g)}")
    if cfg["optim"]["schedule"] not in ("constant", "cosine"):
        raise ConfigError(f"optim.schedule must be constant or cosine, got {describe_value(cfg['optim']['schedule'])}")
    if cfg["optim"]["mixed_precision"] not in ("auto", "bf16", "no"):
        raise ConfigError(f"optim.mixed_precision must be auto, bf16 or no, got {describe_value(cfg['optim']['mixed_precision'])}")
    if cfg["teacher"]["dtype"] not in ("auto", "bf16", "fp16", "fp32"):
        raise ConfigError(f"teacher.dtype must be auto, bf16, fp16 or fp32, got {describe_value(cfg['teacher']['dtype'])}")
    n, k = cfg["distill"]["sampling_steps"], cfg["distill"]["train_steps"]
    if n < 1 or (k is not None and not 1 <= k <= n):
        raise ConfigError(f"distill.train_steps must be in 1..sampling_steps ({n}), got {k}")
    if cfg["distill"]["update"] not in ("step", "trajectory"):
        raise ConfigError(f"distill.update must be step or trajectory, got {describe_value(cfg['distill']['update'])}")
    for key, (accept, what, nullable) in RANGES.items():
        _check_value(key, _get(cfg, key), accept, what, nullable)
    for i, stage in enumerate(resolved):
        _check_value(f"stages.{i}.resolution", stage["resolution"], _positive_int, "a positive integer", False)
        _check_value(f"stages.{i}.micro_batch_size", stage["micro_batch_size"], _positive_int, "a positive integer", True)
    sigmas = cfg["validation"]["sigmas"]
    if not sigmas or not all(isinstance(x, (int, float)) and 0 < x <= 1 for x in sigmas):
        raise ConfigError(f"validation.sigmas must be a non-empty list of noise levels in (0, 1], got {describe_value(sigmas)}")
    if cfg["cache"]["offload_text_encoders"] and not (cfg["cache"]["dir"] and cfg["cache"]["precompute"]):
        raise ConfigError("cache.offload_text_encoders needs cache.dir and cache.precompute: the teacher's text "
                          "encoders leave the device, so every prompt must be encoded before")
    _check_student_config(cfg["student"]["config"])
    cfg.setdefault("description", "")
    return name, cfg


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and v > 0


def _count(v: Any) -> bool:
    return isinstance(v, int) and v >= 0


# key -> (accepts, what it must be, null allowed); types are the schema's business, these are ranges
RANGES: dict[str, tuple[Any, str, bool]] = {
    "seed": (_count, "an integer >= 0", False),
    "cpu_threads": (_positive_int, "a positive integer (null: chosen from the free cores)", True),
    "optim.lr": (lambda v: v > 0, "a number > 0", False),
    "optim.batch_size": (_positive_int, "a positive integer", False),
    "optim.micro_batch_size": (_positive_int, "a positive integer", True),
    "optim.warmup_steps": (_count, "an integer >= 0", False),
    "optim.min_lr_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]", False),
    "optim.grad_clip": (lambda v: v >= 0, "a number >= 0 (0 or null: off)", True),
    "optim.weight_decay": (lambda v: v >= 0, "a number >= 0", False),
    "optim.max_bad_steps": (_count, "an integer >= 0", False),
    "teacher.empty_prompt_prob": (lambda v: 0 <= v <= 1, "in [0, 1]", False),
    "student.projection_dropout": (lambda v: 0 <= v < 1, "in [0, 1)", False),
    "validation.every": (_count, "an integer >= 0 (0 or null: only at the start and end)", True),
    "validation.num_prompts": (_positive_int, "a positive integer", False),
    "validation.batch_size": (_positive_int, "a positive integer", False),
    "validation.guidance": (lambda v: v >= 0, "a number >= 0", False),
    "validation.resolution": (_positive_int, "a positive integer", True),
    "validation.max_sequence_length": (lambda v: isinstance(v, int) and 1 <= v <= 512, "in 1..512", True),
    "validation.image_prompts": (_positive_int, "a positive integer", False),
    "validation.image_steps": (_positive_int, "a positive integer", False),
    "checkpoint.every": (_count, "an integer >= 0 (0 or null: none)", True),
    "checkpoint.keep": (_count, "an integer >= 0 (0: keep all)", False),
    "log.every": (_positive_int, "a positive integer", False),
}


def _get(cfg: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def _check_value(key: str, value: Any, accept: Any, what: str, nullable: bool) -> None:
    if value is None and nullable:
        return
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not accept(value):
        raise ConfigError(f"{key} must be {what}, got {describe_value(value)}")


def _check_student_config(fields: dict[str, Any]) -> None:
    """student.config holds T5Config fields; a name T5Config does not know is a typo, not a new field."""
    if not fields:
        return
    known = t5_config_fields()
    for key in fields:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=2)
            raise ConfigError(f"unknown key student.config.{key} (not a T5Config field"
                              + (f"; did you mean {' or '.join(close)}?)" if close else ")"))


def t5_config_fields() -> set[str]:
    """The names T5Config takes (its fields, the common config fields and aliases such as hidden_size).
    Importing transformers costs seconds (it loads torch), so the list is kept in the cache folder per
    transformers version: a typo in student.config is then reported as fast as any other recipe key."""
    from importlib.metadata import PackageNotFoundError, version

    from core.paths import cache_dir

    try:
        stamp = version("transformers")
    except PackageNotFoundError:
        stamp = "unknown"
    cached = cache_dir() / "t5-config-fields" / f"transformers-{stamp}.json"
    try:
        return set(json.loads(cached.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):  # not there yet, or damaged: ask transformers
        pass
    from transformers import T5Config

    known = {*T5Config().to_dict(), *T5Config.attribute_map}  # hidden_size etc. are aliases T5Config takes
    try:
        from core.fileio import atomic_write_text

        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cached, json.dumps(sorted(known)))
    except OSError:  # a read-only cache only costs the next run the import
        pass
    return known


def total_steps(cfg: dict[str, Any]) -> int:
    return sum(s["steps"] for s in cfg["stages"])


def config_hash(cfg: dict[str, Any]) -> str:
    return recipe_hash(cfg)


# ---- paths: checked before torch loads, so a typo is reported in a second ----------------------------


def check_teacher_path(source: str) -> None:
    """A teacher that names a local path which does not exist is an error here, never a hub lookup."""
    from core.paths import local_path_or_hub_id

    if not source.startswith("tiny:"):
        local_path_or_hub_id(source, "teacher")


def stage_sources(cfg: dict[str, Any]) -> list[str]:
    """Every data source the recipe reads: each stage's (a path, or a list of paths / {path, repeat})."""
    out = []
    for stage in cfg["stages"]:
        for item in stage["data"] if isinstance(stage["data"], list) else [stage["data"]]:
            out.append(str(item.get("path")) if isinstance(item, dict) else str(item))
    return out


def check_sources(cfg: dict[str, Any]) -> None:
    """The one "not found" rule (core.paths.local_path_or_hub_id) for every path-or-hub-id of a
    resolved recipe, before anything loads: a path that does not exist is an error naming it; a hub id
    is left to be fetched (and then reported by hub_error when it cannot be)."""
    from core.paths import local_path_or_hub_id

    check_teacher_path(cfg["teacher"]["path"])
    for source in stage_sources(cfg):
        if source != "builtin:tiny":
            local_path_or_hub_id(source, "data")
    if cfg["validation"]["data"] and cfg["validation"]["data"] != "builtin:tiny":
        local_path_or_hub_id(cfg["validation"]["data"], "validation.data")
    if cfg["student"]["init"] != "config":
        local_path_or_hub_id(cfg["student"]["init"], "student.init")


# ---- CPU threads ------------------------------------------------------------------------------------


def free_cores() -> tuple[int, float, float]:
    """(cores this process may use, the 1-minute load average on them, cores free = cores - load).

    The load average counts runnable processes machine-wide; when this process may use only some of
    the machine's CPUs (a cpuset, a container), their share of it is taken."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0] * cores / max(cores, os.cpu_count() or cores)
    except (AttributeError, OSError):
        load = 0.0
    return cores, load, cores - load


def choose_cpu_threads(setting: int | None, processes: int = 1,
                       measured: tuple[int, float, float] | None = None) -> tuple[int, str]:
    """(torch intra-op threads for a CPU run, why, in words). The recipe's cpu_threads wins, then
    OMP_NUM_THREADS; otherwise the cores free now (`measured`, by default free_cores(): cores - the
    1-minute load, rounded, at least 1), shared by the processes of this machine. More threads than
    free cores is the costly mistake: a thread waiting for a core stalls every parallel op it is part
    of (the tiny recipe on a busy 2-core machine: bench/train_threads.py)."""
    if setting:
        return setting, "the recipe's cpu_threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cores, load, free = measured or free_cores()
    threads = max(1, int(free / max(1, processes) + 0.5))
    share = f", shared by {processes} processes" if processes > 1 else ""
    return threads, (f"{cores} cores, 1-minute load {load:.2f}, so {max(free, 0.0):.1f} free{share}; "
                     "set cpu_threads or OMP_NUM_THREADS to override")


def local_processes() -> int:
    """Processes of this run on this machine (torchrun and accelerate launch set LOCAL_WORLD_SIZE)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def gpu_visible() -> bool:
    """Whether this process may see a CUDA (or ROCm) device, told without importing torch: the thread
    settings below must be in the environment before torch loads."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):  # devices hidden on purpose
        return False
    return any(Path("/dev").glob("nvidia[0-9]*")) or Path("/dev/kfd").exists()


def cpu_thread_env(threads: int) -> None:
    """Put the thread count where the OpenMP, MKL and OpenBLAS pools and the tokenizers' read it: once,
    when each starts, so this is done before torch loads (torch.set_num_threads afterwards leaves OpenMP
    set up for more threads, which measurably slows the tiny run). A variable the user set is kept."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_RS_NUM_CPUS"):
        os.environ.setdefault(var, str(threads))
