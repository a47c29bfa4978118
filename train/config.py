"""Training recipes: the keys (KEYS: type, default, range and help, each declared once), and resolving a
recipe plus command-line overrides.

A recipe names the teacher, the student, the optimiser, validation, and a list of stages, each with
its data, resolution, steps and max_sequence_length. Unknown keys fail naming the key (core.recipe).
"""

from __future__ import annotations

import copy
import difflib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError, describe_value
from core.recipe import apply_overrides, load_recipe, validate
from train.presets import STUDENT_PRESETS, apply_preset

NUM = (int, float)


@dataclass(frozen=True)
class Range:
    """What a value must be beyond its type: `accept(value)`, and the same in words for the error."""

    accept: Callable[[Any], bool]
    words: str


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def one_of(*choices: str) -> Range:
    """A string from a fixed set, said as "a, b or c"."""
    words = ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]
    return Range(lambda v: v in choices, words)


def numbers(accept: Callable[[float], bool], words: str) -> Range:
    return Range(lambda v: _is_number(v) and accept(v), words)


POSITIVE = Range(lambda v: _is_int(v) and v > 0, "a positive integer")
COUNT = Range(lambda v: _is_int(v) and v >= 0, "an integer >= 0")
FRACTION = numbers(lambda v: 0 <= v <= 1, "in [0, 1]")
SEQUENCE_LENGTH = Range(lambda v: _is_int(v) and 1 <= v <= 512, "in 1..512")


class Unset:
    """The default of a key that has none: absent from the resolved recipe until given (unlike a null
    default, which is there and means "off" or "decided later")."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset()


@dataclass(frozen=True)
class Key:
    """One training recipe key, declared once: the schema, the defaults, the range checks and
    `train recipes --keys` are all read from KEYS."""

    type: Any  # the leaf core.recipe.validate checks: int, str, bool, NUM, [NUM], Any, or a free-form mapping
    default: Any = UNSET
    range: Range | None = None
    nullable: bool = False  # null passes the range check (it means off, or chosen at run time)
    help: str = ""


KEYS: dict[str, Any] = {
    "description": Key(str),
    "seed": Key(int, 0, COUNT),
    "cpu_threads": Key(int, None, Range(POSITIVE.accept, "a positive integer (null: chosen from the free cores)"),
                       nullable=True, help="torch intra-op threads on a CPU run; null: chosen from the free cores "
                                           "(choose_cpu_threads)"),
    "teacher": {
        "path": Key(str, help="folder, hub id, or tiny:<family> (tiny:flux, tiny:sd3, tiny:pixart-alpha, ...)"),
        "dtype": Key(str, "auto", one_of("auto", "bf16", "fp16", "fp32"), help="auto: bf16 on CUDA, fp32 on CPU"),
        "trust_remote_code": Key(bool, False),
        "guidance": Key([NUM], [2.0, 5.0], Range(lambda g: isinstance(g, list) and len(g) == 2 and g[0] <= g[1],
                                                 "[min, max]"),
                        help="FLUX guidance input / SD3 CFG scale, drawn per batch from [min, max]"),
        "empty_prompt_prob": Key(NUM, 0.0, FRACTION,
                                 help='share of prompts replaced by "" (distils SD3\'s unconditional branch)'),
        "gradient_checkpointing": Key(bool, False, help="recompute transformer activations in the backward pass"),
        "fp8": Key(bool, False, help="transformer linears stored and run in float8 (train/fp8.py)"),
        "compile": Key(bool, False, help="torch.compile the transformer block by block (regional compilation)"),
        "frames": Key(int, None, POSITIVE, nullable=True,
                      help="video families: frames of each training clip (null: the family's default)"),
    },
    "student": {
        "preset": Key(str, None, one_of(*STUDENT_PRESETS), nullable=True,
                      help="a shipped student (`train presets`): its architecture, and its hub weights unless "
                           "init is config (random) or a local folder"),
        "init": Key(str, "google/flan-t5-base",
                    help='"config", a T5 name/path (e.g. google/flan-t5-base), or a student folder'),
        "config": Key({"*": (int, float, str)}, {},
                      help="T5 fields for init: config (unset ones come from the teacher's T5)"),
        "projection_dropout": Key(NUM, 0.1, numbers(lambda v: 0 <= v < 1, "in [0, 1)")),
        "gradient_checkpointing": Key(bool, False),
        "compile": Key(bool, False, help="torch.compile the student in place (its CUDA step is launch-bound when eager)"),
    },
    "optim": {
        "lr": Key(NUM, 1.0e-4, numbers(lambda v: v > 0, "a number > 0")),
        "betas": Key([NUM], [0.7, 0.95], help="not the usual 0.9, 0.999: shorter Adam memories learn more per "
                     "prompt-pass here (README: Benchmarks, learning per unit of compute)"),
        "eps": Key(NUM, 1.0e-8),
        "weight_decay": Key(NUM, 1.0e-3, numbers(lambda v: v >= 0, "a number >= 0")),
        "warmup_steps": Key(int, 0, COUNT),
        "schedule": Key(str, "constant", one_of("constant", "cosine")),
        "min_lr_ratio": Key(NUM, 0.1, FRACTION, help="cosine floor as a fraction of lr"),
        "grad_clip": Key(NUM, 1.0, numbers(lambda v: v >= 0, "a number >= 0 (0 or null: off)"), nullable=True,
                         help="max global grad norm of the student's parameters"),
        "batch_size": Key(int, 32, POSITIVE, help="prompts per optimizer step, all devices together"),
        "micro_batch_size": Key(int, None, POSITIVE, nullable=True,
                                help="prompts per device per forward; the rest is gradient accumulation"),
        "mixed_precision": Key(str, "auto", one_of("auto", "bf16", "no"),
                               help="autocast; master weights stay float32"),
        "max_bad_steps": Key(int, 10, COUNT,
                             help="abort after more than this many steps (batches) with a non-finite loss"),
    },
    "distill": {
        "sampling_steps": Key(int, 20, POSITIVE, help="N: steps of the teacher's sampler per trajectory"),
        "train_steps": Key(int, None, POSITIVE, nullable=True,
                           help="K: steps of each trajectory that are regressed (null: all N)"),
        "update": Key(str, "step", one_of("step", "trajectory"),
                      help="step: an optimizer update per regressed step | trajectory: one per trajectory"),
    },
    "cache": {
        "dir": Key(str, None, help="teacher embeddings on disk (safetensors); null: no cache"),
        "precompute": Key(bool, False, help="encode every prompt before training"),
        "offload_text_encoders": Key(bool, False, help="then move the teacher's text encoders off the device"),
    },
    "validation": {
        "every": Key(int, 1000, Range(COUNT.accept, "an integer >= 0 (0 or null: only at the start and end)"),
                     nullable=True),
        "data": Key(str, None, help="held-out prompts; null: hold out num_prompts from the stage data"),
        "num_prompts": Key(int, 64, POSITIVE),
        "batch_size": Key(int, 8, POSITIVE),
        "sigmas": Key([NUM], [0.25, 0.5, 0.75],
                      Range(lambda s: bool(s) and all(_is_number(x) and 0 < x <= 1 for x in s),
                            "a non-empty list of noise levels in (0, 1]")),
        "guidance": Key(NUM, 3.5, numbers(lambda v: v >= 0, "a number >= 0")),
        "resolution": Key(int, None, POSITIVE, nullable=True, help="null: the last stage's"),
        "max_sequence_length": Key(int, None, SEQUENCE_LENGTH, nullable=True, help="null: the last stage's"),
        "images": Key(bool, False, help="teacher-vs-student PNG grid at fixed seeds"),
        "image_prompts": Key(int, 4, POSITIVE),
        "image_seeds": Key([int], [0]),
        "image_steps": Key(int, 20, POSITIVE),
    },
    "checkpoint": {
        "every": Key(int, 1000, Range(COUNT.accept, "an integer >= 0 (0 or null: none)"), nullable=True),
        "keep": Key(int, 3, Range(COUNT.accept, "an integer >= 0 (0: keep all)")),
    },
    "log": {"every": Key(int, 10, POSITIVE), "tensorboard": Key(bool, True)},
    "mixture": {  # train/mixture.py
        "adaptive": Key(bool, False, help="sample each stage's categories by their running held-out gap"),
        "rate": Key(NUM, 0.5, numbers(lambda v: 0 < v <= 1, "in (0, 1]"),
                    help="weight of each validation in the running gap (1: the latest alone)"),
        "floor": Key(NUM, 0.3, FRACTION, help="no category below floor x its natural share"),
        "power": Key(NUM, 1.0, numbers(lambda v: v >= 0, "a number >= 0"),
                     help="weight ~ share x (gap / mean gap)^power; 0: the natural mixture"),
    },
    "stages": [
        {
            "name": Key(str, help="default: stage1, stage2, ..."),
            "data": Key(Any, help="path | [path | {path, repeat}]; --data replaces it in every stage"),
            "steps": Key(int, range=POSITIVE),
            "resolution": Key(int, 512, POSITIVE),
            "max_sequence_length": Key(int, 77, SEQUENCE_LENGTH),
            "micro_batch_size": Key(int, None, POSITIVE, nullable=True),
        }
    ],
}


def _schema(keys: Any) -> Any:
    """KEYS as the nested schema core.recipe validates against (leaves are types)."""
    if isinstance(keys, Key):
        return keys.type
    if isinstance(keys, list):
        return [_schema(keys[0])]
    return {name: _schema(entry) for name, entry in keys.items()}


def _defaults(keys: dict[str, Any]) -> dict[str, Any]:
    """KEYS' defaults as a nested dict; keys without one (UNSET) and lists of mappings (stages) left out."""
    out: dict[str, Any] = {}
    for name, entry in keys.items():
        if isinstance(entry, dict):
            out[name] = _defaults(entry)
        elif isinstance(entry, Key) and entry.default is not UNSET:
            out[name] = copy.deepcopy(entry.default)
    return out


SCHEMA: dict[str, Any] = _schema(KEYS)
DEFAULTS: dict[str, Any] = _defaults(KEYS)
STAGE_DEFAULTS: dict[str, Any] = _defaults(KEYS["stages"][0])


def check_ranges(values: dict[str, Any], keys: dict[str, Any] = KEYS, prefix: str = "") -> None:
    """Every declared range against a resolved recipe (stages item by item), naming the dotted key."""
    for name, entry in keys.items():
        where = prefix + name
        if isinstance(entry, dict):
            check_ranges(values[name], entry, where + ".")
        elif isinstance(entry, list):
            for i, item in enumerate(values[name]):
                check_ranges(item, entry[0], f"{where}.{i}.")
        elif entry.range is not None:
            value = values.get(name)
            if not (value is None and entry.nullable) and not entry.range.accept(value):
                raise ConfigError(f"{where} must be {entry.range.words}, got {describe_value(value)}")


def recipe_keys() -> str:
    """Every key a training recipe takes, with its type, default and what it is for (`train recipes --keys`)."""
    from core.recipe import render_keys, schema_keys

    return render_keys(schema_keys(SCHEMA, {**DEFAULTS, "stages": STAGE_DEFAULTS}), _helps(KEYS))


def _helps(keys: Any, prefix: str = "") -> dict[str, str]:
    """Each key's help by its dotted name, as schema_keys names it (a stage's keys under stages.<i>.)."""
    if isinstance(keys, Key):
        return {prefix.rstrip("."): keys.help} if keys.help else {}
    if isinstance(keys, list):
        return _helps(keys[0], prefix + "<i>.")
    return {k: v for name, entry in keys.items() for k, v in _helps(entry, f"{prefix}{name}.").items()}


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
        resolved.append(stage)
    cfg["stages"] = resolved
    check_ranges(cfg)
    apply_preset(cfg["student"])
    n, k = cfg["distill"]["sampling_steps"], cfg["distill"]["train_steps"]
    if k is not None and k > n:
        raise ConfigError(f"distill.train_steps must be in 1..sampling_steps ({n}), got {k}")
    if cfg["cache"]["offload_text_encoders"] and not (cfg["cache"]["dir"] and cfg["cache"]["precompute"]):
        raise ConfigError("cache.offload_text_encoders needs cache.dir and cache.precompute: the teacher's text "
                          "encoders leave the device, so every prompt must be encoded before")
    _check_student_config(cfg["student"]["config"])
    cfg.setdefault("description", "")
    return name, cfg


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


# ---- paths: checked before torch loads, so a typo is reported in a second ----------------------------


def check_teacher_path(source: str) -> None:
    """A teacher that names a local path which does not exist is an error here, never a hub lookup."""
    from core.paths import local_path_or_hub_id

    if not source.startswith("tiny:"):
        local_path_or_hub_id(source, "teacher")


def data_sources(spec: Any) -> list[str]:
    """The sources a stage's `data` (or validation.data) names: a path, or a list of paths / {path, repeat}."""
    items = spec if isinstance(spec, list) else [spec]
    return [str(item.get("path")) if isinstance(item, dict) else str(item) for item in items]


def check_sources(cfg: dict[str, Any]) -> None:
    """The one "not found" rule (core.paths.local_path_or_hub_id) for every path-or-hub-id of a
    resolved recipe, before anything loads: a path that does not exist is an error naming it; a hub id
    is left to be fetched (and then reported by hub_error when it cannot be)."""
    from core.paths import local_path_or_hub_id

    check_teacher_path(cfg["teacher"]["path"])
    for source in (s for stage in cfg["stages"] for s in data_sources(stage["data"])):
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
