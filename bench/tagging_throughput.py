"""Throughput of the prompt tagger (filters/lib/tagging.tag_texts), in prompts per second.

    python bench/tagging_throughput.py [--n 10000] [--runs 3] [--batch-size 1000] [--n-process 1]

Prompts: the distinct T2I-CompBench training prompts when ../shared/data is present, else the
held-out fixture (tag_texts parses a repeated text once, so repeats would flatter the number).
Prints each run's wall-clock rate and its rate per CPU-second of this process (on a shared machine
the wall-clock rate drops with the load; per CPU-second it stays near the unloaded one-core rate),
the best run, and how the time splits between spaCy and the rules.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from filters.lib.rendered_text import rendered_text_spans  # noqa: E402
from filters.lib.tag_rules import analyse  # noqa: E402
from filters.lib.tagging import load_nlp, tag_texts  # noqa: E402


def prompts(data: Path, n: int) -> tuple[list[str], str]:
    files = sorted((data / "t2i-compbench").glob("*_train.txt"))
    if files:
        pool = [line.strip() for f in files for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
        origin = "T2I-CompBench train"
    else:
        fixture = ROOT / "tests" / "fixtures" / "tagging_heldout.jsonl"
        pool = [json.loads(line)["text"] for line in fixture.read_text(encoding="utf-8").splitlines() if line.strip()]
        origin = "held-out fixture"
    return list(dict.fromkeys(pool))[:n], origin


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--model", default="en_core_web_sm")
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--n-process", type=int, default=1)
    args = parser.parse_args()

    texts, origin = prompts(args.data, args.n)
    nlp = load_nlp(args.model)
    list(nlp.pipe(texts[:500]))  # warm-up: first batches allocate
    words = sum(len(t.split()) for t in texts)
    print(f"{len(texts):,} prompts from {origin} ({words / len(texts):.1f} words each), pipeline "
          f"{'+'.join(nlp.pipe_names)}, batch_size={args.batch_size}, n_process={args.n_process}")
    rates = []
    for run in range(args.runs):
        started, cpu = time.perf_counter(), time.process_time()
        tag_texts(texts, model=args.model, batch_size=args.batch_size, n_process=args.n_process)
        rates.append(len(texts) / (time.perf_counter() - started))
        per_cpu = len(texts) / (time.process_time() - cpu)
        print(f"  run {run + 1}: {rates[-1]:,.0f} prompts/s wall-clock, {per_cpu:,.0f} per CPU-second"
              + (" (worker processes not counted)" if args.n_process > 1 else ""))
    print(f"best {max(rates):,.0f} prompts/s, median {sorted(rates)[len(rates) // 2]:,.0f}")

    started = time.perf_counter()
    docs = list(nlp.pipe(texts, batch_size=args.batch_size))
    spacy_s = time.perf_counter() - started
    started = time.perf_counter()
    for text, doc in zip(texts, docs):
        analyse(doc, rendered_text_spans(text))
    rules_s = time.perf_counter() - started
    print(f"split: spaCy {len(texts) / spacy_s:,.0f} prompts/s alone, rules {len(texts) / rules_s:,.0f} prompts/s alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
