"""Length filter: keeps prompts whose word and character counts are within bounds.

Drops prompts too short to say anything to a text encoder, and prompts longer than
the encoder will ever read (tokens past max_sequence_length are cut at training).
"""

from __future__ import annotations

from curate.records import Prompt
from filters.base import Context, Filter, register


@register
class LengthFilter(Filter):
    name = "length"

    def __init__(self, min_words: int = 2, max_words: int = 120, max_chars: int = 1000) -> None:
        if min_words < 0 or max_words < min_words or max_chars <= 0:
            raise ValueError(f"bounds must satisfy 0 <= min_words <= max_words and max_chars > 0, "
                             f"got min_words={min_words} max_words={max_words} max_chars={max_chars}")
        self.min_words, self.max_words, self.max_chars = min_words, max_words, max_chars

    def score(self, records: list[Prompt], ctx: Context) -> None:
        for record in records:
            record.scores["words"] = float(len(record.text.split()))

    def reason(self, record: Prompt) -> str | None:
        words = int(record.scores["words"])
        if len(record.text) > self.max_chars:
            return f"too_long {len(record.text)} chars > {self.max_chars}"
        if words < self.min_words:
            return f"too_short {words} words < {self.min_words}"
        if words > self.max_words:
            return f"too_long {words} words > {self.max_words}"
        return None
