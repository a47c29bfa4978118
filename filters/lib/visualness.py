"""How concrete a prompt is: the `visual` score in [0, 1] that the `visual` filter thresholds.

The mean of per-word weights over the content words the tagger finds: concrete nouns and visual
adjectives (colours, shapes, materials, light) weigh 1, names 0.8, actions 0.7, other adjectives
0.6, abstract nouns, cognitive verbs and I/you/we 0. Questions and non-drawing instructions are
scaled down, as they ask for an answer rather than a picture. A lexicon, no word vectors: the score
must be cheap, stable and explainable in a drop reason.
"""

from __future__ import annotations

from filters.lib import tag_lexicon as lex

_NOUN = ("NN", "NNS", "NNP", "NNPS")
_ADJ = ("JJ", "JJR", "JJS")
_VERB = ("VB", "VBD", "VBG", "VBN", "VBP", "VBZ")
_VISUAL_ADJECTIVES = lex.COLOR | lex.SHAPE | lex.TEXTURE | lex.VISUAL_ADJECTIVES


def visual_score(words: list[str], tags: list[str], renders_text: bool = False) -> float:
    """How concrete a prompt is, in [0, 1]: the mean of per-word weights over its content words
    (concrete nouns and visual adjectives 1, abstract nouns, cognitive verbs and I/you 0)."""
    weights = []
    for w, t in zip(words, tags):
        if t in _NOUN:
            weights.append(0.8 if t.startswith("NNP") else 0.0 if _abstract_noun(w) else 1.0)
        elif t in _ADJ:
            weights.append(1.0 if w in _VISUAL_ADJECTIVES
                           else 0.0 if w in lex.ABSTRACT_ADJECTIVES else 0.6)
        elif t in _VERB and w not in lex.STATIVE_VERBS:
            weights.append(0.0 if w in lex.ABSTRACT_VERBS else 0.7)
        elif w in lex.PERSONAL_PRONOUNS:
            weights.append(0.0)
    if renders_text:
        weights.append(1.0)  # the text itself is something to see
    if not weights:
        return 0.0
    score = sum(weights) / len(weights)
    if words and words[-1] == "?" and (tags[0] in ("WP", "WRB", "WDT", "MD") or words[0] in lex.COPULA
                                       or words[0] in ("do", "does", "did", "can", "could")):
        score *= 0.3  # a question to answer, not a scene to draw
    elif tags and tags[0] == "VB" and words[0] not in lex.DEPICT_VERBS:
        score *= 0.5  # an instruction ("Write a function...") unless it asks for a picture ("Draw a cat")
    return round(score, 3)


def _abstract_noun(word: str) -> bool:
    forms = {word, word[:-1] if word.endswith("s") else word, word[:-3] + "y" if word.endswith("ies") else word}
    if forms & lex.CONCRETE_EXCEPTIONS:
        return False
    if forms & lex.ABSTRACT_NOUNS:
        return True
    return any(f.endswith(lex.ABSTRACT_SUFFIXES) and len(f) > 6 for f in forms)
