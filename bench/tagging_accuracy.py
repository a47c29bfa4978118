"""Accuracy of the prompt tagger (filters/lib/tagging.py).

    python bench/tagging_accuracy.py [--data ../shared/data] [--model en_core_web_sm] [--errors 5]

Prints primary-category accuracy per category, overall and a confusion matrix on
  - T2I-CompBench's training prompts (<category>_train.txt: the file name is the label),
  - the held-out set written for this project (tests/fixtures/tagging_heldout.jsonl),
and rendered-text extraction: the share of CommonText prompts whose rendered_text is exactly
[the quoted span], the share of CompBench prompts with any rendered_text (should be ~0), and exact
matches on the held-out text-rendering prompts. Skips (exit 0) what is absent.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.records import CATEGORIES  # noqa: E402
from filters.lib.tagging import tag_texts  # noqa: E402

HELDOUT = ROOT / "tests" / "fixtures" / "tagging_heldout.jsonl"
COMPBENCH = ("color", "shape", "texture", "spatial", "3d_spatial", "non_spatial", "numeracy", "complex")


def report(title: str, texts: list[str], labels: list[str], rows: list[dict], errors: int) -> float:
    predicted = [r["category"] for r in rows]
    names = [c for c in CATEGORIES if c in set(labels) | set(predicted)]
    confusion = Counter(zip(labels, predicted))
    correct = sum(confusion[c, c] for c in names)
    print(f"\n== {title}: {len(texts)} prompts, primary-category accuracy {correct / len(texts):.3f}")
    for name in names:
        n = sum(1 for label in labels if label == name)
        if n:
            print(f"  {name:15s} {confusion[name, name] / n:.3f}  ({confusion[name, name]}/{n})")
    short = {c: c[:6] for c in names}
    print("  confusion (rows: label, columns: predicted)")
    print("  " + " " * 15 + " ".join(f"{short[c]:>6s}" for c in names))
    for label in names:
        if any(confusion[label, p] for p in names):
            print(f"  {label:15s}" + " ".join(f"{confusion[label, p]:6d}" for p in names))
    if errors:
        shown = Counter()
        for text, label, row in zip(texts, labels, rows):
            if label != row["category"] and shown[label] < errors:
                shown[label] += 1
                print(f"    [{label} -> {row['category']}] {text}  tags={row['tags']}")
    return correct / len(texts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--model", default="en_core_web_sm")
    parser.add_argument("--errors", type=int, default=0, help="print up to N misclassified prompts per label")
    args = parser.parse_args()

    heldout = [json.loads(line) for line in HELDOUT.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = tag_texts([h["text"] for h in heldout], model=args.model)
    report("held-out (tests/fixtures)", [h["text"] for h in heldout], [h["category"] for h in heldout], rows,
           args.errors)
    rendered = [(h, r) for h, r in zip(heldout, rows) if h["category"] == "text_rendering"]
    exact = sum(h["rendered_text"] == r["rendered_text"] for h, r in rendered)
    false = sum(bool(r["rendered_text"]) for h, r in zip(heldout, rows) if h["category"] != "text_rendering")
    print(f"  rendered_text exact on its text prompts: {exact}/{len(rendered)}; "
          f"non-empty on the others: {false}/{len(heldout) - len(rendered)}")

    bench = args.data / "t2i-compbench"
    if not bench.exists():
        print(f"\n{bench} is absent: skipping the CompBench and CommonText checks")
        return 0
    texts, labels = [], []
    for name in COMPBENCH:
        lines = [x.strip() for x in (bench / f"{name}_train.txt").read_text(encoding="utf-8").splitlines()]
        texts += [x for x in lines if x]
        labels += [name] * sum(1 for x in lines if x)
    started = time.perf_counter()
    rows = tag_texts(texts, model=args.model)
    seconds = time.perf_counter() - started
    report("T2I-CompBench train", texts, labels, rows, args.errors)
    print(f"  non-empty rendered_text: {sum(bool(r['rendered_text']) for r in rows) / len(rows):.4f} "
          f"({sum(bool(r['rendered_text']) for r in rows)}/{len(rows)}); {len(rows) / seconds:.0f} prompts/s")

    commontext = args.data / "commontext" / "train.json"
    if commontext.exists():
        prompts = json.loads(commontext.read_text(encoding="utf-8"))
        from filters.lib.rendered_text import extract_rendered_text

        # The reference span: everything between the first and the last straight quote.
        expected = [[m.group(1)] if (m := re.search(r"'(.*)'", p)) else [] for p in prompts]
        hits = sum(extract_rendered_text(p) == e for p, e in zip(prompts, expected))
        print(f"\n== CommonText: rendered_text == [quoted span] for {hits / len(prompts):.4f} ({hits}/{len(prompts)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
