"""How well the OCR engine behind the text-rendering metric (train/metrics/ocr.py) reads words drawn with
known fonts: its ceiling, before any generated image is scored.

    python bench/ocr_calibration.py [--engine rapidocr] [--seed 0] [--full] [--threads N] [--errors 5] [--json out.json]

Draws WORDS (106 common words of mixed length, with numbers and capitalised words) in the TrueType fonts
matplotlib ships (DejaVu Sans, Serif and Sans Mono, regular and bold) at SIZES px, under four conditions:
  clean      black on white
  dark       light text on a dark background
  noisy      dark text on a grey gradient with Gaussian pixel noise
  distorted  clean, then rotated by up to +-5 degrees and blurred
Each word sits on a canvas padded by one font size on every side. By default each word is drawn once per
size and condition, the font cycling through the six (1,272 images); --full draws every font too (7,632).
A word counts when the metric's `exact` is 1 for it (case and punctuation aside; extra text allowed), and
`verbatim` when the reading is the word, character for character. Seeded: the same seed draws the same images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train.metrics.ocr import OCR_ENGINES, load_ocr, text_rendering_scores  # noqa: E402

WORDS = (
    "a go up at on it the and cat dog sun red big box sky tea map key fox owl "
    "open sale cafe shop book time love home rain star moon bird tree fish cake milk gold blue park city "
    "bakery garden summer winter market street coffee pizza hotel music dream happy ocean river "
    "forest planet garage ticket window sunset candle bridge family "
    "welcome library kitchen freedom holiday mountain festival adventure chocolate restaurant "
    "pharmacy breakfast newspaper university basketball celebration imagination "
    "Paris London Tokyo Berlin Monday October Einstein Amazon NASA STOP EXIT HOTEL SALE "
    "2024 1999 24 7 100 365 3.14 50% $9.99 "
    "don't e-mail Coca-Cola OK"
).split()
FONTS = {
    "sans": "DejaVuSans.ttf",
    "sans-bold": "DejaVuSans-Bold.ttf",
    "serif": "DejaVuSerif.ttf",
    "serif-bold": "DejaVuSerif-Bold.ttf",
    "mono": "DejaVuSansMono.ttf",
    "mono-bold": "DejaVuSansMono-Bold.ttf",
}
FONT_FOLDER = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf"
SIZES = (24, 40, 64)
CONDITIONS = ("clean", "dark", "noisy", "distorted")


def draw_word(word: str, font_file: str, size: int, condition: str, rng: np.random.Generator) -> Image.Image:
    font = ImageFont.truetype(str(FONT_FOLDER / font_file), size)
    left, top, right, bottom = font.getbbox(word)
    width, height = right - left + 2 * size, bottom - top + 2 * size
    ink, paper = ((235, 235, 235), (25, 25, 35)) if condition == "dark" else ((0, 0, 0), (255, 255, 255))
    image = Image.new("RGB", (width, height), paper)
    if condition == "noisy":
        image = Image.fromarray(noisy_background(width, height, rng))
    ImageDraw.Draw(image).text((size - left, size - top), word, font=font, fill=ink)
    if condition == "distorted":
        angle = float(rng.uniform(-5, 5))
        image = image.rotate(angle, resample=Image.BICUBIC, expand=True, fillcolor=paper)
        image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.6, 1.2))))
    return image


def noisy_background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A light grey left-to-right gradient (250 to 170) with Gaussian noise (sigma 18)."""
    gradient = np.linspace(250, 170, width)[None, :, None].repeat(height, 0).repeat(3, 2)
    return np.clip(gradient + rng.normal(0, 18, gradient.shape), 0, 255).astype(np.uint8)


def cases(full: bool) -> list[tuple[str, str, int, str]]:
    """(condition, font name, size, word) for every image, in a fixed order."""
    fonts = list(FONTS)
    out = []
    for condition in CONDITIONS:
        for s, size in enumerate(SIZES):
            for w, word in enumerate(WORDS):
                chosen = fonts if full else [fonts[(w + s) % len(fonts)]]  # cycle: every font meets every size
                out += [(condition, font, size, word) for font in chosen]
    return out


def run(engine, seed: int, full: bool) -> list[dict]:
    results = []
    for index, (condition, font, size, word) in enumerate(cases(full)):
        rng = np.random.default_rng([seed, index])  # per image: a case draws the same whatever runs before it
        reading = engine.read(draw_word(word, FONTS[font], size, condition, rng))
        exact = text_rendering_scores(reading, [word])["exact"]
        results.append({"condition": condition, "font": font, "size": size, "word": word, "reading": reading,
                        "exact": exact, "verbatim": float(reading == word)})
    return results


def summarise(results: list[dict]) -> dict:
    """Exact and verbatim accuracy per condition, per condition x size, per condition x font, and overall."""
    groups = defaultdict(list)
    for r in results:
        for key in ("all", r["condition"], (r["condition"], r["size"]), (r["condition"], r["font"])):
            groups[key].append(r)

    def rate(rows: list[dict], field: str = "exact") -> float:
        return sum(r[field] for r in rows) / len(rows)

    summary = {"overall": {"exact": rate(groups["all"]), "verbatim": rate(groups["all"], "verbatim"),
                           "n": len(groups["all"])}}
    for condition in CONDITIONS:
        rows = groups[condition]
        summary[condition] = {
            "exact": rate(rows), "verbatim": rate(rows, "verbatim"), "n": len(rows),
            "by_size": {size: rate(groups[condition, size]) for size in SIZES},
            "by_font": {font: rate(groups[condition, font]) for font in FONTS},
        }
    return summary


def print_tables(summary: dict) -> None:
    sizes = " | ".join(f"{s} px" for s in SIZES)
    print(f"| condition | n | exact | verbatim | {sizes} |\n|---|---|---|---|{'---|' * len(SIZES)}")
    for condition in CONDITIONS:
        row = summary[condition]
        by_size = " | ".join(f"{row['by_size'][s]:.3f}" for s in SIZES)
        print(f"| {condition} | {row['n']} | {row['exact']:.3f} | {row['verbatim']:.3f} | {by_size} |")
    total = summary["overall"]
    print(f"| **all** | {total['n']} | {total['exact']:.3f} | {total['verbatim']:.3f} |{' |' * len(SIZES)}")
    print(f"\n| condition | {' | '.join(FONTS)} |\n|---|{'---|' * len(FONTS)}")
    for condition in CONDITIONS:
        by_font = summary[condition]["by_font"]
        print(f"| {condition} | {' | '.join(f'{by_font[f]:.3f}' for f in FONTS)} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", default="rapidocr", choices=sorted(OCR_ENGINES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full", action="store_true", help="every font at every size (6x the images)")
    parser.add_argument("--threads", type=int, default=None, help="the engine's intra-op threads (rapidocr)")
    parser.add_argument("--errors", type=int, default=5, help="print up to N misreads per condition")
    parser.add_argument("--json", type=Path, help="also write the summary and every misread here")
    args = parser.parse_args()

    if args.threads is not None:
        engine, note = OCR_ENGINES[args.engine](intra_op_num_threads=args.threads), ""
    else:
        engine, note = load_ocr(args.engine)
    if engine is None:
        print(note, file=sys.stderr)
        return 1
    started = time.perf_counter()
    results = run(engine, args.seed, args.full)
    seconds = time.perf_counter() - started
    summary = summarise(results)
    print(f"{args.engine}: {len(WORDS)} words, fonts {', '.join(FONTS.values())}, sizes {SIZES} px, seed "
          f"{args.seed}{', full grid' if args.full else ''}; {len(results)} images in {seconds:.0f} s\n")
    print_tables(summary)
    misreads = [r for r in results if not r["exact"]]
    for condition in CONDITIONS:
        shown = [r for r in misreads if r["condition"] == condition][: args.errors]
        for r in shown:
            print(f"  [{condition}, {r['font']}, {r['size']} px] {r['word']!r} read as {r['reading']!r}")
    if args.json:
        args.json.write_text(json.dumps({"engine": args.engine, "seed": args.seed, "full": args.full,
                                         "seconds": seconds, "summary": summary, "misreads": misreads}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
