"""The text-rendering metric: read each generated image with an OCR engine and compare the reading with the
words the prompt asked for (a prompt's `rendered_text`).

Per image, with both sides normalised alike (NFKC, case-folded, punctuation removed, split on spaces):
  word_accuracy  the share of expected words found in the reading, each reading word used at most once;
                 OCR engines drop the space between words ("OPEN 24HOURS"), so a reading word equal to a
                 run of consecutive expected words ("24hours") finds each of them
  edit_score     1 - d / len(expected), d the Levenshtein distance between the expected text (words joined
                 by one space) and the closest substring of the reading: a sign also shows other text, and
                 text around the quoted words costs nothing; 0 when nothing is read
  exact          1.0 if every expected word is found, else 0.0

An engine is anything with a `name` and `read(image) -> str`; adding one is one class and one entry in
OCR_ENGINES.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from core.errors import one_line
from core.records import clean_text

if TYPE_CHECKING:
    import PIL.Image

_PUNCTUATION = re.compile(r"[^\w\s]|_")


class OcrEngine(Protocol):
    name: str

    def read(self, image: "PIL.Image.Image") -> str:
        """All text read in the image, words separated by spaces, in reading order."""


class RapidOcr:
    """PP-OCRv4 detection and recognition through rapidocr-onnxruntime, whose wheel ships the ONNX models:
    it runs offline, on the CPU."""

    name = "rapidocr"
    # rapidocr's own default (the shorter side scaled up to 736) blows a wide 512x128 crop up to 2944x736
    # and costs ~4x the time; PaddleOCR's default (the longer side at most 960) leaves 1024px generated
    # images almost untouched and small ones as they are.
    DEFAULT_OPTIONS = {"det_limit_type": "max", "det_limit_side_len": 960}

    def __init__(self, **options: Any) -> None:
        """`options`: rapidocr keyword options (det_*, rec_*, intra_op_num_threads, ...) over DEFAULT_OPTIONS."""
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:
            raise ImportError(f"{exc} (pip install rapidocr-onnxruntime)") from exc
        self._ocr = RapidOCR(**{**self.DEFAULT_OPTIONS, **options})

    def read(self, image: "PIL.Image.Image") -> str:
        # rapidocr takes RGB, RGBA or grey PIL images; palette, 16-bit or float ones it would misread
        lines, _ = self._ocr(image if image.mode in ("RGB", "L") else image.convert("RGB"))
        # each line is [box, text, confidence], already sorted top to bottom, then left to right
        return " ".join(" ".join(line[1].split()) for line in lines or [] if line[1].strip())


OCR_ENGINES: dict[str, Callable[[], OcrEngine]] = {
    "rapidocr": RapidOcr,
}


def load_ocr(name: str = "rapidocr") -> tuple[OcrEngine | None, str]:
    """(the engine, "") or (None, a one-line note saying why it is unavailable). An unknown name is a
    ValueError; a missing or broken engine is not an error here, so an evaluation can skip the metric."""
    if name not in OCR_ENGINES:
        raise ValueError(f"unknown OCR engine {name!r}; known: {', '.join(sorted(OCR_ENGINES))}")
    try:
        return OCR_ENGINES[name](), ""
    except ImportError as exc:
        return None, one_line(f"OCR engine {name!r} is not installed: {exc}")
    except Exception as exc:  # a corrupt model file, a missing system library: skip the metric, say why
        return None, one_line(f"OCR engine {name!r} failed to load: {type(exc).__name__}: {exc}")


def _words(text: str) -> list[str]:
    return _PUNCTUATION.sub("", clean_text(text).casefold()).split()


def _found(reading: list[str], expected: list[str]) -> list[bool]:
    """Which expected words the reading shows; each reading word is used at most once."""
    unused = Counter(reading)
    found = [False] * len(expected)
    for i, word in enumerate(expected):
        if unused[word]:
            unused[word] -= 1
            found[i] = True
    for start in range(len(expected)):  # reading words that glue a run of missed expected words together
        for end in range(len(expected), start + 1, -1):  # the longest run first
            glued = "".join(expected[start:end])
            if not any(found[start:end]) and unused[glued]:
                unused[glued] -= 1
                found[start:end] = [True] * (end - start)
                break
    return found


def _substring_distance(pattern: str, text: str) -> int:
    """The Levenshtein distance between `pattern` and the substring of `text` closest to it (Sellers'
    algorithm: a match may start and end anywhere in `text` at no cost)."""
    column = list(range(len(pattern) + 1))  # distances of pattern[:i] to a substring ending before text[0]
    best = column[-1]
    for char in text:
        previous, column[0] = column[0], 0
        for i, expected_char in enumerate(pattern, 1):
            previous, column[i] = column[i], min(column[i] + 1, column[i - 1] + 1, previous + (char != expected_char))
        best = min(best, column[-1])
    return best


def text_rendering_scores(reading: str, expected: Sequence[str]) -> dict[str, float]:
    """{"word_accuracy", "edit_score", "exact"} of one image's OCR reading against the words its prompt asked
    for (see the module doc). Each item of `expected` may hold several words."""
    expected_words = [word for item in expected for word in _words(item)]
    if not expected_words:
        raise ValueError(f"no expected words to score against (got {list(expected)!r})")
    reading_words = _words(reading)
    found = _found(reading_words, expected_words)
    target = " ".join(expected_words)
    distance = _substring_distance(target, " ".join(reading_words))
    return {
        "word_accuracy": sum(found) / len(found),
        "edit_score": 1.0 - distance / len(target),
        "exact": float(all(found)),
    }


def score_images(
    engine: OcrEngine, images: Sequence["PIL.Image.Image"], expected: Sequence[Sequence[str]]
) -> list[dict]:
    """Per image: {"reading": what the engine read, **text_rendering_scores(reading, its expected words)}."""
    if len(images) != len(expected):
        raise ValueError(f"{len(images)} images but {len(expected)} expected-word lists")
    results = []
    for image, words in zip(images, expected):
        reading = engine.read(image)
        results.append({"reading": reading, **text_rendering_scores(reading, words)})
    return results
