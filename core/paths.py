"""Where things are: the cache folder, the one "not found" rule for every path-or-hub-id argument, and the
content fingerprint of a local model that every cache keys it by."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from core.errors import one_line

SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".parquet")  # the prompt files the readers take


def cache_dir() -> Path:
    """Where embeddings and tiny teachers are cached: $T5SHRINK_CACHE or ~/.cache/t5shrink."""
    return Path(os.environ.get("T5SHRINK_CACHE", Path.home() / ".cache" / "t5shrink"))


def fingerprint(path: str | os.PathLike) -> str:
    """Short hash of a local checkpoint (configs in full; weights by size and their first
    and last 64 KiB), so two different checkpoints never share cached embeddings."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha1()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.relative_to(path) if path.is_dir() else f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(65536))
            if size > 65536:
                fh.seek(max(65536, size - 65536))
                h.update(fh.read())
    return h.hexdigest()[:10]


def local_path_or_hub_id(value: str, what: str) -> Path | None:
    """The one "not found" rule of every path-or-hub-id argument: the local file or folder `value` names,
    or None when it is a hub id (owner/name) to fetch. A value that can only be a path ("./x", "a/b/c",
    "x.txt", "dir/") and does not exist is an error naming it and `what` it was meant to be."""
    path = Path(value).expanduser()
    if path.exists():
        return path
    if looks_like_path(value):
        raise FileNotFoundError(f"{what} {value}: no such file or folder")
    return None


def hub_error(value: str, what: str, exc: BaseException) -> ValueError:
    """The error for a hub id that could not be fetched: names the id, and says what would work offline."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    why = "HF_HUB_OFFLINE is set" if offline else one_line(exc, 200)
    return ValueError(f"{what} {value}: not a local path, and it cannot be fetched from the Hugging Face Hub "
                      f"({why}); it needs the network, or give a local folder")


def looks_like_path(uri: str) -> bool:
    """Whether `uri` can only be a local path (so a missing one is an error, not a hub lookup)."""
    # A hub id is "name" or "owner/name"; a trailing slash or deeper nesting can only be a folder
    # (a URL such as hf://datasets/owner/name is left to `datasets`).
    if "://" in uri:
        return False
    if uri.count("/") == 1 and Path(uri.split("/")[0]).is_dir():
        return True  # "curated/balanced" beside a local curated/ folder: a mistyped set, not a hub dataset
    return uri.startswith((".", "/", "~")) or Path(uri).suffix in SUFFIXES or uri.endswith("/") or uri.count("/") > 1
