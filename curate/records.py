"""The Prompt record: one row of a curated set and one line of `curate tag`.

Field names and meanings are a contract (see DESIGN.md); keep them.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

CRITERIA = ("quality", "semantic", "text")
CATEGORIES = (
    "color",
    "shape",
    "texture",
    "spatial",
    "3d_spatial",
    "non_spatial",
    "numeracy",
    "complex",
    "text_rendering",
    "general",
)

_CRITERION_RANK = {c: i for i, c in enumerate(CRITERIA)}
_SPACE = re.compile(r"\s+")
# Punctuation that never changes what an image should show; quotes are kept
# because they delimit rendered text.
_EDGE_PUNCT = " .,;:!?-"
_CURLY = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


def clean_text(text: str) -> str:
    """Repair what scraped captions carry (odd unicode forms, control bytes, runs of
    whitespace) without changing the wording. This is the text that is kept."""
    text = unicodedata.normalize("NFKC", text)
    if not text.isprintable():  # the common case skips the per-character pass
        text = "".join(ch if ch.isprintable() else " " for ch in text)
    return _SPACE.sub(" ", text).strip()


def normalize_text(text: str) -> str:
    """The dedup key's basis: case-, spacing-, quote-style- and edge-punctuation-
    insensitive. Idempotent: normalize_text(normalize_text(t)) == normalize_text(t)."""
    text = clean_text(text).translate(_CURLY).lower()
    text = re.sub(r"\s*([,;:!?])\s*", r"\1 ", text)
    text = _SPACE.sub(" ", text)
    return text.strip(_EDGE_PUNCT).strip()


def dedup_key(text: str) -> str:
    """Like normalize_text, but "A and B" equals "B and A": the two halves of a
    single top-level ' and ' are sorted, as compositional pairs are order-free."""
    norm = normalize_text(text)
    parts = norm.split(" and ")
    if len(parts) == 2 and all(parts):
        parts = [re.sub(r"^(an?|the) ", "", p.strip(_EDGE_PUNCT)).strip() for p in parts]
        return " and ".join(sorted(parts))
    return norm


def canonical_key(record: "Prompt") -> tuple[int, str, str, str]:
    """The one order every keep-the-first rule follows (the pipeline sorts by it; dedup_exact keeps the
    smallest): criterion in CRITERIA order, then id, source, text. It depends only on the records,
    so the order rows came in changes nothing."""
    return (_CRITERION_RANK.get(record.criterion, len(CRITERIA)), record.id, record.source, record.text)


def prompt_id(text: str) -> str:
    """Stable id: a hash of the normalised text (16 hex digits)."""
    return hashlib.sha1(normalize_text(text).encode("utf-8")).hexdigest()[:16]


def parse_reason(reason: str | None, step: str | None = None) -> tuple[str, str]:
    """(step, kind) of a rejection reason "<step>: <kind> <detail>" (how every step words its drops).

    The `step` column wins over the reason's prefix; a reason without a prefix is all
    kind and detail."""
    reason = (reason or "").strip()
    head, sep, rest = reason.partition(": ")
    if not sep:
        head, rest = "", reason
    words = rest.split(None, 1)
    return (step or head or "unknown"), (words[0] if words else "unspecified")


@dataclass(slots=True)
class Prompt:
    text: str
    criterion: str
    source: str
    category: str = "general"
    tags: list[str] = field(default_factory=list)
    rendered_text: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    cluster: int | None = None
    stage: str | None = None
    id: str = ""
    # Source columns a step may need (e.g. "image": a local image path for the
    # aesthetic predictor); carried through the pipeline, not written out.
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.id:
            self.id = prompt_id(self.text)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "text": self.text,
            "criterion": self.criterion,
            "category": self.category,
            "tags": list(self.tags),
            "rendered_text": list(self.rendered_text),
            "source": self.source,
            "scores": dict(self.scores),
            "cluster": self.cluster,
            "stage": self.stage,
        }
