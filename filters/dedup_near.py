"""`dedup_near`: near-duplicate removal by word n-gram MinHash and LSH banding.

Signatures are datasketch MinHashes of each prompt's word n-gram shingles; the banding
(b bands of r rows) is the one datasketch's MinHashLSH picks for the threshold. The index
itself is numpy: one 64-bit key per band and prompt, grouped by sorting. datasketch's
in-memory index keeps a Python set per bucket and band, about 5.8 KB a prompt here (6 GB
at 1M); these keys take 128 bytes. Candidates that share a band key are then confirmed by
the exact Jaccard of their shingle sets, so LSH false positives never drop anything.

Rule: records are visited in input order and compared only with records already kept.
A record is dropped when an earlier kept record has Jaccard >= threshold; the reason names
the most similar one (ties: the earliest). So the first record of each group is kept,
and chains do not cascade: if A~B and B~C but not A~C, B goes (a copy of A) and C stays.
The pipeline sorts records by records.canonical_key before the steps, so "first" means: within
a criterion, the cleanest copy (lowest records.normalization_cost), then the smallest id.
A dropped record that banding met stands for its kept twin, compared exactly too (keep_first).
"""

from __future__ import annotations

import re

import numpy as np

from core.errors import describe_value
from core.records import Prompt, normalize_text
from filters.base import Context, Step, StepResult, register
from filters.lib.similar_pairs import keep_first

_WORD = re.compile(r"\w+")  # word tokens without any downloaded nltk data; punctuation ignored
# In a band bucket, each prompt is compared with at most this many earlier members: huge
# buckets are boilerplate shared by distinct prompts, and would otherwise cost n^2. In a huge group
# of near copies the window holds only dropped copies; the second hop (run) reaches their kept twin.
_WINDOW = 512
_CHUNK = 65536  # records whose MinHash signatures are held at once


def shingles(text: str, n: int) -> set[str]:
    """Lower-cased word n-grams; a text shorter than n words is one shingle of all its words."""
    from nltk.util import ngrams

    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(g) for g in ngrams(words, n)}


def _identity(h: int) -> int:
    return h


def _band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint32: a multiplicative hash of each band's `rows` MinHash values (computed in 64
    bits, the high half kept). A collision only adds a candidate, which the exact Jaccard then rejects."""
    keys = np.zeros((len(sig), bands), np.uint64)
    with np.errstate(over="ignore"):
        for k in range(rows):
            keys = (keys ^ sig[:, k::rows][:, :bands].astype(np.uint64)) * np.uint64(0x100000001B3)
    return (keys >> np.uint64(32)).astype(np.uint32)


def bucket_pairs(keys: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (earlier, later) of valid prompts sharing a key, within _WINDOW in a bucket."""
    idx = np.flatnonzero(valid)
    order = idx[np.argsort(keys[idx], kind="stable")]  # stable: input order inside a bucket
    k = keys[order]
    multi = np.zeros(len(order), bool)
    multi[1:] |= k[1:] == k[:-1]
    multi[:-1] |= k[1:] == k[:-1]
    order, k = order[multi], k[multi]
    start = np.r_[True, k[1:] != k[:-1]] if len(k) else np.zeros(0, bool)
    pos = np.arange(len(k)) - np.maximum.accumulate(np.where(start, np.arange(len(k)), 0))
    lo, hi = [], []
    for off in range(1, min(_WINDOW, int(pos.max(initial=0))) + 1):
        at = np.flatnonzero(pos >= off)
        lo.append(order[at - off])
        hi.append(order[at])
    return (np.concatenate(lo), np.concatenate(hi)) if lo else (np.empty(0, np.int64),) * 2


@register
class DedupNear(Step):
    """Keeps the first of each group of near-identical prompts (see the module rule); drops
    the rest as "near_dup of <id> jaccard=<j> '<its text>'".

    threshold: Jaccard of word n-grams at or above which two prompts are duplicates. One
    word changed inside an L-word prompt gives (L-5)/(L+1) with 3-grams, so the default 0.8
    catches it from about 30 words on (scraped caption copies) and leaves short prompts
    that differ in an object or colour alone (0.71 at 13 words); short paraphrases are the
    semantic step's job. Best restricted to long-caption criteria (quality) in recipes.
    same_rendered_text: two prompts whose rendered text differs are never duplicates: the
    words an image must show are the point of text-rendering prompts.
    seed: of the MinHash permutations; fixed so the build seed never changes what counts as
    a duplicate.
    """

    kind = "dedup_near"

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, ngram: int = 3, seed: int = 1,
                 same_rendered_text: bool = True):
        if not 0.0 < threshold < 1.0:  # 1 would be exact copies only: dedup_exact's job
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if ngram < 1 or num_perm < 16:
            raise ValueError("ngram must be >= 1 and num_perm >= 16")
        self.threshold, self.num_perm, self.ngram, self.seed = threshold, num_perm, ngram, seed
        self.same_rendered_text = same_rendered_text
        self._perms = None
        try:
            self._lsh()
        except ValueError as exc:  # datasketch: "The number of bands are too small (b < 2)"
            raise ValueError(f"threshold {threshold} is too high for num_perm {num_perm}: MinHash banding "
                             "needs 2 bands or more; lower it, or raise num_perm") from exc

    def _lsh(self):
        from datasketch import MinHashLSH

        # Banding tuned for recall: a false positive costs one exact Jaccard, a false
        # negative keeps a duplicate. With datasketch's default 50/50 weights only ~57% of
        # pairs at Jaccard 0.83 meet when threshold is 0.8; these weights meet ~98%.
        return MinHashLSH(threshold=self.threshold, num_perm=self.num_perm, weights=(0.05, 0.95))

    def run(self, records: list[Prompt], ctx: Context) -> StepResult:
        hashes, ends, keys = self.signatures(records, ctx.progress)
        valid = np.diff(ends) > 0  # no words: never a near duplicate
        pairs = [bucket_pairs(keys[:, b], valid) for b in range(keys.shape[1])]
        del keys
        lo = np.concatenate([p[0] for p in pairs]) if pairs else np.empty(0, np.int64)
        hi = np.concatenate([p[1] for p in pairs]) if pairs else np.empty(0, np.int64)
        return self.decide(records, lo, hi, hashes, ends)

    def signatures(self, records: list[Prompt], progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(hashes, ends, keys): each record's sorted unique shingle hashes, back to back in `hashes`
        (record i's are hashes[ends[i]:ends[i + 1]]; none: no words), and its (n, bands) uint32 LSH band
        keys. Per record, so any split of the records gives the same rows."""
        from tqdm.auto import tqdm

        lsh = self._lsh()
        n = len(records)
        # Hashes back to back in one array: a list of small arrays costs ~100 bytes a record more, and
        # at millions of records that is the difference.
        parts: list[np.ndarray] = []
        ends = np.zeros(n + 1, np.int64)
        keys = np.zeros((n, lsh.b), np.uint32)  # 32-bit band keys: a collision only adds a candidate
        with tqdm(total=n, desc="dedup_near", unit="prompt", disable=not progress) as bar:
            for start in range(0, n, _CHUNK):  # signatures live one chunk at a time
                chunk = records[start : start + _CHUNK]
                sig = np.zeros((len(chunk), self.num_perm), np.uint32)
                found = []
                for i, record in enumerate(chunk):
                    found.append(self._hashes(record))
                    if len(found[-1]):
                        sig[i] = self._signature(found[-1])
                    bar.update()
                ends[start + 1 : start + len(chunk) + 1] = ends[start] + np.cumsum([len(h) for h in found])
                parts.append(np.concatenate(found) if found else np.empty(0, np.uint32))
                keys[start : start + len(chunk)] = _band_keys(sig, lsh.b, lsh.r)
        return (np.concatenate(parts) if parts else np.empty(0, np.uint32)), ends, keys

    def decide(self, records: list[Prompt], lo: np.ndarray, hi: np.ndarray, hashes: np.ndarray,
               ends: np.ndarray) -> StepResult:
        """The module rule over candidate pairs (lo[k] before hi[k], by position in `records`; repeats
        allowed), each confirmed by the exact Jaccard of the records' shingle hashes (see signatures)."""
        n = len(records)
        uniq = np.unique(lo.astype(np.int64) * n + hi)

        def jaccard(a: int, b: int) -> float:
            if self.same_rendered_text and not records[a].same_rendered_text(records[b]):
                return 0.0
            ha, hb = hashes[ends[a] : ends[a + 1]], hashes[ends[b] : ends[b + 1]]
            inter = len(np.intersect1d(ha, hb, assume_unique=True))
            return inter / (len(ha) + len(hb) - inter)

        dup_of = keep_first(uniq // n, uniq % n, jaccard, self.threshold)
        result = StepResult(kept=[r for i, r in enumerate(records) if i not in dup_of])
        for i in sorted(dup_of):
            a, jac = dup_of[i]
            result.dropped.append((records[i], self.drop(f"near_dup of {records[a].id} jaccard={jac:.2f} "
                                                         f"{describe_value(records[a].text)}")))
        return result

    def _hashes(self, record: Prompt) -> np.ndarray:
        """The sorted unique 32-bit hashes of a record's shingles. Look-alike letters and stray marks are
        folded first (records.normalize_text), as dedup_exact folds them, so a disguised and reworded
        copy still meets its original."""
        from datasketch.hashfunc import sha1_hash32

        text = record.text if record.text.isascii() else normalize_text(record.text)
        grams = shingles(text, self.ngram)
        return np.unique(np.fromiter((sha1_hash32(g.encode("utf-8")) for g in grams), np.uint32, len(grams)))

    def _signature(self, hashes: np.ndarray) -> np.ndarray:
        from datasketch import MinHash

        if self._perms is None:  # shared by every signature: built once, not per record
            self._perms = MinHash(self.num_perm, seed=self.seed).permutations
        m = MinHash(self.num_perm, seed=self.seed, hashfunc=_identity, permutations=self._perms, scheme="affine32")
        m.update_batch(hashes.tolist())
        return m.hashvalues
