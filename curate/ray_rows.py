"""What the Ray engine (curate/engine_ray.py) moves between workers: records as Arrow rows, and the
batched maps that read pools and run row-wise steps.

A row is one record, pickled whole (a Prompt carries scores, labels and meta that no fixed schema
holds), with `seq`, its read position (pool, shard, row: unique, and what the local engine's stable
sort falls back on), and the drop that removed it ("" while it is kept). A shard that skipped files
adds one row with no record and the skipped files as JSON in `note`. Workers run the very Step objects
the local engine runs, on a batch of records at a time.
"""

from __future__ import annotations

import itertools
import json
import pickle
import struct
import warnings
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from core.records import Drop, Prompt, canonical_key

SCHEMA = pa.schema([("rec", pa.binary()), ("seq", pa.binary()), ("step", pa.string()), ("detail", pa.string()),
                    ("note", pa.string())])
READ_CHUNK_ROWS = 8192  # rows a read task hands on at a time


def seq_of(pool: int, shard: int, row: int) -> bytes:
    """A read position whose byte order is read order (pools, then a pool's shards, then rows)."""
    return struct.pack(">IIQ", pool, shard, row)


def pool_of(seq: bytes) -> int:
    return struct.unpack(">I", seq[:4])[0]


def order_key(record: Prompt, seq: bytes) -> tuple:
    """The local engine's order (canonical_key, then read order for records that tie on it)."""
    return (*canonical_key(record), seq)


def order_bytes(record: Prompt, seq: bytes) -> bytes:
    """order_key as bytes that sort the same way (texts hold no NUL: clean_text made it a space)."""
    rank, cost, *strings = canonical_key(record)
    return struct.pack(">HI", rank, cost) + b"".join(s.encode("utf-8", "surrogatepass") + b"\0" for s in strings) + seq


def encode(rows: list[tuple[Prompt, Drop | None, bytes]]) -> pa.Table:
    """(record, drop or None, seq) rows as a table in SCHEMA."""
    return pa.table({
        "rec": [pickle.dumps(r, protocol=5) for r, _, _ in rows],
        "seq": [s for _, _, s in rows],
        "step": [d.step if d is not None else "" for _, d, _ in rows],
        "detail": [d.detail if d is not None else "" for _, d, _ in rows],
        "note": [""] * len(rows),
    }, schema=SCHEMA)


def decode(table: pa.Table) -> list[tuple[Prompt, Drop | None, bytes]]:
    """encode's rows back (note rows are left out)."""
    cols = [table.column(c).to_pylist() for c in ("rec", "seq", "step", "detail", "note")]
    return [(pickle.loads(rec), Drop(step, detail) if step else None, seq)
            for rec, seq, step, detail, note in zip(*cols) if not note]


def is_kept(table: pa.Table):
    """The mask of a table's rows that hold a record no step has dropped."""
    return pc.and_(pc.equal(table["step"], ""), pc.equal(table["note"], ""))


def kept_records(table: pa.Table) -> tuple[list[Prompt], list[bytes]]:
    """The kept records of a table (no drop), in the local engine's order, and their seqs."""
    rows = sorted(((r, s) for r, d, s in decode(table) if d is None), key=lambda rs: order_key(*rs))
    return [r for r, _ in rows], [s for _, s in rows]


def result_table(records: list[Prompt], seqs: list[bytes], kept: list[Prompt],
                 dropped: list[tuple[Prompt, Drop]]) -> pa.Table:
    """A step's result on `records` as rows again: each kept or dropped record with its own seq."""
    seq = {id(r): s for r, s in zip(records, seqs)}
    return encode([(r, None, seq[id(r)]) for r in kept] + [(r, d, seq[id(r)]) for r, d in dropped])


def note_table(skipped: list[dict[str, str]], seq: bytes) -> pa.Table:
    return pa.table({"rec": [b""], "seq": [seq], "step": [""], "detail": [""], "note": [json.dumps(skipped)]},
                    schema=SCHEMA)


def read_shards(batch: pa.Table) -> Iterator[pa.Table]:
    """Map: each input row names a shard (a whole pool, or some files of a folder pool); yields its rows
    as curate.pipeline.read_pool reads them, so every per-row rejection rule is the local engine's."""
    from curate.pipeline import read_pool

    for task in batch.column("task").to_pylist():
        pool_index, shard_index, pool, files = pickle.loads(task)
        skipped: list[dict[str, str]] = []
        with warnings.catch_warnings():  # the driver warns about skipped files, once, from the note row
            warnings.simplefilter("ignore")
            rows = enumerate(read_pool(pool, skipped, files))
            while chunk := list(itertools.islice(rows, READ_CHUNK_ROWS)):
                yield encode([(r, why, seq_of(pool_index, shard_index, i)) for i, (r, why) in chunk])
        if skipped:
            yield note_table(skipped, seq_of(pool_index, shard_index, 2**64 - 1))


class StepChain:
    """Map (an actor: the steps, and so their models, load once per actor): run row-wise steps in recipe
    order on a batch, as the local engine runs them on a chunk. Dropped and note rows pass through."""

    def __init__(self, steps: list[Any], data: dict[str, Any]):
        from curate.pipeline import make_context

        self.steps, self.ctx = steps, make_context(data, progress=False)

    def __call__(self, batch: pa.Table) -> pa.Table:
        alive = is_kept(batch)
        records, seqs = kept_records(batch.filter(alive))
        good, dropped = records, []
        for step in self.steps:
            result = step.run(good, self.ctx)
            good = result.kept
            dropped += result.dropped
        return pa.concat_tables([batch.filter(pc.invert(alive)), result_table(records, seqs, good, dropped)])


class Embed:
    """Map (an actor: the embedder loads once per actor): each kept record's text and its embedding
    (float32 bytes) from the recipe's embedder, for the steps that embed (Step.embeds)."""

    def __init__(self, data: dict[str, Any], criteria: set[str] | None):
        from curate.pipeline import make_context

        self.ctx, self.criteria = make_context(data, progress=False), criteria

    def __call__(self, batch: pa.Table) -> pa.Table:
        records = [r for r, d, _ in decode(batch) if d is None and (self.criteria is None or r.criterion in self.criteria)]
        texts = list(dict.fromkeys(r.text for r in records))
        vectors = self.ctx.embed_texts(texts) if texts else []
        return pa.table({"text": texts, "vec": [v.astype("float32").tobytes() for v in vectors]},
                        schema=pa.schema([("text", pa.string()), ("vec", pa.binary())]))


def rank_bytes(seed: int, record, seq: bytes) -> bytes:
    """filters.lib.ranked.rank_key, then read order, as bytes that sort the same way (the local engine sorts
    by rank_key records that are in canonical, then read, order)."""
    from filters.lib.ranked import hash_rank

    return hash_rank(seed, record) + order_bytes(record, seq)
