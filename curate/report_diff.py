"""`curate diff`: what changed between two curated sets (counts and shares per criterion and category,
prompts only in one of them, changed recipe keys)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from core.records import CATEGORIES, CRITERIA, parse_reason
from curate.curated_set import read_columns
from curate.report import (DIFF_FORMAT, Table, _as_scores, _clip, _format_table, _load, _num, _ordered, _pct, _r, _share,
                           _signed)


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


def skipped_files(manifest: dict[str, Any]) -> list[str]:
    """Paths of the source files a build skipped as unreadable (manifest sources[].skipped_files,
    entries {"path", "reason"}; a bare string is taken as the path), sorted."""
    paths = []
    for source in manifest.get("sources") or []:
        for entry in (source.get("skipped_files") or []) if isinstance(source, dict) else []:
            paths.append(str(entry.get("path", "?")) if isinstance(entry, dict) else str(entry))
    return sorted(paths)


def _delta_block(ca: Counter, cb: Counter, ta: int, tb: int, keys: list) -> dict[str, dict[str, Any]]:
    out = {}
    for key in keys:
        a, b = ca.get(key, 0), cb.get(key, 0)
        sa, sb = _share(a, ta), _share(b, tb)
        name = "/".join(key) if isinstance(key, tuple) else key
        out[name] = {"a": a, "b": b, "delta": b - a, "share_a": sa, "share_b": sb, "share_delta": _r(sb - sa)}
    return out


def _prompts_block(ka: dict[str, list], kb: dict[str, list], sample: int) -> dict[str, Any]:
    """Prompts in both, only in A, only in B (count and the first `sample` by id), and those in
    both whose criterion or category changed."""
    ia = {pid: i for i, pid in enumerate(ka["id"])}
    ib = {pid: i for i, pid in enumerate(kb["id"])}

    def only(ids: set[str], k: dict[str, list], idx: dict[str, int]) -> dict[str, Any]:
        return {"count": len(ids), "sample": [
            {"id": pid, "criterion": k["criterion"][idx[pid]], "category": k["category"][idx[pid]],
             "text": k["text"][idx[pid]]} for pid in sorted(ids)[:sample]]}

    common = set(ia) & set(ib)
    moved = sorted(pid for pid in common if (ka["criterion"][ia[pid]], ka["category"][ia[pid]])
                   != (kb["criterion"][ib[pid]], kb["category"][ib[pid]]))
    return {
        "common": len(common),
        "only_a": only(set(ia) - set(ib), ka, ia),
        "only_b": only(set(ib) - set(ia), kb, ib),
        "reassigned": {"count": len(moved), "sample": [
            {"id": pid, "a": f"{ka['criterion'][ia[pid]]}/{ka['category'][ia[pid]]}",
             "b": f"{kb['criterion'][ib[pid]]}/{kb['category'][ib[pid]]}"} for pid in moved[:sample]]},
    }


def _recipe_changes(ra: dict[str, Any], rb: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Flattened recipe keys that differ: {"a": old, "b": new, "status": changed|added|removed}."""
    fa, fb = flatten(ra or {}), flatten(rb or {})
    recipe = {}
    for key in sorted(set(fa) | set(fb)):
        if key in fa and key in fb and fa[key] == fb[key]:
            continue
        status = "changed" if key in fa and key in fb else ("removed" if key in fa else "added")
        recipe[key] = {"a": fa.get(key), "b": fb.get(key), "status": status}
    return recipe


def _rejected_block(ma: dict[str, Any], ra: dict[str, list], mb: dict[str, Any], rb: dict[str, list]) -> dict:
    """Rejections per step, ingest first, then the steps in pipeline order. Rows come from every
    rejected/ part file, whatever each part's scores struct holds (see curated_set.read_columns)."""
    step_a = Counter(parse_reason(r, s)[0] for r, s in zip(ra["reason"], ra["step"]))
    step_b = Counter(parse_reason(r, s)[0] for r, s in zip(rb["reason"], rb["step"]))
    step_names = ["ingest", *(s.get("name") for s in (mb.get("steps") or ma.get("steps") or []))]
    steps = _ordered(set(step_a) | set(step_b), step_names, step_a + step_b)
    return {s: {"a": step_a.get(s, 0), "b": step_b.get(s, 0), "delta": step_b.get(s, 0) - step_a.get(s, 0)}
            for s in steps}


def diff(dir_a: Path, dir_b: Path, sample: int = 10) -> dict[str, Any]:
    """What changed from curated set A to B (JSON-serialisable, deterministic).

    Counts and shares per criterion, criterion/category and source (delta = B - A),
    rejections per step, prompts only in A / only in B by id (count and the first
    `sample` by id), prompts in both whose criterion or category changed, and recipe
    keys that differ (flattened dotted keys, {"a": old, "b": new, "status": ...}),
    plus seed, size and the source files each build skipped."""
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
        "skipped_files": _skipped_change(ma, mb),
        "criteria": _delta_block(crit_a, crit_b, ta, tb, crits),
        "categories": _delta_block(pair_a, pair_b, ta, tb, pairs),
        "sources": _delta_block(src_a, src_b, ta, tb, _ordered(set(src_a) | set(src_b), (), src_a + src_b)),
        "rejected": _rejected_block(ma, ra, mb, rb),
        "prompts": _prompts_block(ka, kb, sample),
        "recipe": _recipe_changes(ma.get("recipe"), mb.get("recipe")),
        "scores": _scores_change(ka, kb, [Path(d) for d, m in ((dir_a, ma), (dir_b, mb)) if m.get("selection")]),
    }


def _scores_change(ka: dict[str, list], kb: dict[str, list], ranked: list[Path]) -> dict:
    """Mean of each score over A's and B's kept prompts, and over the prompts only one of them kept. A prompt's
    score is looked up in both sets, and in the rejected rows of a score-ranked set (`curate mine` scores every
    prompt of its pool), so against the pool's plain balanced selection this shows how much harder mining made
    the set. (Other sets' rejected rows are not read: millions of them carry no score.)"""
    known: dict[str, dict[str, float]] = {}
    for cols in [read_columns(folder, "rejected", ("id", "scores")) for folder in ranked] + [ka, kb]:
        for pid, scores in zip(cols["id"], cols["scores"]):
            known.setdefault(pid, {}).update(_as_scores(scores))
    ids_a, ids_b = set(ka["id"]), set(kb["id"])
    groups = {"a": ids_a, "b": ids_b, "only_a": ids_a - ids_b, "only_b": ids_b - ids_a}
    out = {}
    for key in sorted({k for pid in ids_a | ids_b for k in known.get(pid, {})}):
        entry = {}
        for name, ids in groups.items():
            values = [v for p in ids if math.isfinite(v := known.get(p, {}).get(key, math.nan))]
            entry[name] = {"mean": _r(sum(values) / len(values)) if values else None, "scored": len(values),
                           "total": len(ids)}
        out[key] = entry
    return out


def _skipped_change(ma: dict[str, Any], mb: dict[str, Any]) -> dict[str, Any]:
    """Unreadable source files each build skipped: a set built from fewer files is not comparable
    row for row, so the diff says so next to the counts."""
    a, b = skipped_files(ma), skipped_files(mb)
    return {"a": len(a), "b": len(b), "only_a": sorted(set(a) - set(b)), "only_b": sorted(set(b) - set(a))}


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
    sk = d.get("skipped_files") or {"a": 0, "b": 0, "only_a": [], "only_b": []}
    if sk["a"] or sk["b"]:
        settings.append(["files skipped", _num(sk["a"]), _num(sk["b"]),
                         "changed" if sk["only_a"] or sk["only_b"] else "same"])
    parts.append(_format_table(Table("Set", ["", "A", "B", "change"], settings, "lrrr")))
    for key, label in (("only_a", "skipped only in A"), ("only_b", "skipped only in B")):
        parts[-1] += "".join(f"\n  {label}: {_clip(path, 100)}" for path in sk[key][:10])

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

    if d.get("scores"):
        rows = [[key, *(f"{_num(e[g]['mean'])} ({e[g]['scored']:,}/{e[g]['total']:,})" for g in ("a", "b", "only_a", "only_b"))]
                for key, e in d["scores"].items()]
        parts.append(_format_table(Table("Scores: mean (scored/prompts), looked up in both sets, rejected rows too",
                                         ["score", "A", "B", "only in A", "only in B"], rows, "lrrrr")))

    rows = [[k, _short(e["a"], 40), _short(e["b"], 40)] for k, e in d["recipe"].items()]
    parts.append(_format_table(Table(f"Recipe keys changed ({len(rows)})", ["key", "A", "B"], rows, "lll")))
    return "\n\n".join(parts) + "\n"
