"""`curate build`: sources -> steps -> balance -> writer, driven by a recipe.

The pipeline is a plain list of steps over a list of records (see filters/base.py).
Every row read is accounted for: it is kept, or written to rejected/ with a reason,
and the manifest's per-step counts satisfy in == kept + dropped.
"""

from __future__ import annotations

import math
import platform
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from curate.balance import SHORTFALL_POLICIES, ShortfallError, balance
from curate.recipe import ANY_KEY, apply_overrides, load_recipe, recipe_hash, validate
from curate.records import CATEGORIES, CRITERIA, Prompt, canonical_key, parse_reason
from curate.sources.files import SourceSpec, read_source
from curate.writer import write_curated
from filters.base import ConfigError, Context, build_step, cache_dir

SOURCE_SCHEMA = {
    "generator": str, "n": int, "categories": [str],
    "uri": str, "text_column": str, "split": str, "limit": int,
    "score_columns": {ANY_KEY: str}, "image_column": str, "category_column": str,
}
GENERATOR_KEYS = {"generator", "n", "categories"}
FILE_KEYS = set(SOURCE_SCHEMA) - {"n", "categories"}
CURATE_SCHEMA: dict[str, Any] = {
    "description": str,
    "seed": int,
    "size": int,
    "on_shortfall": str,
    "oversample": (int, float),
    "embedder": {"kind": str, "model": str, "batch_size": int, "device": str, "pretrained": str, "max_length": int,
                 "trust_remote_code": bool, "dtype": str},  # filters.embed.build_embedder's options
    "sources": {ANY_KEY: [SOURCE_SCHEMA]},
    "steps": {ANY_KEY: {ANY_KEY: Any}},
    "quotas": {ANY_KEY: {"fraction": (int, float), "categories": {ANY_KEY: (int, float)}}},
}


def resolve_recipe(recipe: str, overrides: list[str] = (), sources: list[str] = (),
                   size: int | None = None, seed: int | None = None) -> tuple[str, dict[str, Any]]:
    """Load a recipe and apply the command line on top: --set, --source, --size, --seed."""
    name, data = load_recipe(recipe, "curate")
    validate(data, CURATE_SCHEMA)
    # --source first, so that --set sources.<criterion>.0.text_column=... applies to the new pool
    for item in sources:
        criterion, sep, uri = item.partition("=")
        if not sep or not uri:
            raise ConfigError(f"--source {item!r} is not CRITERION=URI")
        data.setdefault("sources", {})[criterion] = [{"uri": uri}]
    data = apply_overrides(data, list(overrides), CURATE_SCHEMA)
    if size is not None:
        data["size"] = size
    if seed is not None:
        data["seed"] = seed
    _check(data)
    return name, data


def _check(data: dict[str, Any]) -> None:
    for key in ("size", "quotas", "sources"):
        if key not in data:
            raise ConfigError(f"recipe has no {key!r}")
    if data["size"] <= 0:
        raise ConfigError(f"size must be positive, got {data['size']}")
    for criterion in list(data["sources"]) + list(data["quotas"]):
        if criterion not in CRITERIA:
            raise ConfigError(f"unknown criterion {criterion!r} (criteria: {', '.join(CRITERIA)})")
    for criterion, entries in data["sources"].items():
        for i, entry in enumerate(entries or []):
            if ("generator" in entry) == ("uri" in entry):
                raise ConfigError(f"sources.{criterion}.{i} needs exactly one of 'generator' or 'uri'")
            kind, allowed = ("generator", GENERATOR_KEYS) if "generator" in entry else ("uri", FILE_KEYS)
            misplaced = sorted(set(entry) - allowed)
            if misplaced:
                raise ConfigError(f"sources.{criterion}.{i}.{misplaced[0]} does not apply to a {kind} source "
                                  f"(its keys: {', '.join(sorted(allowed))})")
            if entry.get("n") is not None and entry["n"] < 0:
                raise ConfigError(f"sources.{criterion}.{i}.n must be >= 0, got {entry['n']}")
    for criterion, quota in data["quotas"].items():
        fraction = (quota or {}).get("fraction", 0)
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or fraction < 0:
            raise ConfigError(f"quotas.{criterion}.fraction must be a number >= 0, got {fraction!r}")
        if fraction > 0 and not data["sources"].get(criterion):
            raise ConfigError(f"quotas.{criterion} asks for {criterion} prompts but sources.{criterion} is empty")
        for category in (quota or {}).get("categories") or {}:
            if category not in CATEGORIES:
                raise ConfigError(f"quotas.{criterion}.categories.{category}: unknown category "
                                  f"(categories: {', '.join(CATEGORIES)})")
    if data.get("on_shortfall", "scale") not in SHORTFALL_POLICIES:
        raise ConfigError(f"on_shortfall must be one of {', '.join(SHORTFALL_POLICIES)}")
    for name, params in (data.get("steps") or {}).items():
        if params is not None:
            params = dict(params)
            _step_criteria(name, params.pop("criteria", None))
            build_step(name, params)  # fail on a typo before any work is done


def _step_criteria(name: str, criteria: Any) -> list[str] | None:
    """A step's `criteria` option: None (all) or a list of known criteria."""
    if criteria is None:
        return None
    if not isinstance(criteria, list) or not all(isinstance(c, str) for c in criteria):
        raise ConfigError(f"steps.{name}.criteria must be a list of criteria, e.g. [quality], got {criteria!r}")
    for criterion in criteria:
        if criterion not in CRITERIA:
            raise ConfigError(f"steps.{name}.criteria: unknown criterion {criterion!r} (criteria: {', '.join(CRITERIA)})")
    return criteria


@dataclass
class BuildResult:
    out_dir: Path
    kept: int
    rejected: int
    reasons: Counter = field(default_factory=Counter)
    shortfalls: list[str] = field(default_factory=list)
    seconds: float = 0.0


def reason_kind(reason: str) -> str:
    """'dedup_near: near_dup of ab12 jaccard=0.9' -> 'near_dup'."""
    return parse_reason(reason)[1]


def _seed_for(seed: int, *parts: object) -> int:
    return zlib.crc32(":".join(map(str, (seed, *parts))).encode())


def _read_sources(data: dict[str, Any], seed: int, progress: bool):
    """Every pool of every criterion, in recipe order: (records, rejected, source stats)."""
    from curate.balance import plan_quotas

    plan = plan_quotas(data["size"], data["quotas"])
    oversample = float(data.get("oversample", 2.0))
    records: list[Prompt] = []
    rejected: list[tuple[Prompt, str]] = []
    stats = []
    entries = [(c, i, e) for c, pool in data["sources"].items() for i, e in enumerate(pool or [])]
    for criterion, i, entry in tqdm(entries, desc="sources", unit="pool", disable=not progress):
        if "generator" in entry:
            from curate.sources.generators import CRITERION_OF, generate

            if CRITERION_OF.get(entry["generator"], criterion) != criterion:
                raise ConfigError(f"sources.{criterion}.{i}: generator {entry['generator']!r} "
                                  f"makes {CRITERION_OF[entry['generator']]} prompts, not {criterion}")
            n = entry["n"] if entry.get("n") is not None else math.ceil(plan.criteria.get(criterion, 0) * oversample) + 16
            got = generate(entry["generator"], n, _seed_for(seed, criterion, i), categories=entry.get("categories"))
            uri, rows_read, bad = f"generator:{entry['generator']}", len(got), []
        else:
            spec = SourceSpec(**entry)
            result = read_source(spec, criterion)
            uri, got, bad, rows_read = spec.uri, result.records, result.rejected, result.rows_read
        stats.append({"criterion": criterion, "uri": uri, "rows_read": rows_read, "records": len(got),
                      "rejected": len(bad), "reasons": dict(Counter(reason_kind(r) for _, r in bad))})
        records.extend(got)
        rejected.extend(bad)
    return records, rejected, stats


def _run_step(name: str, params: dict[str, Any], records: list[Prompt], ctx: Context):
    params = dict(params)
    criteria = _step_criteria(name, params.pop("criteria", None))
    step = build_step(name, params)
    if criteria is None:
        return step.run(records, ctx)
    # Records outside the step's criteria pass through untouched, in their places.
    inside = [r for r in records if r.criterion in criteria]
    result = step.run(inside, ctx)
    dropped_ids = {id(r) for r, _ in result.dropped}
    result.kept = [r for r in records if r.criterion not in criteria or id(r) not in dropped_ids]
    return result


def build(recipe_name: str, data: dict[str, Any], out_dir: Path, progress: bool = True,
          log=lambda message: print(message, file=sys.stderr)) -> BuildResult:
    """Run a resolved recipe and write the curated set to out_dir."""
    started = time.perf_counter()
    seed = int(data.get("seed", 0))
    ctx = Context(seed=seed, cache_dir=cache_dir(), progress=progress, embedder_spec=dict(data.get("embedder") or {}))

    records, rejected, source_stats = _read_sources(data, seed, progress)
    # A canonical order makes every keep-the-first rule downstream independent of the
    # order rows came in: shuffling an input file changes nothing in the output.
    records.sort(key=canonical_key)
    rows_read = sum(s["rows_read"] for s in source_stats)
    step_stats = []
    for name, params in (data.get("steps") or {}).items():
        if params is None:
            continue  # disabled with --set steps.NAME=null
        t0 = time.perf_counter()
        n_in = len(records)
        if progress:
            print(f"  {name} on {n_in:,} prompts", file=sys.stderr)
        result = _run_step(name, params, records, ctx)
        records = result.kept
        rejected.extend(result.dropped)
        step_stats.append({"name": name, "in": n_in, "kept": len(records), "dropped": len(result.dropped),
                           "reasons": dict(Counter(reason_kind(r) for _, r in result.dropped)),
                           "seconds": round(time.perf_counter() - t0, 3)})

    n_in = len(records)
    kept, over, report = balance(records, data["size"], data["quotas"], _seed_for(seed, "balance"),
                                 data.get("on_shortfall", "scale"))
    rejected.extend(over)
    step_stats.append({"name": "balance", "in": n_in, "kept": len(kept), "dropped": len(over),
                       "reasons": dict(Counter(reason_kind(r) for _, r in over)), "seconds": 0.0})
    if not kept:  # nothing to train on: an error, with what the pools lacked and why rows were dropped
        why = Counter(" ".join(parse_reason(r)) for _, r in rejected).most_common(3)
        raise ShortfallError("the set would be empty: " + ("; ".join(report["shortfalls"]) or "no prompts left")
                             + (" (most dropped: " + ", ".join(f"{k} {n:,}" for k, n in why) + ")" if why else ""))
    for line in report["shortfalls"]:
        log(f"warning: shortfall: {line} (on_shortfall={data.get('on_shortfall', 'scale')})")
    if report["shortfalls"] and data.get("on_shortfall", "scale") == "scale":
        log(f"warning: the set was scaled to {report['planned_size']} records to keep the recipe's fractions")

    seconds = time.perf_counter() - started
    manifest = {
        "recipe_name": recipe_name, "recipe": data, "recipe_hash": recipe_hash(data),
        "seed": seed, "size": data["size"], "sources": source_stats, "steps": step_stats,
        "quotas": report["quotas"], "shortfalls": report["shortfalls"],
        "counts": {"rows_read": rows_read, "kept": len(kept), "rejected": len(rejected)},
        "versions": _versions(), "seconds": round(seconds, 3),
    }
    write_curated(out_dir, kept, rejected, manifest)
    return BuildResult(out_dir=Path(out_dir), kept=len(kept), rejected=len(rejected),
                       reasons=Counter(reason_kind(r) for _, r in rejected), shortfalls=report["shortfalls"],
                       seconds=time.perf_counter() - started)


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("t5shrink", "spacy", "faiss-cpu", "torch", "transformers", "datasets", "pyarrow"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions
