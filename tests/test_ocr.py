"""The text-rendering OCR metric (train/metrics/ocr.py): the engine on words drawn with a real font, the
scoring rules on strings, and how load_ocr reports an engine it cannot load."""

from __future__ import annotations

import importlib
from pathlib import Path

import matplotlib
import pytest
from PIL import Image, ImageDraw, ImageFont

from train.metrics import ocr
from train.metrics.ocr import RapidOcr, load_ocr, score_images, text_rendering_scores

# DejaVu Sans ships inside matplotlib (a dependency), so it exists on every machine the tests run on.
FONT = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"


def draw(*lines: str, size: int = 40) -> Image.Image:
    font = ImageFont.truetype(str(FONT), size)
    image = Image.new("RGB", (512, 64 + len(lines) * size * 3 // 2), "white")
    canvas = ImageDraw.Draw(image)
    for row, line in enumerate(lines):
        canvas.text((32, 32 + row * size * 3 // 2), line, font=font, fill="black")
    return image


@pytest.fixture(scope="module")
def engine() -> RapidOcr:
    return RapidOcr(intra_op_num_threads=1)  # one thread: the test machines' CPUs are shared


def test_reads_a_clean_word(engine):
    assert engine.read(draw("BAKERY")) == "BAKERY"


def test_the_right_word_scores_above_the_wrong_one(engine):
    right, wrong = score_images(engine, [draw("coffee"), draw("teapot")], [["coffee"], ["coffee"]])
    assert right["exact"] == right["word_accuracy"] == 1.0 and right["edit_score"] > 0.99
    assert wrong["exact"] == wrong["word_accuracy"] == 0.0 and wrong["edit_score"] < 0.5
    assert wrong["reading"] == "teapot"


def test_quoted_words_among_other_lines_of_a_sign(engine):
    [result] = score_images(engine, [draw("FRESH BREAD", "open daily")], [["Open Daily"]])
    assert result["reading"].lower().startswith("fresh")  # reading order: the top line first
    assert result["exact"] == 1.0 and result["edit_score"] == 1.0


def test_score_images_needs_one_word_list_per_image(engine):
    with pytest.raises(ValueError, match="2 images but 1"):
        score_images(engine, [draw("a"), draw("b")], [["a"]])


def test_case_and_punctuation_do_not_count():
    assert text_rendering_scores("Joe's CAFE!", ["joes", "cafe"]) == {"word_accuracy": 1.0, "edit_score": 1.0, "exact": 1.0}
    assert text_rendering_scores("ＳＡＬＥ", ["sale"])["exact"] == 1.0  # full-width forms, as CJK recognisers emit


def test_each_reading_word_is_used_once():
    scores = text_rendering_scores("cafe cafe", ["cafe cafe cafe"])
    assert scores["word_accuracy"] == pytest.approx(2 / 3) and scores["exact"] == 0.0


def test_a_dropped_space_still_finds_both_words():
    scores = text_rendering_scores("OPEN 24HOURS", ["OPEN 24 HOURS"])
    assert scores["word_accuracy"] == 1.0 and scores["exact"] == 1.0
    assert scores["edit_score"] == pytest.approx(1 - 1 / len("open 24 hours"))  # the space is still a miss


def test_extra_text_around_the_words_costs_nothing():
    scores = text_rendering_scores("WELCOME TO THE GRAND HOTEL since 1920", ["Grand Hotel"])
    assert scores == {"word_accuracy": 1.0, "edit_score": 1.0, "exact": 1.0}


def test_edit_score_counts_misspellings_against_the_expected_text():
    scores = text_rendering_scores("the GRAMD HOTFL", ["GRAND HOTEL"])
    assert scores["word_accuracy"] == 0.0 and scores["edit_score"] == pytest.approx(1 - 2 / 11)


def test_an_empty_reading_scores_zero():
    assert text_rendering_scores("", ["hotel"]) == {"word_accuracy": 0.0, "edit_score": 0.0, "exact": 0.0}


@pytest.mark.parametrize("expected", [[], [""], ["!!!"]])
def test_nothing_expected_is_an_error(expected):
    with pytest.raises(ValueError, match="no expected words"):
        text_rendering_scores("hotel", expected)


def test_load_ocr_builds_the_default_engine():
    engine, note = load_ocr()
    assert engine is not None and engine.name == "rapidocr" and note == ""


def test_load_ocr_names_the_known_engines_for_an_unknown_one():
    with pytest.raises(ValueError, match="unknown OCR engine 'tesseract'; known: rapidocr"):
        load_ocr("tesseract")


def _not_installed():
    return importlib.import_module("an_ocr_package_that_is_not_installed")


def _broken():
    raise RuntimeError("model file is truncated\nsecond line of a long trace")


def test_load_ocr_reports_a_missing_or_broken_engine(monkeypatch):
    monkeypatch.setitem(ocr.OCR_ENGINES, "missing", _not_installed)
    monkeypatch.setitem(ocr.OCR_ENGINES, "broken", _broken)
    assert load_ocr("missing") == (None, "OCR engine 'missing' is not installed: No module named 'an_ocr_package_that_is_not_installed'")
    assert load_ocr("broken") == (None, "OCR engine 'broken' failed to load: RuntimeError: model file is truncated")
