"""Read prompt pools from local files and HF datasets, surviving hostile rows.

Every input row becomes either a Prompt or a rejected (Prompt, reason) pair, so
`rows_read == records + rejected` always holds per source. Only a problem with the
whole source (missing file, no text column) is an error.
"""

from __future__ import annotations

import csv
import itertools
import io
import json
import math
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.records import CATEGORIES, Prompt, clean_text

SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".parquet")
TEXT_COLUMNS = ("text", "prompt", "caption", "TEXT", "Prompt", "Caption", "sentence")
MAX_RAW_CHARS = 100_000  # longer rows are rejected at ingest (stored cut to this), before spaCy sees them


class SourceError(ValueError):
    """The source as a whole cannot be read (its rows are not the problem)."""


@dataclass
class SourceSpec:
    """One pool entry of a recipe (`sources.<criterion>[i]`)."""

    uri: str
    text_column: str | None = None
    split: str = "train"
    limit: int | None = None
    score_columns: dict[str, str] = field(default_factory=dict)
    image_column: str | None = None
    category_column: str | None = None


@dataclass
class SourceResult:
    records: list[Prompt]
    rejected: list[tuple[Prompt, str]]
    rows_read: int


def read_source(spec: SourceSpec, criterion: str) -> SourceResult:
    """Read every row of a local file/folder or an HF dataset into records."""
    path = Path(spec.uri).expanduser()
    if path.is_dir() and _is_curated_set(path):
        files = sorted((path / "data").glob("*.parquet"))  # its kept prompts; never rejected/ or the manifest
        parts: Iterable[tuple[str, Iterable[tuple[Any, str | None]]]] = ((str(f), _read_file(f)) for f in files)
    elif path.is_dir() and not _is_hf_saved_dataset(path):
        files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        if not files:
            raise SourceError(f"{spec.uri}: folder has no {'/'.join(SUFFIXES)} files")
        parts = ((str(f), _read_file(f)) for f in files)
    elif path.is_file():
        if path.suffix not in SUFFIXES:
            raise SourceError(f"{spec.uri}: unsupported file type {path.suffix!r} (use {', '.join(SUFFIXES)})")
        parts = [(spec.uri, _read_file(path))]
    elif (not path.exists()) and looks_like_path(spec.uri):
        raise SourceError(f"{spec.uri}: no such file or folder")
    else:
        parts = [(spec.uri, _read_hf(spec))]
    return _to_records(parts, spec, criterion, in_folder=path.is_dir() and not _is_hf_saved_dataset(path))


def looks_like_path(uri: str) -> bool:
    """Whether `uri` can only be a local path (so a missing one is an error, not a hub lookup)."""
    # A hub id is "name" or "owner/name"; a trailing slash or deeper nesting can only be a folder
    # (a URL such as hf://datasets/owner/name is left to `datasets`).
    if "://" in uri:
        return False
    return uri.startswith((".", "/", "~")) or Path(uri).suffix in SUFFIXES or uri.endswith("/") or uri.count("/") > 1


def _is_hf_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()


def _is_curated_set(path: Path) -> bool:
    try:
        return str(json.loads((path / "manifest.json").read_text()).get("format", "")).startswith("t5shrink.curated")
    except (OSError, ValueError, AttributeError):
        return False


def _to_records(parts: Iterable[tuple[str, Iterable[tuple[Any, str | None]]]], spec: SourceSpec,
                criterion: str, in_folder: bool = False) -> SourceResult:
    """Each part (a file, or the dataset) yields (raw_row, error): error is set when the row could not
    be parsed. The text column is found per part, since a folder's files may name it differently. In a
    folder, a file that is not a table of prompts at all (a dataset's metadata .json, say) is skipped
    with a warning; given on its own, it is an error."""
    records, rejected, n = [], [], 0
    for name, rows in parts:
        rows = iter(rows)
        try:
            head = list(itertools.islice(rows, 1000))
            column = _text_column([raw for raw, err in head if err is None], name, spec.text_column)
        except SourceError as exc:
            if not in_folder:
                raise
            warnings.warn(f"skipping {exc}")
            continue
        for raw, error in itertools.chain(head, rows):
            if spec.limit is not None and n >= spec.limit:
                return SourceResult(records=records, rejected=rejected, rows_read=n)
            n += 1
            text, error = _row_text(raw, column, error)
            if error is None and len(text) > MAX_RAW_CHARS:
                error = f"too_long {len(text):,} chars > {MAX_RAW_CHARS:,}"
            if error is not None:
                # lone surrogates (from \ud800 escapes in JSON) cannot be written as UTF-8
                raw_text = text[:MAX_RAW_CHARS].encode("utf-8", "replace").decode("utf-8")
                rejected.append((Prompt(text=raw_text, criterion=criterion, source=spec.uri), f"ingest: {error}"))
                continue
            record = Prompt(text=clean_text(text), criterion=criterion, source=spec.uri)
            if not record.text:
                rejected.append((record, "ingest: empty row"))
                continue
            if isinstance(raw, dict):
                _copy_columns(raw, spec, record)
            records.append(record)
    return SourceResult(records=records, rejected=rejected, rows_read=n)


def _text_column(rows: list[Any], name: str, wanted: str | None) -> str | None:
    """`wanted`, checked against the first rows, or the first conventional text column they have."""
    objects = [row for row in rows if isinstance(row, dict)]
    if not objects:
        return wanted  # plain text lines, or nothing parseable: rows explain themselves
    seen: dict[str, None] = {}
    for row in objects:
        seen.update(dict.fromkeys(map(str, row)))
    found = ", ".join(seen) or "none"
    if wanted is not None:
        if wanted not in seen:
            raise SourceError(f"{name}: no column {wanted!r} in its first rows (columns found: {found})")
        return wanted
    for column in TEXT_COLUMNS:
        if column in seen:
            return column
    raise SourceError(f"{name}: no text column (looked for {', '.join(TEXT_COLUMNS)}; columns found: {found}); "
                      "name it with text_column (curate tag: --text-column)")


def _row_text(raw: Any, column: str | None, error: str | None) -> tuple[str, str | None]:
    if error is not None:
        return (raw if isinstance(raw, str) else repr(raw)), error
    if isinstance(raw, str):
        return raw, None
    if not isinstance(raw, dict):
        return json.dumps(raw, default=str), f"not an object ({type(raw).__name__})"
    value = raw.get(column)
    if value is None:
        return json.dumps(raw, default=str, ensure_ascii=False), f"missing text field {column!r}"
    if not isinstance(value, str):
        return json.dumps(raw, default=str, ensure_ascii=False), f"text field {column!r} is {type(value).__name__}, not a string"
    return value, None


def _copy_columns(raw: dict[str, Any], spec: SourceSpec, record: Prompt) -> None:
    for score, column in spec.score_columns.items():
        try:
            value = float(raw[column])
        except (KeyError, TypeError, ValueError):
            continue  # a missing score is the aesthetic step's business, not ingest's
        if math.isfinite(value):  # NaN (common in scraped score columns) is "not scored", never a pass
            record.scores[score] = value
    if spec.image_column and raw.get(spec.image_column):
        record.meta["image"] = str(raw[spec.image_column])
    label = raw.get(spec.category_column) if spec.category_column else None
    if label in CATEGORIES:  # anything else stays unlabelled, for the `tag` step to label
        record.category = label
        record.tags = [label]


def _decode_lines(data: bytes) -> Iterator[tuple[str, str | None]]:
    """Split bytes into lines; a line that is not UTF-8 is yielded with an error."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for line in data.split(b"\n"):
        line = line.rstrip(b"\r")
        try:
            yield line.decode("utf-8"), None
        except UnicodeDecodeError:
            yield line.decode("utf-8", errors="replace"), "invalid utf-8"


def _lines(data: bytes) -> list[tuple[str, str | None]]:
    lines = list(_decode_lines(data))
    if lines and lines[-1] == ("", None):
        lines.pop()  # the file's final newline ends the last row; it is not a row
    return lines


def _read_file(path: Path) -> Iterator[tuple[Any, str | None]]:
    if path.suffix == ".parquet":
        yield from _read_parquet(path)
        return
    data = path.read_bytes()
    if path.suffix == ".txt":
        yield from _lines(data)
    elif path.suffix in (".jsonl", ".json"):
        if path.suffix == ".json" and data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
            yield from _read_json_array(path, data)
            return
        if path.suffix == ".json" and data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{") and b"\n" in data.strip():
            try:  # one object over several lines is a file of the wrong shape, not a file of bad rows
                whole = json.loads(data.decode("utf-8-sig"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                whole = None
            if isinstance(whole, dict):
                raise SourceError(f"{path}: one JSON object, not an array of rows or JSON lines")
        for line, error in _lines(data):
            if error is None and not line.strip():
                yield line, None  # a blank row: rejected as empty, so it is still counted
                continue
            if error is not None:
                yield line, error
                continue
            try:
                yield json.loads(line), None
            except json.JSONDecodeError as exc:
                yield line, f"malformed JSON ({exc.msg} at column {exc.colno})"
    else:
        yield from _read_csv(data)


def _read_json_array(path: Path, data: bytes) -> Iterator[tuple[Any, str | None]]:
    try:
        items = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"{path}: not a valid JSON array ({exc}); use JSONL to keep the good rows") from exc
    for item in items:
        yield item, None


def _read_csv(data: bytes) -> Iterator[tuple[Any, str | None]]:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    # surrogateescape keeps undecodable bytes as lone surrogates so one bad row can be
    # rejected without losing the rest of the file.
    text = data.decode("utf-8", errors="surrogateescape").replace("\x00", "")
    csv.field_size_limit(sys.maxsize)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    for row in reader:
        row.pop(None, None)  # extra cells beyond the header
        bad = any(isinstance(v, str) and _has_surrogates(v) for v in row.values())
        if bad:
            fixed = {k: v.encode("utf-8", "surrogateescape").decode("utf-8", "replace") if isinstance(v, str) else v
                     for k, v in row.items()}
            yield json.dumps(fixed, ensure_ascii=False), "invalid utf-8"
        else:
            yield row, None


def _has_surrogates(value: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in value)


def _read_parquet(path: Path) -> Iterator[tuple[Any, str | None]]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path)
    for batch in table.iter_batches(batch_size=65_536):
        for row in batch.to_pylist():
            yield row, None


def _read_hf(spec: SourceSpec) -> Iterator[tuple[Any, str | None]]:
    import datasets

    path = Path(spec.uri).expanduser()
    try:
        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[spec.split]
        else:
            ds = datasets.load_dataset(spec.uri, split=spec.split)
    except Exception as exc:  # datasets raises many types; the message is what the user needs
        raise SourceError(f"{spec.uri}: could not load as a Hugging Face dataset: {exc}") from exc
    if spec.limit is not None:
        ds = ds.select(range(min(spec.limit, len(ds))))
    for row in ds:
        yield row, None
