"""Write and read curated sets in the layout of DESIGN.md, atomically.

The set is assembled in a hidden sibling folder and renamed into place only once
manifest.json is written, so a folder with a manifest is always complete, and a
killed build leaves nothing that passes for finished.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from curate.records import Prompt, parse_reason

FORMAT = "t5shrink.curated/1"
PART = "part-00000.parquet"


class OutputError(ValueError):
    pass


def _schema(score_keys: list[str], rejected: bool):
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


def _table(rows: list[dict[str, Any]], rejected: bool):
    import pyarrow as pa

    score_keys = sorted({k for row in rows for k in row["scores"]})
    for row in rows:
        row["scores"] = {k: row["scores"].get(k) for k in score_keys} if score_keys else None
    return pa.Table.from_pylist(rows, schema=_schema(score_keys, rejected))


def _write_parquet(rows: list[dict[str, Any]], path: Path, rejected: bool) -> dict[str, Any]:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(_table(rows, rejected), path, compression="zstd")
    return {"rows": len(rows), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def write_curated(out_dir: Path, kept: list[Prompt], rejected: list[tuple[Prompt, str]],
                  manifest: dict[str, Any]) -> Path:
    """Write DIR/data, DIR/rejected and DIR/manifest.json; replace DIR only when done."""
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir} is a file; choose a folder for --output")
    if Path.cwd().resolve().is_relative_to(out_dir):
        raise OutputError(f"{out_dir} is the current folder or holds it, and would be replaced as a whole; "
                          "choose another --output")
    if out_dir.exists():
        entries = {p.name for p in out_dir.iterdir()}
        if entries and "manifest.json" not in entries:
            raise OutputError(f"{out_dir} exists, is not empty and is not a curated set; refusing to replace it")
        foreign = sorted(entries - {"data", "rejected", "manifest.json"})
        if foreign:  # replacing the set would delete these too
            raise OutputError(f"{out_dir} holds {foreign[0]!r}, which is not part of a curated set; "
                              "move it or choose another --output")
    partial = staging_path(out_dir)
    outputs = {f"data/{PART}": _write_parquet([r.to_dict() for r in kept], partial / "data" / PART, False)}
    rejected_rows = []
    for record, reason in rejected:
        row = record.to_dict()
        row["step"], row["reason"] = parse_reason(reason)[0], reason
        rejected_rows.append(row)
    outputs[f"rejected/{PART}"] = _write_parquet(rejected_rows, partial / "rejected" / PART, True)
    manifest = {"format": FORMAT, **manifest, "outputs": outputs}
    atomic_write_text(partial / "manifest.json", json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")
    _fsync_dir(partial)
    swap_into_place(partial, out_dir)
    return out_dir


def atomic_write_text(path: Path, text: str) -> None:
    """Write beside the target, then rename: a reader never sees half a file. A plain open() (not
    mkstemp, which makes 0600 files) so the umask decides who may read it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def staging_path(out: Path, folder: bool = True) -> Path:
    """A fresh hidden `.NAME.partial-PID` beside `out` to assemble it in (a folder, created, or a file
    path), to be moved into place when complete. Leftovers of killed writers of the same `out`
    (.NAME.partial-*, .NAME.old-*) whose process is gone are deleted first, so kills do not pile up
    copies."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for pattern in (f".{out.name}.partial-*", f".{out.name}.old-*"):
        for stale in out.parent.glob(glob.escape(pattern[:-1]) + "*"):
            if _running(stale.name.rpartition("-")[2]):
                continue  # another writer's, still at work
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    if folder:
        staging.mkdir()
    return staging


def _running(pid: str) -> bool:
    """Whether `pid` is a live process other than this one (a leftover's writer still at work)."""
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's
    return True


def swap_into_place(staging: Path, out: Path) -> None:
    """Replace `out` (a folder or file, or nothing) with the complete folder `staging`. The old one is
    moved aside first and deleted last, so a kill at any moment leaves the old or the new `out` whole
    (plus, at worst, a hidden `.NAME.old-PID` leftover), never neither."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.rename(out, old)
    os.rename(staging, out)
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    elif old.exists():
        old.unlink()


def _fsync_dir(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())


def read_manifest(set_dir: Path) -> dict[str, Any]:
    path = Path(set_dir) / "manifest.json"
    if not path.exists():
        raise OutputError(f"{set_dir} is not a finished curated set (no manifest.json)")
    return json.loads(path.read_text())


def read_records(set_dir: Path, part: str = "data") -> list[dict[str, Any]]:
    """Rows of a finished set's data (or rejected) parquet files, in stored order."""
    import pyarrow.parquet as pq

    read_manifest(set_dir)
    rows: list[dict[str, Any]] = []
    for path in sorted((Path(set_dir) / part).glob("*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return rows
