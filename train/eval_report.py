"""How `train eval` shows its report: the text table, and the self-contained HTML report (`--html`: the
conventions of `curate inspect --html`: inline CSS, images as base64 PNG, no scripts, no external URLs,
every prompt escaped; an unwritable path is a one-line error before anything is computed)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from curate.report_html import check_html_path, write_report_text

# (report key, table header, format): the table's columns, in order
COLUMNS = (("gap", "gap", "{:.4f}"), ("clip_score", "clip", "{:.2f}"), ("image_similarity", "img-sim", "{:.4f}"),
           ("ocr_word_accuracy", "ocr-word", "{:.3f}"), ("ocr_edit_score", "ocr-edit", "{:.3f}"),
           ("ocr_exact", "ocr-exact", "{:.3f}"), ("fid_teacher", "FID(T)", "{:.2f}"), ("kid_teacher", "KID(T)", "{:.4f}"),
           ("fid_reference", "FID(ref)", "{:.2f}"), ("kid_reference", "KID(ref)", "{:.4f}"))
HTML_CELL_PX = 160  # images are shown at least this wide (the tiny teachers draw 32 px), pixels kept sharp


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): one row per (scope, model), "overall" first, then each category. Columns no row
    has a value for (a metric that was skipped) are left out."""
    models = report["models"]
    scopes = ["overall", *report["categories"]]
    shown = [c for c in COLUMNS if any((m["overall"] if s == "overall" else m["per_category"].get(s, {})).get(c[0])
                                       is not None for m in models for s in scopes)]
    rows = []
    for scope in scopes:
        for m in models:
            values = m["overall"] if scope == "overall" else m["per_category"].get(scope, {})
            rows.append([scope, m["name"], str(values.get("num_images", 0)), *(_cell(values.get(k), f) for k, _, f in shown)])
    return ["category", "model", "images", *(h for _, h, _ in shown)], rows


def format_table(report: dict[str, Any]) -> str:
    """The report as aligned text: a settings line, the table, then what each metric used or why it was skipped."""
    s = report["settings"]
    lines = [f"teacher {report['teacher']}  data {report['data']}: gap on {s['gap_prompts']} prompts, images of "
             f"{s['image_prompts']} ({s['text_prompts']} with text), {s['steps']} steps, seed {s['seed']}, "
             f"{s['resolution']} px, {s['max_sequence_length']} tokens"]
    headers, rows = table_rows(report)
    widths = [max(len(x) for x in column) for column in zip(headers, *rows)]
    for row in [headers, *rows]:
        lines.append("  ".join(x.ljust(w) if i < 2 else x.rjust(w) for i, (x, w) in enumerate(zip(row, widths))).rstrip())
    lines += [f"{name}: {note_line(info)}" for name, info in report["metrics"].items()]
    lines += [f"training overlap, {name}: {line}" for name, line in overlap_lines(report)]
    return "\n".join(lines)


def overlap_lines(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(student, how many held-out prompts it was trained on) for each student row."""
    out = []
    for m in report["models"]:
        found = m.get("training_overlap")
        if found is None:
            continue
        if not found["checked"]:
            out.append((m["name"], f"not checked: {found['note']}"))
        else:
            kinds = ", ".join(f"{k} {n}" for k, n in found["by_kind"].items())
            out.append((m["name"], f"{found['overlapping']} of {found['prompts']} held-out prompts"
                                   + (f" ({kinds})" if kinds else "")))
    return out


def note_line(info: dict[str, Any]) -> str:
    """A metric's note when skipped, else what it used."""
    if info.get("note"):
        return info["note"]
    used = [f"{k} {v}" for k, v in info.items() if k != "note" and v is not None]
    return "; ".join(used)


# ---- HTML -----------------------------------------------------------------------------------------

_CSS = """
body { margin:0; font:14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color:#1f2328; }
main { max-width:1400px; margin:0 auto; padding:24px 28px 48px; }
h1 { font-size:22px; margin:0 0 4px; } h2 { font-size:17px; margin:28px 0 10px; border-bottom:1px solid #d1d9e0; }
.meta, .note, figcaption { color:#59636e; font-size:12px; }
table { border-collapse:collapse; font-size:13px; }
th, td { padding:3px 10px; border-bottom:1px solid #d1d9e0; vertical-align:top; }
th { text-align:left; background:#f6f8fa; } td.r { text-align:right; font-variant-numeric:tabular-nums; }
.scroll { overflow-x:auto; }
img { image-rendering:pixelated; border:1px solid #d1d9e0; display:block; }
figure { margin:0; } td.prompt { max-width:260px; white-space:normal; }
"""


def _png(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(image: Any, alt: str, caption: str | None) -> str:
    width = max(HTML_CELL_PX, image.size[0])
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption is not None else ""
    return (f'<figure><img alt="{html.escape(alt)}" width="{width}" '
            f'src="data:image/png;base64,{_png(image)}">{cap}</figure>')


def _metric_table(report: dict[str, Any]) -> str:
    headers, rows = table_rows(report)
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td{"" if i < 2 else " class=r"}>{e(x)}</td>' for i, x in enumerate(row)) + "</tr>"
                   for row in rows)
    notes = "".join(f"<li><b>{e(name)}</b>: {e(note_line(info))}</li>" for name, info in report["metrics"].items())
    notes += "".join(f"<li><b>training overlap, {e(name)}</b>: {e(line)}</li>" for name, line in overlap_lines(report))
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div><ul class="note">{notes}</ul>'


def _grids(report: dict[str, Any], prompts: list[dict[str, Any]], images: dict[str, list[Any]]) -> list[str]:
    """Per category, one row per drawn prompt: its text, then each model's image, with the OCR reading
    under the image when the prompt asks for text."""
    e = html.escape
    names = [m["name"] for m in report["models"]]
    readings = {m["name"]: {r["index"]: r["reading"] for r in m["ocr_readings"]} for m in report["models"]}
    out = []
    for cat in sorted({p["category"] for p in prompts}):
        rows = []
        for i, p in enumerate(prompts):
            if p["category"] != cat:
                continue
            want = f'<br><span class="note">text: {e(" | ".join(p["rendered_text"]))}</span>' if p["rendered_text"] else ""
            cells = "".join(f"<td>{_figure(images[n][i], n + ': ' + p['text'], _reading(readings[n], i))}</td>" for n in names)
            rows.append(f'<tr><td class="prompt">{e(p["text"])}{want}</td>{cells}</tr>')
        head = "".join(f"<th>{e(n)}</th>" for n in names)
        out.append(f'<h3>{e(cat)}</h3><div class="scroll"><table><thead><tr><th>prompt</th>{head}</tr></thead>'
                   f'<tbody>{"".join(rows)}</tbody></table></div>')
    return out


def _reading(readings: dict[int, str], index: int) -> str | None:
    if index not in readings:
        return None
    return f"OCR: {readings[index]}" if readings[index] else "OCR: (nothing read)"


def write_eval_html(report: dict[str, Any], prompts: list[dict[str, Any]], images: dict[str, list[Any]],
                    path: str | Path) -> Path:
    """Write the report (metric table, notes, per-category image grids) as one HTML file; returns its path."""
    path = check_html_path(Path(path))
    e = html.escape
    s = report["settings"]
    title = f"train eval: {len(report['models']) - 1} student(s) against {report['teacher']}"
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
           "style-src 'unsafe-inline'\">",
           f"<title>{e(title)}</title><style>{_CSS}</style></head><body><main>", f"<h1>{e(title)}</h1>",
           f'<p class="meta">data {e(str(report["data"]))} &middot; {s["steps"]} steps, seed {s["seed"]}, '
           f'{s["resolution"]} px, guidance {s["guidance"]}, {s["max_sequence_length"]} tokens</p>',
           "<h2>Metrics</h2>", _metric_table(report), "<h2>Images (teacher | students, same noise)</h2>"]
    out += _grids(report, prompts, images) if prompts else ['<p class="note">No images drawn.</p>']
    out.append("</main></body></html>\n")
    write_report_text(path, "\n".join(out))
    return path
