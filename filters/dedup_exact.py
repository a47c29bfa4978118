"""Exact dedup: keeps the first record of each normalised text, drops the rest.

The key ignores case, spacing, quote style and edge punctuation, and treats
"A and B" as "B and A" (compositional pairs are order-free): see records.dedup_key.
"First" is input order, which the pipeline makes deterministic.
"""

from __future__ import annotations

from curate.records import Prompt, dedup_key, normalize_text
from filters.base import Context, Step, StepResult, register


@register
class ExactDedup(Step):
    name = "dedup_exact"

    def __init__(self, order_insensitive: bool = True) -> None:
        self.order_insensitive = order_insensitive

    def run(self, records: list[Prompt], ctx: Context) -> StepResult:
        key_of = dedup_key if self.order_insensitive else normalize_text
        first: dict[str, str] = {}
        result = StepResult(kept=[])
        for record in records:
            key = key_of(record.text)
            if key in first:
                result.dropped.append((record, f"{self.name}: exact_dup of {first[key]}"))
            else:
                first[key] = record.id
                result.kept.append(record)
        return result
