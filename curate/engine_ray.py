"""`curate build --engine ray`: the same recipe, steps, quotas and output as curate.pipeline.build, run
with Ray Data (see the README's "On Ray: `--engine ray`" for what runs where).

1. Read: one task per shard (a generator pool, a file, or each file of a folder), through the local
   engine's readers, so every per-row rejection rule is theirs.
2. The leading row-wise steps: one actor pool runs them in recipe order on each batch (each actor builds
   the steps, and so loads their models, once).
3. Whole-pool steps: dedup_exact and dedup_near partitioned (curate/ray_dedup.py), dedup_semantic
   partitioned by IVF cell (curate/ray_semantic.py); a row-wise step later in the recipe as a map again;
   cluster as k-means on a hash-ranked sample and a nearest-centroid map. A whole-pool step no engine
   knows how to partition (one a user registers) brings the records to the driver, where it and every
   later step run as the local engine runs them, on embeddings an actor pool computed.
4. Balance and writing: on the driver (curate.pipeline.finish_build) once a step brought the records there;
   otherwise balance from aggregated counts and per-group rank thresholds (filters/lib/ranked.py), so only
   the selected rows reach the driver, which writes them (curate.pipeline.write_build).

Dropped rows come to the driver as each stage finishes and go to the writer; kept rows stay in Ray's
object store until step 3 or 4 brings them over.
"""

from __future__ import annotations

import heapq
import pickle
import sys
import time
import warnings
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError
from curate.curated_set import CuratedSetWriter
from curate.pipeline import (BuildResult, _PlannedStep, _plan_steps, _Rejections, balance_seed, finish_build,
                             first_whole_pool_step, make_context, plan_pools, write_build)
from curate.ray_rows import (Embed, StepChain, decode, encode, is_kept, kept_records, order_key, pool_of,
                             rank_bytes, read_shards)
from filters.base import Context

INSTALL = 'the ray engine needs Ray, which is not installed: pip install "t5shrink[ray]"'
DISTRIBUTED = ("dedup_exact", "dedup_near", "dedup_semantic", "cluster")  # whole-pool steps that run partitioned or as maps
PARTITION_ROWS = 250_000  # rows a dedup partition holds at most, give or take the hash's spread


def build_ray(recipe_name: str, data: dict[str, Any], out_dir: Path, progress: bool = True,
              log=lambda message: print(message, file=sys.stderr), address: str | None = None) -> BuildResult:
    """curate.pipeline.build on Ray: on the cluster at `address`, or, when none is given and Ray is not
    yet initialised in this process, on a local one started (and stopped) here."""
    try:
        import ray
    except ImportError:
        raise ConfigError(INSTALL) from None
    import ray.data

    owns = not ray.is_initialized()
    if owns:
        ray.init(address=address, include_dashboard=False, log_to_driver=progress)
    ray.data.DataContext.get_current().enable_progress_bars = progress
    try:
        with _user_errors():
            return _Build(recipe_name, data, progress, log).run(out_dir)
    finally:
        if owns:
            ray.shutdown()


@contextmanager
def _user_errors():
    """An error raised in a worker comes back wrapped by Ray (with a remote traceback in its message);
    re-raise the error itself, so the CLI prints its one line and picks its exit code."""
    from ray.exceptions import RayError

    try:
        yield
    except Exception as exc:
        error = exc
        while isinstance(error, RayError) or type(error).__name__ == "UserCodeException":
            cause = getattr(error, "cause", None) or error.__cause__
            if cause is None:
                break
            error = cause
        if error is exc:
            raise
        raise error from None


@dataclass
class _StepCounts:
    dropped: int = 0
    reasons: Counter = field(default_factory=Counter)
    seconds: float | None = None  # a whole-pool stage's wall time; None for steps fused into the stream


class _Build:
    def __init__(self, recipe_name: str, data: dict[str, Any], progress: bool, log):
        import ray

        self.recipe_name, self.data, self.progress, self.log = recipe_name, data, progress, log
        self.seed = int(data.get("seed", 0))
        self.steps = _plan_steps(data)
        self.pools = plan_pools(data, self.seed)
        self.cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.counts = {s.name: _StepCounts() for s in self.steps}
        self.pool_rows = [Counter() for _ in self.pools]  # per pool: rows, rejected, and each ingest kind
        self.skipped: list[list[dict[str, str]]] = [[] for _ in self.pools]

    def run(self, out_dir: Path) -> BuildResult:
        started = time.perf_counter()
        n_stream = first_whole_pool_step(self.steps)
        with CuratedSetWriter(out_dir) as writer:
            rejections = _Rejections(writer)
            self.say(f"read{' + ' + ', '.join(s.name for s in self.steps[:n_stream]) if n_stream else ''}")
            kept, n = self.settle(self.read(self.steps[:n_stream]), rejections, first=True)
            records = None  # set once the records come to the driver
            for planned in self.steps[n_stream:]:
                if records is None and (planned.step.kind in DISTRIBUTED or planned.step.rowwise):
                    self.say(f"{planned.name} on {n:,} prompts")
                    began = time.perf_counter()
                    kept, n = self.settle(self.distributed(planned, kept, n), rejections)
                    self.counts[planned.name].seconds = round(time.perf_counter() - began, 3)
                    continue
                if records is None:
                    records, ctx = self.gather(kept, self.steps[self.steps.index(planned):])
                self.say(f"{planned.name} on {len(records):,} prompts (driver)")
                result = planned.run(records, ctx)
                records = result.kept
                rejections.add(result.dropped)
            if records is None:  # no step needed the driver: balance from counts and rank thresholds
                return self.balance(kept, n, rejections, writer, started)
            return finish_build(self.recipe_name, self.data, records, self.step_stats(), self.source_stats(),
                                rejections, writer, started, self.log, "ray")

    def say(self, message: str) -> None:
        if self.progress:
            print(f"  {message}", file=sys.stderr)

    def read(self, streamed: list[_PlannedStep]):
        """Every row of every pool (and the streamed steps' drops), as a dataset."""
        import ray.data

        from curate.sources.files import SourceSpec, source_shards

        tasks = []
        for i, pool in enumerate(self.pools):
            files = None if "generator" in pool.entry else source_shards(SourceSpec(**pool.entry), self.skipped[i])
            for j, part in enumerate([None] if files is None else [[f] for f in files]):
                tasks.append({"task": pickle.dumps((i, j, pool, part))})
        ds = ray.data.from_items(tasks, override_num_blocks=max(1, len(tasks))).map_batches(
            read_shards, batch_size=1, batch_format="pyarrow")
        return self.chain(ds, streamed) if streamed else ds

    def chain(self, ds, steps: list[_PlannedStep]):
        """Row-wise steps on each batch, in an actor pool; batches as large as the largest batch_size the
        steps' recipe options give (the models' own batch), else 4,096 rows."""
        import ray.data

        batch = max([getattr(s.step, "batch_size", 0) for s in steps] + [0]) or 4096
        return ds.map_batches(StepChain, fn_constructor_kwargs={"steps": steps, "data": self.data},
                              batch_size=batch, batch_format="pyarrow",
                              compute=ray.data.ActorPoolStrategy(min_size=1, max_size=self.cpus))

    def distributed(self, planned: _PlannedStep, kept, n: int):
        from curate import ray_dedup

        parts = max(self.cpus, -(-n // PARTITION_ROWS))
        if planned.step.kind == "dedup_exact":
            return ray_dedup.dedup_exact(kept, planned, self.data, parts)
        if planned.step.kind == "dedup_near":
            out, pairs = ray_dedup.dedup_near(kept, planned, parts)
            self.say(f"  {pairs:,} candidate pairs")
            return out
        if planned.step.kind == "dedup_semantic":
            from curate.ray_semantic import dedup_semantic

            return dedup_semantic(kept, planned, self.data, self.seed, self.cpus, PARTITION_ROWS, self.say)
        if planned.step.kind == "cluster":
            return self.cluster(planned, kept)
        return self.chain(kept, [planned])

    def cluster(self, planned: _PlannedStep, kept):
        """filters.cluster.Cluster without the pool on the driver: counts per group (a map and a sum), each
        group's training sample (its records of lowest rank: every block sends its lowest), k-means on the
        sample's embeddings (computed in a worker) on the driver, then each record's nearest centroid in
        a map (an actor pool: each actor loads the embedder once)."""
        import ray
        import ray.data

        step = planned.step
        sizes: Counter = Counter()
        for blob in _blobs(kept.map_batches(_cluster_sizes, fn_kwargs={"planned": planned}, batch_format="pyarrow")):
            sizes.update(blob)
        plan = step.plan(dict(sizes))
        samples: dict = defaultdict(list)
        for blob in _blobs(kept.map_batches(_cluster_sample, fn_kwargs={"planned": planned, "plan": plan,
                                                                         "seed": self.seed}, batch_format="pyarrow")):
            for group, rows in blob.items():
                samples[group] += rows
        centres = {}
        for group, (k, _, m) in plan.items():
            texts = [text for _, text in sorted(samples[group])[:m]]
            self.say(f"  k-means, k={k}, on {len(texts):,} of {sizes[group]:,} {group or 'all'} prompts")
            centres[group] = step.centroids(ray.get(ray.remote(_embed_texts).remote(self.data, texts)), k, self.seed)
        return kept.map_batches(_Assign, fn_constructor_kwargs={"planned": planned, "data": self.data, "plan": plan,
                                                                "centres": centres},
                                batch_size=4096, batch_format="pyarrow",
                                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=self.cpus))

    def settle(self, ds, rejections: _Rejections, first: bool = False):
        """Run a stage: its dropped rows go to the writer, its counts to the manifest's; returns the
        dataset of its kept rows (materialized, so later stages do not run it again) and their number."""
        ds = ds.materialize()
        for batch in ds.map_batches(_not_kept, batch_format="pyarrow").iter_batches(batch_format="pyarrow"):
            for note, seq in zip(batch.column("note").to_pylist(), batch.column("seq").to_pylist()):
                if note:
                    self.skip(pool_of(seq), note)
            dropped = decode(batch)
            rejections.add([(r, d) for r, d, _ in dropped])
            for _, drop, seq in dropped:
                rows = self.pool_rows[pool_of(seq)]
                rows["rows"] += first
                if drop.step == "ingest":
                    rows.update({"rejected": 1, f"kind:{drop.kind}": 1})
                else:
                    self.counts[drop.step].dropped += 1
                    self.counts[drop.step].reasons[drop.kind] += 1
        kept = ds.map_batches(_only_kept, batch_format="pyarrow").materialize()
        n = 0
        for batch in kept.map_batches(_pool_counts, batch_format="pyarrow").iter_batches(batch_format="pyarrow"):
            for pool, count in zip(batch.column("pool").to_pylist(), batch.column("n").to_pylist()):
                n += count
                if first:
                    self.pool_rows[pool]["rows"] += count
        return kept, n

    def skip(self, pool: int, note: str) -> None:
        import json

        for entry in json.loads(note):
            warnings.warn(f"skipping {entry['path']}: {entry['reason']}")
            self.skipped[pool].append(entry)

    def gather(self, kept, remaining: list[_PlannedStep]) -> tuple[list[Any], Context]:
        """The kept records on the driver in the local engine's order, and a Context whose embeddings for
        the remaining steps an actor pool computed."""
        import ray.data

        rows = []
        for batch in kept.iter_batches(batch_format="pyarrow"):
            records, seqs = kept_records(batch)
            rows += zip(records, seqs)
        rows.sort(key=lambda rs: order_key(*rs))
        ctx = make_context(self.data, self.progress)
        embedding = [s for s in remaining if s.step.embeds]
        if embedding:
            criteria = None if any(s.criteria is None for s in embedding) else {c for s in embedding for c in s.criteria}
            self.say(f"embed for {', '.join(s.name for s in embedding)}")
            vectors = kept.map_batches(Embed, fn_constructor_kwargs={"data": self.data, "criteria": criteria},
                                       batch_size=4096, batch_format="pyarrow",
                                       compute=ray.data.ActorPoolStrategy(min_size=1, max_size=self.cpus))
            given = {}
            for batch in vectors.iter_batches(batch_format="pyarrow"):
                given.update(zip(batch.column("text").to_pylist(), batch.column("vec").to_pylist()))
            ctx = _GivenVectors(**{k: getattr(ctx, k) for k in ("seed", "cache_dir", "progress", "embedder_spec",
                                                                   "read_prompts")}, vectors=given)
        return [r for r, _ in rows], ctx

    def balance(self, kept, n: int, rejections: _Rejections, writer: CuratedSetWriter, started: float) -> BuildResult:
        """curate.balance.balance's selection without the pool on the driver: each block counts its records
        per quota pool and cluster; curate.balance.plan_selection turns the counts into each group's take;
        each block sends its `take` lowest rank keys per group, whose take-th smallest is the group's
        threshold; a filter keeps the records at or under their group's threshold. Only the selected
        records (at most `size`) come to the driver, in rank order."""
        from curate.balance import plan_selection

        self.say(f"balance on {n:,} prompts")
        quotas, seed = self.data["quotas"], balance_seed(self.data)
        counts: dict = defaultdict(Counter)
        for blob in _blobs(kept.map_batches(_balance_counts, fn_kwargs={"quotas": quotas}, batch_format="pyarrow")):
            for (pool, cluster), count in blob.items():
                counts[pool][cluster] += count
        takes, report = plan_selection(counts, self.data["size"], quotas, seed, self.data.get("on_shortfall", "scale"))
        keys: dict = defaultdict(list)
        for blob in _blobs(kept.map_batches(_lowest_keys, fn_kwargs={"quotas": quotas, "takes": takes, "seed": seed},
                                            batch_format="pyarrow")):
            for group, lowest in blob.items():
                keys[group] += lowest
        threshold = {group: sorted(k)[takes[group[0]][group[1]] - 1] for group, k in keys.items()}
        chosen = kept.map_batches(_choose, fn_kwargs={"quotas": quotas, "takes": takes, "seed": seed,
                                                      "threshold": threshold}, batch_format="pyarrow")
        selected, over = [], Counter()
        for batch in chosen.iter_batches(batch_format="pyarrow"):
            rows = decode(batch)
            dropped = [(r, d) for r, d, _ in rows if d is not None]
            rejections.add(dropped)
            over.update(d.kind for _, d in dropped)
            selected += [(rank_bytes(seed, r, s), r) for r, d, s in rows if d is None]
        selected.sort(key=lambda kr: kr[0])
        return write_build(self.recipe_name, self.data, [r for _, r in selected], n, over, report, self.step_stats(),
                           self.source_stats(), rejections, writer, started, self.log, "ray")

    def step_stats(self) -> list[dict[str, Any]]:
        n = sum(c["rows"] - c["rejected"] for c in self.pool_rows)
        stats = []
        for planned in self.steps:
            if planned.seen:  # it ran on the driver, and counted itself
                stats.append(planned.summary())
            else:
                c = self.counts[planned.name]
                stats.append({"name": planned.name, "criteria": planned.criteria, "in": n, "kept": n - c.dropped,
                              "dropped": c.dropped, "reasons": dict(c.reasons), "seconds": c.seconds})
            n = stats[-1]["kept"]
        return stats

    def source_stats(self) -> list[dict[str, Any]]:
        stats = []
        for pool, rows, skipped in zip(self.pools, self.pool_rows, self.skipped):
            reasons = {k.removeprefix("kind:"): v for k, v in rows.items() if k.startswith("kind:")}
            stats.append({"criterion": pool.criterion, "uri": pool.uri, "rows_read": rows["rows"],
                          "records": rows["rows"] - rows["rejected"], "rejected": rows["rejected"],
                          "reasons": reasons, **({"skipped_files": skipped} if skipped else {})})
        return stats


@dataclass
class _GivenVectors(Context):
    """A Context whose embeddings of known texts come from `vectors` (text -> float32 bytes)."""

    vectors: dict[str, bytes] = field(default_factory=dict)

    def embed(self, records) -> np.ndarray:
        return self.embed_texts([r.text for r in records])

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        if texts and all(t in self.vectors for t in texts):
            return np.stack([np.frombuffer(self.vectors[t], np.float32) for t in texts])
        return super().embed_texts(texts)


def _blobs(ds):
    for batch in ds.iter_batches(batch_format="pyarrow"):
        yield from (pickle.loads(b) for b in batch.column("blob").to_pylist())


def _blob_table(value):
    import pyarrow as pa

    return pa.table({"blob": [pickle.dumps(value)]})


def _pooled(batch, quotas, takes=None):
    """(record, seq, pool, group) of each record of a batch; pool None: no quota takes it."""
    from curate.balance import group_of, pool_of as quota_pool

    for record, _, seq in decode(batch):
        pool = quota_pool(record, quotas)
        yield record, seq, pool, (None if pool is None or takes is None else group_of(takes, pool, record))


def _balance_counts(batch, quotas):
    counts = Counter((pool, record.cluster) for record, _, pool, _ in _pooled(batch, quotas) if pool is not None)
    return _blob_table(counts)


def _lowest_keys(batch, quotas, takes, seed):
    groups: dict = defaultdict(list)
    for record, seq, pool, group in _pooled(batch, quotas, takes):
        if pool is not None and takes[pool][group]:
            groups[(pool, group)].append(rank_bytes(seed, record, seq))
    return _blob_table({g: heapq.nsmallest(takes[g[0]][g[1]], keys) for g, keys in groups.items()})


def _choose(batch, quotas, takes, seed, threshold):
    from curate.balance import no_quota, over_quota

    rows = []
    for record, seq, pool, group in _pooled(batch, quotas, takes):
        if pool is None:
            rows.append((record, no_quota(record, quotas), seq))
        elif (pool, group) in threshold and rank_bytes(seed, record, seq) <= threshold[(pool, group)]:
            rows.append((record, None, seq))
        else:
            rows.append((record, over_quota(pool), seq))
    return encode(rows)


def _cluster_sizes(batch, planned):
    from curate.ray_dedup import _in

    return _blob_table(Counter(planned.step.group(r) for r, _, _ in decode(batch) if _in(planned, r)))


def _cluster_sample(batch, planned, plan, seed):
    from curate.ray_dedup import _in

    groups: dict = defaultdict(list)
    for record, _, seq in decode(batch):
        if _in(planned, record):
            groups[planned.step.group(record)].append((rank_bytes(seed, record, seq), record.text))
    return _blob_table({g: heapq.nsmallest(plan[g][2], rows) for g, rows in groups.items()})


def _embed_texts(data, texts: list[str]) -> np.ndarray:
    return make_context(data, progress=False).embed_texts(texts) if texts else np.zeros((0, 1), np.float32)


class _Assign:
    """Map (an actor): each record in the step's criteria gets its group's nearest centroid's cluster id."""

    def __init__(self, planned, data, plan, centres):
        self.planned, self.plan, self.centres = planned, plan, centres
        self.ctx = make_context(data, progress=False)

    def __call__(self, batch):
        from curate.ray_dedup import _in
        from filters.lib.kmeans import nearest

        rows = decode(batch)
        groups: dict = defaultdict(list)
        for record, _, _ in rows:
            if _in(self.planned, record):
                groups[self.planned.step.group(record)].append(record)
        for group, records in groups.items():
            offset = self.plan[group][1]
            for record, label in zip(records, nearest(self.ctx.embed(records), self.centres[group]).tolist()):
                record.cluster = offset + label
        return encode(rows)


def _not_kept(batch):
    import pyarrow.compute as pc

    return batch.filter(pc.invert(is_kept(batch)))


def _only_kept(batch):
    return batch.filter(is_kept(batch))


def _pool_counts(batch):
    import pyarrow as pa

    counts = Counter(pool_of(s) for s in batch.column("seq").to_pylist())
    return pa.table({"pool": list(counts), "n": list(counts.values())}, schema=pa.schema([("pool", pa.int64()),
                                                                                          ("n", pa.int64())]))

