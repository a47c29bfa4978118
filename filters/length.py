"""Length filter: keeps prompts whose word and character counts are within bounds.

Drops prompts too short to say anything to a text encoder, and prompts longer than
the encoder will ever read (tokens past max_sequence_length are cut at training).
The counts are not stored in `record.scores`: they cost less to count again than a
score dict costs to keep on each of millions of records, and a drop reason states them.
"""

from __future__ import annotations

from core.records import Prompt
from filters.base import Filter, register


@register
class Length(Filter):
    kind = "length"

    def __init__(self, min_words: int = 2, max_words: int = 120, max_chars: int = 1000) -> None:
        if min_words < 0 or max_words < min_words or max_chars <= 0:
            raise ValueError(f"bounds must satisfy 0 <= min_words <= max_words and max_chars > 0, "
                             f"got min_words={min_words} max_words={max_words} max_chars={max_chars}")
        self.min_words, self.max_words, self.max_chars = min_words, max_words, max_chars

    def reason(self, record: Prompt) -> str | None:
        if len(record.text) > self.max_chars:
            return f"too_long {len(record.text)} chars > {self.max_chars}"
        words = len(record.text.split())
        if words < self.min_words:
            return f"too_short {words} words < {self.min_words}"
        if words > self.max_words:
            return f"too_long {words} words > {self.max_words}"
        return None
