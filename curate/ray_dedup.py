"""The dedup steps on Ray, partitioned so that each partition's answer is the local engine's on it.

- dedup_exact: rows are hash-partitioned by their dedup key's digest, so every group of copies lies in one
  partition; the DedupExact step runs there on the partition's records in canonical order.
- dedup_near: a map computes each record's MinHash band keys (DedupNear.signatures); rows grouped by
  band key give the candidate pairs (filters.dedup_near.bucket_pairs: the same window in the same order);
  the driver joins the pairs into connected components; and DedupNear.decide runs per partition, a
  partition being whole components. keep_first only ever compares a record with partners and their kept
  twins, all in its component, so the union of the partitions' answers is the answer on the whole pool.

Records outside a step's criteria pass through untouched, as curate.pipeline._PlannedStep runs them.
Partitions move between workers through `shuffle`, a hash shuffle in plain Ray tasks.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import pyarrow as pa

from core.records import Prompt
from curate.ray_rows import decode, kept_records, order_bytes, result_table
from filters.base import Context, Step, StepResult


def shuffle(ds, assign, reduce, parts: int, *args):
    """A hash shuffle in plain Ray tasks: each block of `ds` is split by assign(table, parts, *args) -> one
    partition index per row, then reduce(partition table, *args) -> table runs once per partition; returns
    the dataset of the reduced tables. (Ray Data's groupby takes seconds a stage to set up its shuffle
    actors; these tasks take milliseconds. A task whose worker dies runs again: Ray retries tasks.)
    An ObjectRef among `args` reaches the functions as its value."""
    import ray
    import ray.data

    split = ray.remote(_split)
    pieces = [split.options(num_returns=parts).remote(block, assign, parts, *args) for block in ds.to_arrow_refs()]
    pieces = [[p] for p in pieces] if parts == 1 else pieces
    out = [ray.remote(_reduce).remote(reduce, args, *[p[j] for p in pieces]) for j in range(parts)]
    return ray.data.from_arrow_refs(out)


def _split(table: pa.Table, assign, parts: int, *args):
    part = np.asarray(assign(table, parts, *args), np.int64)
    tables = tuple(table.filter(pa.array(part == j)) for j in range(parts))
    return tables if parts > 1 else tables[0]


def _reduce(reduce, args: tuple, *tables: pa.Table) -> pa.Table:
    import ray

    args = [ray.get(a) if isinstance(a, ray.ObjectRef) else a for a in args]
    return reduce(pa.concat_tables(tables), *args)


def _part_of_seq(seq: bytes, parts: int) -> int:
    return zlib.crc32(seq) % parts


def _in(planned, record: Prompt) -> bool:
    return planned.criteria is None or record.criterion in planned.criteria


def _exact_parts(batch: pa.Table, parts: int, planned, data) -> list[int]:
    return [int.from_bytes(planned.step.digest(r)[:8], "big") % parts if _in(planned, r) else _part_of_seq(s, parts)
            for r, _, s in decode(batch)]


def _run_planned(group: pa.Table, planned, data: dict[str, Any]) -> pa.Table:
    """The planned step on one partition's records, in the local engine's order."""
    from curate.pipeline import make_context

    records, seqs = kept_records(group)
    result = planned.run(records, make_context(data, progress=False))
    return result_table(records, seqs, result.kept, result.dropped)


def dedup_exact(ds, planned, data: dict[str, Any], parts: int):
    """dedup_exact over a dataset of kept rows: kept and dropped rows out."""
    return shuffle(ds, _exact_parts, _run_planned, parts, planned, data)


BAND_SCHEMA = pa.schema([("bkey", pa.uint64()), ("seq", pa.binary()), ("order", pa.binary())])
PAIR_SCHEMA = pa.schema([("lo", pa.binary()), ("hi", pa.binary())])


def _band_rows(batch: pa.Table, planned) -> pa.Table:
    """One row per (record, band) with the band's key, for records with words in the step's criteria."""
    rows = [(r, s) for r, _, s in decode(batch) if _in(planned, r)]
    _, ends, keys = planned.step.signatures([r for r, _ in rows])
    valid = np.flatnonzero(np.diff(ends) > 0)
    bands = keys.shape[1]
    bkey = (np.arange(bands, dtype=np.uint64)[None, :] << np.uint64(32)) | keys[valid].astype(np.uint64)
    seqs = [rows[i][1] for i in valid.tolist() for _ in range(bands)]
    orders = [order_bytes(*rows[i]) for i in valid.tolist() for _ in range(bands)]
    return pa.table({"bkey": pa.array(bkey.ravel(), pa.uint64()), "seq": seqs, "order": orders}, schema=BAND_SCHEMA)


def _band_parts(bands: pa.Table, parts: int) -> np.ndarray:
    with np.errstate(over="ignore"):  # a multiplicative hash: spreads keys whose low bits agree
        return (bands.column("bkey").to_numpy() * np.uint64(0x9E3779B97F4A7C15) >> np.uint64(40)) % np.uint64(parts)


def _bucket_pairs(bands: pa.Table) -> pa.Table:
    """The candidate pairs of a partition's band buckets, as the local engine's window finds them: in
    each bucket, records in the local engine's order."""
    from filters.dedup_near import bucket_pairs

    bands = bands.sort_by("order")
    lo, hi = bucket_pairs(bands.column("bkey").to_numpy(), np.ones(bands.num_rows, bool))
    seq = np.array(bands.column("seq").to_pylist(), dtype=object)
    return pa.table({"lo": seq[lo].tolist(), "hi": seq[hi].tolist()}, schema=PAIR_SCHEMA)


def _components(pairs: set[tuple[bytes, bytes]], parts: int) -> dict[bytes, int]:
    """Union-find over the pairs: the partition of each record in one (its component's root's hash)."""
    parent: dict[bytes, bytes] = {}

    def root(x: bytes) -> bytes:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: _part_of_seq(root(x), parts) for x in parent}


def _near_parts(batch: pa.Table, parts: int, part_of: dict[bytes, int], *_) -> list[int]:
    return [part_of.get(s, _part_of_seq(s, parts)) for s in batch.column("seq").to_pylist()]


class _GivenPairs(Step):
    """DedupNear's decision on records whose candidate pairs were found elsewhere (by seq)."""

    def __init__(self, near, earlier: dict[bytes, list[bytes]], seq_of: dict[int, bytes]):
        self.near, self.earlier, self.seq_of = near, earlier, seq_of

    def run(self, records: list[Prompt], ctx: Context) -> StepResult:
        index = {self.seq_of[id(r)]: i for i, r in enumerate(records)}
        pairs = [(index[a], i) for i, r in enumerate(records) for a in self.earlier.get(self.seq_of[id(r)], ())]
        lo, hi = (np.array(x, np.int64) for x in zip(*pairs)) if pairs else (np.empty(0, np.int64),) * 2
        hashes, ends, _ = self.near.signatures(records)
        return self.near.decide(records, lo, hi, hashes, ends)


def _decide_near(group: pa.Table, part_of, earlier, planned) -> pa.Table:
    from curate.pipeline import _PlannedStep

    records, seqs = kept_records(group)
    given = _GivenPairs(planned.step, earlier, {id(r): s for r, s in zip(records, seqs)})
    result = _PlannedStep(planned.name, given, planned.criteria).run(records, Context(progress=False))
    return result_table(records, seqs, result.kept, result.dropped)


def dedup_near(ds, planned, parts: int):
    """dedup_near over a dataset of kept rows (materialized: it is read twice): kept and dropped rows out,
    and the number of candidate pairs."""
    import ray

    bands = ds.map_batches(_band_rows, batch_format="pyarrow", fn_kwargs={"planned": planned}).materialize()
    found = shuffle(bands, _band_parts, _bucket_pairs, parts)
    pairs: set[tuple[bytes, bytes]] = set()
    for batch in found.iter_batches(batch_format="pyarrow"):
        pairs.update(zip(batch.column("lo").to_pylist(), batch.column("hi").to_pylist()))
    earlier: dict[bytes, list[bytes]] = {}
    for a, b in pairs:
        earlier.setdefault(b, []).append(a)
    out = shuffle(ds, _near_parts, _decide_near, parts, ray.put(_components(pairs, parts)), ray.put(earlier), planned)
    return out, len(pairs)
