"""Writing files and folders so that a reader (or a kill) never sees half of one: atomic file writes, and
folders assembled in a marked staging folder beside their target and swapped into place when complete."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path
from typing import Any


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write_bytes` of the text in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write beside the target, then rename: a reader never sees half a file, and of several processes or
    threads writing the same path each rename installs one whole file (the temp name is unique to the
    writer). A plain open() (not mkstemp, which makes 0600 files) so the umask decides who may read it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---- staging: assemble beside the output, move into place when complete --------------------------

STAGING_MARKER = ".t5shrink-staging.json"  # what makes a hidden folder ours to clean up, and whose


def staging_path(out: Path, folder: bool = True) -> Path:
    """Where to assemble `out` (a folder, created, or a file path) before `swap_into_place` moves it there.

    It lies in a fresh hidden folder `.NAME.partial-PID-XXXX` beside `out` that carries a marker naming
    this process and host. Leftovers of killed writers of the same `out` are deleted first, so kills do
    not pile up copies; only folders with such a marker whose writer is gone count as leftovers: anything
    else beside the output (a user's `.NAME.partial-draft`, say) is never touched."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out)
    staging = _marked_folder(out, "partial") / out.name
    if folder:
        staging.mkdir()
    return staging


def _marked_folder(out: Path, kind: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.{kind}-{os.getpid()}-", dir=out.parent))
    marker = {"writer": "t5shrink", "pid": os.getpid(), "host": socket.gethostname(), "target": out.name}
    (folder / STAGING_MARKER).write_text(json.dumps(marker) + "\n")
    return folder


def _marker(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / STAGING_MARKER).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) and data.get("writer") == "t5shrink" else None


def remove_leftovers(out: Path) -> None:
    """Clear what killed writers of `out` left beside it: marked folders of this host whose process is
    gone. A writer killed between swap_into_place's two renames left the previous `out` aside and none
    in its place: that one is moved back, not deleted."""
    out = Path(out)
    for kind in ("partial", "old"):
        for folder in out.parent.glob(glob.escape(f".{out.name}.{kind}-") + "*"):
            marker = _marker(folder) if folder.is_dir() and not folder.is_symlink() else None
            if (marker is None or marker.get("target") != out.name or marker.get("host") != socket.gethostname()
                    or _running(marker.get("pid"))):
                continue  # not ours, another machine's, or a writer still at work
            if kind == "old" and not out.exists() and not out.is_symlink() and (folder / out.name).exists():
                os.rename(folder / out.name, out)
            shutil.rmtree(folder, ignore_errors=True)


def discard_staging(staging: Path) -> None:
    """Remove a staging path and its marked folder (a build that failed)."""
    holder = staging.parent
    target = holder if _marker(holder) is not None else staging
    if target.is_dir():
        shutil.rmtree(target, ignore_errors=True)
    else:
        target.unlink(missing_ok=True)


def _running(pid: Any) -> bool:
    """Whether `pid` is a live process other than this one (a leftover's writer still at work)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # alive, someone else's (or a number no process has: leave it be)
    return True


def swap_into_place(staging: Path, out: Path) -> None:
    """Replace `out` (a folder or file, or nothing) with the complete `staging`. The old one is moved
    aside into a marked folder first and deleted last, so a kill at any moment leaves the old or the new
    `out` whole, or (between the two renames) the old one aside, which the next write of `out` moves back
    before anything else (remove_leftovers)."""
    staging, out = Path(staging), Path(out)
    aside = None
    if out.exists() or out.is_symlink():
        aside = _marked_folder(out, "old")
        os.rename(out, aside / out.name)
    os.rename(staging, out)
    for folder in (aside, staging.parent):
        if folder is not None and _marker(folder) is not None:
            shutil.rmtree(folder, ignore_errors=True)
