"""Prompts for training and validation: loading, the held-out split, and a resumable stream.

Sources: a curated-set folder (DIR/data/*.parquet, as `curate build` writes it), any source
`curate build` reads (.txt one prompt a line, .jsonl/.csv/.parquet/.json with a text column and
optionally `category`, folders of those, HF datasets), or `builtin:tiny` (the tiny recipe's prompts).
"""

from __future__ import annotations

import hashlib
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from core.errors import ConfigError
from train.config import data_sources

Prompt = dict[str, str]  # {"text": ..., "category": ...}
NO_CATEGORY = "all"


def load_prompts(source: str | Path, what: str = "data") -> list[Prompt]:
    """Read one source into [{"text", "category"}] (category "all" when the source has none).

    Files and HF datasets are read by curate's own reader (so the same hostile-row handling
    applies); a curated-set folder (one with manifest.json) is read as curate writes it
    (curate.curated_set.read_records): its kept prompts (data/), never rejected/. The one "not found"
    rule applies (`what` names the argument): a path that does not exist is an error naming it, and a
    hub id that cannot be fetched says that it needs the network or a local folder."""
    if str(source) == "builtin:tiny":
        from train.tiny import builtin_prompts

        return builtin_prompts()
    from core.paths import hub_error, local_path_or_hub_id
    from curate.sources.files import SourceError, SourceSpec, read_source
    from curate.curated_set import CuratedSetError, is_curated_set, read_records

    hub_id = local_path_or_hub_id(str(source), what) is None
    path = Path(source)
    if is_curated_set(path):
        try:
            rows = read_records(path)
        except CuratedSetError as exc:
            raise ConfigError(f"data {exc}") from exc
        return [{"text": r["text"], "category": r["category"] or NO_CATEGORY} for r in rows]
    try:
        result = read_source(SourceSpec(uri=str(path), category_column="category"), criterion="semantic")
    except SourceError as exc:
        if hub_id and exc.__cause__ is not None:  # the dataset could not be loaded, not a bad row or column
            raise hub_error(str(source), what, exc.__cause__) from exc
        raise ConfigError(f"{what} {exc}") from exc
    if result.rejected:
        warnings.warn(f"{what} {source}: {len(result.rejected)} rows skipped (first: {result.rejected[0][1]})")
    # tags are set exactly when the source had a category for the row
    return [{"text": r.text, "category": r.category if r.tags else NO_CATEGORY} for r in result.records]


def load_stage_data(spec: Any) -> list[Prompt]:
    """A stage's `data`: a source, or a list of sources and {path, repeat} entries, concatenated
    (repeat: how many times a source appears, e.g. the published ×10 for CompBench in the mixed stage)."""
    items = spec if isinstance(spec, list) else [spec]
    rows: list[Prompt] = []
    for item in items:
        if isinstance(item, dict):
            unknown = set(item) - {"path", "repeat"}
            if unknown or "path" not in item:
                raise ConfigError(f"stage data entry {item!r}: allowed keys are path and repeat")
            rows += load_prompts(item["path"]) * int(item.get("repeat", 1))
        else:
            rows += load_prompts(str(item))
    if not rows:
        raise ConfigError(f"stage data {spec!r} holds no prompts")
    return rows


def recorded_sources(spec: Any) -> list[str]:
    """train.config.data_sources(spec), local ones as absolute paths: what a student records of its training
    data, so that `train eval` can tell the held-out prompts it was trained on (training_prompts) wherever
    it runs."""
    return [str(Path(s).expanduser().resolve()) if Path(s).expanduser().exists() else s for s in data_sources(spec)]


def _rank(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def split_heldout(pool: list[Prompt], n: int) -> list[Prompt]:
    """n held-out prompts chosen by hash (stable whatever the order), round-robin over categories
    so every category is represented in the per-category gap; uncategorised ones are then tagged."""
    by_cat: dict[str, list[Prompt]] = defaultdict(list)
    seen = set()
    for p in sorted(pool, key=lambda p: _rank(p["text"])):
        if p["text"] not in seen:
            seen.add(p["text"])
            by_cat[p["category"]].append(p)
    out: list[Prompt] = []
    queues = [by_cat[c] for c in sorted(by_cat)]
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return _label(out)


def _label(prompts: list[Prompt]) -> list[Prompt]:
    """Prompts from a source without categories get the tagger's (as `curate tag` gives them), so the
    held-out gap is reported per category for plain prompt files too."""
    todo = [i for i, p in enumerate(prompts) if p["category"] == NO_CATEGORY]
    if not todo:
        return prompts
    from filters.lib.tagging import tag_texts

    prompts = list(prompts)
    for i, found in zip(todo, tag_texts([prompts[i]["text"] for i in todo])):
        prompts[i] = {**prompts[i], "category": found["category"]}
    return prompts


def heldout_split(stage_rows: list[list[Prompt]], val_data: str | None, num_prompts: int) -> tuple[list[Prompt], list[list[Prompt]]]:
    """(held-out prompts, each stage's training prompts without them). Held-out prompts come from
    `val_data` when given, else from the stages' data (at most a tenth of the distinct prompts)."""
    if val_data:
        heldout = split_heldout(load_prompts(val_data, "validation.data"), num_prompts)
    else:
        pool = [r for rows in stage_rows for r in rows]
        heldout = split_heldout(pool, min(num_prompts, max(1, len({r["text"] for r in pool}) // 10)))
    held = {p["text"] for p in heldout}
    return heldout, [[r for r in rows if r["text"] not in held] for rows in stage_rows]


def training_prompts(meta: dict[str, Any]) -> list[str] | None:
    """The prompts a student was trained on, rebuilt from its notes (training_data and heldout, as the
    trainer split them), or None when its notes do not say."""
    split = _rebuilt_split(meta)
    return None if split is None else [r["text"] for rows in split[1] for r in rows]


def heldout_prompts(meta: dict[str, Any]) -> list[str] | None:
    """The prompts a student's run held out for validation, rebuilt from its notes, or None when they do not say."""
    split = _rebuilt_split(meta)
    return None if split is None else [p["text"] for p in split[0]]


def _rebuilt_split(meta: dict[str, Any]) -> tuple[list[Prompt], list[list[Prompt]]] | None:
    stages, heldout = meta.get("training_data"), meta.get("heldout")
    if not isinstance(stages, list) or not stages or not isinstance(heldout, dict):
        return None
    for source in [s for sources in stages for s in sources] + [heldout.get("data")] * bool(heldout.get("data")):
        if source != "builtin:tiny" and not Path(source).exists():  # a hub id: never fetched behind the user's back
            raise FileNotFoundError(f"{source} is not on this machine (training data is never downloaded to check it)")
    return heldout_split([load_stage_data(sources) for sources in stages], heldout.get("data"),
                         int(heldout.get("num_prompts", 0)))


class PromptStream:
    """Endless, reshuffled-per-epoch prompts; position `pos` fully determines what comes next,
    so a resumed run reads exactly what an uninterrupted one would."""

    def __init__(self, prompts: list[Prompt], seed: int):
        if not prompts:
            raise ConfigError("a stage has no training prompts left after holding out validation prompts")
        self.prompts = prompts
        self.seed = seed
        self._perm: tuple[int, torch.Tensor] | None = None

    def _order(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.prompts), generator=g))
        return self._perm[1]

    def take(self, pos: int, count: int) -> list[Prompt]:
        n = len(self.prompts)
        return [self.prompts[int(self._order((pos + i) // n)[(pos + i) % n])] for i in range(count)]
