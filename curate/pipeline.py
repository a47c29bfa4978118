"""`curate build`: sources -> steps -> balance -> writer, driven by a recipe.

The pipeline is a plain list of steps over a list of records (see filters/base.py).
Every row read is accounted for: it is kept, or written to rejected/ with a reason,
and the manifest's per-step counts satisfy in == kept + dropped.
"""

from __future__ import annotations

import itertools
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

from core.errors import ConfigError, describe_value
from core.paths import cache_dir
from core.recipe import (ANY_KEY, apply_overrides, load_recipe, recipe_hash, render_keys, schema_keys, type_label,
                         validate)
from core.records import CATEGORIES, CRITERIA, Drop, Prompt, canonical_key
from curate.balance import SHORTFALL_POLICIES, ShortfallError, balance
from curate.sources.files import SourceSpec, iter_source
from curate.curated_set import CuratedSetWriter
from filters.base import Context, Step, StepResult, build_step, step_options

SOURCE_SCHEMA = {
    "generator": str, "n": int, "categories": [str],
    "uri": str, "text_column": str, "split": str, "limit": int,
    "score_columns": {ANY_KEY: str}, "image_column": str, "category_column": str, "category_from_filename": bool,
}
GENERATOR_KEYS = {"generator", "n", "categories"}
FILE_KEYS = set(SOURCE_SCHEMA) - {"n", "categories"}
CURATE_SCHEMA: dict[str, Any] = {
    "description": str,
    "seed": int,
    "size": int,
    "on_shortfall": str,
    "shortfall_floor": (int, float),
    "oversample": (int, float),
    "embedder": {"kind": str, "model": str, "batch_size": int, "device": str, "pretrained": str, "max_length": int,
                 "trust_remote_code": bool, "dtype": str},  # filters.lib.embed.build_embedder's options
    "sources": {ANY_KEY: [SOURCE_SCHEMA]},
    "steps": {ANY_KEY: {ANY_KEY: Any}},
    "quotas": {ANY_KEY: {"fraction": (int, float), "categories": {ANY_KEY: (int, float)}}},
}
STREAM_CHUNK_ROWS = 50_000  # rows read and put through the row-wise steps at a time
MAX_SIZE = 1_000_000_000
DEFAULT_SHORTFALL_FLOOR = 0.5  # on_shortfall: scale may shrink a set to half its size, no further


def recipe_keys() -> str:
    """Every key a curation recipe takes, with its type and default (`curate recipes --keys`): the
    schema, then each step's options, read from the steps themselves so the list cannot go stale."""
    rows = [row for row in schema_keys(CURATE_SCHEMA) if not row[0].startswith("steps.")]
    rows.append(("steps.<step>", "mapping of the step's options, or null to switch it off", None))
    rows.append(("steps.<step>.criteria", "list of string", None))
    rows.append(("steps.<step>.kind", "string: the step to run when <step> is a name of your own (one step twice)", None))
    return render_keys(rows + [(key, type_label(hint), default) for key, hint, default in step_options()])


def resolve_recipe(recipe: str, overrides: list[str] = (), sources: list[str] = (),
                   size: int | None = None, seed: int | None = None) -> tuple[str, dict[str, Any]]:
    """Load a recipe and apply the command line on top: --set, --source, --size, --seed."""
    name, data = load_recipe(recipe, "curate")
    validate(data, CURATE_SCHEMA)
    # --source first, so that --set sources.<criterion>.0.text_column=... applies to the new pool
    for item in sources:
        criterion, sep, uri = item.partition("=")
        if not sep or not uri:
            raise ConfigError(f"--source {describe_value(item)} is not CRITERION=URI")
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
    if not 0 < data["size"] <= MAX_SIZE:
        raise ConfigError(f"size must be from 1 to {MAX_SIZE:,}, got {describe_value(data['size'])}")
    floor = data.get("shortfall_floor")
    if floor is not None and not (math.isfinite(floor) and 0 <= floor <= 1):
        raise ConfigError(f"shortfall_floor must be a number in [0, 1], got {describe_value(floor)}")
    oversample = data.get("oversample", 2.0)
    if oversample is not None and not (math.isfinite(oversample) and 0 < oversample <= 1000):
        raise ConfigError(f"oversample must be a number in (0, 1000], got {describe_value(oversample)}")
    for criterion in list(data["sources"]) + list(data["quotas"]):
        if criterion not in CRITERIA:
            raise ConfigError(f"unknown criterion {describe_value(criterion)} (criteria: {', '.join(CRITERIA)})")
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
        if not _is_weight(fraction):
            raise ConfigError(f"quotas.{criterion}.fraction must be a number >= 0, got {describe_value(fraction)}")
        if fraction > 0 and not data["sources"].get(criterion):
            raise ConfigError(f"quotas.{criterion} asks for {criterion} prompts but sources.{criterion} is empty")
        weights = (quota or {}).get("categories") or {}
        for category, weight in weights.items():
            if category not in CATEGORIES:
                raise ConfigError(f"quotas.{criterion}.categories.{category}: unknown category "
                                  f"(categories: {', '.join(CATEGORIES)})")
            if not _is_weight(weight):
                raise ConfigError(f"quotas.{criterion}.categories.{category} must be a number >= 0, "
                                  f"got {describe_value(weight)}")
        if weights and not sum(weights.values()) > 0:
            raise ConfigError(f"quotas.{criterion}.categories: every weight is 0, so no {criterion} prompt could be "
                              "chosen; give a category a positive weight, or drop `categories` to take any")
    if data.get("on_shortfall", "scale") not in SHORTFALL_POLICIES:
        raise ConfigError(f"on_shortfall must be one of {', '.join(SHORTFALL_POLICIES)}")
    for name, params in (data.get("steps") or {}).items():
        if params is not None:
            params = dict(params)
            _step_criteria(name, params.pop("criteria", None))
            build_step(name, params)  # fail on a typo before any work is done


def _is_weight(value: Any) -> bool:
    """A quota share: a finite number >= 0 (a negative or NaN one would silently empty a criterion)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _step_criteria(name: str, criteria: Any) -> list[str] | None:
    """A step's `criteria` option: None (all) or a list of known criteria."""
    if criteria is None:
        return None
    if not isinstance(criteria, list) or not all(isinstance(c, str) for c in criteria):
        raise ConfigError(f"steps.{name}.criteria must be a list of criteria, e.g. [quality], got {describe_value(criteria)}")
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


def _seed_for(seed: int, *parts: object) -> int:
    return zlib.crc32(":".join(map(str, (seed, *parts))).encode())


@dataclass
class _PlannedStep:
    """A built step with its criteria and its counts, which add up over calls (a streamed step runs
    once per chunk)."""

    name: str
    step: Step
    criteria: list[str] | None  # None: every criterion
    seen: int = 0
    kept: int = 0
    dropped: int = 0
    reasons: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def run(self, records: list[Prompt], ctx: Context) -> StepResult:
        """The step on `records`; records outside its criteria pass through untouched, in their places."""
        started = time.perf_counter()
        if self.criteria is None:
            result = self.step.run(records, ctx)
        else:
            result = self.step.run([r for r in records if r.criterion in self.criteria], ctx)
            dropped_ids = {id(r) for r, _ in result.dropped}
            result.kept = [r for r in records if r.criterion not in self.criteria or id(r) not in dropped_ids]
        self.seen += len(records)
        self.kept += len(result.kept)
        self.dropped += len(result.dropped)
        self.reasons.update(drop.kind for _, drop in result.dropped)
        self.seconds += time.perf_counter() - started
        return result

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "criteria": self.criteria, "in": self.seen, "kept": self.kept,
                "dropped": self.dropped, "reasons": dict(self.reasons), "seconds": round(self.seconds, 3),
                **self.step.report()}


def _plan_steps(data: dict[str, Any]) -> list[_PlannedStep]:
    planned = []
    for name, params in (data.get("steps") or {}).items():
        if params is None:
            continue  # disabled with --set steps.NAME=null
        params = dict(params)
        criteria = _step_criteria(name, params.pop("criteria", None))
        planned.append(_PlannedStep(name, build_step(name, params), criteria))
    return planned


class _Rejections:
    """Every dropped row goes to the writer as it is dropped; only the counts stay in memory: by
    (criterion, step, kind), so a shortfall can say what emptied a pool."""

    def __init__(self, writer: CuratedSetWriter):
        self.writer, self.count, self.kinds = writer, 0, Counter()

    def add(self, dropped: list[tuple[Prompt, Drop]]) -> None:
        self.writer.reject(dropped)
        self.count += len(dropped)
        self.kinds.update((r.criterion, drop.step, drop.kind) for r, drop in dropped)

    def most(self, criteria: set[str] | None = None, n: int = 3) -> str:
        """'length too_short 1,200, dedup_exact exact_dup 40' over the given criteria (all: None)."""
        counts = Counter()
        for (criterion, step, kind), count in self.kinds.items():
            if (criteria is None or criterion in criteria) and step != "balance":
                counts[f"{step} {kind}"] += count
        return ", ".join(f"{what} {count:,}" for what, count in counts.most_common(n))


def _check_shortfall(data: dict[str, Any], kept: list[Prompt], report: dict[str, Any], rejections: _Rejections) -> None:
    """A set that would be empty, or that `on_shortfall: scale` would shrink below shortfall_floor x size
    (a pool pointed at the wrong file, say), is an error naming the pools that fell short and what
    dropped their rows."""
    floor = data.get("shortfall_floor", DEFAULT_SHORTFALL_FLOOR)
    floor = DEFAULT_SHORTFALL_FLOOR if floor is None else floor
    scaled = report["shortfalls"] and data.get("on_shortfall", "scale") == "scale"
    if kept and not (scaled and len(kept) < floor * data["size"]):
        return
    short = {line.split(":")[0].split("/")[0] for line in report["shortfalls"]}
    dropped = rejections.most(short or None)
    head = (f"the set would shrink to {len(kept):,} of {data['size']:,} prompts, below shortfall_floor={floor}"
            if kept else "the set would be empty")
    raise ShortfallError(f"{head}: " + ("; ".join(report["shortfalls"]) or "no prompts left")
                         + (f" (dropped: {dropped})" if dropped else "")
                         + ("; fix the pool, or set on_shortfall=warn or a lower shortfall_floor" if kept else ""))


@dataclass
class Pool:
    """One pool entry of a recipe, `sources.<criterion>[index]`, ready to read: a generator with its row
    count and seed, or a file source."""

    criterion: str
    index: int
    uri: str  # what the manifest and the records' `source` call it
    entry: dict[str, Any]
    n: int = 0  # rows a generator makes
    seed: int = 0


def plan_pools(data: dict[str, Any], seed: int) -> list[Pool]:
    """Every pool of every criterion, in recipe order (a generator named for another criterion is an error)."""
    from curate.balance import plan_quotas

    plan = plan_quotas(data["size"], data["quotas"])
    oversample = float(data.get("oversample") or 2.0)
    pools = []
    for criterion, entries in data["sources"].items():
        for i, entry in enumerate(entries or []):
            if "generator" not in entry:
                pools.append(Pool(criterion, i, entry["uri"], entry))
                continue
            from curate.sources.generators import CRITERION_OF

            if CRITERION_OF.get(entry["generator"], criterion) != criterion:
                raise ConfigError(f"sources.{criterion}.{i}: generator {entry['generator']!r} "
                                  f"makes {CRITERION_OF[entry['generator']]} prompts, not {criterion}")
            n = entry["n"] if entry.get("n") is not None else math.ceil(plan.criteria.get(criterion, 0) * oversample) + 16
            pools.append(Pool(criterion, i, f"generator:{entry['generator']}", entry, n, _seed_for(seed, criterion, i)))
    return pools


def read_pool(pool: Pool, skipped: list[dict[str, str]], files: list[Path] | None = None):
    """A pool's rows as (record, None) or (record, rejection reason); `files`: only these files of a
    folder source (curate.sources.files.source_shards)."""
    if "generator" in pool.entry:
        from curate.sources.generators import generate

        got = generate(pool.entry["generator"], pool.n, pool.seed, categories=pool.entry.get("categories"))
        return ((r, None) for r in got)
    return iter_source(SourceSpec(**pool.entry), pool.criterion, skipped, files)


def _pools(data: dict[str, Any], seed: int):
    """(criterion, uri, rows, skipped files) per pool, in recipe order (see read_pool)."""
    for pool in plan_pools(data, seed):
        skipped: list[dict[str, str]] = []
        yield pool.criterion, pool.uri, read_pool(pool, skipped), skipped


def _stream(data: dict[str, Any], seed: int, steps: list[_PlannedStep], ctx: Context, rejections: _Rejections):
    """Read every pool and run the row-wise `steps` on chunks of rows as they arrive, so only the rows
    that pass them are ever held. Returns (records kept, per-source stats)."""
    records: list[Prompt] = []
    source_stats = []
    names = ", ".join(s.name for s in steps)
    with tqdm(desc=f"read{' + ' + names if names else ''}", unit="prompt", disable=not ctx.progress) as bar:
        progress, ctx.progress = ctx.progress, False  # one bar for the stream, not one per chunk and step
        try:
            for criterion, uri, rows, skipped in _pools(data, seed):
                stats = {"criterion": criterion, "uri": uri, "rows_read": 0, "records": 0, "rejected": 0,
                         "reasons": Counter()}
                for chunk in _chunks(rows, STREAM_CHUNK_ROWS):
                    good = [record for record, why in chunk if why is None]
                    bad = [(record, why) for record, why in chunk if why is not None]
                    stats["rows_read"] += len(chunk)
                    stats["records"] += len(good)
                    stats["rejected"] += len(bad)
                    stats["reasons"].update(drop.kind for _, drop in bad)
                    rejections.add(bad)
                    for step in steps:
                        result = step.run(good, ctx)
                        good = result.kept
                        rejections.add(result.dropped)
                    records.extend(good)
                    bar.update(len(chunk))
                source_stats.append({**stats, "reasons": dict(stats["reasons"]),
                                     **({"skipped_files": skipped} if skipped else {})})
        finally:
            ctx.progress = progress
    return records, source_stats


def read_prompts(uri: str) -> list[str]:
    """The prompts of a file, folder or curated set as a source reads them (for the decontaminate step's
    eval sets); rows that ingest would reject are left out. The criterion only labels records: any will do."""
    return [record.text for record, why in iter_source(SourceSpec(uri=uri), CRITERIA[0]) if why is None]


def _chunks(items, size: int):
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def make_context(data: dict[str, Any], progress: bool) -> Context:
    """The steps' Context for a resolved recipe (both engines build theirs here)."""
    return Context(seed=int(data.get("seed", 0)), cache_dir=cache_dir(), progress=progress,
                   embedder_spec=dict(data.get("embedder") or {}), read_prompts=read_prompts)


def build(recipe_name: str, data: dict[str, Any], out_dir: Path, progress: bool = True,
          log=lambda message: print(message, file=sys.stderr), extra_steps: list[Step] = (),
          select_by: str | None = None, manifest_extra: dict[str, Any] | None = None) -> BuildResult:
    """Run a resolved recipe and write the curated set to out_dir.

    The leading row-wise steps (those that decide each record on its own: tag, length, aesthetic, ...)
    run on chunks as the pools are read; the steps from the first that needs every record (dedup,
    cluster) on, and balance, run on the records left. Rejected rows are written out as they are dropped.
    (curate.engine_ray runs the same recipe on Ray.)

    A caller adds whole-pool steps after the recipe's with `extra_steps` (each under its `name`), has
    balance take the highest `scores[select_by]` of each quota group instead of the lowest hash rank, and
    adds keys to the manifest with `manifest_extra`: how `curate mine` (train/mine.py) scores the pool by a
    student's gap and selects the hardest prompts."""
    started = time.perf_counter()
    seed = int(data.get("seed", 0))
    ctx = make_context(data, progress)
    steps = _plan_steps(data) + [_PlannedStep(step.name or step.kind, step, None) for step in extra_steps]
    n_stream = first_whole_pool_step(steps)

    with CuratedSetWriter(out_dir) as writer:
        rejections = _Rejections(writer)
        records, source_stats = _stream(data, seed, steps[:n_stream], ctx, rejections)
        # A canonical order makes every keep-the-first rule downstream independent of the
        # order rows came in: shuffling an input file changes nothing in the output.
        records.sort(key=canonical_key)
        for step in steps[n_stream:]:
            if progress:
                print(f"  {step.name} on {len(records):,} prompts", file=sys.stderr)
            result = step.run(records, ctx)
            records = result.kept
            rejections.add(result.dropped)
        step_stats = [s.summary() for s in steps]
        return finish_build(recipe_name, data, records, step_stats, source_stats, rejections, writer, started, log,
                            "local", select_by, manifest_extra)


def first_whole_pool_step(steps: list[_PlannedStep]) -> int:
    """The position of the first step that needs every record (the ones before it stream)."""
    return next((i for i, s in enumerate(steps) if not s.step.rowwise), len(steps))


def finish_build(recipe_name: str, data: dict[str, Any], records: list[Prompt], step_stats: list[dict[str, Any]],
                 source_stats: list[dict[str, Any]], rejections: _Rejections, writer: CuratedSetWriter,
                 started: float, log, engine: str, select_by: str | None = None,
                 manifest_extra: dict[str, Any] | None = None) -> BuildResult:
    """Balance the records left after the steps (in canonical order), then write the set and its manifest:
    the end of a build, whichever engine ran the steps. With `select_by` the manifest's `selection` compares
    the score of what was selected with what the plain (hash-ranked) balance would have selected."""
    n_in = len(records)
    args = (data["size"], data["quotas"], balance_seed(data), data.get("on_shortfall", "scale"))
    kept, over, report = balance(records, *args, select_by=select_by)
    extra = dict(manifest_extra or {})
    if select_by is not None:
        extra["selection"] = selection_summary(select_by, kept, balance(records, *args)[0])
    del records
    rejections.add(over)
    return write_build(recipe_name, data, kept, n_in, Counter(drop.kind for _, drop in over), report, step_stats,
                       source_stats, rejections, writer, started, log, engine, extra)


def selection_summary(score: str, selected: list[Prompt], plain: list[Prompt]) -> dict[str, Any]:
    """The mean `score` of a score-ranked selection and of the plain balanced one, overall and per category,
    and how many prompts the two share."""

    def means(records: list[Prompt]) -> dict[str, Any]:
        values: dict[str, list[float]] = {}
        for r in records:
            value = r.scores.get(score)
            if value is not None and math.isfinite(value):
                values.setdefault(r.category, []).append(value)
        every = [v for vs in values.values() for v in vs]
        return {"mean": sum(every) / len(every) if every else None,
                "per_category": {c: sum(vs) / len(vs) for c, vs in sorted(values.items())}}

    shared = len({r.id for r in selected} & {r.id for r in plain})
    return {"select_by": score, "selected": means(selected), "plain": means(plain), "shared_with_plain": shared,
            "size": len(selected)}


def balance_seed(data: dict[str, Any]) -> int:
    """The seed balance ranks records by (both engines)."""
    return _seed_for(int(data.get("seed", 0)), "balance")


def write_build(recipe_name: str, data: dict[str, Any], kept: list[Prompt], n_in: int, over: Counter,
                report: dict[str, Any], step_stats: list[dict[str, Any]], source_stats: list[dict[str, Any]],
                rejections: _Rejections, writer: CuratedSetWriter, started: float, log, engine: str,
                extra: dict[str, Any] | None = None) -> BuildResult:
    """Write the balanced set (`kept`, selected from `n_in` records; `over`: balance's drops by kind, already
    in `rejections`) and its manifest."""
    seed = int(data.get("seed", 0))
    step_stats = [*step_stats, {"name": "balance", "criteria": None, "in": n_in, "kept": len(kept),
                                "dropped": sum(over.values()), "reasons": dict(over), "seconds": 0.0}]
    _check_shortfall(data, kept, report, rejections)
    for line in report["shortfalls"]:
        log(f"warning: shortfall: {line} (on_shortfall={data.get('on_shortfall', 'scale')})")
    if report["shortfalls"] and data.get("on_shortfall", "scale") == "scale":
        log(f"warning: the set was scaled to {len(kept):,} records to keep the recipe's fractions")

    rows_read = sum(s["rows_read"] for s in source_stats)
    manifest = {
        "recipe_name": recipe_name, "recipe": data, "recipe_hash": recipe_hash(data),
        "seed": seed, "size": data["size"], "sources": source_stats, "steps": step_stats,
        "on_shortfall": data.get("on_shortfall", "scale"), "planned_size": report["planned_size"],
        "quotas": report["quotas"], "shortfalls": report["shortfalls"],
        "counts": {"rows_read": rows_read, "kept": len(kept), "rejected": rejections.count},
        "engine": engine, "versions": _versions(), "seconds": round(time.perf_counter() - started, 3),
        **(extra or {}),
    }
    writer.finish(kept, manifest)
    reasons = Counter()
    for (_, _, kind), n in rejections.kinds.items():
        reasons[kind] += n
    return BuildResult(out_dir=writer.out_dir, kept=len(kept), rejected=rejections.count, reasons=reasons,
                       shortfalls=report["shortfalls"], seconds=time.perf_counter() - started)


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("t5shrink", "spacy", "faiss-cpu", "torch", "transformers", "datasets", "pyarrow"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions
