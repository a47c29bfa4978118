"""The Prompt record: one row of a curated set and one line of `curate tag`, and the text
normalisation every step shares.

Field names and meanings are a contract (the README lists them); keep them.

Text hygiene, in three layers:

- clean_text (the text that is kept, applied at ingest): NFKC (fullwidth letters, ligatures and other
  compatibility forms become the plain ones), invisible format characters (Unicode category Cf: soft
  hyphen, BOM, zero-width space/joiners, bidi controls, word joiner, tag characters) removed, other
  non-printables (control bytes, line/paragraph separators, odd spaces) turned into spaces, whitespace
  collapsed. The wording is not changed. Format characters go rather than become spaces because they
  sit inside words ("re\\u200bd" is "red", not "re d"); the cost is that emoji joined by ZWJ fall apart
  and Persian loses ZWNJ, which T5's vocabulary does not carry anyway.
- normalize_text / dedup_key (what counts as the same prompt): on top of case, spacing, quote style
  and edge punctuation, look-alikes fold onto their Latin skeleton. Cyrillic and Greek letters that look
  Latin (_LOOKALIKE, a small explicit table) fold to those Latin letters inside a word that also has
  Latin letters ("rеd саr" with Cyrillic е/а), and in every word of a text whose only Cyrillic/Greek
  letters are such look-alikes (a Latin prompt with a Cyrillic "а" for "a"); a text with any other
  Cyrillic or Greek letter is a Russian or Greek prompt and is left alone. Combining marks that are
  decoration (strike-through, slash and other overlays, over/underlines) go everywhere, and every mark
  still loose on a Latin letter or digit after NFKC composition (stacked "zalgo" marks) goes too; an
  accent that has a precomposed letter ("café") is spelling and stays. Fullwidth and other
  compatibility forms are already folded by NFKC. So look-alike copies collapse onto the clean prompt
  in dedup_exact (and get the clean prompt's id).
- lookalike_reason (what ingest rejects): a word that mixes Latin letters with Cyrillic/Greek
  look-alikes, a decoration mark, or two or more marks piled on one Latin letter or digit. Whole words
  in another script are not flagged (a sign reading "МОСКВА" is a Russian word, however Latin it
  looks), nor are Russian or Greek prompts; dedup still folds such a word, so a set cannot fill up with
  copies of it either.

When dedup drops copies it keeps the cleanest: normalization_cost counts the characters that
normalisation had to change (0 for a plain clean prompt; curly quotes count, so of two copies that
differ only in quote style the straight one stays) and canonical_key puts it right after the criterion.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
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
_CURLY = "\u2018\u2019\u201c\u201d"  # curly quotes, folded to straight ones


# Cyrillic and Greek letters that look like a Latin letter in common fonts, mapped to it. Kept
# closed under upper case (a letter whose lower case is here is here too) so that folding before
# lower-casing gives the same answer on a second pass. Greek mu is left out on purpose: NFKC turns
# the micro sign into it, and "5µm" is not "5mm".
_LOOKALIKE = {
    # Cyrillic
    "а": "a", "А": "A", "В": "B", "е": "e", "Е": "E", "ё": "ë", "Ё": "Ë", "і": "i", "І": "I",
    "ї": "ï", "Ї": "Ï", "ј": "j", "Ј": "J", "к": "k", "К": "K", "М": "M", "Н": "H", "о": "o",
    "О": "O", "р": "p", "Р": "P", "с": "c", "С": "C", "Т": "T", "у": "y", "У": "Y", "х": "x",
    "Х": "X", "ѕ": "s", "Ѕ": "S", "ԁ": "d", "Ԁ": "D", "ԛ": "q", "Ԛ": "Q", "ԝ": "w", "Ԝ": "W",
    "ү": "y", "Ү": "Y", "һ": "h", "Һ": "H", "ӏ": "l", "Ӏ": "I",
    # Greek
    "α": "a", "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "ι": "i", "Ι": "I", "κ": "k",
    "Κ": "K", "Μ": "M", "ν": "v", "Ν": "N", "ο": "o", "Ο": "O", "ρ": "p", "Ρ": "P", "Τ": "T",
    "υ": "u", "Υ": "Y", "χ": "x", "Χ": "X", "ϲ": "c", "Ϲ": "C", "ϳ": "j", "Ϳ": "J",
}
_LOOKALIKE_LETTER = re.compile("[" + "".join(_LOOKALIKE) + "]")
# Combining marks that decorate rather than spell: overlays (strike-through, slashes, circles) and
# over/underlines. No orthography writes a Latin, Cyrillic or Greek word with them.
_DECORATION = re.compile("[\u0305\u0332\u0333\u0334-\u0338\u033f\u20d2\u20d3\u20d8-\u20da\u20e5\u20e6\u20ea\u20eb]")
# Latin letters (Latin-1, Extended-A to -E, IPA, Extended Additional) and the combining-mark blocks
# (diacritical marks and their extensions, Cyrillic's, for symbols, half marks). Regexes, not
# per-character unicodedata calls: captions with an accent or an emoji are common, and this runs
# for every record's id and dedup key.
_LATIN = "A-Za-z\u00aa\u00ba\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u02af\u1e00-\u1eff\u2c60-\u2c7f\ua720-\ua7ff\uab30-\uab6f"
_MARKS = "\u0300-\u036f\u0483-\u0489\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
_LATIN_LETTER = re.compile(f"[{_LATIN}]")
_CYRILLIC_GREEK = re.compile("[\u0370-\u052f\u1c80-\u1c8f\u1f00-\u1fff\u2de0-\u2dff\ua640-\ua69f]")
# Marks loose on a Latin letter or a digit: after NFKC an accent that has a precomposed letter is
# in it, so what is left is piled on or made up. Not on spaces or punctuation: normalize_text and
# dedup_key move those around, and a mark's base must not change between two passes.
_LOOSE_MARKS = re.compile(f"(?<=[0-9{_LATIN}])[{_MARKS}]+")
# A word: letters and digits with the marks on them (re's \w leaves marks out). Every mark that
# _drop_marks may remove is a word character, so dropping one never joins two words, which would
# change what folds on a second pass.
_WORD = re.compile(f"(?:[^\\W_]|[{_MARKS}])+")
_STACK = re.compile(f"[0-9{_LATIN}][{_MARKS}]{{2,}}")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+(?=[,;:!?])")


def clean_text(text: str) -> str:
    """The text that is kept: repairs what scraped captions carry without changing the wording.

    Invisible format characters (category Cf: soft hyphen, BOM, zero-width space and joiners, bidi
    controls, word joiner, tag characters) are removed, so "he\\u200bllo" is "hello"; then NFKC;
    then every other non-printable (control bytes, line and paragraph separators, odd spaces) becomes
    a space, and whitespace runs collapse to one space, stripped at the ends. Idempotent."""
    if not text.isprintable():  # the common case (clean text) skips the per-character passes
        # Before NFKC: a format character between two characters keeps them from composing.
        text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    text = unicodedata.normalize("NFKC", text)
    if not text.isprintable():  # NFKC makes no Cf character (checked over all of Unicode)
        text = "".join(ch if ch.isprintable() else " " for ch in text)
    return _SPACE.sub(" ", text).strip()


def _fold_lookalikes(text: str) -> tuple[str, int]:
    """(text with Cyrillic/Greek look-alikes folded to Latin, how many were), per the module rule."""
    if text.isascii() or not _CYRILLIC_GREEK.search(text) or not _LATIN_LETTER.search(text):
        return text, 0  # nothing to fold, or nothing Latin to imitate: a Russian or Greek prompt
    # Any Cyrillic/Greek letter without a Latin twin means the text is really written in that script.
    native = any(ch.isalpha() and ch not in _LOOKALIKE for ch in _CYRILLIC_GREEK.findall(text))
    count = len(_LOOKALIKE_LETTER.findall(text))
    if not native:  # a Latin text: every look-alike folds
        return _LOOKALIKE_LETTER.sub(_fold_letter, text), count

    def fold(match: re.Match) -> str:  # only words that mix in Latin letters fold
        word = match.group()
        return _LOOKALIKE_LETTER.sub(_fold_letter, word) if _LATIN_LETTER.search(word) else word

    folded = _WORD.sub(fold, text)
    return folded, count - len(_LOOKALIKE_LETTER.findall(folded))


def _fold_letter(match: re.Match) -> str:
    return _LOOKALIKE[match.group()]


def _drop_marks(text: str) -> tuple[str, int]:
    """(text without decoration marks and without marks loose on a Latin letter or a digit, how
    many went). Run on NFKC text."""
    if text.isascii():
        return text, 0
    out = _LOOSE_MARKS.sub("", _DECORATION.sub("", text))
    return out, len(text) - len(out)


def normalize_text(text: str) -> str:
    """The dedup key's basis: clean_text, look-alikes folded and stray marks dropped (see the
    module doc), then case-, spacing-, quote-style- and edge-punctuation-insensitive.
    Idempotent: normalize_text(normalize_text(t)) == normalize_text(t)."""
    text = _fold_lookalikes(clean_text(text))[0].lower()
    if not text.isascii():  # str.translate is slow on non-ASCII text; four replaces are not
        # lower() can leave a base and a mark apart that compose ("Ά\u0345" -> "ά\u0345" -> "ᾴ"): NFC
        # now, or the next pass would compose them and change the key
        text = unicodedata.normalize("NFC", text)
        text = text.replace("\u2018", "'").replace("\u2019", "'").replace("\u201c", '"').replace("\u201d", '"')
    # Marks last, once every base is final: "İ".lower() is "i" plus a combining dot.
    text = _drop_marks(text)[0]
    text = re.sub(r"\s*([,;:!?])\s*", r"\1 ", text)
    text = _SPACE.sub(" ", text)
    return text.strip(_EDGE_PUNCT).strip()


_WORD_RUN = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The normalised text's words (runs of \\w), in order: what semantic dedup and decontamination compare
    when they ask whether two prompts are the same words rearranged, or share word n-grams."""
    return _WORD_RUN.findall(normalize_text(text))


def dedup_key(text: str) -> str:
    """Like normalize_text, but "A and B" equals "B and A": the two halves of a
    single top-level ' and ' are sorted, as compositional pairs are order-free."""
    norm = normalize_text(text)
    parts = norm.split(" and ")
    if len(parts) == 2:
        halves = [_pair_half(p) for p in parts]
        # A half that is empty or starts or ends with "and" ("the and red and") would split
        # differently once joined again: not a pair.
        if all(halves) and not any(h == "and" or h.startswith("and ") or h.endswith(" and") for h in halves):
            return " and ".join(sorted(halves))
    return norm


def _pair_half(part: str) -> str:
    """One half of an "A and B" pair without edge punctuation and leading articles, taken off until
    nothing more goes ("a the cat", "the. cat"), so that a second pass finds the same half."""
    while True:
        shorter = re.sub(r"^(?:an?|the) ", "", part.strip(_EDGE_PUNCT).strip())
        if shorter == part:
            return part
        part = shorter


def normalization_cost(text: str) -> int:
    """How much repair `text` needed: the number of characters that clean_text (format characters,
    non-printables, NFKC compatibility forms, extra whitespace), look-alike folding, mark removal,
    curly quotes and spaces before , ; : ! ? changed. Case and edge punctuation are free, as clean
    prompts start with a capital and end with a full stop, so a plain clean prompt costs 0. Among
    copies of one prompt, dedup keeps the cheapest (see canonical_key)."""
    cleaned = clean_text(text)
    cost = 0
    if cleaned != text:  # never for a stored record: clean_text ran at ingest
        cost += sum(1 for ch in text if not ch.isprintable() or unicodedata.normalize("NFKC", ch) != ch)
        # Whitespace that collapsing removed: all but one of each inner run, all of an edge run.
        cost += sum(len(run) - 1 for run in _SPACE.findall(text)) + text[:1].isspace() + text[-1:].isspace()
    if not cleaned.isascii():
        folded, cost_fold = _fold_lookalikes(cleaned)
        cost += cost_fold + _drop_marks(folded)[1] + sum(map(cleaned.count, _CURLY))
    return cost + sum(len(m) for m in _SPACE_BEFORE_PUNCT.findall(cleaned))


def lookalike_reason(text: str) -> str | None:
    """Why `text` looks built to pass for another prompt, or None: 'mixed_script "<word>"' (a word
    mixing Latin letters with Cyrillic/Greek look-alikes), 'combining_overlay "<word>"' (a
    strike-through, slash or other decoration mark), 'combining_stack "<word>"' (two or more marks
    piled on one Latin letter or digit). Cleans `text` first, so raw or stored text both work. A
    prompt in Cyrillic or Greek is not flagged unless it carries decoration marks."""
    if text.isascii():
        return None  # the common case: no look-alike survives NFKC in ASCII
    text = clean_text(text)
    if _CYRILLIC_GREEK.search(text):
        for word in _WORD.findall(text):
            if _LATIN_LETTER.search(word) and any(ch in _LOOKALIKE for ch in word):
                return f'mixed_script "{_shorten(word)}"'
    for kind, pattern in (("combining_overlay", _DECORATION), ("combining_stack", _STACK)):
        found = pattern.search(text)
        if found:  # name the space-delimited token: a mark may sit on punctuation
            start, end = text.rfind(" ", 0, found.start()) + 1, text.find(" ", found.start())
            return f'{kind} "{_shorten(text[start:end if end >= 0 else len(text)])}"'
    return None


def _shorten(word: str, limit: int = 40) -> str:
    return word if len(word) <= limit else word[:limit] + "..."


def canonical_key(record: "Prompt") -> tuple[int, int, str, str, str]:
    """The one order every keep-the-first rule follows (the pipeline sorts by it; dedup_exact keeps the
    smallest): criterion in CRITERIA order, then normalization_cost (the cleanest copy of a prompt
    first: "red car" before "rеd саr" with Cyrillic letters), then id, source, text. It depends only
    on the records, so the order rows came in changes nothing."""
    return (_CRITERION_RANK.get(record.criterion, len(CRITERIA)), normalization_cost(record.text), record.id,
            record.source, record.text)


def prompt_id(text: str) -> str:
    """Stable id: a hash of the normalised text (16 hex digits)."""
    return hashlib.sha1(normalize_text(text).encode("utf-8")).hexdigest()[:16]


class Drop(str):
    """Why a record was dropped: the step that dropped it ("ingest" for a row that could not be read,
    "balance", or a step's name in its recipe) and what it found, whose first word is the kind
    ("too_short 2 words < 3"). It is its one rendering, "<step>: <detail>", the reason rejected/
    stores and reports show, so it is written, printed and compared as that string, while `step`,
    `detail` and `kind` are its parts, kept as given and never parsed back out of the text."""

    step: str
    detail: str

    def __new__(cls, step: str, detail: str) -> "Drop":
        drop = super().__new__(cls, f"{step}: {detail}")
        drop.step, drop.detail = step, detail
        return drop

    def __reduce__(self):  # str's own would rebuild it from the rendering alone
        return Drop, (self.step, self.detail)

    @property
    def kind(self) -> str:
        words = self.detail.split(None, 1)
        return words[0] if words else "unspecified"


def parse_reason(reason: str | None, step: str | None = None) -> tuple[str, str]:
    """(step, kind) of a stored rejection reason "<step>: <kind> <detail>" (a Drop as rejected/ holds
    it; a set written by an older build may hold reasons only), for reports that read a set.

    The `step` column wins over the reason's prefix; a reason without a prefix is all
    kind and detail."""
    reason = (reason or "").strip()
    head, sep, rest = reason.partition(": ")
    if not sep:
        head, rest = "", reason
    words = rest.split(None, 1)
    return (step or head or "unknown"), (words[0] if words else "unspecified")


def _made_on_first_use(slot: str, make: type) -> Any:
    """A property over `slot` that holds None until the value is first read (then `make()`) or set."""

    def get(record: "Prompt") -> Any:
        value = getattr(record, slot)
        if value is None:
            value = make()
            setattr(record, slot, value)
        return value

    return property(get, lambda record, value: setattr(record, slot, value))


_FIELDS = ("id", "text", "criterion", "category", "tags", "rendered_text", "source", "scores", "cluster", "stage")


class Prompt:
    """One prompt: a row of a curated set, a line of `curate tag` (fields: the contract in the README).

    `meta` holds source columns a step may need (e.g. "image": a local image path for the aesthetic
    predictor); it is carried through the pipeline, not written out.

    A build holds every record that reaches its dedup steps, millions of them, so the record is lean:
    `__slots__`, and the four containers (tags, rendered_text, scores, meta) made on first use, not
    per record: most records never get tags or meta, and an empty list or dict is 56-64 bytes each."""

    __slots__ = ("text", "criterion", "source", "category", "_tags", "_rendered_text", "_scores", "cluster", "stage",
                 "id", "_meta")

    def __init__(self, text: str, criterion: str, source: str, category: str = "general", tags: list[str] | None = None,
                 rendered_text: list[str] | None = None, scores: dict[str, float] | None = None,
                 cluster: int | None = None, stage: str | None = None, id: str = "",
                 meta: dict[str, Any] | None = None) -> None:
        self.text, self.criterion, self.source, self.category = text, criterion, source, category
        self._tags, self._rendered_text, self._scores, self._meta = tags, rendered_text, scores, meta
        self.cluster, self.stage = cluster, stage
        self.id = id or prompt_id(text)

    tags: list[str] = _made_on_first_use("_tags", list)
    rendered_text: list[str] = _made_on_first_use("_rendered_text", list)
    scores: dict[str, float] = _made_on_first_use("_scores", dict)
    meta: dict[str, Any] = _made_on_first_use("_meta", dict)

    def same_rendered_text(self, other: "Prompt") -> bool:
        """Whether both ask for the same text to render (without making either's list)."""
        return (self._rendered_text or []) == (other._rendered_text or [])

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "text": self.text,
            "criterion": self.criterion,
            "category": self.category,
            "tags": list(self._tags or ()),
            "rendered_text": list(self._rendered_text or ()),
            "source": self.source,
            "scores": dict(self._scores or {}),
            "cluster": self.cluster,
            "stage": self.stage,
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Prompt):
            return NotImplemented
        return self.to_dict() == other.to_dict() and (self._meta or {}) == (other._meta or {})

    __hash__ = None  # mutable, like the dataclass it replaces

    def __repr__(self) -> str:
        fields = self.to_dict()
        return "Prompt(" + ", ".join(f"{k}={fields[k]!r}" for k in _FIELDS) + (f", meta={self._meta!r}" if self._meta else "") + ")"


def records_to_columns(records: list[Prompt]) -> dict[str, list[Any]]:
    """The record fields as columns, what to_dict gives row by row but without a dict per record (the
    writer turns up to tens of thousands of records at a time into parquet). `scores` holds each
    record's own dict, or None: read it, do not change it."""
    return {
        "id": [r.id for r in records],
        "text": [r.text for r in records],
        "criterion": [r.criterion for r in records],
        "category": [r.category for r in records],
        "tags": [r._tags or [] for r in records],
        "rendered_text": [r._rendered_text or [] for r in records],
        "source": [r.source for r in records],
        "scores": [r._scores for r in records],
        "cluster": [r.cluster for r in records],
        "stage": [r.stage for r in records],
    }
