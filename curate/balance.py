"""Quotas: turn fractions into counts, and select records to fill them.

A quota is a fraction of the set per criterion and, inside a criterion, per
category. Counts use largest remainders so they add up to the size exactly.
When a pool is short, `on_shortfall` decides, and the shortfall is always reported:
  scale - shrink the whole set so every fraction still holds (default: the mixture
          is the point of a balanced set)
  warn  - keep the other quotas full and report the deviation
  error - stop
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from core.errors import ConfigError
from core.records import Drop, Prompt

SHORTFALL_POLICIES = ("scale", "warn", "error")


class ShortfallError(ValueError):
    pass


def apportion(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split `total` by `weights` into integers that sum to `total` (largest remainder,
    ties broken by key so the result is deterministic)."""
    weight_sum = sum(weights.values())
    if total <= 0 or weight_sum <= 0:
        return {key: 0 for key in weights}
    exact = {key: total * w / weight_sum for key, w in weights.items()}
    counts = {key: int(value) for key, value in exact.items()}
    by_remainder = sorted(weights, key=lambda k: (-(exact[k] - counts[k]), k))
    for key in by_remainder[: total - sum(counts.values())]:
        counts[key] += 1
    return counts


@dataclass
class Plan:
    """Target counts per criterion and per (criterion, category)."""

    size: int
    criteria: dict[str, int]
    categories: dict[str, dict[str, int]] = field(default_factory=dict)


def plan_quotas(size: int, quotas: dict[str, dict[str, Any]]) -> Plan:
    fractions = {c: float(q.get("fraction", 0.0)) for c, q in quotas.items()}
    if any(f < 0 for f in fractions.values()) or sum(fractions.values()) <= 0:
        raise ConfigError("quotas: fractions must be >= 0 and not all 0")
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ConfigError(f"quotas: criterion fractions sum to {sum(fractions.values()):.4f}, not 1")
    criteria = apportion(size, fractions)
    categories = {}
    for criterion, quota in quotas.items():
        cats = quota.get("categories")
        if cats:
            categories[criterion] = apportion(criteria[criterion], {k: float(v) for k, v in cats.items()})
    return Plan(size=size, criteria=criteria, categories=categories)


def _fits(plan: Plan, available: dict[tuple[str, str | None], int]) -> list[str]:
    """Describe every quota the pools cannot fill (empty when all fit)."""
    short = []
    for criterion, target in plan.criteria.items():
        have = sum(n for (c, _), n in available.items() if c == criterion)
        if have < target:
            short.append(f"{criterion}: {have} available for a quota of {target}")
        for category, cat_target in plan.categories.get(criterion, {}).items():
            cat_have = available.get((criterion, category), 0)
            if cat_have < cat_target:
                short.append(f"{criterion}/{category}: {cat_have} available for a quota of {cat_target}")
    return short


def pool_of(record: Prompt, quotas: dict[str, dict[str, Any]]) -> tuple[str, str | None] | None:
    """The quota pool a record competes in: (criterion, category), or (criterion, None) for a criterion
    without category quotas; None when no quota takes it."""
    cats = quotas[record.criterion].get("categories") if record.criterion in quotas else None
    if record.criterion not in quotas or (cats and record.category not in cats):
        return None
    return record.criterion, record.category if cats else None


def no_quota(record: Prompt, quotas: dict[str, dict[str, Any]]) -> Drop:
    return Drop("balance", f"no_quota for {record.criterion}/{record.category}" if record.criterion in quotas
                else f"no_quota for criterion {record.criterion}")


def over_quota(pool: tuple[str, str | None]) -> Drop:
    return Drop("balance", f"over_quota {pool[0]}/{pool[1] or 'all'}")


def plan_selection(counts: dict[tuple[str, str | None], dict[int | None, int]], size: int,
                   quotas: dict[str, dict[str, Any]], seed: int, on_shortfall: str = "scale"
                   ) -> tuple[dict[tuple[str, str | None], dict[int | None, int]], dict[str, Any]]:
    """From the records' counts per pool and cluster alone: how many each pool takes from each cluster
    (a pool whose records do not all have a cluster is one group, None), and the report. Each (pool,
    group) then takes its records of lowest filters.lib.ranked.rank_key (see balance)."""
    if on_shortfall not in SHORTFALL_POLICIES:
        raise ConfigError(f"on_shortfall must be one of {', '.join(SHORTFALL_POLICIES)}, got {on_shortfall!r}")
    from filters.lib.ranked import spread

    available = {key: sum(c.values()) for key, c in counts.items()}
    plan = plan_quotas(size, quotas)
    shortfalls = _fits(plan, available)
    if shortfalls and on_shortfall == "error":
        raise ShortfallError("pools cannot fill the quotas: " + "; ".join(shortfalls))
    if shortfalls and on_shortfall == "scale":
        # The largest size whose every quota fits; fit is monotone in size, so bisect.
        low, high = 0, size
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if not _fits(plan_quotas(mid, quotas), available) else (low, mid - 1)
        plan = plan_quotas(low, quotas)

    takes: dict[tuple[str, str | None], dict[int | None, int]] = {}
    report: dict[str, Any] = {}
    for criterion, target in plan.criteria.items():
        cat_targets = plan.categories.get(criterion) or {None: target}
        entry: dict[str, Any] = {"fraction": quotas[criterion].get("fraction"), "target": target,
                                 "available": sum(n for (c, _), n in available.items() if c == criterion),
                                 "selected": 0, "categories": {}}
        for category, cat_target in cat_targets.items():
            sizes = dict(counts.get((criterion, category), {}))
            have = sum(sizes.values())
            n = min(cat_target, have)
            clustered = sizes and None not in sizes  # spread over clusters when the pool has them
            takes[(criterion, category)] = spread(sizes, n, seed) if clustered else {None: n}
            entry["selected"] += n
            if category is not None:
                entry["categories"][category] = {"target": cat_target, "available": have, "selected": n}
        report[criterion] = entry
    return takes, {"quotas": report, "shortfalls": shortfalls, "planned_size": plan.size}


def group_of(takes: dict[tuple[str, str | None], dict[int | None, int]], pool: tuple[str, str | None],
             record: Prompt) -> int | None:
    """The group of a pool's record in plan_selection's takes: its cluster, or None in an unclustered pool."""
    return record.cluster if record.cluster in takes[pool] else None


def balance(records: list[Prompt], size: int, quotas: dict[str, dict[str, Any]], seed: int,
            on_shortfall: str = "scale", select_by: str | None = None
            ) -> tuple[list[Prompt], list[tuple[Prompt, Drop]], dict[str, Any]]:
    """Select records to fill the quotas. Returns (selected, dropped with reason, report).

    Within each quota pool (and, in a clustered pool, each cluster's share: filters.lib.ranked.spread)
    the records of lowest hash rank (filters.lib.ranked.rank_key) are selected, so the selection depends
    on the records alone, not on their order nor on how an engine partitioned them; the selected come
    out in rank order (a seeded shuffle). curate/engine_ray.py applies the same rule from counts and
    rank thresholds. With `select_by` (a score name: "gap" for `curate mine`), each group takes its records
    of highest `scores[select_by]` instead (unscored ones last, ties by hash rank): the quotas and the
    spread over clusters stay as they are."""
    from filters.lib.ranked import rank_key

    def order(record: Prompt) -> tuple:
        if select_by is None:
            return rank_key(seed, record)
        score = record.scores.get(select_by, -math.inf)
        return (-score if math.isfinite(score) else math.inf, *rank_key(seed, record))

    pools: dict[tuple[str, str | None], list[Prompt]] = defaultdict(list)
    dropped: list[tuple[Prompt, Drop]] = []
    reasons: dict[tuple[str, str], Drop] = {}  # one per reason, not one per record (millions may go)
    for record in records:
        pool = pool_of(record, quotas)
        if pool is None:
            key = (record.criterion, record.category if record.criterion in quotas else "")
            dropped.append((record, reasons.setdefault(key, no_quota(record, quotas))))
            continue
        pools[pool].append(record)
    counts = {pool: Counter(r.cluster for r in group) for pool, group in pools.items()}
    takes, report = plan_selection(counts, size, quotas, seed, on_shortfall)

    selected: list[Prompt] = []
    for pool, take in takes.items():
        groups: dict[int | None, list[Prompt]] = defaultdict(list)
        for record in pools.pop(pool, []):
            groups[group_of(takes, pool, record)].append(record)
        over = over_quota(pool)
        for group, members in groups.items():
            members.sort(key=order)
            selected.extend(members[:take[group]])
            dropped.extend((r, over) for r in members[take[group]:])
    selected.sort(key=lambda r: rank_key(seed, r))
    return selected, dropped, report
