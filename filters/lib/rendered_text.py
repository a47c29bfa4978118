"""Find the text a prompt asks the image to show: quoted spans, and ALL-CAPS words after
"says", "reading", "titled" and the like. Pure string code: no spaCy, no model.

The hard part is the apostrophe. A straight ' both quotes and elides, so a quote opens only
at the start of a word and closes only at the end of one: "the dog's bowl" and "don't" have
letters on both sides of the ' and are neither, while 'i'm proud of you' keeps its inner
apostrophe because that one is not at a word edge either.
"""

from __future__ import annotations

import re

# A quote may open after these (or at the start of the text)...
_BEFORE_OPEN = set(" \t\n([{:;,/\u2014\u2013-\"\u201c\u2018'")
# ...and close before these (or at the end of the text).
_AFTER_CLOSE = set(" \t\n.,;:!?)]}/\u2014\u2013-\"\u201d\u2019'")
# Elisions that start with an apostrophe at a word start: "'90s", "'em", rock 'n' roll.
# A closing quote right after the word makes it a quoted word again ('em' on a sign).
_ELISION = re.compile(r"'(?:(?:\d0s|em|til|tis|twas|cause|bout)\b(?!')|n'(?= roll\b))", re.IGNORECASE)

_TRIGGER = (r"says|say|said|saying|reads|read|reading|titled|entitled|labell?ed|spell(?:s|ed|ing)|"
            r"stating|states|inscribed(?: with)?|printed(?: with)?|with the words?|with the text|the words?")
# An uppercase run after a trigger word: "a sign that says OPEN 24 HOURS".
_CAPS = re.compile(rf"\b(?:{_TRIGGER})\s*:?\s+((?:[A-Z0-9][A-Z0-9&'\u2019!?.,-]*)(?:\s+[A-Z0-9][A-Z0-9&'\u2019!?.,-]*)*)")


def rendered_text_spans(text: str) -> list[tuple[int, int]]:
    """Character spans (start, end) of the text to render, in order of appearance."""
    spans = _quoted(text, opens="\"\u201c", closes="\"\u201d", always_open="\u201c", always_close="\u201d")
    # Single quotes are looked for outside double-quoted text only: "she said 'hi'" is one span.
    masked = _mask(text, spans)
    spans += _quoted(masked, opens="'\u2018", closes="'\u2019", always_open="\u2018", always_close="")
    masked = _mask(text, spans)
    spans += _caps_after_trigger(masked)
    return sorted(spans)


def extract_rendered_text(text: str) -> list[str]:
    """The strings an image of `text` must show, e.g. "a sign saying 'that's great'" ->
    ["that's great"]; [] when the prompt asks for no text."""
    return [text[a:b] for a, b in rendered_text_spans(text)]


def _mask(text: str, spans: list[tuple[int, int]]) -> str:
    # Same length as text, so offsets found in the masked copy hold in the original.
    chars = list(text)
    for a, b in spans:
        for i in range(max(a - 1, 0), min(b + 1, len(chars))):
            chars[i] = "\x00"
    return "".join(chars)


def _quoted(text: str, opens: str, closes: str, always_open: str, always_close: str) -> list[tuple[int, int]]:
    spans = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in opens and _can_open(text, i, always_open):
            end = _find_close(text, i + 1, closes, always_close)
            if end is not None:
                a, b = _strip(text, i + 1, end)
                if a < b:
                    spans.append((a, b))
                    i = end + 1
                    continue
        i += 1
    return spans


def _can_open(text: str, i: int, always_open: str) -> bool:
    if text[i] in always_open:
        return True
    if i > 0 and text[i - 1] not in _BEFORE_OPEN:
        return False  # a letter or digit before it: an apostrophe ("dogs'", "5'11")
    if i + 1 >= len(text) or text[i + 1].isspace():
        return False
    return not _ELISION.match(text, i)


def _find_close(text: str, start: int, closes: str, always_close: str) -> int | None:
    for j in range(start, len(text)):
        ch = text[j]
        if ch == "\x00":
            return None  # ran into a span already taken
        if ch not in closes:
            continue
        if ch in always_close:
            return j
        if j > start and not text[j - 1].isspace() and (j + 1 == len(text) or text[j + 1] in _AFTER_CLOSE):
            return j
    return None


def _strip(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def _caps_after_trigger(text: str) -> list[tuple[int, int]]:
    letters = [c for c in text if c.isalpha()]
    if not letters or sum(c.isupper() for c in letters) > len(letters) / 2:
        return []  # an all-caps caption: capitals carry no signal
    spans = []
    for match in _CAPS.finditer(text):
        a = match.start(1)
        b = a
        for word in re.finditer(r"\S+", match.group(1)):
            b = a + word.end()
            if word.group()[-1] in ".,;:":
                break  # a sentence or list goes on after the text
        while b > a and text[b - 1] in ".,;:":
            b -= 1
        candidate = text[a:b]
        # "says A dog" or "reading I" are words, not text; ask for two capitals in a row.
        if re.search(r"[A-Z]{2}|[A-Z0-9]\d", candidate):
            spans.append((a, b))
    return spans
