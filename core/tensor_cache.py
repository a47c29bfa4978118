"""A sharded on-disk cache of tensor rows under fixed-width keys, with one damage policy for every user
(the teacher embeddings of train.cache and the sentence vectors of filters.lib.embed).

Layout: FOLDER/<checksum of the keys>.safetensors, one shard per `write`, holding `keys` (n, 20) uint8
(one digest a row), the caller's tensors (n, ...) and, in its metadata, a blake2b checksum of every
tensor ("<name>_blake2b"). A shard is named by its keys, so writers of the same rows (several ranks)
produce the same file, and writers of different rows different files; each is written to a unique temp
name and renamed (core.fileio), so no reader ever sees half a shard.

Damage policy. The cache never fails its user; every trouble costs at most a warning and recomputing:
- a folder that cannot be made or listed turns the cache off (every lookup a miss, writes dropped);
- a failed write (read-only folder, full disk) stops writing but keeps serving the shards there;
- a damaged shard (unreadable, truncated, a checksum that does not match, rows that do not match its
  keys, NaN/inf values) is skipped and its rows are misses, so the caller recomputes and rewrites them;
  it is deleted if the folder allows, so it is not met again. Headers and keys are checked when the
  cache opens, the tensors' checksums and values when a shard is first read.
Folder trouble is told once per folder in a process (a trainer reopens its cache); shard damage once
per cache object, naming the first shard.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import one_line
from core.fileio import atomic_write_bytes

KEY_BYTES = 20  # a key is a 20-byte digest (sha1 of a text, a truncated sha256, ...)
KEY_DTYPE = f"S{KEY_BYTES}"
# Bits that are all set in a NaN or an infinity (the exponent), by safetensors dtype.
_NON_FINITE_BITS = {"F16": ("<u2", 0x7C00), "BF16": ("<u2", 0x7F80), "F32": ("<u4", 0x7F800000),
                    "F64": ("<u8", 0x7FF0000000000000)}

# (folder, kind) already warned about: one warning a folder problem, however many cache objects a
# process opens on the same folder.
_FOLDER_TROUBLE_TOLD: set[tuple[str, str]] = set()


def key_array(digests: Sequence[bytes]) -> np.ndarray:
    """Digests as the key array every TensorCache method takes."""
    if any(len(d) != KEY_BYTES for d in digests):
        raise ValueError(f"tensor cache keys are {KEY_BYTES}-byte digests")
    return np.frombuffer(b"".join(digests), dtype=KEY_DTYPE) if digests else np.empty(0, KEY_DTYPE)


def _checksum(raw: Any) -> str:
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


class TensorCache:
    """Rows of named tensors under 20-byte keys, in shards in `folder`; see the module docstring.

    `framework` ("numpy" or "torch") is what `write` takes and `read` returns; torch is imported only by
    a torch cache. `label` starts every warning and `hint` says there how to fix a folder."""

    def __init__(self, folder: str | os.PathLike, *, label: str, hint: str, framework: str = "numpy"):
        self.folder = Path(folder)
        self.label, self.hint, self.framework = label, hint, framework
        self.enabled = self.writable = True
        self._damage_told = False
        self._shard_names: list[str | None] = []  # by shard number; None once dropped
        self._verified: set[tuple[str, int, int, int]] = set()  # shard files whose tensors were checked
        self._index = (np.empty(0, KEY_DTYPE), np.empty(0, np.int64), np.empty(0, np.int64))  # sorted keys, shard, row
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            paths = sorted(self.folder.glob("*.safetensors"))
        except OSError as exc:
            self.enabled = self.writable = False
            self._tell_folder_trouble("off", f"{label} off: cannot use {self.folder} ({exc.strerror or exc}); "
                                             f"nothing is read from it or written to it ({hint})")
            return
        parts = []
        for path in paths:
            keys = self._scan(path)
            if keys is not None:
                parts.append((len(self._shard_names), keys))
                self._shard_names.append(path.name)
        self._index_parts(parts)

    def __len__(self) -> int:
        """How many distinct keys the cache holds."""
        keys = self._index[0]
        return int(len(keys) and 1 + np.count_nonzero(keys[1:] != keys[:-1]))

    def shard_path(self, keys: np.ndarray) -> Path:
        """Where `write` stores these keys."""
        return self.folder / f"{_checksum(_key_rows(keys).data)}.safetensors"

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Which keys have a row in a shard not (yet) found damaged."""
        found = np.zeros(len(keys), bool)
        found[self._lookup(keys)[0]] = True
        return found

    def read(self, keys: np.ndarray) -> list[tuple[np.ndarray, dict[str, Any]]]:
        """The cached rows of `keys`, one part a shard: (their positions in `keys`, {tensor name: their rows}).
        Keys that are not cached, or whose shard turns out damaged, are in no part."""
        return list(self.iter_read(keys))

    def iter_read(self, keys: np.ndarray) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        """As `read`, one shard's part at a time: a caller that stores each part as it comes holds one
        shard's rows, not every row asked for."""
        positions, shards, rows = self._lookup(keys)
        for shard in np.unique(shards):
            pick = shards == shard
            tensors = self._load(int(shard))
            if tensors is not None:
                yield positions[pick], {name: t[rows[pick].tolist()] for name, t in tensors.items()}

    def write(self, keys: np.ndarray, tensors: Mapping[str, Any]) -> None:
        """Store the rows of `tensors` (n, ...) under the n `keys` as one shard: a no-op once writing has
        failed, or when a value is NaN or inf (it would be a damaged shard on the next read)."""
        if "keys" in tensors:
            raise ValueError("tensor cache: 'keys' is the name of the shard's own key tensor")
        if any(len(t) != len(keys) for t in tensors.values()):
            raise ValueError(f"tensor cache: {len(keys)} keys but rows {[len(t) for t in tensors.values()]}")
        if not self.writable or not len(keys):
            return
        data = shard_bytes(keys, tensors, self.framework)
        if not all(_finite(raw, dtype) for _, dtype, raw in _tensor_bytes(data)):
            return
        path = self.shard_path(keys)
        try:
            atomic_write_bytes(path, data)
        except OSError as exc:  # read-only folder, full disk, folder gone or now a file
            self.writable = False
            self._tell_folder_trouble("write", f"{self.label}: cannot write to {self.folder} "
                                               f"({exc.strerror or one_line(exc, 160)}); new entries are no "
                                               f"longer cached, those there are still read ({self.hint})")
            return
        if path.name not in self._shard_names:
            self._insert(len(self._shard_names), np.asarray(keys, KEY_DTYPE))
            self._shard_names.append(path.name)

    # ---- reading and checking shards ------------------------------------------------------------

    def _scan(self, path: Path) -> np.ndarray | None:
        """A shard's keys, its header checked; None if it is gone or damaged."""
        from safetensors import safe_open

        try:
            before = _identity(path, path.stat())
            with safe_open(str(path), framework="np") as f:
                metadata = f.metadata() or {}
                layout = {name: (f.get_slice(name).get_dtype(), tuple(f.get_slice(name).get_shape()))
                          for name in f.keys()}
                _check_layout(path, metadata, layout)
                keys = np.ascontiguousarray(f.get_tensor("keys"))
            if _checksum(keys.data) != metadata["keys_blake2b"]:
                raise ValueError("checksum mismatch in keys")
        except FileNotFoundError:
            return None  # removed by another process since the listing: nothing to say
        except OSError as exc:
            self._damaged(path, exc, None)  # unreadable (permissions, I/O): left in place
            return None
        except Exception as exc:  # SafetensorError, ValueError, TypeError: damaged content
            self._damaged(path, exc, before)
            return None
        return keys.reshape(-1).view(KEY_DTYPE)

    def _load(self, shard: int) -> dict[str, Any] | None:
        """A shard's tensors but its keys; checked the first time this file is read. None if it is damaged
        (then dropped) or gone."""
        path = self.folder / str(self._shard_names[shard])
        identity = None
        try:
            with open(path, "rb") as f:
                identity = _identity(path, os.fstat(f.fileno()))
                data = f.read()
            tensors = importlib.import_module(f"safetensors.{self.framework}").load(data)
            if identity not in self._verified:
                _verify(path, data)
                self._verified.add(identity)
        except FileNotFoundError:
            self._drop(shard)  # removed by another process: its rows are plain misses
            return None
        except Exception as exc:
            self._damaged(path, exc, None if isinstance(exc, OSError) else identity)
            self._drop(shard)
            return None
        tensors.pop("keys")
        return tensors

    def _damaged(self, path: Path, exc: BaseException, identity: tuple | None) -> None:
        """Warn (once per cache object) and delete the shard if it is still the file found damaged."""
        if not self._damage_told:
            self._damage_told = True
            warnings.warn(f"{self.label}: ignoring damaged shard {path} ({one_line(exc, 160)}); its entries are "
                          "recomputed (other damaged or inconsistent shards in this cache are skipped without "
                          "another warning)")
        try:
            if identity is not None and _identity(path, path.stat()) == identity:
                path.unlink()  # not a same-name shard another writer put there since
        except OSError:
            pass  # gone already, or a read-only folder: the shard stays, unused

    def _tell_folder_trouble(self, kind: str, message: str) -> None:
        if (str(self.folder), kind) not in _FOLDER_TROUBLE_TOLD:
            _FOLDER_TROUBLE_TOLD.add((str(self.folder), kind))
            warnings.warn(message)

    # ---- the index: keys sorted, with their shard and row ---------------------------------------

    def _index_parts(self, parts: list[tuple[int, np.ndarray]]) -> None:
        if not parts:
            return
        keys = np.concatenate([k for _, k in parts])
        shard = np.concatenate([np.full(len(k), s) for s, k in parts])
        row = np.concatenate([np.arange(len(k)) for _, k in parts])
        order = np.argsort(keys, kind="stable")
        self._index = (keys[order], shard[order], row[order])

    def _insert(self, shard: int, keys: np.ndarray) -> None:
        order = np.argsort(keys, kind="stable")
        at = np.searchsorted(self._index[0], keys[order])
        self._index = tuple(np.insert(column, at, new)
                            for column, new in zip(self._index, (keys[order], shard, order)))

    def _drop(self, shard: int) -> None:
        keep = self._index[1] != shard
        self._index = tuple(column[keep] for column in self._index)
        self._shard_names[shard] = None

    def _lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(positions in `keys` that are cached, their shard numbers, their rows)."""
        sorted_keys, shard, row = self._index
        if not len(sorted_keys) or not len(keys):
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
        keys = np.asarray(keys, KEY_DTYPE)
        at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
        hit = sorted_keys[at] == keys
        return np.flatnonzero(hit), shard[at[hit]], row[at[hit]]


# ---- the shard format ---------------------------------------------------------------------------


def _key_rows(keys: np.ndarray) -> np.ndarray:
    """Keys as the (n, KEY_BYTES) uint8 tensor a shard stores."""
    return np.frombuffer(np.asarray(keys, KEY_DTYPE).tobytes(), np.uint8).reshape(len(keys), KEY_BYTES)


def _identity(path: Path, stat: os.stat_result) -> tuple[str, int, int, int]:
    """What tells a shard file from a same-name one written since."""
    return path.name, stat.st_ino, stat.st_size, stat.st_mtime_ns


def shard_bytes(keys: np.ndarray, tensors: Mapping[str, Any], framework: str = "numpy") -> bytes:
    """A shard file's bytes: the keys and tensors, each tensor's checksum in the metadata. Nothing is
    checked here (TensorCache.write checks rows and values first), so tests can forge damage with it."""
    key_rows = _key_rows(keys)
    if framework == "torch":
        import torch

        key_rows = torch.from_numpy(key_rows.copy())
    data = importlib.import_module(f"safetensors.{framework}").save({"keys": key_rows, **tensors})
    metadata = {f"{name}_blake2b": _checksum(raw) for name, _, raw in _tensor_bytes(data)}
    length = int.from_bytes(data[:8], "little")
    header = {**json.loads(data[8 : 8 + length]), "__metadata__": metadata}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the data to 8 bytes
    return len(text).to_bytes(8, "little") + text + data[8 + length :]


def _tensor_bytes(data: bytes) -> list[tuple[str, str, memoryview]]:
    """(name, dtype, raw bytes) of each tensor of a shard whose header safetensors has already accepted."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    header.pop("__metadata__", None)
    body = memoryview(data)[8 + length :]
    return [(name, info["dtype"], body[info["data_offsets"][0] : info["data_offsets"][1]])
            for name, info in header.items()]


def _finite(raw: memoryview, dtype: str) -> bool:
    if dtype not in _NON_FINITE_BITS:
        return True  # integers (and float8, which this cache never stores)
    view, exponent = _NON_FINITE_BITS[dtype]
    return not np.any((np.frombuffer(raw, view) & exponent) == exponent)


def _check_layout(path: Path, metadata: dict[str, str], layout: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """A shard's header: a keys tensor named by its checksum, every tensor with a checksum and a row a key."""
    dtype, shape = layout.get("keys", (None, ()))
    if dtype != "U8" or len(shape) != 2 or shape[1] != KEY_BYTES:
        raise ValueError("no keys tensor (an older cache layout, or not a cache shard)")
    if path.stem != metadata.get("keys_blake2b"):
        raise ValueError("its name is not its keys' checksum")
    for name, (_, tensor_shape) in layout.items():
        if f"{name}_blake2b" not in metadata:
            raise ValueError(f"no checksum for {name}")
        if tensor_shape[:1] != shape[:1]:
            raise ValueError(f"{name} has {tensor_shape[:1]} rows for {shape[0]} keys")


def _verify(path: Path, data: bytes) -> None:
    """A whole shard, as read: its header, every tensor against its checksum, and no NaN or inf."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    metadata = header.get("__metadata__") or {}
    _check_layout(path, metadata, {name: (info["dtype"], tuple(info["shape"]))
                                   for name, info in header.items() if name != "__metadata__"})
    for name, dtype, raw in _tensor_bytes(data):
        if _checksum(raw) != metadata[f"{name}_blake2b"]:
            raise ValueError(f"checksum mismatch in {name}")
        if not _finite(raw, dtype):
            raise ValueError(f"NaN or inf values in {name}")
