"""`curate inspect` and `curate diff`: what a curated set holds and what changed.

Plain functions over a curated-set folder (DESIGN.md "Output layout of curate build"):

    summarize(dir)            -> dict   machine-readable summary (`curate inspect --json`)
    render_tables(summary)    -> str    aligned plain-text tables (`curate inspect`)
    write_html(dir, summary, path)      one self-contained HTML file (`curate inspect --html`)
    diff(dir_a, dir_b)        -> dict   changes between two sets (`curate diff --json`, if wanted)
    render_diff(d)            -> str    the same as text (`curate diff`)

Everything is deterministic: orders are fixed (criteria and categories in the order of
`curate.records`, the rest by count then name), samples are "first by id", floats are
rounded to 6 decimals, and the HTML carries no timestamp.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow.parquet as pq

from curate.records import CATEGORIES, CRITERIA

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


def parse_reason(reason: str | None, step: str | None = None) -> tuple[str, str]:
    """(step, kind) of a rejection reason "<step>: <kind> <detail>".

    The `step` column wins over the reason's prefix; a reason without a prefix is all
    kind and detail."""
    reason = (reason or "").strip()
    head, sep, rest = reason.partition(": ")
    if not sep:
        head, rest = "", reason
    words = rest.split(None, 1)
    return (step or head or "unknown"), (words[0] if words else "unspecified")


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
            {k: s.get(k) for k in ("criterion", "uri", "rows_read", "records", "rejected")}
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
        rows = [[str(s["criterion"] or ""), str(s["uri"] or ""),
                 _num(s["rows_read"]), _num(s["records"]), _num(s["rejected"])] for s in summary["inputs"]]
        tables["inputs"] = Table("Inputs (manifest)", ["criterion", "uri", "rows read", "records", "rejected"],
                                 rows, "llrrr")

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


# ---------------------------------------------------------------------------------------
# HTML

_CSS = """
:root { --ink:#1f2328; --muted:#59636e; --line:#d1d9e0; --soft:#f6f8fa; --accent:#4C72B0; --warn:#9a6700; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color:var(--ink);
       background:#fff; }
main { max-width:1240px; margin:0 auto; padding:24px 28px 48px; }
h1 { font-size:22px; margin:0 0 4px; }
h2 { font-size:17px; margin:32px 0 10px; padding-bottom:4px; border-bottom:1px solid var(--line); }
h3 { font-size:14px; margin:14px 0 6px; }
.meta { color:var(--muted); margin:0 0 12px; }
.meta code { background:var(--soft); padding:1px 5px; border-radius:4px; }
.kpis { display:flex; flex-wrap:wrap; gap:10px; margin:14px 0; }
.kpi { border:1px solid var(--line); border-radius:8px; padding:8px 14px; min-width:120px; background:var(--soft); }
.kpi b { display:block; font-size:20px; }
.kpi span { color:var(--muted); font-size:12px; }
.warn { border:1px solid #d4a72c; background:#fff8c5; border-radius:8px; padding:8px 14px; margin:12px 0; }
.warn li { margin:2px 0; }
.grid { display:grid; grid-template-columns:repeat(auto-fit, minmax(540px, 1fr)); gap:18px; align-items:start; }
figure { margin:0; }
figure img { max-width:100%; height:auto; display:block; border:1px solid var(--line); border-radius:6px; }
figcaption { color:var(--muted); font-size:12px; margin-top:4px; }
table { border-collapse:collapse; font-size:13px; margin:4px 0 8px; }
th, td { padding:3px 10px; border-bottom:1px solid var(--line); white-space:nowrap; }
th { text-align:left; background:var(--soft); font-weight:600; }
td.r, th.r { text-align:right; font-variant-numeric:tabular-nums; }
tr.total td { font-weight:600; border-top:2px solid var(--line); }
.note { color:var(--muted); font-size:12px; }
.scroll { overflow-x:auto; }
ul.ex { margin:4px 0 10px; padding-left:18px; }
ul.ex li { margin:2px 0; word-break:break-word; }
ul.ex .id, .reason { color:var(--muted); font-family:ui-monospace, Menlo, Consolas, monospace; font-size:11px; }
details { margin:6px 0; }
summary { cursor:pointer; color:var(--accent); }
.cols { columns:2 420px; column-gap:28px; }
.cols > div { break-inside:avoid; }
"""


def _html_table(t: Table, with_title: bool = True) -> str:
    e = html.escape
    head = "".join(f'<th class="{a}">{e(h)}</th>' for h, a in zip(t.headers, t.align))
    body = []
    for row in t.rows:
        cls = ' class="total"' if row and row[0] == "total" else ""
        body.append(f"<tr{cls}>" + "".join(f'<td class="{a}">{e(c)}</td>' for c, a in zip(row, t.align)) + "</tr>")
    if not t.rows:
        body.append(f'<tr><td colspan="{len(t.headers)}" class="note">none</td></tr>')
    title = f"<h3>{e(t.title)}</h3>" if with_title else ""
    note = f'<p class="note">{e(t.note)}</p>' if t.note else ""
    table = f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    return f'{title}<div class="scroll">{table}</div>{note}'


def _img(png: bytes, alt: str, caption: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'


def _default_embedder() -> tuple[Any, str]:
    try:
        from filters.embed import build_embedder

        emb = build_embedder(progress=False)
        return emb, str(getattr(emb, "name", "") or "filters.embed default")
    except Exception as exc:  # missing module or weights: the map still renders, labelled as such
        from curate.plots import HashingEmbedder

        return HashingEmbedder(), f"hashed n-grams (no embedding model: {type(exc).__name__})"


def embedding_points(dir: Path, embedder: Embedder | None = None,
                     max_points: int = MAX_MAP_POINTS) -> tuple[np.ndarray, list[str], np.ndarray, str]:
    """PCA coordinates for the embedding map: (coords (n, 2), criteria, explained, embedder label).

    Takes the first `max_points` kept records by id (ids are hashes: a reproducible
    uniform sample). With no `embedder`, uses `filters.embed.build_embedder()`, falling
    back to `plots.HashingEmbedder` when that cannot load or encode."""
    from curate.plots import HashingEmbedder, pca_2d

    cols = _read_parts(Path(dir) / "data", ("id", "text", "criterion"))
    order = sorted(range(len(cols["id"])), key=lambda i: cols["id"][i] or "")[:max_points]
    texts = [cols["text"][i] or "" for i in order]
    labels = [cols["criterion"][i] or "unknown" for i in order]
    if not texts:
        return np.zeros((0, 2)), [], np.zeros(2), "no records"
    if embedder is not None:
        label = getattr(embedder, "name", type(embedder).__name__)
        vectors = embedder.encode(texts)
    else:
        emb, label = _default_embedder()
        try:
            vectors = emb.encode(texts)
        except Exception as exc:  # weights missing offline: still draw a map, and say which
            emb = HashingEmbedder()
            label = f"hashed n-grams (embedding model failed: {type(exc).__name__})"
            vectors = emb.encode(texts)
    coords, explained = pca_2d(np.asarray(vectors, dtype=np.float32))
    return coords, labels, explained, str(label)


def write_html(dir: Path, summary: dict[str, Any], path: Path, embedder: Embedder | None = None,
               max_points: int = MAX_MAP_POINTS) -> Path:
    """Write one self-contained HTML report (inline CSS, plots as PNG data URIs, no
    scripts, no external references; all prompt text escaped). Returns `path`."""
    from curate import plots

    e = html.escape
    tables = _tables(summary)
    m = summary["manifest"]
    title = f"Curated set: {m['recipe_name'] or Path(summary['dir']).name}"

    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # The policy makes the no-network promise hold even for a browser that follows
        # markup we failed to escape: only inline styles and data: images may load.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{e(title)}</h1>",
        f'<p class="meta">{" &middot; ".join(e(x) for x in _header_lines(summary)[:2])}</p>',
    ]
    kpis = [(f"{summary['total']:,}", "kept prompts"), (f"{summary['rejected']['total']:,}", "rejected")]
    kpis += [(_pct(c["share"]), f"{name} ({c['count']:,})") for name, c in summary["criteria"].items()]
    out.append('<div class="kpis">' + "".join(f"<div class=\"kpi\"><b>{e(a)}</b><span>{e(b)}</span></div>"
                                                for a, b in kpis) + "</div>")
    if m["shortfalls"]:
        out.append('<div class="warn"><b>Shortfalls</b><ul>' + "".join(f"<li>{e(s)}</li>" for s in m["shortfalls"])
                   + "</ul></div>")

    out.append('<h2 id="mixture">Mixture</h2><div class="grid">')
    out.append(f"<div>{_html_table(tables['criteria'])}{_html_table(tables['sources'])}</div>")
    out.append(_img(plots.category_bars(summary), "prompts per category by criterion"))
    out.append("</div>")
    out.append(_html_table(tables["categories"]))

    out.append('<h2 id="pipeline">Pipeline and rejections</h2><div class="grid">')
    out.append("<div>" + "".join(_html_table(tables[k]) for k in ("inputs", "steps") if k in tables) + "</div>")
    out.append(f"<div>{_html_table(tables['rejected'])}</div></div>")
    rej_ex = summary["rejected"]["examples"]
    if rej_ex:
        items = []
        for key, recs in rej_ex.items():
            lis = "".join(f'<li>{e(r["text"])}<br><span class="reason">{e(r["reason"])}</span></li>' for r in recs)
            items.append(f"<div><h3>{e(key)}</h3><ul class=\"ex\">{lis}</ul></div>")
        out.append(f'<details><summary>Rejected examples (first by id)</summary><div class="cols">{"".join(items)}'
                   "</div></details>")

    out.append('<h2 id="scores">Scores and length</h2>')
    score_png = plots.score_histograms(summary)
    if score_png:
        out.append(_img(score_png, "score histograms", "stacked by criterion"))
        out.append(_html_table(tables["scores"]))
    else:
        out.append('<p class="note">No scores recorded in this set.</p>')
    out.append('<div class="grid">')
    out.append(_img(plots.length_histogram(summary), "prompt length histogram"))
    out.append(f"<div>{_html_table(tables['length'])}</div></div>")

    out.append('<h2 id="map">Embedding map and clusters</h2><div class="grid">')
    coords, labels, explained, label = embedding_points(Path(dir), embedder, max_points)
    caption = f"PCA of {len(labels):,} prompts (first by id), embedder: {label}"
    out.append(_img(plots.embedding_map(coords, labels, explained, "Text embeddings, PCA"), "embedding map", caption))
    if "clusters" in tables:
        out.append(f"<div>{_html_table(tables['clusters'])}</div>")
    else:
        out.append('<p class="note">No cluster ids recorded in this set.</p>')
    out.append("</div>")

    out.append('<h2 id="examples">Examples (first by id)</h2><div class="cols">')
    for crit, cats in summary["examples"].items():
        for cat, items in cats.items():
            lis = "".join(f'<li>{e(it["text"])} <span class="id">{e(str(it["id"]))}</span></li>' for it in items)
            out.append(f"<div><h3>{e(crit)} / {e(cat)}</h3><ul class=\"ex\">{lis}</ul></div>")
    out.append("</div>")

    versions = ", ".join(f"{k} {v}" for k, v in sorted(m["versions"].items()))
    if versions:
        out.append(f'<p class="note" style="margin-top:28px">Built with {e(versions)}.</p>')
    out.append("</main></body></html>\n")

    path = Path(path)
    _atomic_write(path, "\n".join(out))
    return path


def _atomic_write(path: Path, text: str) -> None:
    # Write beside the target, then rename: a reader never sees half a report. A plain
    # open() (not mkstemp, which makes 0600 files) so the umask decides who may read it.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------
# diff


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a.b.c": leaf}. Lists of mappings are indexed ("steps.0.name");
    lists of plain values are leaves, compared whole."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        if not data and prefix:
            out[prefix] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(data, list) and any(isinstance(v, (dict, list)) for v in data):
        if not data and prefix:
            out[prefix] = []
        for i, value in enumerate(data):
            out.update(flatten(value, f"{prefix}.{i}" if prefix else str(i)))
    else:
        out[prefix] = data
    return out


def _delta_block(ca: Counter, cb: Counter, ta: int, tb: int, keys: list) -> dict[str, dict[str, Any]]:
    out = {}
    for key in keys:
        a, b = ca.get(key, 0), cb.get(key, 0)
        sa, sb = _share(a, ta), _share(b, tb)
        name = "/".join(key) if isinstance(key, tuple) else key
        out[name] = {"a": a, "b": b, "delta": b - a, "share_a": sa, "share_b": sb, "share_delta": _r(sb - sa)}
    return out


def diff(dir_a: Path, dir_b: Path, sample: int = 10) -> dict[str, Any]:
    """What changed from curated set A to B (JSON-serialisable, deterministic).

    Counts and shares per criterion, criterion/category and source (delta = B - A),
    rejections per step, prompts only in A / only in B by id (count and the first
    `sample` by id), prompts in both whose criterion or category changed, and recipe
    keys that differ (flattened dotted keys, {"a": old, "b": new, "status": ...}),
    plus seed and size."""
    ma, ka, ra = _load(dir_a)
    mb, kb, rb = _load(dir_b)
    ta, tb = len(ka["id"]), len(kb["id"])

    crit_a, crit_b = Counter(ka["criterion"]), Counter(kb["criterion"])
    crits = _ordered(set(crit_a) | set(crit_b), CRITERIA, crit_a + crit_b)
    pair_a = Counter(zip(ka["criterion"], ka["category"]))
    pair_b = Counter(zip(kb["criterion"], kb["category"]))
    pairs = sorted(set(pair_a) | set(pair_b), key=lambda p: (
        crits.index(p[0]), CATEGORIES.index(p[1]) if p[1] in CATEGORIES else len(CATEGORIES), p[1]))
    src_a, src_b = Counter(ka["source"]), Counter(kb["source"])
    srcs = _ordered(set(src_a) | set(src_b), (), src_a + src_b)
    step_a = Counter(parse_reason(r, s)[0] for r, s in zip(ra["reason"], ra["step"]))
    step_b = Counter(parse_reason(r, s)[0] for r, s in zip(rb["reason"], rb["step"]))
    step_names = [s.get("name") for s in (mb.get("steps") or ma.get("steps") or [])]
    steps = _ordered(set(step_a) | set(step_b), step_names, step_a + step_b)

    def index(k: dict[str, list]) -> dict[str, int]:
        return {pid: i for i, pid in enumerate(k["id"])}

    ia, ib = index(ka), index(kb)

    def only(ids: set[str], k: dict[str, list], idx: dict[str, int]) -> dict[str, Any]:
        picked = sorted(ids)[:sample]
        return {"count": len(ids), "sample": [
            {"id": pid, "criterion": k["criterion"][idx[pid]], "category": k["category"][idx[pid]],
             "text": k["text"][idx[pid]]} for pid in picked]}

    common = set(ia) & set(ib)
    moved = sorted(pid for pid in common if (ka["criterion"][ia[pid]], ka["category"][ia[pid]])
                   != (kb["criterion"][ib[pid]], kb["category"][ib[pid]]))

    fa, fb = flatten(ma.get("recipe") or {}), flatten(mb.get("recipe") or {})
    recipe = {}
    for key in sorted(set(fa) | set(fb)):
        if key in fa and key in fb and fa[key] == fb[key]:
            continue
        status = "changed" if key in fa and key in fb else ("removed" if key in fa else "added")
        recipe[key] = {"a": fa.get(key), "b": fb.get(key), "status": status}

    def side(folder: Path, m: dict[str, Any], total: int) -> dict[str, Any]:
        return {"dir": str(folder), "total": total, "recipe_name": m.get("recipe_name"),
                "recipe_hash": m.get("recipe_hash"), "seed": m.get("seed"), "size": m.get("size")}

    def change(key: str) -> dict[str, Any]:
        return {"a": ma.get(key), "b": mb.get(key), "changed": ma.get(key) != mb.get(key)}

    return {
        "format": DIFF_FORMAT,
        "a": side(Path(dir_a), ma, ta),
        "b": side(Path(dir_b), mb, tb),
        "total": {"a": ta, "b": tb, "delta": tb - ta},
        "seed": change("seed"),
        "size": change("size"),
        "recipe_hash": change("recipe_hash"),
        "criteria": _delta_block(crit_a, crit_b, ta, tb, crits),
        "categories": _delta_block(pair_a, pair_b, ta, tb, pairs),
        "sources": _delta_block(src_a, src_b, ta, tb, srcs),
        "rejected": {s: {"a": step_a.get(s, 0), "b": step_b.get(s, 0), "delta": step_b.get(s, 0) - step_a.get(s, 0)}
                     for s in steps},
        "prompts": {
            "common": len(common),
            "only_a": only(set(ia) - set(ib), ka, ia),
            "only_b": only(set(ib) - set(ia), kb, ib),
            "reassigned": {"count": len(moved), "sample": [
                {"id": pid, "a": f"{ka['criterion'][ia[pid]]}/{ka['category'][ia[pid]]}",
                 "b": f"{kb['criterion'][ib[pid]]}/{kb['category'][ib[pid]]}"} for pid in moved[:sample]]},
        },
        "recipe": recipe,
    }


def _short(value: Any, width: int = 60) -> str:
    if value is None:
        return "(absent)"
    return _clip(json.dumps(value, sort_keys=True, ensure_ascii=False) if not isinstance(value, str) else value, width)


def render_diff(d: dict[str, Any]) -> str:
    """A diff (see `diff`) as plain-text tables: A -> B with signed deltas."""
    a, b = d["a"], d["b"]
    parts = [f"A: {a['dir']}  ({a['recipe_name'] or '?'}, {a['total']:,} kept)\n"
             f"B: {b['dir']}  ({b['recipe_name'] or '?'}, {b['total']:,} kept)"]
    settings = [["total", _num(d["total"]["a"]), _num(d["total"]["b"]), _signed(d["total"]["delta"])]]
    for key in ("seed", "size", "recipe_hash"):
        c = d[key]
        settings.append([key, _short(c["a"]), _short(c["b"]), "changed" if c["changed"] else "same"])
    parts.append(_format_table(Table("Set", ["", "A", "B", "change"], settings, "lrrr")))

    def block(title: str, first: str, entries: dict[str, dict[str, Any]]) -> Table:
        rows = [[k, _num(e["a"]), _num(e["b"]), _signed(e["delta"]), _pct(e["share_a"]), _pct(e["share_b"]),
                 _signed(e["share_delta"], pct=True)] for k, e in entries.items()]
        return Table(title, [first, "A", "B", "delta", "share A", "share B", "share delta"], rows, "lrrrrrr")

    parts.append(_format_table(block("By criterion", "criterion", d["criteria"])))
    parts.append(_format_table(block("By criterion/category", "criterion/category", d["categories"])))
    parts.append(_format_table(block("By source", "source", d["sources"])))
    rows = [[s, _num(e["a"]), _num(e["b"]), _signed(e["delta"])] for s, e in d["rejected"].items()]
    parts.append(_format_table(Table("Rejected by step", ["step", "A", "B", "delta"], rows, "lrrr")))

    p = d["prompts"]
    lines = [f"Prompts: {p['common']:,} in both, {p['only_a']['count']:,} only in A, "
             f"{p['only_b']['count']:,} only in B, {p['reassigned']['count']:,} with a new criterion/category"]
    for key, label in (("only_a", "only in A"), ("only_b", "only in B")):
        for item in p[key]["sample"]:
            lines.append(f"  {label}: [{item['criterion']}/{item['category']}] {_clip(item['text'], 80)}")
    for item in p["reassigned"]["sample"]:
        lines.append(f"  moved: {item['id']} {item['a']} -> {item['b']}")
    parts.append("\n".join(lines))

    rows = [[k, _short(e["a"], 40), _short(e["b"], 40)] for k, e in d["recipe"].items()]
    parts.append(_format_table(Table(f"Recipe keys changed ({len(rows)})", ["key", "A", "B"], rows, "lll")))
    return "\n\n".join(parts) + "\n"
