"""`curate inspect`: what a curated set holds (and the loading and table helpers `curate diff` shares).

Plain functions over a curated-set folder (data/, rejected/, manifest.json):

    summarize(dir)            -> dict   machine-readable summary (`curate inspect --json`)
    render_tables(summary)    -> str    aligned plain-text tables (`curate inspect`)
    report_html.write_html(dir, summary, path)   one self-contained HTML file (`curate inspect --html`)
    report_diff.diff(dir_a, dir_b)   -> dict     changes between two sets (`curate diff --json`)
    report_diff.render_diff(d)       -> str      the same as text (`curate diff`)

Everything is deterministic: orders are fixed (criteria and categories in the order of
`core.records`, the rest by count then name), samples are "first by id", floats are
rounded to 6 decimals, and the HTML carries no timestamp.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from core.records import CATEGORIES, CRITERIA, parse_reason
from curate.curated_set import CuratedSetError, is_curated_set, part_files, read_columns, read_manifest

SUMMARY_FORMAT = "t5shrink.summary/1"
DIFF_FORMAT = "t5shrink.diff/1"
_KEPT_COLUMNS = ("id", "text", "criterion", "category", "source", "scores", "cluster")
_REJECTED_COLUMNS = ("id", "text", "criterion", "category", "reason", "step")
SCORE_BINS = 20
LENGTH_BINS = 30
MAX_MAP_POINTS = 3000


class ReportError(ValueError):
    """The folder is not a readable curated set; the message says why in one line."""


class Embedder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


# ---------------------------------------------------------------------------------------
# reading


def _as_scores(value: Any) -> dict[str, float]:
    # The writer stores scores as a struct (dict here); a map column arrives as a
    # list of (key, value) pairs. Nulls and non-finite values are "not scored".
    if not value:
        return {}
    items = value.items() if isinstance(value, dict) else value
    out = {}
    for key, v in items:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[str(key)] = float(v)
    return out


def _load(folder: Path | str, rejected: bool = True) -> tuple[dict[str, Any], dict[str, list], dict[str, list]]:
    """(manifest, kept columns, rejected columns) of a set. A folder of data/*.parquet without a manifest
    (a set copied in part, say) still reads, with an empty manifest."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"{folder}: no such folder")
    if not is_curated_set(folder) and not part_files(folder, "data"):
        raise ReportError(f"{folder}: not a curated set (no manifest.json and no data/*.parquet)")
    try:
        manifest = read_manifest(folder) if is_curated_set(folder) else {}
        kept = read_columns(folder, "data", _KEPT_COLUMNS)
        drop = read_columns(folder, "rejected", _REJECTED_COLUMNS) if rejected else {c: [] for c in _REJECTED_COLUMNS}
    except CuratedSetError as exc:
        raise ReportError(str(exc)) from None
    kept["criterion"] = [c or "unknown" for c in kept["criterion"]]
    kept["category"] = [c or "general" for c in kept["category"]]
    kept["source"] = [s or "unknown" for s in kept["source"]]
    kept["text"] = [t or "" for t in kept["text"]]
    kept["scores"] = [_as_scores(s) for s in kept["scores"]]
    return manifest, kept, drop


# ---------------------------------------------------------------------------------------
# small helpers


def _r(x: float) -> float:
    return round(float(x), 6)


def _share(n: int, total: int) -> float:
    return _r(n / total) if total else 0.0


def _ordered(keys: Iterable[str], canonical: Sequence[str], counts: Counter | None = None) -> list[str]:
    """Canonical names first in their canonical order, then the rest by count desc, name."""
    keys = set(keys)
    first = [k for k in canonical if k in keys]
    rest = sorted(keys - set(canonical), key=lambda k: (-(counts or {}).get(k, 0), k))
    return first + rest


def _stats(values: np.ndarray) -> dict[str, Any]:
    if values.size == 0:
        return {"count": 0}
    p25, med, p75 = np.percentile(values, [25, 50, 75])
    return {
        "count": int(values.size),
        "min": _r(values.min()),
        "p25": _r(p25),
        "median": _r(med),
        "p75": _r(p75),
        "max": _r(values.max()),
        "mean": _r(values.mean()),
    }


def _histogram(values: np.ndarray, groups: np.ndarray, group_names: Sequence[str], edges: np.ndarray) -> dict:
    counts, _ = np.histogram(values, bins=edges)
    by_group = {}
    for g in group_names:
        sub = values[groups == g]
        if sub.size:
            by_group[g] = np.histogram(sub, bins=edges)[0].astype(int).tolist()
    return {"edges": [_r(e) for e in edges], "counts": counts.astype(int).tolist(), "counts_by_criterion": by_group}


def _score_edges(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        return np.array([lo - 0.5, hi + 0.5])
    return np.linspace(lo, hi, SCORE_BINS + 1)


def _length_edges(values: np.ndarray) -> np.ndarray:
    # Integer-aligned bins so a bar never straddles two lengths unevenly.
    lo, hi = int(values.min()), int(values.max())
    width = max(1, math.ceil((hi - lo + 1) / LENGTH_BINS))
    nbins = math.ceil((hi - lo + 1) / width)
    return lo + width * np.arange(nbins + 1, dtype=float)


def _cluster_stats(clusters: list[Any]) -> dict[str, Any]:
    present = [int(c) for c in clusters if c is not None]
    out: dict[str, Any] = {"records": len(clusters), "clustered": len(present), "clusters": 0}
    if not present:
        return out
    count = Counter(present)
    sizes = sorted(count.values())
    # Ties for the largest cluster go to the smallest id, so the answer is stable.
    largest_id = min(count, key=lambda c: (-count[c], c))
    out.update(
        clusters=len(count),
        per_cluster={"min": sizes[0], "median": _r(np.median(sizes)), "max": sizes[-1]},
        largest={"cluster": largest_id, "count": count[largest_id], "share": _share(count[largest_id], len(present))},
    )
    return out


def _planned(manifest: dict[str, Any]) -> dict[str, Any]:
    """The size the quotas were planned for, which `on_shortfall: scale` may have shrunk below the
    recipe's `size`: {"planned_size", "on_shortfall", "scaled"}.

    Read from the manifest's "planned_size" when the build recorded it, else the sum of the
    criterion targets (balance apportions the planned size over them exactly), else `size`."""
    size = manifest.get("size")
    planned = manifest.get("planned_size")
    if not isinstance(planned, int) or isinstance(planned, bool):
        targets = [(q or {}).get("target") for q in (manifest.get("quotas") or {}).values()]
        planned = sum(targets) if targets and all(isinstance(t, int) for t in targets) else size
    recipe = manifest.get("recipe") if isinstance(manifest.get("recipe"), dict) else {}
    policy = manifest.get("on_shortfall") or recipe.get("on_shortfall")
    if policy is None and recipe.get("quotas"):
        policy = "scale"  # the documented default, when a resolved recipe leaves it out
    return {"planned_size": planned, "on_shortfall": policy,
            "scaled": isinstance(size, int) and isinstance(planned, int) and planned < size}


def _step_criteria(step: dict[str, Any], manifest: dict[str, Any]) -> list[str] | None | str:
    """The criteria a step ran on: a list, None for every criterion, or "?" when nothing says.

    The step's own "criteria" key wins (null = all); older manifests only have the recipe's
    `steps.NAME.criteria`, which is what the build ran with. Balance always sees every criterion."""
    if "criteria" in step:
        crits = step["criteria"]
        return [str(c) for c in crits] if isinstance(crits, list) else None
    if step.get("name") == "balance":
        return None
    recipe_steps = (manifest.get("recipe") or {}).get("steps") if isinstance(manifest.get("recipe"), dict) else None
    if not isinstance(recipe_steps, dict) or not isinstance(recipe_steps.get(step.get("name")), dict):
        return "?"
    crits = recipe_steps[step.get("name")].get("criteria")
    return [str(c) for c in crits] if isinstance(crits, list) else None


def reason_counts_line(kinds: Counter, limit: int = 6) -> str:
    """The `limit` most common rejection kinds on one line, and never a silent cut: what does not
    fit is counted, as in `over_quota 482, malformed_json 3, ... and 2 more kinds (3 rows)`."""
    ranked = sorted(kinds.items(), key=lambda kv: (-kv[1], str(kv[0])))
    shown = ranked if len(ranked) <= limit + 1 else ranked[:limit]  # "1 more kind" saves nothing
    text = ", ".join(f"{kind} {n:,}" for kind, n in shown) or "none"
    rest = ranked[len(shown):]
    if rest:
        more = sum(n for _, n in rest)
        text += f" and {len(rest)} more kind{'s' if len(rest) > 1 else ''} ({more:,} row{'s' if more != 1 else ''})"
    return text


# ---------------------------------------------------------------------------------------
# summarize


def _mixture(kept: dict[str, list], quotas: dict[str, Any]) -> tuple[list[str], list[str], dict, dict]:
    """(criteria order, category order, criteria block, categories block) with counts and targets.

    A criterion or category whose target asked for prompts but got none is listed too (count 0):
    leaving it out would make the targets shown stop adding up to the planned size. One with a
    target of 0 and nothing kept (scaling can round a small share down to 0) adds nothing and is left out."""
    total = len(kept["id"])
    crit_count = Counter(kept["criterion"])
    crits = _ordered(set(crit_count) | {c for c, q in quotas.items() if _wanted(q)}, CRITERIA, crit_count)
    criteria = {crit: {"count": crit_count[crit], "share": _share(crit_count[crit], total),
                       "target_fraction": (quotas.get(crit) or {}).get("fraction"),
                       "target": (quotas.get(crit) or {}).get("target")} for crit in crits}
    pair_count = Counter(zip(kept["criterion"], kept["category"]))
    cat_count = Counter(kept["category"])
    quota_cats = {cat for q in quotas.values() for cat, e in ((q or {}).get("categories") or {}).items() if _wanted(e)}
    category_order = _ordered(set(cat_count) | quota_cats, CATEGORIES, cat_count)
    categories: dict[str, dict[str, Any]] = {}
    for crit in crits:
        qcats = (quotas.get(crit) or {}).get("categories") or {}
        categories[crit] = {}
        for cat in category_order:
            n = pair_count.get((crit, cat), 0)
            if n == 0 and not _wanted(qcats.get(cat)):
                continue
            q = qcats.get(cat) or {}
            categories[crit][cat] = {"count": n, "share": _share(n, total),
                                     "share_in_criterion": _share(n, crit_count[crit]),
                                     "target": q.get("target"), "available": q.get("available")}
    return crits, category_order, criteria, categories


def _wanted(quota: Any) -> bool:
    """Whether a manifest quota entry asked for at least one prompt."""
    target = quota.get("target") if isinstance(quota, dict) else None
    return isinstance(target, (int, float)) and not isinstance(target, bool) and target > 0


def _scores_block(kept: dict[str, list], crits: list[str]) -> dict[str, Any]:
    """Every score key any record carries, each over the records that have it."""
    crit_arr = np.asarray(kept["criterion"], dtype=object)
    scores = {}
    for key in sorted({k for s in kept["scores"] for k in s}):
        idx = [i for i, s in enumerate(kept["scores"]) if key in s]
        values = np.array([kept["scores"][i][key] for i in idx], dtype=float)
        groups = crit_arr[idx] if idx else np.array([], dtype=object)
        entry = _stats(values)
        entry["missing"] = len(kept["id"]) - len(idx)
        entry["by_criterion"] = {c: _stats(values[groups == c]) for c in crits if (groups == c).any()}
        entry["histogram"] = _histogram(values, groups, crits, _score_edges(values))
        scores[key] = entry
    return scores


def _length_block(kept: dict[str, list], crits: list[str]) -> dict[str, Any]:
    """Prompt length: the tokenizer's count when the build recorded it for every record (mixing
    tokens and words would make one histogram of two units), else whitespace words."""
    total = len(kept["id"])
    crit_arr = np.asarray(kept["criterion"], dtype=object)
    has_tokens = total > 0 and all("tokens" in s for s in kept["scores"])
    if has_tokens:
        lengths = np.array([s["tokens"] for s in kept["scores"]], dtype=float)
    else:
        lengths = np.array([len(t.split()) for t in kept["text"]], dtype=float)
    length: dict[str, Any] = {"unit": "tokens" if has_tokens else "words", **_stats(lengths)}
    if total:
        length["by_criterion"] = {c: _stats(lengths[crit_arr == c]) for c in crits if (crit_arr == c).any()}
        length["histogram"] = _histogram(lengths, crit_arr, crits, _length_edges(lengths))
    return length


def _clusters_block(kept: dict[str, list], crits: list[str]) -> dict[str, Any]:
    by_crit: dict[str, list[Any]] = defaultdict(list)
    for crit, cl in zip(kept["criterion"], kept["cluster"]):
        by_crit[crit].append(cl)
    return {"overall": _cluster_stats(kept["cluster"]),
            "by_criterion": {c: _cluster_stats(by_crit[c]) for c in crits if by_crit[c]}}


def _examples_block(kept: dict[str, list], crits: list[str], category_order: list[str], examples: int) -> dict:
    """First `examples` by id per criterion x category (ids are hashes, so this is an unbiased,
    reproducible pick)."""
    picked: dict[str, dict[str, list]] = {c: {} for c in crits}
    for i in sorted(range(len(kept["id"])), key=lambda i: kept["id"][i] or ""):
        bucket = picked[kept["criterion"][i]].setdefault(kept["category"][i], [])
        if len(bucket) < examples:
            bucket.append({"id": kept["id"][i], "text": kept["text"][i], "source": kept["source"][i]})
    return {c: {cat: picked[c][cat] for cat in category_order if cat in picked[c]} for c in crits}


def _manifest_block(manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        **{k: manifest.get(k) for k in ("format", "recipe_name", "recipe_hash", "seed", "size")},
        **_planned(manifest),
        "shortfalls": list(manifest.get("shortfalls") or []),
        "versions": dict(manifest.get("versions") or {}),
        "seconds": manifest.get("seconds"),
    }


def summarize(dir: Path, examples: int = 3) -> dict[str, Any]:
    """Machine-readable summary of a curated set (JSON-serialisable, deterministic).

    Keys: format, dir, manifest (recipe name/seed/size/planned_size/hash/shortfalls/versions),
    total, criteria, categories (criterion -> category), sources, inputs, steps (from the
    manifest, with the criteria each ran on), rejected (by step and reason kind, with examples),
    scores, length, clusters, examples (criterion -> category -> first `examples` records by id).
    Shares are fractions of all kept records unless named otherwise; targets are for the planned
    size (manifest.planned_size), which `on_shortfall: scale` may have shrunk below `size`.
    """
    folder = Path(dir)
    manifest, kept, drop = _load(folder)
    total = len(kept["id"])
    crits, category_order, criteria, categories = _mixture(kept, manifest.get("quotas") or {})
    src_count = Counter(kept["source"])
    return {
        "format": SUMMARY_FORMAT,
        "dir": str(folder),
        "manifest": _manifest_block(manifest),
        "total": total,
        "category_order": category_order,
        "criteria": criteria,
        "categories": categories,
        "sources": {s: {"count": src_count[s], "share": _share(src_count[s], total)}
                    for s in _ordered(src_count, (), src_count)},
        "inputs": [
            {**{k: s.get(k) for k in ("criterion", "uri", "rows_read", "records", "rejected")},
             "skipped_files": len(s.get("skipped_files") or [])}
            for s in manifest.get("sources") or []
        ],
        "steps": [
            {**{k: s.get(k) for k in ("name", "in", "kept", "dropped", "seconds")},
             "criteria": _step_criteria(s, manifest)}
            for s in manifest.get("steps") or []
        ],
        "rejected": _rejected_summary(drop, manifest, examples),
        "scores": _scores_block(kept, crits),
        "length": _length_block(kept, crits),
        "clusters": _clusters_block(kept, crits),
        "examples": _examples_block(kept, crits, category_order, examples),
        "selection": _selection_block(manifest),
    }


def _selection_block(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """A score-ranked selection (`curate mine`): the manifest's comparison with the plain balanced selection,
    what mined the set and what the scoring cost; None for a plain build."""
    selection = manifest.get("selection")
    if not isinstance(selection, dict):
        return None
    scoring = next((s for s in manifest.get("steps") or [] if isinstance(s, dict) and "transformer_passes" in s), {})
    return {**selection, "mining": manifest.get("mining") or {},
            "cost": {k: scoring.get(k) for k in ("scored", "from_cache", "transformer_passes", "seconds")}}


def _rejected_summary(drop: dict[str, list], manifest: dict[str, Any], examples: int) -> dict[str, Any]:
    parsed = [parse_reason(r, s) for r, s in zip(drop["reason"], drop["step"])]
    step_count = Counter(step for step, _ in parsed)
    kind_count: dict[str, Counter] = defaultdict(Counter)
    for step, kind in parsed:
        kind_count[step][kind] += 1
    # Steps in pipeline order: ingest (rows that could not be read) first, then the steps as the
    # manifest lists them, then any others.
    step_order = _ordered(step_count, ["ingest", *(s.get("name") for s in manifest.get("steps") or [])],
                          step_count)
    by_step = {
        step: {
            "count": step_count[step],
            "reasons": {k: kind_count[step][k] for k in _ordered(kind_count[step], (), kind_count[step])},
        }
        for step in step_order
    }
    picked: dict[str, list] = defaultdict(list)
    for i in sorted(range(len(parsed)), key=lambda i: drop["id"][i] or ""):
        key = "{}: {}".format(*parsed[i])
        if len(picked[key]) < examples:
            picked[key].append({"id": drop["id"][i], "text": drop["text"][i] or "", "reason": drop["reason"][i] or ""})
    crit_count = Counter(c or "unknown" for c in drop["criterion"])
    # What the build counted, so a rejected/ that lost rows (a part deleted or cut off) shows up
    # as a difference instead of a smaller, plausible-looking table.
    counted = (manifest.get("counts") or {}).get("rejected")
    return {
        "total": len(parsed),
        "manifest_total": counted if isinstance(counted, int) and not isinstance(counted, bool) else None,
        "by_criterion": {c: crit_count[c] for c in _ordered(crit_count, CRITERIA, crit_count)},
        "by_step": by_step,
        "examples": {k: picked[k] for k in sorted(picked)},
    }


# ---------------------------------------------------------------------------------------
# tables (shared by the text and the HTML renderers)


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    align: str  # one "l" or "r" per column
    note: str = ""


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def _num(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) < 1e12):
        return f"{int(x):,}"
    return f"{x:.4g}"


def _signed(x: int | float, pct: bool = False) -> str:
    if pct:
        return f"{100 * x:+.1f}pp" if x else "0"
    return f"{x:+,}" if x else "0"


def _tables(summary: dict[str, Any]) -> dict[str, Table]:
    """Every table of the report by key, in page order; tables with nothing to show are left out
    (scores, inputs, steps, clusters), the others always present."""
    tables = {"criteria": _criteria_table(summary), "categories": _categories_table(summary)}
    rows = [[s, _num(e["count"]), _pct(e["share"])] for s, e in summary["sources"].items()]
    tables["sources"] = Table("Kept prompts by source", ["source", "count", "share"], rows, "lrr")
    if summary["inputs"]:
        rows = [[str(s["criterion"] or ""), str(s["uri"] or ""), _num(s["rows_read"]), _num(s["records"]),
                 _num(s["rejected"]), _num(s.get("skipped_files", 0))] for s in summary["inputs"]]
        tables["inputs"] = Table("Inputs (manifest)", ["criterion", "uri", "rows read", "records", "rejected",
                                                       "files skipped"], rows, "llrrrr")
    if summary["steps"]:
        tables["steps"] = _steps_table(summary["steps"])
    tables["rejected"] = _rejected_table(summary["rejected"])
    stat_keys = ("min", "p25", "median", "p75", "max", "mean")
    if summary["scores"]:
        rows = [[key, _num(e["count"]), _num(e["missing"])] + [_num(e.get(k)) for k in stat_keys]
                for key, e in summary["scores"].items()]
        tables["scores"] = Table("Score distributions", ["score", "n", "missing", *stat_keys], rows, "lrrrrrrrr")
    length = summary["length"]
    rows = [[name, _num(e["count"])] + [_num(e.get(k)) for k in stat_keys]
            for name, e in [("all", length), *length.get("by_criterion", {}).items()]]
    tables["length"] = Table(f"Prompt length ({length['unit']})", ["criterion", "n", *stat_keys], rows, "lrrrrrrr")
    if summary["clusters"]["overall"]["clustered"]:
        tables["clusters"] = _clusters_table(summary["clusters"])
    if summary.get("selection"):
        tables["selection"] = _selection_table(summary["selection"])
    return tables


def _selection_table(selection: dict[str, Any]) -> Table:
    """Mean score per category: what was selected vs what the plain balanced selection would hold."""
    score, chosen, plain = selection["select_by"], selection["selected"], selection["plain"]
    rows = []
    for cat in sorted(set(chosen["per_category"]) | set(plain["per_category"])):
        a, b = chosen["per_category"].get(cat), plain["per_category"].get(cat)
        rows.append([cat, _num(a), _num(b), _num(a / b) if a is not None and b else ""])
    rows.append(["all", _num(chosen["mean"]), _num(plain["mean"]),
                 _num(chosen["mean"] / plain["mean"]) if chosen["mean"] is not None and plain["mean"] else ""])
    mining, cost = selection.get("mining") or {}, selection.get("cost") or {}
    note = (f"{_num(selection['shared_with_plain'])} of {_num(selection['size'])} prompts are also in the plain "
            "selection")
    if mining:
        note += (f"; mined with {mining.get('student')} (step {mining.get('step')}) against {mining.get('teacher')}, "
                 f"sigmas {mining.get('sigmas')}: {_num(cost.get('scored'))} prompts scored "
                 f"({_num(cost.get('from_cache'))} from the cache), {_num(cost.get('transformer_passes'))} "
                 "transformer passes")
    return Table(f"Selected by {score} (manifest): mean {score} per category",
                 ["category", "selected", "plain balanced", "ratio"], rows, "lrrr", note)


def _categories_table(summary: dict[str, Any]) -> Table:
    rows = []
    for crit, cats in summary["categories"].items():
        for cat, e in cats.items():
            rows.append([crit, cat, _num(e["count"]), _pct(e["share_in_criterion"]), _pct(e["share"]),
                         _num(e["target"]), _vs(e["count"], e["target"]), _num(e["available"])])
    return Table("Mixture by criterion x category",
                 ["criterion", "category", "count", "of criterion", "of total", "target", "vs target", "available"],
                 rows, "llrrrrrr")


def _steps_table(steps: list[dict[str, Any]]) -> Table:
    rows = []
    for s in steps:
        kept_share = s["kept"] / s["in"] if s.get("in") and s.get("kept") is not None else None
        rows.append([str(s["name"]), _criteria_cell(s.get("criteria")), _num(s["in"]), _num(s["kept"]),
                     _num(s["dropped"]), _pct(kept_share), "" if s["seconds"] is None else f"{s['seconds']:.2f}"])
    return Table("Pipeline steps (manifest)", ["step", "criteria", "in", "kept", "dropped", "kept %", "seconds"],
                 rows, "llrrrrr", "criteria: the prompts a step ran on; the others passed it untouched "
                                  "(in/kept count every prompt that reached the step)")


def _rejected_table(rej: dict[str, Any]) -> Table:
    """Every (step, kind) with its count: no top-N cut, so no kind of rejection goes unseen."""
    rows = []
    for step, e in rej["by_step"].items():
        for kind, n in e["reasons"].items():
            rows.append([step, kind, _num(n), _pct(n / rej["total"] if rej["total"] else 0)])
    rows.append(["total", "", _num(rej["total"]), _pct(1.0 if rej["total"] else 0.0)])
    counted = rej.get("manifest_total")
    note = (f"the manifest counts {counted:,} rejected rows but rejected/ holds {rej['total']:,}: "
            "a part file is missing or damaged" if counted is not None and counted != rej["total"] else "")
    return Table("Rejected by step and reason", ["step", "reason", "count", "share"], rows, "llrr", note)


def _clusters_table(cl: dict[str, Any]) -> Table:
    rows = []
    for name, e in [("all", cl["overall"]), *cl["by_criterion"].items()]:
        pc, lg = e.get("per_cluster", {}), e.get("largest", {})
        rows.append([name, _num(e["records"]), _num(e["clustered"]), _num(e["clusters"]), _num(pc.get("min")),
                     _num(pc.get("median")), _num(pc.get("max")), _pct(lg.get("share"))])
    return Table("Cluster coverage", ["criterion", "records", "clustered", "clusters", "min", "median", "max",
                                      "largest"], rows, "lrrrrrrr",
                 "min/median/max: records per cluster; largest: share of the clustered records "
                 "that sit in the biggest cluster")


def _vs(count: int, target: Any) -> str:
    """count - target, signed ("0" when on target), or "" without a target."""
    return _signed(count - target) if isinstance(target, int) and not isinstance(target, bool) else ""


def _criteria_cell(criteria: list[str] | None | str) -> str:
    if criteria is None:
        return "all"
    if isinstance(criteria, str):
        return criteria  # "?": the manifest does not say
    return ", ".join(criteria) or "none"


def _criteria_table(summary: dict[str, Any]) -> Table:
    """Counts against targets per criterion. The total row's target is the planned size, which
    the criterion targets add up to; the recipe's size (when scaling shrank the set) is in the header."""
    total = summary["total"]
    rows = []
    for crit, e in summary["criteria"].items():
        rows.append([crit, _num(e["count"]), _pct(e["share"]), _pct(e["target_fraction"]), _num(e["target"]),
                     _vs(e["count"], e["target"])])
    fractions = [e["target_fraction"] for e in summary["criteria"].values()]
    fraction_sum = sum(fractions) if fractions and all(isinstance(f, (int, float)) for f in fractions) else None
    planned = summary["manifest"].get("planned_size", summary["manifest"]["size"])
    rows.append(["total", _num(total), _pct(1.0 if total else 0.0), _pct(fraction_sum), _num(planned),
                 _vs(total, planned)])
    return Table("Mixture by criterion", ["criterion", "count", "share", "target share", "target", "vs target"],
                 rows, "lrrrrr")


def size_line(manifest: dict[str, Any]) -> str:
    """The set's size, labelled: "size 3000", or when `on_shortfall: scale` shrank it, both the
    recipe's size and the planned size the targets were computed for, so neither reads as the other."""
    size, planned = manifest.get("size"), manifest.get("planned_size", manifest.get("size"))
    if size is None:
        return ""
    if manifest.get("scaled"):
        return f"recipe size {size}  planned size {planned}"
    return f"size {size}"  # plain digits, like the seed beside it


def scaling_note(manifest: dict[str, Any]) -> str:
    """Why the targets add up to less than the recipe's size ("" when they do not)."""
    if not manifest.get("scaled"):
        return ""
    size, planned = manifest["size"], manifest["planned_size"]
    return (f"on_shortfall: {manifest.get('on_shortfall') or 'scale'} shrank the set from the recipe's size "
            f"{size:,} to a planned {planned:,} to keep its fractions: the targets below are for {planned:,}, "
            f"the shortfall quotas above for {size:,}")


def _format_table(t: Table) -> str:
    widths = [max(len(h), *(len(r[i]) for r in t.rows)) if t.rows else len(h) for i, h in enumerate(t.headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(cells, widths, t.align)]
        return "  ".join(parts).rstrip()

    out = [t.title, line(t.headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in t.rows] if t.rows else ["(none)"]
    if t.note:
        out.append(t.note)
    return "\n".join(out)


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _header_lines(summary: dict[str, Any]) -> list[str]:
    m = summary["manifest"]
    lines = [f"curated set: {summary['dir']}"]
    bits = []
    if m["recipe_name"]:
        bits.append(f"recipe {m['recipe_name']}")
    if m["seed"] is not None:
        bits.append(f"seed {m['seed']}")
    if m["size"] is not None:
        bits.append(size_line(m))
    if m["recipe_hash"]:
        bits.append(f"hash {m['recipe_hash']}")
    if bits:
        lines.append("  ".join(bits))
    lines.append(f"kept {summary['total']:,}  rejected {summary['rejected']['total']:,}")
    return lines


def render_tables(summary: dict[str, Any]) -> str:
    """The summary as aligned plain-text tables for a terminal (no colour, no deps)."""
    parts = ["\n".join(_header_lines(summary))]
    shortfalls = summary["manifest"]["shortfalls"]
    note = scaling_note(summary["manifest"])
    if shortfalls or note:
        parts.append("\n".join(["Shortfalls", *(f"  ! {s}" for s in shortfalls), *([f"  {note}"] if note else [])]))
    parts += [_format_table(t) for t in _tables(summary).values()]
    ex_lines = ["Examples (first by id)"]
    for crit, cats in summary["examples"].items():
        for cat, items in cats.items():
            for item in items:
                ex_lines.append(f"  {crit}/{cat}: {_clip(item['text'], 90)}")
    parts.append("\n".join(ex_lines))
    return "\n\n".join(parts) + "\n"
