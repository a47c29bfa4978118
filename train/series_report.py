"""The scaling report of `train series`: one row per student (size, serving costs, quality), the pick,
and a plot of quality against size.

    scaling.json   everything, machine-readable
    scaling.md     the tables and the recommendation
    scaling.png    held-out gap against parameters, the tolerance band and the pick marked

Quality is the held-out conditioning gap (lower is better): the evaluation suite's when the series ran
one (--eval-data, with its image metrics beside it), else each run's final validation, which every
student of a series takes on the same held-out prompts. The pick is the smallest student (fewest
parameters) whose gap is within `tolerance` of the best: gap <= best * (1 + tolerance).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.fileio import atomic_write_bytes, atomic_write_text

REPORT_FILES = ("scaling.json", "scaling.md", "scaling.png")
IMAGE_METRICS = ("clip_score", "image_similarity", "ocr_word_accuracy", "fid_teacher")


def build_report(rows: list[dict[str, Any]], tolerance: float, suite: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rows of train/series.py (label, preset, run, summary, footprint) -> the report dict."""
    suite_rows = {m["name"]: m for m in (suite or {}).get("models", [])}
    students = []
    for row in rows:
        summary, footprint = row["summary"], row["footprint"]
        scored = suite_rows.get(row["run"])
        if scored is not None:
            gap, per_category = scored["overall"]["gap"], {c: v["gap"] for c, v in scored["per_category"].items()}
        else:
            gap, per_category = summary["gap_final"], summary["gap_final_per_category"]
        students.append({
            "label": row["label"], "preset": row["preset"], "sets": row["sets"], "run": row["run"],
            "steps": summary["steps"], "parameters": footprint["parameters"],
            "encoder_parameters": footprint["encoder_parameters"], "disk_bytes": footprint["disk_bytes"],
            "bf16_bytes": footprint["bf16_bytes"], "shape": footprint["shape"], "encode": footprint["encode"],
            "gap_initial": summary["gap_initial"], "gap": gap, "gap_per_category": per_category,
            "metrics": {k: scored["overall"].get(k) for k in IMAGE_METRICS} if scored else None,
        })
    return {"quality": "eval" if suite else "validation", "students": students,
            "teacher_gap": suite["models"][0]["overall"]["gap"] if suite else None,
            "recommendation": recommend(students, tolerance)}


def recommend(students: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """The smallest student whose gap is within `tolerance` (a fraction) of the best gap."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    scored = [s for s in students if s["gap"] is not None]
    if not scored:
        return {"pick": None, "tolerance": tolerance, "why": "no student has a gap"}
    best = min(scored, key=lambda s: (s["gap"], s["parameters"], s["label"]))
    threshold = best["gap"] * (1 + tolerance)
    within = [s for s in scored if s["gap"] <= threshold]
    pick = min(within, key=lambda s: (s["parameters"], s["gap"], s["label"]))
    ratio = pick["parameters"] / best["parameters"]
    why = (f"{pick['label']}: gap {pick['gap']:.4g} is within {tolerance:.0%} of the best ({best['label']}, "
           f"{best['gap']:.4g}; threshold {threshold:.4g}) with {_millions(pick['parameters'])} parameters "
           f"({ratio:.0%} of the best's)")
    return {"pick": pick["label"], "best": best["label"], "best_gap": best["gap"], "threshold": threshold,
            "tolerance": tolerance, "within": sorted(s["label"] for s in within), "why": why}


def _millions(n: int) -> str:
    return f"{n / 1e6:,.1f} M" if n >= 1e5 else f"{n:,}"


def _encode_cells(encode: dict[str, Any], modes: list[str], length: str) -> list[str]:
    from train.footprint import human_bytes

    cells = []
    for mode in modes:
        found = encode.get(mode, {})
        at = found.get("lengths", {}).get(length)
        if at is None:
            cells += ["-", "-"]
            continue
        cells += [f"{at['ms']:.2f}", "-" if at["peak_mib"] is None else human_bytes(at["peak_mib"] * 2**20)]
    return cells


def markdown(report: dict[str, Any]) -> str:
    """The tables (size and costs, then the gap per category) and the recommendation."""
    from train.footprint import human_bytes  # imports torch: not at the top, which `train series` reads first

    students = report["students"]
    modes = sorted({m for s in students for m in s["encode"]}, key=lambda m: (m.startswith("cuda"), m.endswith("compiled")))
    lengths = sorted({length for s in students for e in s["encode"].values() for length in e.get("lengths", {})}, key=int)
    rec = report["recommendation"]
    source = "the evaluation suite (--eval-data)" if report["quality"] == "eval" else "each run's final validation"
    lines = ["# Scaling report", "", f"Quality: held-out conditioning gap (lower is better), from {source}.",
             f"**Recommendation** (tolerance {rec['tolerance']:.0%}): {rec['why']}.", "", "![gap vs size](scaling.png)", ""]
    head = ["student", "layers x d_model", "parameters", "bf16", "on disk", "gap"]
    for length in lengths:
        for mode in modes:
            head += [f"{mode} ms @{length}", f"{mode} peak @{length}"]
    lines += [_row(head), _row(["---"] * len(head))]
    for s in students:
        shape = f"{s['shape']['num_layers']} x {s['shape']['d_model']}"
        cells = [s["label"] + (" **(pick)**" if s["label"] == rec["pick"] else ""), shape, _millions(s["parameters"]),
                 human_bytes(s["bf16_bytes"]), human_bytes(s["disk_bytes"]), f"{s['gap']:.4g}"]
        for length in lengths:
            cells += _encode_cells(s["encode"], modes, length)
        lines.append(_row(cells))
    categories = sorted({c for s in students for c in s["gap_per_category"]})
    lines += ["", "Gap per category:", "", _row(["student", *categories]), _row(["---"] * (len(categories) + 1))]
    lines += [_row([s["label"], *(_gap_cell(s["gap_per_category"].get(c)) for c in categories)]) for s in students]
    if any(s["metrics"] for s in students):
        lines += ["", "Image metrics (evaluation suite, overall):", "", _row(["student", *IMAGE_METRICS]),
                  _row(["---"] * (len(IMAGE_METRICS) + 1))]
        lines += [_row([s["label"], *(_gap_cell((s["metrics"] or {}).get(m)) for m in IMAGE_METRICS)]) for s in students]
    dtypes = {mode: e["dtype"] for s in students for mode, e in s["encode"].items() if "dtype" in e}
    threads = {e.get("threads") for s in students for e in s["encode"].values() if e.get("threads")}
    if dtypes:
        lines += ["", "Encodes: one prompt (batch 1), median of 5 after warm-up; "
                  + ", ".join(f"{mode} in {dtype}" for mode, dtype in sorted(dtypes.items()))
                  + (f"; CPU on {', '.join(map(str, sorted(threads)))} thread(s)" if threads else "")
                  + ". Peak = weights + what an encode adds."]
    return "\n".join(lines) + "\n"


def _gap_cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def plot_png(report: dict[str, Any]) -> bytes:
    """Gap against parameters (log scale), each student labelled, the tolerance band shaded, the pick ringed."""
    from curate.plots import new_figure, png_bytes, style_axes

    students = [s for s in report["students"] if s["gap"] is not None]
    rec = report["recommendation"]
    fig = new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    xs, ys = [s["parameters"] for s in students], [s["gap"] for s in students]
    ax.plot(xs, ys, "o-", color="#4C72B0")
    for s, x, y in zip(students, xs, ys):
        ax.annotate(s["label"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        if s["label"] == rec.get("pick"):
            ax.plot([x], [y], "o", markersize=14, markerfacecolor="none", markeredgecolor="#DD8452", markeredgewidth=2)
    if rec.get("pick"):
        ax.axhspan(rec["best_gap"], rec["threshold"], color="#55A868", alpha=0.15,
                   label=f"within {rec['tolerance']:.0%} of the best")
        ax.legend(fontsize=8, frameon=False)
    ax.set_xscale("log")
    ax.set_xlabel("student parameters", fontsize=9)
    ax.set_ylabel("held-out conditioning gap", fontsize=9)
    style_axes(ax)
    return png_bytes(fig)


def write_report(report: dict[str, Any], output: Path) -> None:
    as_json, as_md, as_png = REPORT_FILES
    atomic_write_text(output / as_json, json.dumps(report, indent=2) + "\n")
    atomic_write_bytes(output / as_png, plot_png(report))
    atomic_write_text(output / as_md, markdown(report))
