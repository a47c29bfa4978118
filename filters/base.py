"""Pipeline steps: the protocol, the base class for keep/drop filters, and the registry.

A step takes the list of records that reached it and returns those it keeps plus
those it drops, each with a Drop (core.records: the step's name and what it found). Recipes
build steps by name with explicit keyword arguments, so a typo in a recipe fails loudly; a
recipe runs one kind of step twice by naming each and giving its `kind`.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from core.errors import ConfigError, describe_value, did_you_mean
from core.records import Drop

if TYPE_CHECKING:
    import numpy as np

    from core.records import Prompt


@dataclass
class StepResult:
    kept: list[Prompt]
    dropped: list[tuple[Prompt, Drop]] = field(default_factory=list)


@dataclass
class Context:
    """What a step may need beyond its records: the seed, a cache folder, whether to
    show progress, a shared embedder (built lazily from the recipe's `embedder`), and a reader of
    prompt files."""

    seed: int = 0
    cache_dir: Path | None = None
    progress: bool = True
    embedder_spec: dict[str, Any] = field(default_factory=dict)
    # The prompts of a file, folder or curated set, as the project's sources read them. Those readers live
    # in curate/, which filters may not import, so the pipeline hands its reader down here.
    read_prompts: Callable[[str], list[str]] | None = None
    _embedder: Any = None

    @property
    def embedder(self):
        if self._embedder is None:
            from filters.lib.embed import build_embedder

            self._embedder = build_embedder(cache_dir=self.cache_dir, progress=self.progress, **self.embedder_spec)
        return self._embedder

    def embed(self, records: list[Prompt]) -> np.ndarray:
        """(n, d) float32, L2-normalised, one row per record, cached on disk by text. A pool of
        filters.lib.spill.SPILL_MIN_ROWS records or more comes back spilled: memory-mapped from a temp file
        under the cache folder, so a whole-pool step holds its vectors on disk (see filters/lib/spill.py)."""
        from filters.lib.spill import SPILL_MIN_ROWS, spilled_array

        texts = [r.text for r in records]
        if len(texts) < SPILL_MIN_ROWS:
            return self.embed_texts(texts)
        self.embedder.progress = self.progress
        return self.embedder.encode(texts, out=spilled_array((len(texts), self.embedder.dim), self.spill_dir()))

    def spill_dir(self) -> Path | None:
        """Where spilled arrays' (unlinked) temp files go: <cache>/spill, or the system temp folder."""
        return self.cache_dir / "spill" if self.cache_dir is not None else None

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """As `embed`, for texts that are not records (an evaluation set's, say)."""
        self.embedder.progress = self.progress  # the context's setting now, not when the embedder was built
        return self.embedder.encode(texts)


class Step:
    """Base of every pipeline step. Subclasses set `kind` (what recipes call the step) and implement `run`.

    A `rowwise` step decides each record on its own (nothing in its result depends on the other
    records), so the pipeline runs it on chunks of rows as they are read instead of on the whole pool."""

    kind: ClassVar[str] = ""
    rowwise: ClassVar[bool] = False
    # Whether `run` embeds its records (ctx.embed): an engine may then compute the vectors elsewhere, in
    # parallel, and hand them in through the Context.
    embeds: ClassVar[bool] = False
    # Its name in the recipe, which its drops carry: build_step sets it (a kind that runs twice goes by two
    # names); a step built directly goes by its kind.
    name: str = ""

    def run(self, records: list[Prompt], ctx: Context) -> StepResult:
        raise NotImplementedError

    def report(self) -> dict[str, Any]:
        """What the step measured beyond its counts, for its entry in the manifest's `steps` (none by default)."""
        return {}

    def drop(self, detail: str) -> Drop:
        """Why this step drops a record: `detail` starts with the kind of drop ("near_dup of ...")."""
        return Drop(self.name or self.kind, detail)


class Filter(Step):
    """Score once, then decide: `score` caches numbers in `record.scores`, `reason`
    compares them with thresholds. Changing a threshold never needs a new score. Row-wise: a
    filter's scores and decisions are per record."""

    rowwise = True

    def score(self, records: list[Prompt], ctx: Context) -> None:
        """Fill record.scores; the default scores nothing."""

    def reason(self, record: Prompt) -> str | None:
        """None to keep the record, or why it is dropped."""
        raise NotImplementedError

    def run(self, records: list[Prompt], ctx: Context) -> StepResult:
        self.score(records, ctx)
        result = StepResult(kept=[])
        for record in records:
            why = self.reason(record)
            if why is None:
                result.kept.append(record)
            else:
                result.dropped.append((record, self.drop(why)))
        return result


STEPS: dict[str, type[Step]] = {}


def register(cls: type[Step]) -> type[Step]:
    if not cls.kind:
        raise ValueError(f"{cls.__name__} has no kind")
    STEPS[cls.kind] = cls
    return cls


def step_kind(name: str, kind: Any = None, where: str = "steps") -> type[Step]:
    """The registered step that `steps.<name>` runs: `kind` when the recipe gives one, else the one
    called `name`. Unknown kinds are errors that name the closest known ones."""
    _import_builtin_steps()
    known = f"(known steps: {', '.join(sorted(STEPS))})"
    if kind is None:
        if name not in STEPS:
            raise ConfigError(f"unknown step {where}.{name}{did_you_mean(name, STEPS)} {known}; "
                              f"to name a step yourself, give its kind: {where}.{name}.kind")
        return STEPS[name]
    if not isinstance(kind, str) or kind not in STEPS:
        hint = did_you_mean(kind, STEPS) if isinstance(kind, str) else ""
        raise ConfigError(f"unknown step kind {where}.{name}.kind={describe_value(kind)}{hint} {known}")
    if name in STEPS and name != kind:
        raise ConfigError(f"{where}.{name} is the {name} step, not a {kind} step; give the {kind} step another name")
    return STEPS[kind]


def build_step(name: str, params: dict[str, Any] | None, where: str = "steps") -> Step:
    """Build the step `steps.<name>` from recipe data (its options, and `kind` when `name` is not a
    registered step); unknown kinds and keys are errors. The step goes by `name`."""
    params = dict(params or {})
    cls = step_kind(name, params.pop("kind", None), where)
    accepted = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation that names a type only imported for type checkers: no check
        hints = {}
    for key, value in params.items():
        if not takes_any and key not in accepted:
            allowed = ", ".join(k for k in accepted if k != "self") or "none"
            raise ConfigError(f"unknown key {where}.{name}.{key}{did_you_mean(key, accepted)} (allowed: {allowed})")
        if key in hints and not _fits_type(value, hints[key]):
            raise ConfigError(f"{where}.{name}.{key} must be {_type_name(hints[key])}, got {describe_value(value)}")
    try:
        step = cls(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}.{name}: {exc}") from exc
    step.name = name
    return step


def step_options() -> list[tuple[str, Any, Any]]:
    """(steps.<name>.<option>, its annotation, its default or None) for every registered step, by name."""
    _import_builtin_steps()
    rows = []
    for name in sorted(STEPS):
        init = STEPS[name].__init__
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # an annotation only imported for type checkers: shown as any
            hints = {}
        for param in list(inspect.signature(init).parameters.values())[1:]:
            if param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                default = None if param.default is param.empty else param.default
                rows.append((f"steps.{name}.{param.name}", hints.get(param.name, Any), default))
    return rows


_SIMPLE = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def _fits_type(value: Any, hint: Any) -> bool:
    """Whether a recipe value fits a step parameter's annotation (YAML gives bool, int, float, str,
    None, lists and dicts; 1 fits float, true fits nothing but bool). Unknown annotations accept."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits_type(value, arm) for arm in typing.get_args(hint))
    if hint is bool or isinstance(value, bool):
        return hint is bool and isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float))
    if hint in _SIMPLE:
        return isinstance(value, hint)
    return True


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arm) for arm in typing.get_args(hint))
    return _SIMPLE.get(hint, getattr(hint, "__name__", str(hint)))


def _import_builtin_steps() -> None:
    # Importing the modules registers their steps; done lazily so that `curate --help`
    # does not pay for spaCy, FAISS or torch.
    import importlib
    import pkgutil

    import filters

    for info in pkgutil.iter_modules(filters.__path__):  # each module beside this one is a step
        if info.name != "base" and not info.ispkg:  # filters/lib/ holds what steps share
            importlib.import_module(f"filters.{info.name}")
