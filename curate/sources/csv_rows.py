"""CSV rows as mappings, surviving what hand-made CSV files carry.

A quote that is opened and never closed makes a CSV parser read every line after it into one cell: to
the end of the file, or to a later quote that closes it in the middle of text. Such a row is rejected,
naming the line it starts on, and the lines it swallowed are read again as rows of their own, so one
stray quote costs one row, not the rest of the file. A row may span at most MAX_ROW_CHARS characters
(a quoted cell may legitimately hold line breaks, but not megabytes of them). Lines are read one at a
time; undecodable bytes come back as a rejected row, not as an error for the file.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

MAX_ROW_CHARS = 4 * 2**20
INVALID_UTF8 = "invalid_utf8 (invalid utf-8)"  # the rejection of a row with bytes that are not UTF-8

Row = tuple[Any, "str | None"]  # a mapping (or, if rejected, the row's text) and why it was rejected


class CsvHeaderError(ValueError):
    """The header row itself is broken: there are no columns to read rows by."""


def read_csv(path: Path) -> Iterator[Row]:
    """The rows of a CSV file with a header line, as {column: cell} (missing cells None)."""
    # surrogateescape keeps undecodable bytes as lone surrogates so one bad row can be
    # rejected without losing the rest of the file.
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        # Lines are read at most MAX_ROW_CHARS + 1 characters at a time: a file that is one huge line
        # comes in pieces, each rejected as too long, instead of all at once.
        pieces = iter(lambda: handle.readline(MAX_ROW_CHARS + 1), "")
        lines = _Lines(line.replace("\x00", "").removeprefix("\ufeff") if i == 0 else line.replace("\x00", "")
                       for i, line in enumerate(pieces))
        yield from _rows(lines, path)


class _Lines:
    """An iterator of lines that lines can be pushed back onto, and that says when it ran out."""

    def __init__(self, lines: Iterable[str]):
        self.rest, self.pending, self.exhausted = iter(lines), deque(), False

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        if self.pending:
            return self.pending.popleft()
        try:
            return next(self.rest)
        except StopIteration:
            self.exhausted = True
            raise

    def push_back(self, lines: list[str]) -> None:
        self.pending.extendleft(reversed(lines))
        self.exhausted = False


class _RowTooLong(Exception):
    pass


def _rows(lines: _Lines, path: Path) -> Iterator[Row]:
    header, line_no = None, 1
    while True:  # a new parser after each swallowing row, over the lines it gave back
        consumed: list[str] = []  # the lines of the row being parsed (csv reads no further than a row's end)
        reader = csv.reader(_recorded(lines, consumed))
        try:
            for cells in reader:
                row_lines, consumed[:] = list(consumed), []
                if header is None:
                    if _swallowed(row_lines, lines.exhausted):
                        raise CsvHeaderError(f"{path}: its header line has an unterminated quote; fix the header")
                    header = cells
                elif cells and _swallowed(row_lines, lines.exhausted):
                    yield _swallowing(row_lines, line_no, lines)
                    line_no += 1
                    break
                elif cells:  # [] is a blank line: no row, as csv.DictReader has it
                    yield _row(header, cells)
                line_no += len(row_lines)
            else:
                return
        except _RowTooLong:
            if header is None:
                raise CsvHeaderError(f"{path}: its header runs over {MAX_ROW_CHARS:,} characters "
                                     "(an unterminated quote?); fix the header") from None
            yield _swallowing(consumed, line_no, lines)
            line_no += 1


def _recorded(lines: _Lines, consumed: list[str]) -> Iterator[str]:
    size = 0
    for line in lines:
        consumed.append(line)
        size += len(line)
        if size > MAX_ROW_CHARS:
            raise _RowTooLong
        yield line


def _swallowing(row_lines: list[str], line_no: int, lines: _Lines) -> Row:
    """The rejection of a row whose quote swallowed the lines after it, which go back to be read again."""
    lines.push_back(row_lines[1:])
    note = f": it swallowed the {len(row_lines) - 1} line(s) after it, read again as rows" if len(row_lines) > 1 else ""
    return row_lines[0].rstrip("\r\n"), f"unterminated_quote (unterminated quote in the row at line {line_no}{note})"


def _swallowed(row_lines: list[str], at_end: bool) -> bool:
    """Whether a row is a quote left open: strict CSV refuses a row that ends inside quotes (at the end
    of the file) or whose quote closes in the middle of text (a later row's quote closing it)."""
    try:
        list(csv.reader(io.StringIO("".join(row_lines), newline=""), strict=True))
    except csv.Error as exc:
        return len(row_lines) > 1 or (at_end and "unexpected end of data" in str(exc))
    return False


def _row(header: list[str], cells: list[str]) -> Row:
    row: dict[str, Any] = dict(zip(header, cells))  # extra cells beyond the header are dropped
    for name in header[len(cells):]:
        row[name] = None
    if any(isinstance(v, str) and _has_surrogates(v) for v in row.values()):
        fixed = {k: v.encode("utf-8", "surrogateescape").decode("utf-8", "replace") if isinstance(v, str) else v
                 for k, v in row.items()}
        return json.dumps(fixed, ensure_ascii=False), INVALID_UTF8
    return row, None


def _has_surrogates(value: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in value)
