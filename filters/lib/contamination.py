"""Does a prompt copy one of an evaluation set's? The matcher behind the `decontaminate` step, and what
`train eval` can use to warn about held-out prompts that overlap a run's training data.

Three tests, tried in this order (the first that fires names the match):
- `eval_exact`: the same records.dedup_key (case, spacing, quote style, edge punctuation, look-alike
  letters, "A and B" = "B and A"), as dedup_exact compares prompts.
- `eval_ngram`: word trigrams taken around the prompt as a circle (the last words run on into the first),
  so every word sits in exactly n of them and moving a clause from the end to the front ("..., at sunset"
  / "at sunset, ...") changes none. A pair scores shared n-grams / the n-grams of the longer prompt, so
  most of *both* must be shared; at the default 0.7 a changed word (score (L-3)/L) is caught from 10
  words on, an added adjective ((L-2)/(L+1)) from 9, and a phrase two prompts share ("highly detailed,
  trending on artstation") only when it is 70% of both. Why not the 13-grams of GPT-3's decontamination:
  prompts are 5 to 30 words, so few hold a 13-gram and one changed word removes them all. Why not catch
  one word in shorter prompts: it is a fifth of "a photo of a cat" / "a photo of a dog", and
  T2I-CompBench is made of such siblings; with 1,000 of its prompts as the eval set, 17 of 4,000 others score >= 0.7, each one
  word apart in 10 ("A person / A man is holding a guitar and strumming a tune"), against 1,287 at 0.6
  with plain trigrams. Short rewordings are the semantic test's.
- `eval_semantic`: cosine of L2-normalised embeddings to the nearest eval prompt. As in dedup_semantic,
  the same words in another order ("a red cube on a blue sphere" / "a blue cube on a red sphere", 0.99
  with MiniLM) are another prompt, never a semantic match: that contrast is what compositional eval sets
  measure (a moved clause is eval_ngram's, at 1.0).
Neither eval_ngram nor eval_semantic matches prompts that ask for different rendered text ("a sign
reading 'open'" / "... 'closed'"): the words to render are what text-rendering eval sets measure.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from core.records import dedup_key, words
from filters.lib.rendered_text import extract_rendered_text

_SIMILARITY_ROWS = 2048  # prompts compared with the whole eval set at once: 2048 x m float32


class Contamination(NamedTuple):
    kind: str  # eval_exact, eval_ngram or eval_semantic
    eval_text: str  # the eval prompt matched
    score: float  # 1.0 for eval_exact; the n-gram share or the cosine otherwise


def word_ngrams(text: str, n: int) -> set[str]:
    """The word n-grams of the normalised text (case, quotes and punctuation ignored), read around the
    text as a circle: as many n-grams as words, each word in n of them (see the module doc)."""
    found = words(text)
    cycle = found + found[: n - 1]
    return {" ".join(cycle[i : i + n]) for i in range(len(found))}


def _same_rendered_text(a: str, b: str) -> bool:
    return extract_rendered_text(a) == extract_rendered_text(b)


class EvalIndex:
    """An evaluation set's prompts, indexed for `match`. `embed` (texts -> (n, d) L2-normalised float32)
    is needed only with a semantic_threshold; None switches the semantic test off."""

    def __init__(self, texts: Sequence[str], ngram: int = 3, ngram_threshold: float | None = 0.7,
                 embed: Callable[[list[str]], np.ndarray] | None = None, semantic_threshold: float | None = None):
        self.check_options(ngram, ngram_threshold, semantic_threshold)
        if semantic_threshold is not None and embed is None:
            raise ValueError("a semantic_threshold needs an embedder")
        self.texts = list(dict.fromkeys(texts))  # an eval prompt listed twice is one prompt
        self.ngram, self.ngram_threshold, self.semantic_threshold = ngram, ngram_threshold, semantic_threshold
        self._embed = embed
        self._by_key: dict[str, int] = {}
        for i, text in enumerate(self.texts):
            self._by_key.setdefault(dedup_key(text), i)
        self._grams = [word_ngrams(t, ngram) for t in self.texts]
        self._postings: dict[str, list[int]] = defaultdict(list)  # n-gram -> the eval prompts holding it
        for i, grams in enumerate(self._grams):
            for gram in grams:
                self._postings[gram].append(i)
        self._vectors: np.ndarray | None = None  # eval embeddings, made on the first semantic test

    @staticmethod
    def check_options(ngram: int, ngram_threshold: float | None, semantic_threshold: float | None) -> None:
        """ValueError naming the first option out of range (a recipe's step checks them before any work)."""
        if ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {ngram}")
        if ngram_threshold is not None and not 0.0 < ngram_threshold <= 1.0:
            raise ValueError(f"ngram_threshold must be in (0, 1], got {ngram_threshold}")
        if semantic_threshold is not None and not -1.0 < semantic_threshold <= 1.0:
            raise ValueError(f"semantic_threshold must be in (-1, 1], got {semantic_threshold}")

    def match(self, texts: Sequence[str]) -> list[Contamination | None]:
        """Per text: the eval prompt it copies and how, or None."""
        found = [self._surface_match(t) for t in texts]
        if self.semantic_threshold is not None and self.texts:
            rest = [i for i, hit in enumerate(found) if hit is None]
            for i, hit in zip(rest, self._semantic_matches([texts[i] for i in rest])):
                found[i] = hit
        return found

    def _surface_match(self, text: str) -> Contamination | None:
        exact = self._by_key.get(dedup_key(text))
        if exact is not None:
            return Contamination("eval_exact", self.texts[exact], 1.0)
        if self.ngram_threshold is None:
            return None
        grams = word_ngrams(text, self.ngram)
        shared = Counter(i for gram in grams for i in self._postings.get(gram, ()))
        scores = {i: count / max(len(grams), len(self._grams[i])) for i, count in shared.items()}
        for i in sorted((i for i, s in scores.items() if s >= self.ngram_threshold), key=lambda i: (-scores[i], i)):
            if _same_rendered_text(text, self.texts[i]):
                return Contamination("eval_ngram", self.texts[i], scores[i])
        return None

    def _semantic_matches(self, texts: list[str]) -> list[Contamination | None]:
        if not texts:
            return []
        if self._vectors is None:
            self._vectors = self._embed(self.texts)
        vectors = self._embed(texts)
        found: list[Contamination | None] = []
        for start in range(0, len(texts), _SIMILARITY_ROWS):
            sims = vectors[start : start + _SIMILARITY_ROWS] @ self._vectors.T
            for text, row in zip(texts[start : start + _SIMILARITY_ROWS], sims):
                found.append(self._nearest_allowed(text, row))
        return found

    def _nearest_allowed(self, text: str, sims: np.ndarray) -> Contamination | None:
        """The most similar eval prompt at or above the threshold that is not a rearrangement or another
        rendered text (see the module doc)."""
        above = np.flatnonzero(sims >= self.semantic_threshold)
        for i in above[np.argsort(-sims[above], kind="stable")].tolist():
            other = self.texts[i]
            if sorted(words(text)) == sorted(words(other)) or not _same_rendered_text(text, other):
                continue  # same-key rearrangements ("A and B") were eval_exact already
            return Contamination("eval_semantic", other, min(float(sims[i]), 1.0))
        return None
