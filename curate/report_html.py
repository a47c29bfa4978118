"""`curate inspect --html`: one self-contained HTML report of a curated set (tables, embedded PNG plots,
no scripts, no external URLs; everything user-supplied is escaped)."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

import numpy as np

from core.fileio import atomic_write_text
from curate.curated_set import CuratedSetError, is_curated_set, read_columns
from curate.report import MAX_MAP_POINTS, Embedder, ReportError, Table, _header_lines, _pct, _tables, scaling_note

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
/* headers may wrap: the widest tables then still fit their grid cell without a scroll bar */
th { text-align:left; background:var(--soft); font-weight:600; white-space:normal; vertical-align:bottom; }
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


def _html_table(t: Table) -> str:
    e = html.escape
    head = "".join(f'<th class="{a}">{e(h)}</th>' for h, a in zip(t.headers, t.align))
    body = []
    for row in t.rows:
        cls = ' class="total"' if row and row[0] == "total" else ""
        body.append(f"<tr{cls}>" + "".join(f'<td class="{a}">{e(c)}</td>' for c, a in zip(row, t.align)) + "</tr>")
    if not t.rows:
        body.append(f'<tr><td colspan="{len(t.headers)}" class="note">none</td></tr>')
    title = f"<h3>{e(t.title)}</h3>"
    note = f'<p class="note">{e(t.note)}</p>' if t.note else ""
    table = f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    return f'{title}<div class="scroll">{table}</div>{note}'


def _img(png: bytes, alt: str, caption: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'


def _default_embedder() -> tuple[Any, str]:
    try:
        from core.paths import cache_dir
        from filters.lib.embed import build_embedder

        emb = build_embedder(cache_dir=cache_dir(), progress=False)  # `curate build` has embedded these texts
        return emb, str(getattr(emb, "name", "") or "filters.lib.embed default")
    except Exception as exc:  # missing module or weights: the map still renders, labelled as such
        from curate.plots import HashingEmbedder

        return HashingEmbedder(), f"hashed n-grams (no embedding model: {type(exc).__name__})"


def embedding_points(dir: Path, embedder: Embedder | None = None,
                     max_points: int = MAX_MAP_POINTS) -> tuple[np.ndarray, list[str], np.ndarray, str]:
    """PCA coordinates for the embedding map: (coords (n, 2), criteria, explained, embedder label).

    Takes the first `max_points` kept records by id (ids are hashes: a reproducible
    uniform sample). With no `embedder`, uses `filters.lib.embed.build_embedder()`, falling
    back to `plots.HashingEmbedder` when that cannot load or encode."""
    from curate.plots import HashingEmbedder, pca_2d

    try:
        cols = read_columns(dir, "data", ("id", "text", "criterion"))
    except CuratedSetError as exc:
        raise ReportError(str(exc)) from None
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


def check_html_path(path: Path) -> Path:
    """`path` if an HTML report can be written there, else ReportError in one line that names it and
    says what to do. Called before any plotting, so a bad `--html` fails at once, not after the map.

    A folder is refused rather than written into: `--html out` next to `curate inspect out` would put
    report.html inside the curated set, and `curate build --output out` then refuses to replace it."""
    path = Path(path)
    if path.is_dir():
        raise ReportError(f"--html {path}: is a folder; give the report's file name, e.g. --html {path / 'report.html'}"
                          if not is_curated_set(path) else
                          f"--html {path}: is a curated set's folder; give a file name outside it, "
                          f"e.g. --html {path.parent / (path.name + '.html')}")
    for parent in path.parents:  # the nearest existing ancestor must be a folder we can write into
        if parent.exists():
            if not parent.is_dir():
                raise ReportError(f"--html {path}: {parent} is a file, not a folder; choose another path")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ReportError(f"--html {path}: cannot write into {parent} (permission denied); "
                                  "choose a writable location")
            break
    return path


def write_report_text(path: Path, text: str) -> None:
    """Write atomically; an OSError becomes one line naming `path` (its strerror only, never the
    temporary file's name that the bare exception carries)."""
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        why = (exc.strerror or type(exc).__name__).lower()
        raise ReportError(f"--html {path}: cannot write the report ({why}); choose a writable file path") from exc


def _head(summary: dict[str, Any]) -> list[str]:
    """Document head, title, header line, key figures and the shortfall box."""
    e = html.escape
    m = summary["manifest"]
    title = f"Curated set: {m['recipe_name'] or Path(summary['dir']).name}"
    out = [
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
    kpis = [(f"{summary['total']:,}", "kept prompts")]
    if m.get("scaled"):  # both sizes, labelled, so the kept count is not read against the recipe's
        kpis += [(f"{m['planned_size']:,}", "planned size (scaled)"), (f"{m['size']:,}", "recipe size")]
    kpis.append((f"{summary['rejected']['total']:,}", "rejected"))
    kpis += [(_pct(c["share"]), f"{name} ({c['count']:,})") for name, c in summary["criteria"].items()]
    out.append('<div class="kpis">' + "".join(f"<div class=\"kpi\"><b>{e(a)}</b><span>{e(b)}</span></div>"
                                                for a, b in kpis) + "</div>")
    note = scaling_note(m)
    if m["shortfalls"] or note:
        items = "".join(f"<li>{e(s)}</li>" for s in m["shortfalls"])
        out.append(f'<div class="warn"><b>Shortfalls</b><ul>{items}</ul>'
                   + (f"<p>{e(note)}</p>" if note else "") + "</div>")
    return out


def _mixture_section(summary: dict[str, Any], tables: dict[str, Table]) -> list[str]:
    """Criteria and categories: counts, their targets (table and plot), and the sources."""
    from curate import plots

    out = ['<h2 id="mixture">Mixture and targets</h2><div class="grid">',
           f"<div>{_html_table(tables['criteria'])}{_html_table(tables['sources'])}</div>"]
    target_png = plots.targets_plot(summary)
    if target_png:
        out.append(_img(target_png, "kept against targets: criterion split and every quota",
                        "top: kept shares over the recipe's fractions; bottom: each quota's kept count "
                        "as a share of its target"))
    else:
        out.append('<p class="note">No targets recorded in this set (no quotas in its manifest).</p>')
    out.append("</div>")
    out.append('<div class="grid">' + f"<div>{_html_table(tables['categories'])}</div>")
    out.append(_img(plots.category_bars(summary), "prompts per category by criterion") + "</div>")
    return out


def _pipeline_section(summary: dict[str, Any], tables: dict[str, Table]) -> list[str]:
    e = html.escape
    out = ['<h2 id="pipeline">Pipeline and rejections</h2><div class="grid">',
           "<div>" + "".join(_html_table(tables[k]) for k in ("inputs", "steps") if k in tables) + "</div>",
           f"<div>{_html_table(tables['rejected'])}</div></div>"]
    rej_ex = summary["rejected"]["examples"]
    if rej_ex:
        items = []
        for key, recs in rej_ex.items():
            lis = "".join(f'<li>{e(r["text"])}<br><span class="reason">{e(r["reason"])}</span></li>' for r in recs)
            items.append(f"<div><h3>{e(key)}</h3><ul class=\"ex\">{lis}</ul></div>")
        out.append(f'<details><summary>Rejected examples (first by id)</summary><div class="cols">{"".join(items)}'
                   "</div></details>")
    return out


def _scores_section(summary: dict[str, Any], tables: dict[str, Table]) -> list[str]:
    """Score histograms (without length, drawn once below) and the one length histogram."""
    from curate import plots

    out = ['<h2 id="scores">Scores and length</h2>']
    score_png = plots.score_histograms(summary)
    if score_png:
        out.append(_img(score_png, "score histograms", "stacked by criterion"))
    elif not summary["scores"]:
        out.append('<p class="note">No scores recorded in this set.</p>')
    if "scores" in tables:
        out.append(_html_table(tables["scores"]))
    out.append('<div class="grid">')
    out.append(_img(plots.length_histogram(summary), "prompt length histogram"))
    out.append(f"<div>{_html_table(tables['length'])}</div></div>")
    return out


def _map_section(dir: Path, tables: dict[str, Table], embedder: Embedder | None, max_points: int) -> list[str]:
    from curate import plots

    out = ['<h2 id="map">Embedding map and clusters</h2><div class="grid">']
    coords, labels, explained, label = embedding_points(Path(dir), embedder, max_points)
    caption = f"PCA of {len(labels):,} prompts (first by id), embedder: {label}"
    out.append(_img(plots.embedding_map(coords, labels, explained, "Text embeddings, PCA"), "embedding map", caption))
    if "clusters" in tables:
        out.append(f"<div>{_html_table(tables['clusters'])}</div>")
    else:
        out.append('<p class="note">No cluster ids recorded in this set.</p>')
    out.append("</div>")
    return out


def _examples_section(summary: dict[str, Any]) -> list[str]:
    e = html.escape
    out = ['<h2 id="examples">Examples (first by id)</h2><div class="cols">']
    for crit, cats in summary["examples"].items():
        for cat, items in cats.items():
            lis = "".join(f'<li>{e(it["text"])} <span class="id">{e(str(it["id"]))}</span></li>' for it in items)
            out.append(f"<div><h3>{e(crit)} / {e(cat)}</h3><ul class=\"ex\">{lis}</ul></div>")
    out.append("</div>")
    versions = ", ".join(f"{k} {v}" for k, v in sorted(summary["manifest"]["versions"].items()))
    if versions:
        out.append(f'<p class="note" style="margin-top:28px">Built with {e(versions)}.</p>')
    return out


def write_html(dir: Path, summary: dict[str, Any], path: Path, embedder: Embedder | None = None,
               max_points: int = MAX_MAP_POINTS) -> Path:
    """Write one self-contained HTML report (inline CSS, plots as PNG data URIs, no
    scripts, no external references; all prompt text escaped). Returns `path`.

    `path` must be a file path: a folder or an unwritable place is a ReportError naming it
    (see `check_html_path`), raised before anything is computed."""
    path = check_html_path(path)
    tables = _tables(summary)
    out = [*_head(summary), *_mixture_section(summary, tables), *_pipeline_section(summary, tables),
           *_scores_section(summary, tables), *_map_section(dir, tables, embedder, max_points),
           *_examples_section(summary), "</main></body></html>\n"]
    write_report_text(path, "\n".join(out))
    return path
