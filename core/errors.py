"""The errors every layer raises, and how a value or an error is quoted in one line of message."""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """A recipe or override that does not fit: the message names the offending key."""


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """"; did you mean 'x' or 'y'?" for the closest options to a mistyped key or name, or ""."""
    close = difflib.get_close_matches(str(word)[:200], [str(o) for o in options], n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def one_line(error: BaseException | str, limit: int = 400) -> str:
    """The first line of an error's message (its type's name if it has none), cut at `limit` characters:
    what a one-line error or warning can quote of it (torch's unpickling errors run to pages)."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_value(value: Any, limit: int = 60) -> str:
    """A value for an error message, bounded whatever it holds: a scalar as its repr (cut at `limit`
    characters), a container as its type, its size and a short prefix. Never expands a whole tree (a
    YAML alias bomb's repr would take minutes and gigabytes)."""
    if isinstance(value, (list, tuple, dict, set)):
        short = reprlib.Repr()
        short.maxlevel, short.maxstring, short.maxother = 2, 30, 30
        short.maxlist = short.maxtuple = short.maxdict = short.maxset = 3
        text = short.repr(value)
        return f"a {type(value).__name__} of {len(value)} item(s) {text[:limit]}"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
