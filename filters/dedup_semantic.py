"""`dedup_semantic`: drop prompts whose embedding is nearly the same as an earlier one's.

Cosine similarity is the inner product of the L2-normalised embeddings from ctx.embed.
Up to `exact_max` records every pair is compared (faiss IndexFlatIP range search).
Above it, an IVF partition: a faiss spherical k-means coarse quantizer with nlist ~ sqrt(n)
cells, trained on the 64 x nlist records of lowest hash rank (filters/lib/ranked.py: a sample
that depends on the records alone, so the Ray engine trains on the same one); each vector
lives in its nearest cell and is compared with the members of its `nprobe` nearest cells,
exactly, by an IndexFlatIP range search per cell (SemDeDup's partition by k-means cluster,
with neighbouring cells probed too). That is the search IndexIVFFlat does, but each cell's
queries go through as one matrix product (BLAS) instead of one scan per query: 11 s against
IndexIVFFlat.range_search's 41 s for 200k vectors at nprobe 4 on 2 cores. Pairs whose cells
are not probed are missed (recall of planted cos-0.97 copies among random vectors: 0.99 at
100k, 0.98 at 1M); raise nprobe for recall at linear cost.

Rule (keep_first, shared with dedup_near): records are visited in input order and compared
only with records already kept. A record is dropped when some earlier kept record has
cos >= threshold; the reason names the most similar one (ties: the earliest). The first
record of each group stays, and chains do not cascade (A~B, B~C, not A~C: B goes, C stays).
The pipeline sorts records by records.canonical_key before the steps, so the first is, within a
criterion, the cleanest copy (lowest records.normalization_cost), then the smallest id.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

import numpy as np

from core.errors import describe_value
from core.records import dedup_key, words
from filters.base import Context, Step, StepResult, register
from filters.lib.ranked import rank_key
from filters.lib.similar_pairs import ivf_size, keep_first, similar_pairs
from filters.lib.spill import release_pages, row_chunks

if TYPE_CHECKING:
    from core.records import Prompt


@register
class DedupSemantic(Step):
    """Keeps the first of each group of semantically identical prompts (see the module rule);
    drops the rest as "semantic_dup of <id> cos=<c> '<its text>'".

    threshold: cosine at or above which two prompts are duplicates (0.95: paraphrases with
    the same content; order-swapped "A and B" pairs score about 0.98 with MiniLM).
    exact_max: up to this many records, compare all pairs exactly. nlist (None: ~sqrt(n))
    and nprobe set the IVF search above it. same_rendered_text: prompts whose rendered
    text differs are never duplicates (the quoted words are the point of text prompts).
    max_partners: each prompt keeps at most its this many most similar prompts in each cell it
    searches (0: all). A group of g look-alike prompts otherwise yields g^2 / 2 pairs: 1M one-template
    prompts made tens of millions and a 5 GiB peak. The rule still finds a group's first through the
    kept twins of the partners it keeps.
    keep_rearrangements: prompts made of the same words in another order are never merged
    unless their dedup_key matches. Mean-pooled embeddings barely see word order: with
    MiniLM "a red cube on a blue sphere" / "a blue cube on a red sphere" score 0.99 and
    "a cat left of a dog" / "a dog left of a cat" 0.985, yet they are the attribute-binding
    and spatial cases compositional data exists for. Caveat: a one-word swap ("left" /
    "right": 0.97) is not protected. On the T2I-CompBench training prompts, 0.95 drops 530
    of 5,536 without the guard (335 colour swaps) and 142 with it (mostly "in front of" /
    "behind"), so keep this step off the semantic criterion or raise the threshold there.
    """

    kind = "dedup_semantic"
    embeds = True

    def __init__(self, threshold: float = 0.95, exact_max: int = 20000, nlist: int | None = None, nprobe: int = 4,
                 max_partners: int = 10, same_rendered_text: bool = True, keep_rearrangements: bool = True):
        if not -1.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (-1, 1], got {threshold}")
        if nprobe < 1 or (nlist is not None and nlist < 1):
            raise ValueError("nprobe and nlist must be >= 1")
        if max_partners < 0:
            raise ValueError(f"max_partners must be >= 0 (0: all), got {max_partners}")
        self.threshold, self.exact_max, self.nlist, self.nprobe = threshold, exact_max, nlist, nprobe
        self.max_partners = max_partners
        self.same_rendered_text, self.keep_rearrangements = same_rendered_text, keep_rearrangements

    def _may_merge(self, a: Prompt, b: Prompt) -> bool:
        if self.same_rendered_text and not a.same_rendered_text(b):
            return False
        if self.keep_rearrangements and sorted(words(a.text)) == sorted(words(b.text)):
            return dedup_key(a.text) == dedup_key(b.text)  # "A and B" / "B and A" is still one prompt
        return True

    def pairs(self, x: np.ndarray, records: list[Prompt], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The search's pairs (lo, hi, cos) among records embedded as x (see the module)."""
        sample = None
        if len(records) > self.exact_max:
            _, m = ivf_size(len(records), self.nlist)
            sample = np.array(sorted(range(len(records)), key=lambda i: rank_key(seed, records[i]))[:m])
        return similar_pairs(x, self.threshold, self.exact_max, self.nlist, self.nprobe, seed, sample,
                             self.max_partners)

    def run(self, records: list[Prompt], ctx: Context) -> StepResult:
        if len(records) < 2:
            return StepResult(kept=list(records))
        x = ctx.embed(records)
        return self.decide(records, x, *self.pairs(x, records, ctx.seed))

    def decide(self, records: list[Prompt], x: np.ndarray, lo: np.ndarray, hi: np.ndarray,
               cos: np.ndarray) -> StepResult:
        """The keep-first rule on the search's pairs (indices into records, which x embeds); the Ray engine
        runs it per partition of whole connected components."""
        allowed = np.fromiter((self._may_merge(records[a], records[b]) for a, b in _each_pair(lo, hi)), bool, len(lo))

        reads = itertools.count(1)

        def similarity(a: int, b: int) -> float:  # a pair the search did not return: a kept twin's
            if next(reads) % 8192 == 0:
                release_pages(x)  # twins are read from all over a spilled x: keep them from piling up in RSS
            return float(x[a] @ x[b]) if self._may_merge(records[a], records[b]) else -math.inf

        dup_of = keep_first(lo[allowed], hi[allowed], similarity, self.threshold, known=cos[allowed])
        release_pages(x)
        result = StepResult(kept=[r for i, r in enumerate(records) if i not in dup_of])
        for i in sorted(dup_of):
            a, c = dup_of[i]
            result.dropped.append((records[i], self.drop(f"semantic_dup of {records[a].id} cos={min(c, 1.0):.2f} "
                                                         f"{describe_value(records[a].text)}")))
        return result


def _each_pair(lo: np.ndarray, hi: np.ndarray):
    """(lo[k], hi[k]) as Python ints, a chunk at a time (a whole list of millions of pairs would cost GiBs)."""
    for part in row_chunks(len(lo)):
        yield from zip(lo[part].tolist(), hi[part].tolist())
