"""Exact dedup: keeps one record per normalised text, drops the rest.

The key ignores case, spacing, quote style and edge punctuation, treats "A and B" as "B and A"
(compositional pairs are order-free), and folds look-alikes: Cyrillic/Greek letters posing as Latin
ones and decoration or stacked combining marks (see records.dedup_key and the records module doc).
The record kept is the smallest in records.canonical_key order: within a criterion, the cleanest copy
(lowest records.normalization_cost: "red car" wins over "rеd саr" with Cyrillic letters, or over
"r̶e̶d̶ car"), then id, source, text. That is the order the pipeline sorts by, so the same rule as
dedup_near and dedup_semantic, whatever order the rows came in.
"""

from __future__ import annotations

import hashlib

import numpy as np

from core.errors import describe_value
from core.records import Prompt, canonical_key, dedup_key, normalize_text
from filters.base import Context, Step, StepResult, register


@register
class DedupExact(Step):
    """Keeps the smallest canonical_key of each group of records that share a dedup key; drops the
    others as "exact_dup of <id> '<its text>'". Keys are held as 16-byte blake2b digests in one array (a chance
    collision needs ~10^19 prompts), so millions of records cost tens of MB, not a dict of strings."""

    kind = "dedup_exact"

    def __init__(self, order_insensitive: bool = True) -> None:
        self.order_insensitive = order_insensitive

    def digest(self, record: Prompt) -> bytes:
        """The 16-byte digest of a record's dedup key: copies share it (an engine may partition by it)."""
        key = (dedup_key if self.order_insensitive else normalize_text)(record.text)
        return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def run(self, records: list[Prompt], ctx: Context) -> StepResult:
        digests = bytearray(16 * len(records))
        for i, record in enumerate(records):
            digests[16 * i : 16 * i + 16] = self.digest(record)
        keys = np.frombuffer(bytes(digests), dtype="V16").view("S16")
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(order) else np.empty(0, np.int64)
        ends = np.r_[starts[1:], len(order)]
        keeper: dict[int, int] = {}  # index of a dropped copy -> index of the record kept for its key
        for start, end in zip(starts[ends - starts > 1].tolist(), ends[ends - starts > 1].tolist()):
            group = order[start:end].tolist()
            best = min(group, key=lambda i: canonical_key(records[i]))
            keeper.update((i, best) for i in group if i != best)
        result = StepResult(kept=[r for i, r in enumerate(records) if i not in keeper])
        result.dropped = [(records[i], self.drop(f"exact_dup of {records[keeper[i]].id} {describe_value(records[keeper[i]].text)}"))
                          for i in sorted(keeper)]
        return result
