"""Read prompt pools from local files and HF datasets, surviving hostile rows and files.

Every input row becomes either a Prompt or a rejected (Prompt, reason) pair, so
`rows_read == records + rejected` always holds per source. Rows stream: a file is read a line
or a record batch at a time, so a pool's size never multiplies in memory (a .json file that is one
array is the exception: it is parsed whole, up to MAX_JSON_DOCUMENT_BYTES; JSON lines stream, whatever
their suffix). CSV has a module of its own (csv_rows.py).

Failures are isolated as narrowly as they can be:
- a row that cannot be parsed for any reason (bad JSON, invalid UTF-8, nesting too deep, a
  number too large, ...) is a rejected row with its reason;
- a file inside a folder that cannot be read at all (a truncated parquet, a JSON file that is
  not a table) is skipped with a warning naming it and listed in `skipped_files`;
- only a problem with the whole source (a missing path, a single file given directly that
  cannot be read, no text column) is an error, and it names the file.
A link inside a source folder that points outside it is not followed (pass its target directly
to read it), so a folder of prompts cannot pull in files from elsewhere on the machine.
"""

from __future__ import annotations

import codecs
import io
import itertools
import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from core.errors import one_line
from core.paths import SUFFIXES, looks_like_path
from core.records import CATEGORIES, CRITERIA, Drop, Prompt, clean_text, lookalike_reason
from curate.curated_set import CuratedSetError, is_curated_set, iter_rows, read_manifest
from curate.sources.csv_rows import INVALID_UTF8, CsvHeaderError, read_csv

TEXT_COLUMNS = ("text", "prompt", "caption", "TEXT", "Prompt", "Caption", "sentence")
MAX_RAW_CHARS = 100_000  # longer rows are rejected at ingest (stored cut to this), before spaCy sees them
# A line is read at most this far; the rest of a longer one is only counted, so a file that is one 10 GB
# line cannot exhaust memory. A text line longer than MAX_RAW_CHARS characters (UTF-8: up to 4 bytes
# each) is rejected anyway; a JSON line may carry other columns beside its text.
MAX_LINE_BYTES = 4 * MAX_RAW_CHARS + 4
MAX_JSON_LINE_BYTES = 64 * 2**20
MAX_JSON_DOCUMENT_BYTES = 256 * 2**20  # a .json array is parsed whole (~10x its size in memory); JSON lines stream
PARQUET_BATCH_ROWS = 16_384
BOM = b"\xef\xbb\xbf"
# Every rejection is Drop("ingest", "<kind> (<detail>)"): the kind is one word that reports count by.

Row = tuple[Any, "str | None"]  # a raw row (a line or a mapping) and why it could not be parsed, if so


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
    category_from_filename: bool = False


@dataclass
class SourceResult:
    records: list[Prompt]
    rejected: list[tuple[Prompt, Drop]]
    rows_read: int
    skipped_files: list[dict[str, str]] = field(default_factory=list)


def read_source(spec: SourceSpec, criterion: str) -> SourceResult:
    """Every row of a local file/folder or an HF dataset, as records and rejected rows (in memory;
    `iter_source` streams)."""
    result = SourceResult(records=[], rejected=[], rows_read=0)
    for record, why in iter_source(spec, criterion, result.skipped_files):
        result.rows_read += 1
        if why is None:
            result.records.append(record)
        else:
            result.rejected.append((record, why))
    return result


def iter_source(spec: SourceSpec, criterion: str, skipped: list[dict[str, str]] | None = None,
                files: list[Path] | None = None) -> Iterator[tuple[Prompt, Drop | None]]:
    """(record, None) for each readable row, (record, Drop("ingest", why)) for each that is not, in file
    order. Files of a folder that cannot be read are appended to `skipped` as {"path", "reason"}.
    `files`: read only these files of a folder source (a shard from `source_shards`)."""
    skipped = [] if skipped is None else skipped
    path = Path(spec.uri).expanduser()
    in_folder = path.is_dir() and not _is_hf_saved_dataset(path)
    if files is not None:
        return _to_records(((str(f), _guarded(f, True, skipped)) for f in files), spec, criterion, True, skipped)
    if is_curated_set(path):  # its kept prompts with their labels; never rejected/ or the manifest
        return _to_records([(spec.uri, _curated_rows(path))], spec, criterion, False, skipped, keep_labels=True)
    if in_folder:
        files = _source_files(spec, path, skipped)
    elif path.is_file():
        if path.suffix not in SUFFIXES:
            raise SourceError(f"{spec.uri}: unsupported file type {path.suffix!r} (use {', '.join(SUFFIXES)})")
        files = [path]
    elif (not path.exists()) and looks_like_path(spec.uri):
        raise SourceError(f"{spec.uri}: no such file or folder")
    elif path.exists() and not path.is_dir():  # a FIFO or a device: reading could block forever or never end
        raise SourceError(f"{spec.uri}: not a regular file or folder")
    else:
        return _to_records([(spec.uri, _read_hf(spec))], spec, criterion, False, skipped)
    parts = ((str(f), _guarded(f, in_folder, skipped)) for f in files)
    return _to_records(parts, spec, criterion, in_folder, skipped)


def source_shards(spec: SourceSpec, skipped: list[dict[str, str]]) -> list[Path] | None:
    """The files of a folder source, which can be read one by one and in any order (each row's reading
    depends only on its file), for an engine that reads them in parallel; None when the source reads as
    one stream: a single file, a curated set, an HF dataset, or a folder whose `limit` counts rows
    across its files. Links that are not followed go to `skipped`, as iter_source puts them."""
    path = Path(spec.uri).expanduser()
    if spec.limit is not None or not path.is_dir() or _is_hf_saved_dataset(path) or is_curated_set(path):
        return None
    return _source_files(spec, path, skipped)


def _source_files(spec: SourceSpec, path: Path, skipped: list[dict[str, str]]) -> list[Path]:
    files = _folder_files(path, skipped)
    if not files:
        raise SourceError(f"{spec.uri}: folder has no {'/'.join(SUFFIXES)} files")
    return files


def _curated_rows(path: Path) -> Iterator[Row]:
    """The kept rows of a curated set. A damaged manifest or part is a damaged set: an error, never a
    silently partial set."""
    try:
        read_manifest(path)
        for row in iter_rows(path, "data"):
            yield row, None
    except CuratedSetError as exc:
        raise SourceError(str(exc)) from None


def _is_hf_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()


def _folder_files(root: Path, skipped: list[dict[str, str]]) -> list[Path]:
    """The prompt files under `root`, sorted. Linked folders are not entered, and a linked file is read
    only when its target lies inside `root`."""
    inside = root.resolve()
    files = []
    for folder, subfolders, names in os.walk(root):  # followlinks=False: a linked folder is listed, not entered
        for name in sorted(subfolders):
            if (Path(folder) / name).is_symlink():
                _skip(skipped, Path(folder) / name, "a linked folder is not followed; pass its target directly")
        for name in names:
            file = Path(folder) / name
            if file.suffix not in SUFFIXES:
                continue
            why = _unfollowed_link(file, inside) if file.is_symlink() else None
            if why is not None:
                _skip(skipped, file, why)
            elif file.is_file():  # not a FIFO or a device, which could block or never end
                files.append(file)
    return sorted(files)


def _unfollowed_link(link: Path, inside: Path) -> str | None:
    """Why a link in a source folder is not read (None: it is, a file inside the folder)."""
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError):  # dangling, or a loop of links
        return "a link that leads to no file (dangling, or a loop)"
    if not target.is_relative_to(inside):
        return f"a link to {target}, outside the folder; pass that file directly to read it"
    return None if target.is_file() else "a link to something that is not a regular file"


def _skip(skipped: list[dict[str, str]], path: Path | str, reason: str) -> None:
    warnings.warn(f"skipping {path}: {reason}")
    skipped.append({"path": str(path), "reason": reason})


def _guarded(path: Path, in_folder: bool, skipped: list[dict[str, str]]) -> Iterator[Row]:
    """The rows of one file. If the file itself turns out unreadable (at its start or midway, as a
    truncated parquet does): inside a folder, the rows read so far stand and the file is skipped with a
    warning; given alone, it is an error naming the file."""
    try:
        yield from _read_file(path)
    except Exception as exc:  # pyarrow, OSError, a JSON array nested too deeply, ...: all mean "this file"
        error = exc if isinstance(exc, SourceError) else SourceError(
            f"{path}: cannot be read ({_describe_error(exc)}); restore or remove the file")
        if not in_folder:
            raise error from exc
        _skip(skipped, path, str(error).removeprefix(f"{path}: "))


def _describe_error(exc: BaseException) -> str:
    text = one_line(exc, 200)
    return text if text == type(exc).__name__ else f"{type(exc).__name__}: {text}"


def _to_records(parts: Iterable[tuple[str, Iterable[Row]]], spec: SourceSpec, criterion: str, in_folder: bool,
                skipped: list[dict[str, str]], keep_labels: bool = False) -> Iterator[tuple[Prompt, Drop | None]]:
    """Each part (a file, or the dataset) yields (raw_row, error): error is set when the row could not
    be parsed. The text column is found per part, since a folder's files may name it differently. In a
    folder, a file that is not a table of prompts at all (a dataset's metadata .json, say) is skipped
    with a warning; given on its own, it is an error. Labels: a curated set's rows keep theirs
    (`keep_labels`); with category_from_filename, a file named after a category gives its rows that one."""
    n = 0
    for name, rows in parts:
        labels = _Labels(keep_labels, category_of_filename(name) if spec.category_from_filename else None)
        rows = iter(rows)
        head = list(itertools.islice(rows, 1000))
        try:
            column = _text_column([raw for raw, err in head if err is None], name, spec.text_column)
        except SourceError as exc:
            if not in_folder:
                raise
            _skip(skipped, name, str(exc).removeprefix(f"{name}: "))
            continue
        for raw, error in itertools.chain(head, rows):
            if spec.limit is not None and n >= spec.limit:
                return
            n += 1
            try:
                yield _to_record(raw, error, column, spec, criterion, labels)
            except Exception as exc:  # a row nothing above foresaw: rejected with its reason, never fatal
                yield _rejected(_preview(raw), spec, criterion, f"unreadable_row ({_describe_error(exc)})")


class _Labels(NamedTuple):
    from_row: bool  # a curated set's row: its criterion, category, tags and rendered_text stand
    file_category: str | None  # the category its file's name gives


def category_of_filename(name: str) -> str | None:
    """The category a file's name starts with, followed by the end of the name or one of `_-.`:
    color_train.txt -> color, 3d_spatial_val.jsonl -> 3d_spatial, text_rendering.csv -> text_rendering.
    The longest such category wins (3d_spatial, not spatial); None when the name starts with none."""
    stem = Path(name).name.lower()
    found = [c for c in CATEGORIES if stem.startswith(c) and (len(stem) == len(c) or stem[len(c)] in "_-.")]
    return max(found, key=len, default=None)


def _to_record(raw: Any, error: str | None, column: str | None, spec: SourceSpec, criterion: str,
               labels: _Labels = _Labels(False, None)) -> tuple[Prompt, Drop | None]:
    text, error = _row_text(raw, column, error)
    if error is None and len(text) > MAX_RAW_CHARS:
        error = f"too_long {len(text):,} chars > {MAX_RAW_CHARS:,}"
    if error is not None:
        return _rejected(text, spec, criterion, error)
    record = Prompt(text=clean_text(text), criterion=criterion, source=spec.uri)
    if not record.text:
        return record, Drop("ingest", "empty (an empty row)")
    disguise = lookalike_reason(record.text)
    if disguise is not None:  # look-alike letters or marks: a copy made to slip past dedup (records module)
        return record, Drop("ingest", f"lookalike {disguise}")
    if isinstance(raw, dict):
        _copy_columns(raw, spec, record)
        if labels.from_row:
            _copy_labels(raw, record)
    if labels.file_category and not record.tags:  # a category column, when there is one, wins
        record.category, record.tags = labels.file_category, [labels.file_category]
    return record, None


def _copy_labels(row: dict[str, Any], record: Prompt) -> None:
    """A curated set's own labels, so that a set reused as a source is not labelled again (the tag step
    labels only records that come without tags)."""
    if row.get("criterion") in CRITERIA:
        record.criterion = row["criterion"]
    if row.get("category") in CATEGORIES:
        record.category = row["category"]
        tags = [t for t in row.get("tags") or [] if isinstance(t, str) and t in CATEGORIES]
        record.tags = tags or [record.category]
    rendered = [t for t in row.get("rendered_text") or [] if isinstance(t, str)]
    if rendered:
        record.rendered_text = rendered


def _rejected(text: str, spec: SourceSpec, criterion: str, why: str) -> tuple[Prompt, Drop]:
    # lone surrogates (from \ud800 escapes in JSON) cannot be written as UTF-8
    text = text[:MAX_RAW_CHARS].encode("utf-8", "replace").decode("utf-8")
    return Prompt(text=text, criterion=criterion, source=spec.uri), Drop("ingest", why)


def _preview(raw: Any) -> str:
    """Some text to store with a rejected row, whatever the row is (never raises, never huge)."""
    if isinstance(raw, str):
        return raw[:MAX_RAW_CHARS]
    try:
        return json.dumps(raw, default=str, ensure_ascii=False)[:MAX_RAW_CHARS]
    except (TypeError, ValueError, RecursionError):
        return f"<{type(raw).__name__}>"


def _text_column(rows: list[Any], name: str, wanted: str | None) -> str | None:
    """`wanted`, checked against the first rows, or the first conventional text column they have."""
    objects = [row for row in rows if isinstance(row, dict)]
    if not objects:
        return wanted  # plain text lines, or nothing parseable: rows explain themselves
    seen: dict[str, None] = {}
    for row in objects:
        seen.update(dict.fromkeys(map(str, row)))
    found = ", ".join(list(seen)[:20]) + (", ..." if len(seen) > 20 else "") or "none"
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
        return (raw if isinstance(raw, str) else _preview(raw)), error
    if isinstance(raw, str):
        return raw, None
    if not isinstance(raw, dict):
        return _preview(raw), f"not_object (the row is a {type(raw).__name__}, not an object)"
    value = raw.get(column)
    if value is None:
        return _preview(raw), f"missing_text (missing text field {column!r})"
    if not isinstance(value, str):
        return _preview(raw), f"wrong_type (text field {column!r} is {type(value).__name__}, not a string)"
    return value, None


def _copy_columns(raw: dict[str, Any], spec: SourceSpec, record: Prompt) -> None:
    for score, column in spec.score_columns.items():
        try:
            value = float(raw[column])
        except (KeyError, TypeError, ValueError, OverflowError):
            continue  # a missing score is the aesthetic step's business, not ingest's
        if math.isfinite(value):  # NaN (common in scraped score columns) is "not scored", never a pass
            record.scores[score] = value
    if spec.image_column and raw.get(spec.image_column):
        record.meta = {"image": str(raw[spec.image_column])}
    label = raw.get(spec.category_column) if spec.category_column else None
    if isinstance(label, str) and label in CATEGORIES:  # anything else stays unlabelled, for `tag` to label
        record.category = label
        record.tags = [label]


# ---- formats ------------------------------------------------------------------------------------


def _read_file(path: Path) -> Iterator[Row]:
    if path.suffix == ".parquet":
        yield from _read_parquet(path)
    elif path.suffix == ".txt":
        yield from _lines(path)
    elif path.suffix == ".csv":
        try:
            yield from read_csv(path)
        except CsvHeaderError as exc:
            raise SourceError(str(exc)) from None
    else:
        yield from _read_json_lines(path)


def _lines(path: Path, max_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[str, str | None]]:
    """The file's lines without their line ends (a BOM dropped), read one at a time. A line that is
    not UTF-8, or longer than `max_bytes`, comes with an error."""
    with open(path, "rb") as handle:
        first = True
        while True:
            line = handle.readline(max_bytes)
            if not line:
                return
            if len(line) >= max_bytes and not line.endswith(b"\n"):  # before the BOM goes: it counts
                yield _overlong(handle, line.removeprefix(BOM) if first else line, max_bytes)
                first = False
                continue
            if first and line.startswith(BOM):
                line = line[len(BOM):]
            first = False
            line = line.rstrip(b"\n").rstrip(b"\r")
            try:
                yield line.decode("utf-8"), None
            except UnicodeDecodeError:
                yield line.decode("utf-8", errors="replace"), INVALID_UTF8


def _overlong(handle: io.BufferedReader, start: bytes, max_bytes: int) -> tuple[str, str]:
    """Consume the rest of a line too long to hold; its start and why it is rejected."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    chars = len(decoder.decode(start))
    while True:
        chunk = handle.readline(1 << 20)
        chars += len(decoder.decode(chunk.rstrip(b"\r\n") if chunk.endswith(b"\n") else chunk))
        if not chunk or chunk.endswith(b"\n"):
            break
    why = (f"too_long {chars:,} chars > {MAX_RAW_CHARS:,}" if max_bytes <= MAX_LINE_BYTES
           else f"too_long row of {chars:,} chars (over {max_bytes:,} bytes)")
    return start.decode("utf-8", errors="replace")[:MAX_RAW_CHARS], why


def _read_json_lines(path: Path) -> Iterator[Row]:
    if path.suffix == ".json" and _is_one_document(path):
        yield from _read_json_document(path)
        return
    for line, error in _lines(path, MAX_JSON_LINE_BYTES):
        if error is None and not line.strip():
            yield line, None  # a blank row: rejected as empty, so it is still counted
        elif error is not None:
            yield line, error
        else:
            yield _parse_json(line)


def _parse_json(line: str) -> Row:
    try:
        return json.loads(line), None
    except json.JSONDecodeError as exc:
        return line, f"malformed_json (malformed JSON: {exc.msg} at column {exc.colno})"
    except RecursionError:
        return line, "malformed_json (malformed JSON: nested too deeply)"
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        return line, f"malformed_json (malformed JSON: {_describe_error(exc)})"


def _is_one_document(path: Path) -> bool:
    """Whether a .json file is one JSON document (an array of rows, or a mistaken single object) rather
    than JSON lines, which many datasets ship as .json: it is when its first line is not a whole value."""
    with open(path, "rb") as handle:
        first = handle.readline(MAX_JSON_LINE_BYTES).removeprefix(BOM).strip()
        while not first and handle.peek(1):
            first = handle.readline(MAX_JSON_LINE_BYTES).strip()
    if first[:1] == b"[":
        return True
    if first[:1] != b"{":
        return False
    try:
        json.loads(first)
    except (ValueError, RecursionError):
        return True  # an object that goes on over more lines
    return False


def _read_json_document(path: Path) -> Iterator[Row]:
    """The rows of a file that is one JSON array, read whole (so bounded in size)."""
    size = path.stat().st_size
    if size > MAX_JSON_DOCUMENT_BYTES:
        raise SourceError(f"{path}: a {size:,}-byte JSON document is read whole, and the limit is "
                          f"{MAX_JSON_DOCUMENT_BYTES:,}; write it as JSON lines (.jsonl), one row a line")
    try:
        items = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SourceError(f"{path}: not a valid JSON array ({_describe_error(exc)}); "
                          "use JSON lines to keep the good rows") from exc
    if isinstance(items, dict):  # a file of the wrong shape, not a file of bad rows
        raise SourceError(f"{path}: one JSON object, not an array of rows or JSON lines")
    if not isinstance(items, list):
        raise SourceError(f"{path}: a JSON {type(items).__name__}, not an array of rows or JSON lines")
    for item in items:
        yield item, None


def _read_parquet(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path)
    for batch in table.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for row in batch.to_pylist():
            yield row, None


def _read_hf(spec: SourceSpec) -> Iterator[Row]:
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
        raise SourceError(f"{spec.uri}: could not load as a Hugging Face dataset: {_describe_error(exc)}") from exc
    if spec.limit is not None:
        ds = ds.select(range(min(spec.limit, len(ds))))
    for row in ds:
        yield row, None
