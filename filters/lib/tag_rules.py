"""From a POS-tagged prompt to categories, tags and a visualness score (the rules behind `tag`).

Works on Penn Treebank tags alone (spaCy's `tagger`): noun phrases are read right to left from
their head noun, so "a red car" binds red to car without the dependency parser, which would cost
more than the tagger itself. Text to be rendered is masked first: "a sign saying 'two cats'"
counts no cats.

Primary category, first rule that fits:
1. text_rendering: the prompt asks for text to be shown.
2. numeracy: a number is bound to a noun ("three cakes"); counting is the rarest skill and wins.
3. complex: several kinds of attribute or relation in one sentence: two attribute kinds ("a tall
   white candle"), an attribute plus a 2D/3D relation ("a green plant next to a brown shelf"), two
   relation kinds ("a man riding a bike next to a car"), or at least two other descriptive
   adjectives around a relation or action ("plump, juicy grapes hung on the vine").
4. color / shape / texture: the one attribute kind present, even beside an action ("a black cat
   chasing a mouse" is about binding black to the cat).
5. 3d_spatial, then spatial, then non_spatial (an action between entities); but a bare "on",
   "under", "by"... next to an action only places it ("a boy standing on a chair to reach a
   shelf"), so there non_spatial comes before spatial.
6. general.
`tags` lists every category that applies, the primary one included, in CATEGORIES order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.records import CATEGORIES
from filters.lib import tag_lexicon as lex
from filters.lib.visualness import visual_score

_ATTR_KINDS = ("color", "shape", "texture")
_NOUN = ("NN", "NNS", "NNP", "NNPS")
_ADJ = ("JJ", "JJR", "JJS")
_VERB = ("VB", "VBD", "VBG", "VBN", "VBP", "VBZ")
# What may stand between a verb and the thing it acts on: "playing with a red kite".
_TO_OBJECT = {"DT", "PDT", "PRP$", "JJ", "JJR", "JJS", "RB", "RP", "IN", "TO", "CD", "HYPH", "POS", "VBN", "VBG"}
# First word -> [(words, relation)], longest first, so "in front of" is tried before "front".
_RELATIONS: dict[str, list[tuple[list[str], str]]] = {}
for _phrase, _kind_of in sorted(lex.STRONG_RELATIONS, key=lambda r: -len(r[0].split())):
    _RELATIONS.setdefault(_phrase.split()[0], []).append((_phrase.split(), _kind_of))


@dataclass
class Analysis:
    category: str
    tags: list[str]
    scores: dict[str, float]
    attributes: list[tuple[str, str]] = field(default_factory=list)  # (kind, word), for debugging


def analyse(doc: Any, spans: list[tuple[int, int]]) -> Analysis:
    """Categories and scores of one tagged Doc; `spans` are the rendered-text character spans."""
    toks = [t for t in doc if not t.is_space and not (spans and _inside(t.idx, spans))]
    words = [t.lower_ for t in toks]
    tags = _repair(words, [t.tag_ for t in toks], [t.text.islower() for t in toks])
    used: set[int] = set()
    relations, strong = _relations(words, tags, used)
    attributes, counted = _attributes(words, tags, used)
    if _interaction(words, tags, used):
        relations.add("non_spatial")

    kinds = {k for k, _ in attributes if k in _ATTR_KINDS}
    n_other = sum(k == "other" for k, _ in attributes)
    found = kinds | relations
    if spans:
        found.add("text_rendering")
    if counted:
        found.add("numeracy")
    # "standing on a chair to reach a shelf" is one action; only an explicit relation phrase next to
    # an action makes two relations.
    positional = relations & {"spatial", "3d_spatial"}
    two_relations = len(positional) == 2 or (strong and "non_spatial" in relations)
    if len(kinds) >= 2 or (kinds and positional) or two_relations or (n_other >= 2 and relations):
        found.add("complex")
    order = ["text_rendering", "numeracy", "complex", *_ATTR_KINDS, "3d_spatial", "spatial", "non_spatial"]
    if not strong:
        order = order[:-3] + ["3d_spatial", "non_spatial", "spatial"]
    category = next((c for c in order if c in found), "general")
    found.add(category)
    n_words = sum(1 for t in doc if not (t.is_punct or t.is_space))  # rendered words count too
    free = [i for i in range(len(words)) if i not in used]  # "on the right of" names no thing
    visual = visual_score([words[i] for i in free], [tags[i] for i in free], bool(spans))
    scores = {"visual": visual, "tokens": float(n_words)}
    return Analysis(category, [c for c in CATEGORIES if c in found], scores, attributes)


def _repair(words: list[str], tags: list[str], lower: list[bool]) -> list[str]:
    """Undo the small tagger's usual slips on lowercase noun-phrase fragments, right to left so
    that each fix sees the fixed tag after it."""
    tags = list(tags)
    for i in range(len(tags) - 1, -1, -1):
        nxt = tags[i + 1] if i + 1 < len(tags) else ""
        prev = tags[i - 1] if i else ""
        before_noun = nxt in _NOUN or nxt in _ADJ
        if tags[i] in ("NNP", "NNPS") and lower[i]:
            # "the clean white paper" read as a name: a lowercase word is no proper noun.
            tags[i] = "JJ" if before_noun else ("NNS" if tags[i] == "NNPS" else "NN")
        elif _kind(words[i]) and tags[i] in ("RB", "VB", "VBD", "VBP", "NN") and nxt in _ADJ + _NOUN \
                and prev in ("", "DT", "JJ", ",", "CC", "PRP$", "CD"):
            tags[i] = "JJ"  # "a round/RB pendant"
        elif tags[i] in _ADJ and nxt not in _NOUN + _ADJ + ("HYPH",) and "DT" in tags[max(i - 2, 0):i] \
                and all(t in ("DT", *_ADJ) for t in tags[max(i - 2, 0):i]) and prev:
            tags[i] = "NN"  # "a round pendant/JJ" at the end of its phrase
        elif tags[i] in ("VBD", "VBP", "VBZ") and prev in _ADJ and nxt in _VERB and "DT" in tags[max(i - 3, 0):i]:
            tags[i] = "NN"  # "the bright red rose/VBD contrasted"
    return tags


def _inside(i: int, spans: list[tuple[int, int]]) -> bool:
    # The quote marks themselves go too, so the words around them read as one phrase.
    return any(a - 1 <= i <= b for a, b in spans)


def _relations(words: list[str], tags: list[str], used: set[int]) -> tuple[set[str], bool]:
    """The spatial relations found, and whether one was an explicit phrase (not a bare "on")."""
    found, strong = set(), False
    for i in range(len(words)):
        if i in used:
            continue
        for parts, kind in _RELATIONS.get(words[i], ()):
            if words[i:i + len(parts)] == parts:
                found.add(kind)
                strong = True
                used.update(range(i, i + len(parts)))
                break
        else:
            if words[i] in lex.WEAK_RELATIONS and _between_things(words, tags, i):
                found.add("spatial")
                used.add(i)
    return found, strong


def _between_things(words: list[str], tags: list[str], i: int) -> bool:
    before = i - 1
    while before >= 0 and tags[before].startswith("RB"):
        before -= 1
    if before < 0:
        return False
    word, tag = words[before], tags[before]
    if tag in _NOUN or tag == "PRP":
        if _acted_on(words, tags, before):
            return False
    elif word not in lex.COPULA and word not in lex.POSTURE_VERBS:
        return False
    return _object_after(words, tags, i + 1, set())


def _acted_on(words: list[str], tags: list[str], i: int) -> bool:
    # Is the noun at i the object of an action in its clause ("serving snacks on a tray")?
    j = i - 1
    while j >= 0 and tags[j] not in (",", ".", ":", "CC", "WDT", "IN"):
        if tags[j] in _VERB and not _is_modifier(tags, j) and words[j] not in lex.STATIVE_VERBS:
            return True
        j -= 1
    return False


def _object_after(words: list[str], tags: list[str], j: int, used: set[int]) -> bool:
    # A relation phrase ends the search: "hiding behind a bush" relates by "behind", not by "hiding".
    while j < len(words) and j not in used and (tags[j] in _TO_OBJECT or (tags[j] == "," and tags[j - 1] in _ADJ)):
        j += 1
    if j in used:
        return False
    return j < len(words) and (tags[j] in _NOUN or tags[j] == "PRP")


def _is_modifier(tags: list[str], i: int) -> bool:
    # "a parked car", "the smiling girl": a participle before its noun describes it.
    prev = tags[i - 1] if i else "DT"
    nxt = tags[i + 1] if i + 1 < len(tags) else ""
    return (nxt in _NOUN or nxt in _ADJ) and prev in {"DT", "JJ", "CD", "PRP$", ",", "CC", "HYPH"}


def _interaction(words: list[str], tags: list[str], used: set[int]) -> bool:
    for i, tag in enumerate(tags):
        if tag not in _VERB or i in used or words[i] in lex.STATIVE_VERBS or words[i] in lex.ABSTRACT_VERBS:
            continue
        if tag in ("VBN", "VBG") and _is_modifier(tags, i):
            continue
        has_subject = any(t in _NOUN or t == "PRP" for t in tags[:i])
        if has_subject and _object_after(words, tags, i + 1, used):
            return True
    return False


def _attributes(words: list[str], tags: list[str], used: set[int]) -> tuple[list[tuple[str, str]], int]:
    """(kind, word) for every attribute bound to a noun, and how many numbers count nouns."""
    attributes: list[tuple[str, str]] = []
    taken: set[int] = set()
    counted = 0
    for i, tag in enumerate(tags):
        if tag not in _NOUN or i in used or (i + 1 < len(tags) and tags[i + 1] in _NOUN):
            continue  # not the head of its phrase
        j = i - 1
        while j >= 0 and j not in used:
            w, t = words[j], tags[j]
            if t == "CD" or w in lex.NUMBER:
                counted += _counts(w, words[i])
            elif t in _ADJ or t in _NOUN or (t in ("VBN", "VBG") and _is_modifier(tags, j)):
                taken.add(j)
                kind = _kind(w) if t not in ("NNP", "NNPS") else None  # "the Philosopher's Stone book"
                if kind or (t not in _NOUN and _describes(w)):
                    attributes.append((kind or "other", w))
            elif not ((t in ("HYPH", "CC", ",") or w in ("very", "bright", "dark", "light", "pale", "deep"))
                      and j > 0 and (tags[j - 1] in _ADJ or tags[j - 1] in _NOUN and t == "HYPH")):
                break
            j -= 1
        if j >= 0 and words[j] in lex.COPULA and _kind(words[i]):
            attributes.append((_kind(words[i]), words[i]))  # "the car is bright orange/NN"
    for i, (w, t) in enumerate(zip(words, tags)):
        # Predicates and loose adjectives: "the car is red", "a dress, long and silky".
        if i not in taken and i not in used and t in _ADJ:
            kind = _kind(w)
            after_copula = i > 0 and (words[i - 1] in lex.COPULA or tags[i - 1].startswith("RB"))
            if kind or (after_copula and _describes(w)):
                attributes.append((kind or "other", w))
        elif t in _NOUN and words[i - 1:i] in (["of"], ["from"]) and words[i - 2:i - 1] in (["made"], ["carved"]):
            if _kind(w) == "texture":
                attributes.append(("texture", w))
    return attributes, counted


def _describes(adjective: str) -> bool:
    return adjective not in lex.NOT_ATTRIBUTE and adjective not in lex.ABSTRACT_ADJECTIVES


def _kind(word: str) -> str | None:
    for kind, words in (("color", lex.COLOR), ("shape", lex.SHAPE), ("texture", lex.TEXTURE)):
        if word in words:
            return kind
    return None


def _counts(number: str, head: str) -> int:
    if head in lex.NOT_COUNTED:
        return 0
    if number.isdigit():
        return int(not (len(number) == 4 and number[:2] in ("19", "20")))  # a year, not a count
    return int(number in lex.NUMBER)
