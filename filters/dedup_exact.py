"""Exact dedup: keeps one record per normalised text, drops the rest.

The key ignores case, spacing, quote style and edge punctuation, and treats
"A and B" as "B and A" (compositional pairs are order-free): see records.dedup_key.
The record kept is the first in records.canonical_key order (the order the pipeline
sorts by, so the same rule as dedup_near and dedup_semantic), whatever order the rows came in.
"""

from __future__ import annotations

from curate.records import Prompt, canonical_key, dedup_key, normalize_text
from filters.base import Context, Step, StepResult, register


@register
class ExactDedup(Step):
    name = "dedup_exact"

    def __init__(self, order_insensitive: bool = True) -> None:
        self.order_insensitive = order_insensitive

    def run(self, records: list[Prompt], ctx: Context) -> StepResult:
        key_of = dedup_key if self.order_insensitive else normalize_text
        keeper: dict[str, Prompt] = {}
        for record in records:
            key = key_of(record.text)
            best = keeper.get(key)
            if best is None or canonical_key(record) < canonical_key(best):
                keeper[key] = record
        kept_ids = {id(r) for r in keeper.values()}
        result = StepResult(kept=[])
        for record in records:
            if id(record) in kept_ids:
                result.kept.append(record)
            else:
                result.dropped.append((record, f"{self.name}: exact_dup of {keeper[key_of(record.text)].id}"))
        return result

