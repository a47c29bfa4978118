"""`curate inspect`: what a curated set holds (and the loading and table helpers `curate diff` shares).

Plain functions over a curated-set folder (data/, rejected/, manifest.json):

    summarize(dir)            -> dict   machine-readable summary (`curate inspect --json`)
    render_tables(summary)    -> str    aligned plain-text tables (`curate inspect`)
    report_html.write_html(dir, summary, path)   one self-contained HTML file (`curate inspect --html`)
    report_diff.diff(dir_a, dir_b)   -> dict     changes between two sets (`curate diff --json`)
    report_diff.render_diff(d)       -> str      the same as text (`curate diff`)

Everything is deterministic: orders are fixed (criteria and categories in the order of
`curate.records`, the rest by count then name), samples are "first by id", floats are
rounded to 6 decimals, and the HTML carries no timestamp.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow.parquet as pq

from curate.records import CATEGORIES, CRITERIA, parse_reason

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


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / "manifest.json"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object")
    return data


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


def _read_parts(folder: Path, columns: Sequence[str]) -> dict[str, list[Any]]:
    """Columns of every `folder/*.parquet` (sorted), None where a part lacks a column.

    Parts are read one by one rather than as a dataset so that parts whose `scores`
    structs hold different fields still combine."""
    out: dict[str, list[Any]] = {c: [] for c in columns}
    for path in sorted(folder.glob("*.parquet")):
        try:
            names = set(pq.read_schema(path).names)
            table = pq.read_table(path, columns=[c for c in columns if c in names])
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise ReportError(f"{path}: not a readable parquet file ({exc})") from exc
        for c in columns:
            out[c].extend(table.column(c).to_pylist() if c in names else [None] * table.num_rows)
    return out


def _load(folder: Path | str, rejected: bool = True) -> tuple[dict[str, Any], dict[str, list], dict[str, list]]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"{folder}: no such folder")
    if not (folder / "manifest.json").exists() and not any((folder / "data").glob("*.parquet")):
        raise ReportError(f"{folder}: not a curated set (no manifest.json and no data/*.parquet)")
    manifest = _read_manifest(folder)
    kept = _read_parts(folder / "data", _KEPT_COLUMNS)
    kept["criterion"] = [c or "unknown" for c in kept["criterion"]]
    kept["category"] = [c or "general" for c in kept["category"]]
    kept["source"] = [s or "unknown" for s in kept["source"]]
    kept["text"] = [t or "" for t in kept["text"]]
    kept["scores"] = [_as_scores(s) for s in kept["scores"]]
    drop = _read_parts(folder / "rejected", _REJECTED_COLUMNS) if rejected else {c: [] for c in _REJECTED_COLUMNS}
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


# ---------------------------------------------------------------------------------------
# summarize


def summarize(dir: Path, examples: int = 3) -> dict[str, Any]:
    """Machine-readable summary of a curated set (JSON-serialisable, deterministic).

    Keys: format, dir, manifest (recipe name/seed/size/hash/shortfalls/versions), total,
    criteria, categories (criterion -> category), sources, quotas, steps (from the
    manifest), rejected (by step and reason kind, with examples), scores, length,
    clusters, examples (criterion -> category -> first `examples` records by id).
    Shares are fractions of all kept records unless named otherwise.
    """
    folder = Path(dir)
    manifest, kept, drop = _load(folder)
    total = len(kept["id"])
    crit_count = Counter(kept["criterion"])
    crits = _ordered(crit_count, CRITERIA, crit_count)
    quotas = manifest.get("quotas") or {}

    criteria = {}
    for crit in crits:
        q = quotas.get(crit) or {}
        criteria[crit] = {
            "count": crit_count[crit],
            "share": _share(crit_count[crit], total),
            "target_fraction": q.get("fraction"),
            "target": q.get("target"),
        }

    pair_count = Counter(zip(kept["criterion"], kept["category"]))
    cat_count = Counter(kept["category"])
    category_order = _ordered(cat_count, CATEGORIES, cat_count)
    categories: dict[str, dict[str, Any]] = {}
    for crit in crits:
        qcats = (quotas.get(crit) or {}).get("categories") or {}
        categories[crit] = {}
        for cat in category_order:
            n = pair_count.get((crit, cat), 0)
            if n == 0 and cat not in qcats:
                continue
            q = qcats.get(cat) or {}
            categories[crit][cat] = {
                "count": n,
                "share": _share(n, total),
                "share_in_criterion": _share(n, crit_count[crit]),
                "target": q.get("target"),
                "available": q.get("available"),
            }

    src_count = Counter(kept["source"])
    sources = {s: {"count": src_count[s], "share": _share(src_count[s], total)}
               for s in _ordered(src_count, (), src_count)}

    # Scores: every key any record carries, each over the records that have it.
    crit_arr = np.asarray(kept["criterion"], dtype=object)
    score_keys = sorted({k for s in kept["scores"] for k in s})
    scores = {}
    for key in score_keys:
        idx = [i for i, s in enumerate(kept["scores"]) if key in s]
        values = np.array([kept["scores"][i][key] for i in idx], dtype=float)
        groups = crit_arr[idx] if idx else np.array([], dtype=object)
        entry = _stats(values)
        entry["missing"] = total - len(idx)
        entry["by_criterion"] = {c: _stats(values[groups == c]) for c in crits if (groups == c).any()}
        entry["histogram"] = _histogram(values, groups, crits, _score_edges(values))
        scores[key] = entry

    # Length: the tokenizer's count when the build recorded it for every record (mixing
    # tokens and words would make one histogram of two units), else whitespace words.
    has_tokens = total > 0 and all("tokens" in s for s in kept["scores"])
    if has_tokens:
        lengths = np.array([s["tokens"] for s in kept["scores"]], dtype=float)
    else:
        lengths = np.array([len(t.split()) for t in kept["text"]], dtype=float)
    length: dict[str, Any] = {"unit": "tokens" if has_tokens else "words", **_stats(lengths)}
    if total:
        length["by_criterion"] = {c: _stats(lengths[crit_arr == c]) for c in crits}
        length["histogram"] = _histogram(lengths, crit_arr, crits, _length_edges(lengths))

    by_crit_clusters: dict[str, list[Any]] = defaultdict(list)
    for crit, cl in zip(kept["criterion"], kept["cluster"]):
        by_crit_clusters[crit].append(cl)
    clusters = {
        "overall": _cluster_stats(kept["cluster"]),
        "by_criterion": {c: _cluster_stats(by_crit_clusters[c]) for c in crits},
    }

    # Examples: first `examples` by id per criterion x category (ids are hashes, so
    # this is an unbiased, reproducible pick).
    order = sorted(range(total), key=lambda i: kept["id"][i] or "")
    picked: dict[str, dict[str, list]] = {c: {} for c in crits}
    for i in order:
        bucket = picked[kept["criterion"][i]].setdefault(kept["category"][i], [])
        if len(bucket) < examples:
            bucket.append({"id": kept["id"][i], "text": kept["text"][i], "source": kept["source"][i]})
    examples_out = {c: {cat: picked[c][cat] for cat in category_order if cat in picked[c]} for c in crits}

    return {
        "format": SUMMARY_FORMAT,
        "dir": str(folder),
        "manifest": {
            "format": manifest.get("format"),
            "recipe_name": manifest.get("recipe_name"),
            "recipe_hash": manifest.get("recipe_hash"),
            "seed": manifest.get("seed"),
            "size": manifest.get("size"),
            "shortfalls": list(manifest.get("shortfalls") or []),
            "versions": dict(manifest.get("versions") or {}),
            "seconds": manifest.get("seconds"),
        },
        "total": total,
        "category_order": category_order,
        "criteria": criteria,
        "categories": categories,
        "sources": sources,
        "inputs": [
            {**{k: s.get(k) for k in ("criterion", "uri", "rows_read", "records", "rejected")},
             "skipped_files": len(s.get("skipped_files") or [])}
            for s in manifest.get("sources") or []
        ],
        "steps": [
            {k: s.get(k) for k in ("name", "in", "kept", "dropped", "seconds")} for s in manifest.get("steps") or []
        ],
        "rejected": _rejected_summary(drop, manifest, examples),
        "scores": scores,
        "length": length,
        "clusters": clusters,
        "examples": examples_out,
    }


def _rejected_summary(drop: dict[str, list], manifest: dict[str, Any], examples: int) -> dict[str, Any]:
    parsed = [parse_reason(r, s) for r, s in zip(drop["reason"], drop["step"])]
    step_count = Counter(step for step, _ in parsed)
    kind_count: dict[str, Counter] = defaultdict(Counter)
    for step, kind in parsed:
        kind_count[step][kind] += 1
    # Steps in pipeline order (as the manifest lists them), then any others.
    step_order = _ordered(step_count, [s.get("name") for s in manifest.get("steps") or []], step_count)
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
    return {
        "total": len(parsed),
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
    total = summary["total"]
    tables: dict[str, Table] = {}

    rows = []
    for crit, e in summary["criteria"].items():
        rows.append([crit, _num(e["count"]), _pct(e["share"]), _pct(e["target_fraction"]), _num(e["target"])])
    rows.append(["total", _num(total), _pct(1.0 if total else 0.0), "", _num(summary["manifest"]["size"])])
    tables["criteria"] = Table("Mixture by criterion", ["criterion", "count", "share", "target share", "target"],
                               rows, "lrrrr")

    rows = []
    for crit, cats in summary["categories"].items():
        for cat, e in cats.items():
            rows.append([crit, cat, _num(e["count"]), _pct(e["share_in_criterion"]), _pct(e["share"]),
                         _num(e["target"]), _num(e["available"])])
    tables["categories"] = Table("Mixture by criterion x category",
                                 ["criterion", "category", "count", "of criterion", "of total", "target", "available"],
                                 rows, "llrrrrr")

    rows = [[s, _num(e["count"]), _pct(e["share"])] for s, e in summary["sources"].items()]
    tables["sources"] = Table("Kept prompts by source", ["source", "count", "share"], rows, "lrr")

    if summary["inputs"]:
        rows = [[str(s["criterion"] or ""), str(s["uri"] or ""), _num(s["rows_read"]), _num(s["records"]),
                 _num(s["rejected"]), _num(s.get("skipped_files", 0))] for s in summary["inputs"]]
        tables["inputs"] = Table("Inputs (manifest)", ["criterion", "uri", "rows read", "records", "rejected",
                                                       "files skipped"], rows, "llrrrr")

    if summary["steps"]:
        rows = []
        for s in summary["steps"]:
            kept_share = s["kept"] / s["in"] if s.get("in") and s.get("kept") is not None else None
            rows.append([str(s["name"]), _num(s["in"]), _num(s["kept"]), _num(s["dropped"]), _pct(kept_share),
                         "" if s["seconds"] is None else f"{s['seconds']:.2f}"])
        tables["steps"] = Table("Pipeline steps (manifest)", ["step", "in", "kept", "dropped", "kept %", "seconds"],
                                rows, "lrrrrr")

    rej = summary["rejected"]
    rows = []
    for step, e in rej["by_step"].items():
        for kind, n in e["reasons"].items():
            rows.append([step, kind, _num(n), _pct(n / rej["total"] if rej["total"] else 0)])
    rows.append(["total", "", _num(rej["total"]), _pct(1.0 if rej["total"] else 0.0)])
    tables["rejected"] = Table("Rejected by step and reason", ["step", "reason", "count", "share"], rows, "llrr")

    if summary["scores"]:
        rows = []
        for key, e in summary["scores"].items():
            rows.append([key, _num(e["count"]), _num(e["missing"])]
                        + [_num(e.get(k)) for k in ("min", "p25", "median", "p75", "max", "mean")])
        tables["scores"] = Table("Score distributions",
                                 ["score", "n", "missing", "min", "p25", "median", "p75", "max", "mean"],
                                 rows, "lrrrrrrrr")

    length = summary["length"]
    rows = []
    for name, e in [("all", length), *length.get("by_criterion", {}).items()]:
        rows.append([name, _num(e["count"])] + [_num(e.get(k)) for k in ("min", "p25", "median", "p75", "max", "mean")])
    tables["length"] = Table(f"Prompt length ({length['unit']})",
                             ["criterion", "n", "min", "p25", "median", "p75", "max", "mean"], rows, "lrrrrrrr")

    cl = summary["clusters"]
    if cl["overall"]["clustered"]:
        rows = []
        for name, e in [("all", cl["overall"]), *cl["by_criterion"].items()]:
            pc, lg = e.get("per_cluster", {}), e.get("largest", {})
            rows.append([name, _num(e["records"]), _num(e["clustered"]), _num(e["clusters"]), _num(pc.get("min")),
                         _num(pc.get("median")), _num(pc.get("max")), _pct(lg.get("share"))])
        tables["clusters"] = Table("Cluster coverage",
                                   ["criterion", "records", "clustered", "clusters", "min", "median", "max",
                                    "largest"], rows, "lrrrrrrr",
                                   "min/median/max: records per cluster; largest: share of the clustered records "
                                   "that sit in the biggest cluster")
    return tables


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
    for key in ("seed", "size"):
        if m[key] is not None:
            bits.append(f"{key} {m[key]}")
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
    if shortfalls:
        parts.append("Shortfalls\n" + "\n".join(f"  ! {s}" for s in shortfalls))
    parts += [_format_table(t) for t in _tables(summary).values()]
    ex_lines = ["Examples (first by id)"]
    for crit, cats in summary["examples"].items():
        for cat, items in cats.items():
            for item in items:
                ex_lines.append(f"  {crit}/{cat}: {_clip(item['text'], 90)}")
    parts.append("\n".join(ex_lines))
    return "\n\n".join(parts) + "\n"
