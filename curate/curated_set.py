"""The curated-set format (data/, rejected/, manifest.json: the README's layout): the one place that
writes it, tells a set from any other folder, and reads its manifest and its rows.

A folder is a curated set when it holds manifest.json: the set is assembled in a hidden staging folder beside
the output and renamed into place only once manifest.json is written, so a folder with a manifest is
always complete, and a killed build leaves nothing that passes for finished.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from core.errors import one_line
from core.fileio import atomic_write_text, discard_staging, staging_path, swap_into_place
from core.records import Drop, Prompt, records_to_columns

FORMAT = "t5shrink.curated/1"
MANIFEST = "manifest.json"
PARTS = ("data", "rejected")  # the kept rows, and the dropped ones with their step and reason
PART = "part-00000.parquet"


class OutputError(ValueError):
    """--output cannot take a curated set (a file, the current folder, a folder holding other things)."""


class CuratedSetError(ValueError):
    """A folder that is not a readable curated set; the message says why in one line."""


def _schema(score_keys: list[str], rejected: bool):
    """The parquet layout of data/ (and, with `rejected`, of rejected/: plus step and reason)."""
    import pyarrow as pa

    keys = score_keys or ["words"]  # parquet cannot store a struct with no fields
    fields = [
        ("id", pa.string()), ("text", pa.string()), ("criterion", pa.string()), ("category", pa.string()),
        ("tags", pa.list_(pa.string())), ("rendered_text", pa.list_(pa.string())), ("source", pa.string()),
        ("scores", pa.struct([(k, pa.float64()) for k in keys])), ("cluster", pa.int64()), ("stage", pa.string()),
    ]
    if rejected:
        fields += [("step", pa.string()), ("reason", pa.string())]
    return pa.schema(fields)


def _table(records: list[Prompt], drops: list[Drop] | None):
    """Records as a table in that layout, built column by column (no dict per record)."""
    import pyarrow as pa

    columns = records_to_columns(records)
    scores = columns["scores"]
    keys = sorted({k for s in scores if s for k in s})
    schema = _schema(keys, drops is not None)
    if keys:  # every record gets every key (null where it has no such score)
        columns["scores"] = pa.StructArray.from_arrays(
            [pa.array([s.get(k) if s else None for s in scores], pa.float64()) for k in keys], names=keys)
    else:
        columns["scores"] = pa.nulls(len(records), schema.field("scores").type)
    if drops is not None:
        columns["step"] = [drop.step for drop in drops]
        columns["reason"] = [str(drop) for drop in drops]
    return pa.table({name: columns[name] for name in schema.names}, schema=schema)


def _write_parquet(records: list[Prompt], path: Path, drops: list[Drop] | None = None) -> dict[str, Any]:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(_table(records, drops), path, compression="zstd")
    return {"rows": len(records), "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


REJECTED_PART_ROWS = 50_000  # rejected rows are written out in parts of this many, so they never pile up
REJECTED_PART_CHARS = 64 * 2**20  # ... or of this much text, whichever comes first


def check_output_dir(out_dir: Path) -> Path:
    """`out_dir` resolved, if a build may replace it: nothing, an empty folder or a curated set."""
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir} is a file; choose a folder for --output")
    if Path.cwd().resolve().is_relative_to(out_dir):
        raise OutputError(f"{out_dir} is the current folder or holds it, and would be replaced as a whole; "
                          "choose another --output")
    if out_dir.exists():
        entries = {p.name for p in out_dir.iterdir()}
        if entries and not is_curated_set(out_dir):
            raise OutputError(f"{out_dir} exists, is not empty and is not a curated set; refusing to replace it")
        foreign = sorted(entries - {*PARTS, MANIFEST})
        if foreign:  # replacing the set would delete these too
            raise OutputError(f"{out_dir} holds {foreign[0]!r}, which is not part of a curated set; "
                              "move it or choose another --output")
    return out_dir


class CuratedSetWriter:
    """Writes DIR/data, DIR/rejected and DIR/manifest.json, replacing DIR only when all is written.

    The set is assembled in a staging folder beside DIR. Rejected rows are written as they come
    (`reject`), in parts of at most REJECTED_PART_ROWS rows, so a build that drops millions of rows
    never holds them all; `finish` writes the kept rows and the manifest and moves the set into place.
    As a context manager, an error on the way leaves nothing behind but what was there before."""

    def __init__(self, out_dir: Path):
        self.out_dir = check_output_dir(out_dir)
        self.staging = staging_path(self.out_dir)
        self.outputs: dict[str, dict[str, Any]] = {}
        self._pending: list[tuple[Prompt, Drop]] = []
        self._pending_chars = 0

    def __enter__(self) -> "CuratedSetWriter":
        return self

    def __exit__(self, kind, error, trace) -> None:
        if error is not None:
            discard_staging(self.staging)

    def reject(self, dropped: Iterable[tuple[Prompt, Drop]]) -> None:
        """Queue dropped records with why; written out in parts as the queue fills."""
        for pair in dropped:
            self._pending.append(pair)
            self._pending_chars += len(pair[0].text)
            if len(self._pending) >= REJECTED_PART_ROWS or self._pending_chars >= REJECTED_PART_CHARS:
                self._write_rejected()

    def _write_rejected(self) -> None:
        records = [record for record, _ in self._pending]
        drops = [drop for _, drop in self._pending]
        self._pending, self._pending_chars = [], 0
        part = f"rejected/part-{sum(k.startswith('rejected/') for k in self.outputs):05d}.parquet"
        self.outputs[part] = _write_parquet(records, self.staging / part, drops)

    def finish(self, kept: list[Prompt], manifest: dict[str, Any]) -> Path:
        if self._pending or not any(k.startswith("rejected/") for k in self.outputs):
            self._write_rejected()  # an empty part when nothing was rejected: rejected/ always exists
        self.outputs[f"data/{PART}"] = _write_parquet(kept, self.staging / "data" / PART)
        manifest = {"format": FORMAT, **manifest, "outputs": self.outputs}
        atomic_write_text(self.staging / MANIFEST, json.dumps(manifest, indent=2, default=str) + "\n")
        _fsync_dir(self.staging)
        swap_into_place(self.staging, self.out_dir)
        return self.out_dir


def write_curated(out_dir: Path, kept: list[Prompt], rejected: list[tuple[Prompt, Drop]],
                  manifest: dict[str, Any]) -> Path:
    """Write a whole curated set at once (see CuratedSetWriter)."""
    with CuratedSetWriter(out_dir) as writer:
        writer.reject(rejected)
        return writer.finish(kept, manifest)


def _fsync_dir(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())


def is_curated_set(path: Path) -> bool:
    """Whether `path` is a curated set: a folder holding data/ and manifest.json (the writer puts it there
    last), unless that manifest names another format (another tool's manifest.json beside prompt files).
    A manifest that cannot be read counts as a set's, so that read_manifest says what is wrong with it."""
    path = Path(path)
    if not (path / MANIFEST).is_file() or not (path / PARTS[0]).is_dir():
        return False
    try:
        fmt = json.loads((path / MANIFEST).read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError, RecursionError):
        return True
    return fmt is None or str(fmt).startswith(FORMAT.split("/")[0])


def read_manifest(set_dir: Path) -> dict[str, Any]:
    path = Path(set_dir) / MANIFEST
    if not path.is_file():
        raise CuratedSetError(f"{set_dir} is not a finished curated set (no manifest.json)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CuratedSetError(f"{path}: not valid JSON ({str(exc)[:200]}); rebuild the set") from None
    except OSError as exc:
        raise CuratedSetError(f"{path}: cannot be read ({exc})") from None
    if not isinstance(manifest, dict):
        raise CuratedSetError(f"{path}: not a curated set's manifest (not a JSON object); rebuild the set")
    return manifest


def part_files(set_dir: Path, part: str = "data") -> list[Path]:
    """The parquet files of a part ("data" or "rejected"), in stored order."""
    if part not in PARTS:
        raise ValueError(f"a curated set's parts are {' and '.join(PARTS)}, not {part!r}")
    return sorted((Path(set_dir) / part).glob("*.parquet"))


def iter_rows(set_dir: Path, part: str = "data", columns: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
    """The rows of a part in stored order, a record batch at a time; with `columns`, only those (None where
    a file lacks one: parts may differ, as rejected/ parts written with different scores do)."""
    import pyarrow.parquet as pq

    for path in part_files(set_dir, part):
        try:
            handle = pq.ParquetFile(path)
            present = set(handle.schema_arrow.names)
            wanted = None if columns is None else [c for c in columns if c in present]
            for batch in handle.iter_batches(batch_size=16_384, columns=wanted):
                for row in batch.to_pylist():
                    yield row if columns is None else {c: row.get(c) for c in columns}
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise _unreadable(path, exc) from exc


def read_columns(set_dir: Path, part: str, columns: Sequence[str]) -> dict[str, list[Any]]:
    """`columns` of a part's rows in stored order, each a list (None where a file lacks the column)."""
    import pyarrow.parquet as pq

    out: dict[str, list[Any]] = {c: [] for c in columns}
    for path in part_files(set_dir, part):
        try:  # file by file, not as a dataset: parts whose `scores` structs differ still combine
            present = set(pq.read_schema(path).names)
            table = pq.read_table(path, columns=[c for c in columns if c in present])
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise _unreadable(path, exc) from exc
        for c in columns:
            out[c].extend(table.column(c).to_pylist() if c in present else [None] * table.num_rows)
    return out


def _unreadable(path: Path, exc: Exception) -> CuratedSetError:
    return CuratedSetError(f"{path}: cannot be read ({type(exc).__name__}: {one_line(exc, 200)}); rebuild the set")


def read_records(set_dir: Path, part: str = "data") -> list[dict[str, Any]]:
    """Every row of a finished set's part, in stored order."""
    read_manifest(set_dir)
    return list(iter_rows(set_dir, part))
