"""dedup_semantic on Ray: filters/dedup_semantic.py's search and rule, partitioned by IVF cell (SemDeDup's
partition by k-means cluster, with the neighbouring cells probed as the local engine probes them).

1. Points: an actor pool (one embedder per actor) adds to each record in the step's criteria its
   embedding, its place in the local engine's order and its hash rank.
2. Cells: up to `exact_max` points one cell holds them all (the local engine's exact search). Above it,
   the driver trains the IVF centroids on the points of lowest hash rank (each block sends its lowest,
   the local engine's sample), and a map lists each point's useful cells (similar_pairs.probes).
3. Pairs: a shuffle by cell; in each cell, similar_pairs.cell_pairs on its members and askers in the
   local engine's order; the pairs come to the driver as read positions, each kept from its lowest cell
   (the local engine's first finding).
4. Decision: connected components of the pairs; a shuffle of the records with their vectors by
   component; DedupSemantic.decide on each partition, as for dedup_near (curate/ray_dedup.py).

So the pairs, and so the kept set, are the local engine's whenever the embeddings are.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.records import Prompt
from curate.ray_dedup import _components, _in, _near_parts, shuffle
from curate.ray_rows import SCHEMA, decode, is_kept, kept_records, order_bytes, rank_bytes, result_table
from filters.base import Context, Step, StepResult

CELL_SCHEMA = pa.schema([("cell", pa.int64()), ("member", pa.bool_()), ("order", pa.binary()), ("seq", pa.binary()),
                         ("vec", pa.binary())])
PAIR_SCHEMA = pa.schema([("lo", pa.binary()), ("hi", pa.binary()), ("cos", pa.float32()), ("cell", pa.int64())])


class _Points:
    """Map (an actor): the rows with, for kept records in the step's criteria, `vec` (float32 bytes),
    `order` (order_bytes) and `rank` (rank_bytes); empty bytes elsewhere."""

    def __init__(self, planned, data: dict[str, Any], seed: int):
        from curate.pipeline import make_context

        self.planned, self.seed, self.ctx = planned, seed, make_context(data, progress=False)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = decode(batch)
        points = [i for i, (r, d, _) in enumerate(rows) if d is None and _in(self.planned, r)]
        x = self.ctx.embed([rows[i][0] for i in points]) if points else np.zeros((0, 1), np.float32)
        vec, order, rank = [b""] * len(rows), [b""] * len(rows), [b""] * len(rows)
        for i, v in zip(points, x):
            record, _, seq = rows[i]
            vec[i], order[i], rank[i] = v.astype(np.float32).tobytes(), order_bytes(record, seq), rank_bytes(
                self.seed, record, seq)
        batch = batch.filter(pc.equal(batch["note"], ""))  # decode left the note rows out
        return batch.append_column("vec", pa.array(vec, pa.binary())).append_column(
            "order", pa.array(order, pa.binary())).append_column("rank", pa.array(rank, pa.binary()))


def _vectors(table: pa.Table) -> np.ndarray:
    vecs = table.column("vec").to_pylist()
    return np.frombuffer(b"".join(vecs), np.float32).reshape(len(vecs), -1) if vecs else np.zeros((0, 1), np.float32)


def _only_points(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.not_equal(pc.binary_length(batch["vec"]), 0))


def _lowest_points(batch: pa.Table, m: int) -> pa.Table:
    return _only_points(batch).select(["rank", "vec"]).sort_by("rank").slice(0, m)


def _cell_rows(batch: pa.Table, centres: np.ndarray | None, nprobe: int, threshold: float) -> pa.Table:
    """A row per point and cell it asks (its home first: `member`); no centres: one cell holds every point."""
    from filters.lib.similar_pairs import probes

    points = _only_points(batch)
    if centres is None:
        cells, useful = np.zeros((points.num_rows, 1), np.int64), np.ones((points.num_rows, 1), bool)
    else:
        cells, useful = probes(_vectors(points), centres, nprobe, threshold)
    row, j = np.nonzero(useful)
    picked = points.take(pa.array(row))
    return pa.table({"cell": cells[row, j], "member": j == 0, "order": picked["order"], "seq": picked["seq"],
                     "vec": picked["vec"]}, schema=CELL_SCHEMA)


def _cell_parts(table: pa.Table, parts: int, *_) -> np.ndarray:
    return table.column("cell").to_numpy() % parts


def _pairs_in_cells(table: pa.Table, threshold: float, partners: int) -> pa.Table:
    """Each cell's pairs (similar_pairs.cell_pairs), its rows in the local engine's order."""
    from filters.lib.similar_pairs import cell_pairs, runs

    if not table.num_rows:
        return PAIR_SCHEMA.empty_table()
    out = []
    table = table.sort_by([("cell", "ascending"), ("order", "ascending")])
    cell = table.column("cell").to_numpy()
    for start, stop in zip(*runs(cell)):
        rows = table.slice(start, stop - start)
        x, ids = _vectors(rows), np.arange(rows.num_rows)
        members = rows.column("member").to_numpy(zero_copy_only=False)
        lo, hi, cos = cell_pairs(x[members], ids[members], x, ids, threshold, partners)
        seq = rows.column("seq")
        out.append(pa.table({"lo": seq.take(pa.array(lo)), "hi": seq.take(pa.array(hi)), "cos": cos,
                             "cell": np.full(len(lo), cell[start])}, schema=PAIR_SCHEMA))
    return pa.concat_tables(out) if out else PAIR_SCHEMA.empty_table()


class _GivenPairs(Step):
    """DedupSemantic's decision on records whose pairs (by seq) and vectors were found elsewhere."""

    def __init__(self, semantic, earlier: dict[bytes, list[tuple[bytes, float]]], seq_of: dict[int, bytes],
                 vec_of: dict[bytes, bytes]):
        self.semantic, self.earlier, self.seq_of, self.vec_of = semantic, earlier, seq_of, vec_of

    def run(self, records: list[Prompt], ctx: Context) -> StepResult:
        seqs = [self.seq_of[id(r)] for r in records]
        index = {s: i for i, s in enumerate(seqs)}  # both ends of a pair share a component, so a partition
        found = [(index[a], index[b], c) for b in seqs for a, c in self.earlier.get(b, ())]
        lo, hi, cos = (np.array(v) for v in zip(*found)) if found else (np.empty(0, np.int64),) * 2 + (np.empty(0),)
        x = np.frombuffer(b"".join(self.vec_of[s] for s in seqs), np.float32).reshape(len(seqs), -1)
        return self.semantic.decide(records, x, lo, hi, cos)


def _decide(group: pa.Table, part_of, earlier, planned) -> pa.Table:
    from curate.pipeline import _PlannedStep

    records, seqs = kept_records(group.select(SCHEMA.names))
    vec_of = dict(zip(group.column("seq").to_pylist(), group.column("vec").to_pylist()))
    given = _GivenPairs(planned.step, earlier, {id(r): s for r, s in zip(records, seqs)}, vec_of)
    result = _PlannedStep(planned.name, given, planned.criteria).run(records, Context(progress=False))
    dropped_rows = group.filter(pc.invert(is_kept(group))).select(SCHEMA.names)
    return pa.concat_tables([dropped_rows, result_table(records, seqs, result.kept, result.dropped)])


def dedup_semantic(ds, planned, data: dict[str, Any], seed: int, cpus: int, rows_per_part: int, log):
    """dedup_semantic over a dataset of kept rows: kept and dropped rows out."""
    import ray
    import ray.data

    from filters.lib.similar_pairs import ivf_centroids, ivf_size

    step = planned.step
    points = ds.map_batches(_Points, fn_constructor_kwargs={"planned": planned, "data": data, "seed": seed},
                            batch_size=4096, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cpus)).materialize()
    n = sum(b.num_rows for b in points.map_batches(_only_points, batch_format="pyarrow")
            .select_columns(["seq"]).iter_batches(batch_format="pyarrow"))
    centres = None
    if n > step.exact_max:
        nlist, m = ivf_size(n, step.nlist)
        sample = pa.concat_tables(list(points.map_batches(_lowest_points, fn_kwargs={"m": m}, batch_format="pyarrow")
                                       .iter_batches(batch_format="pyarrow")))
        sample = sample.sort_by("rank").slice(0, m)
        log(f"  k-means, {nlist:,} cells, on {m:,} of {n:,} prompts")
        centres = ivf_centroids(_vectors(sample), nlist, seed)
    cells = points.map_batches(_cell_rows, fn_kwargs={"centres": centres, "nprobe": step.nprobe,
                                                      "threshold": step.threshold}, batch_format="pyarrow")
    parts = max(cpus, -(-n * step.nprobe // rows_per_part)) if centres is not None else 1
    found: dict[tuple[bytes, bytes], tuple[int, float]] = {}
    in_cells = shuffle(cells, _cell_parts, _pairs_in_cells, parts, step.threshold, step.max_partners)
    for batch in in_cells.iter_batches(batch_format="pyarrow"):
        for lo, hi, cos, cell in zip(*(batch.column(c).to_pylist() for c in PAIR_SCHEMA.names)):
            if (lo, hi) not in found or cell < found[lo, hi][0]:
                found[lo, hi] = (cell, cos)
    log(f"  {len(found):,} pairs over the threshold")
    earlier: dict[bytes, list[tuple[bytes, float]]] = {}
    for (lo, hi), (_, cos) in found.items():
        earlier.setdefault(hi, []).append((lo, cos))
    parts = max(cpus, -(-n // rows_per_part))
    return shuffle(points, _near_parts, _decide, parts, ray.put(_components(set(found), parts)), ray.put(earlier),
                   planned)
