"""Keeps text-rendering prompts that name the text to render; drops the others.

A text-criterion prompt without `rendered_text` teaches nothing about rendering,
and per-category metrics would count it wrongly. Run it after `tag` (which
extracts the text from outside prompts), on the `text` criterion.
"""

from __future__ import annotations

from core.records import Prompt
from filters.base import Filter, register


@register
class RequireRenderedText(Filter):
    kind = "require_rendered_text"

    def __init__(self, max_chars: int = 64) -> None:
        self.max_chars = max_chars

    def reason(self, record: Prompt) -> str | None:
        if not any(s.strip() for s in record.rendered_text):
            return "no_rendered_text"
        longest = max(len(s) for s in record.rendered_text)
        if longest > self.max_chars:
            return f"rendered_text_too_long {longest} chars > {self.max_chars}"
        return None
