"""On-disk cache of teacher embeddings (safetensors), so the teacher's text encoders (T5-XXL is
~9 GB in bf16) need not stay on the device: encode once, train many epochs.

Layout: DIR/<teacher key>/shard-<hash>.safetensors, one shard per `put` (a batch), each holding
`embeds` (n, S, D), `pooled` (n, P) and, in its metadata, the JSON list of the n prompt keys. A
prompt's key hashes the teacher (`teacher_cache_id`: source, content fingerprint of a local folder,
dtype), the max_sequence_length and the text, so changing any of them never returns stale embeddings. Shards are written to a temp name and renamed, so a run killed
mid-write leaves no half shard behind. Disk: about S x D x 2 bytes a prompt in bf16 (77 x 4096 x 2
= 630 kB for FLUX/SD3).

The cache never fails a run (EmbeddingCache's docstring): trouble with its folder or a shard costs a
warning and some re-encoding, nothing more.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from core.errors import one_line
from train.teachers.base import Cond
from train.weights import read_header


def teacher_cache_id(source: str, dtype: torch.dtype) -> str:
    """The teacher part of every cache key. A local folder is also fingerprinted by content (as the
    curation embedding cache does), so a checkpoint replaced in place never reads stale embeddings."""
    from filters.lib.embed import fingerprint

    content = fingerprint(source) if Path(source).exists() else "hub"
    return f"{source}#{content}:{dtype}"


def prompt_key(teacher_id: str, max_len: int, text: str) -> str:
    return hashlib.sha256(f"{teacher_id}\x00{max_len}\x00{text}".encode("utf-8")).hexdigest()[:32]


# (cache folder, kind of trouble) already warned about: one warning a problem, however many cache
# objects the run opens on the same folder (the trainer reopens it after precomputing).
_WARNED: set[tuple[str, str]] = set()


class EmbeddingCache:
    """A cache that never fails a run: a folder that cannot be created or listed turns it off (every
    get a miss, put a no-op); a failed write (read-only folder, full disk) stops writing but keeps
    serving the shards already there; an inconsistent shard (unreadable, rows not matching its keys,
    NaN/inf) is a miss. Each with one warning. The trainer offloads the text encoders only while the
    cache is enabled and writable, since after that a miss could not be encoded."""

    def __init__(self, root: str | Path, teacher_id: str):
        self.teacher_id = teacher_id
        self.dir = Path(root) / hashlib.sha256(teacher_id.encode()).hexdigest()[:16]
        self.index: dict[str, tuple[Path, int]] = {}
        self.enabled = self.writable = True
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            shards = sorted(self.dir.glob("shard-*.safetensors"))
        except OSError as exc:
            self.enabled = self.writable = False
            self._warn("dir", f"embedding cache off: cannot use {self.dir} ({exc.strerror or exc}); "
                              "teacher embeddings are computed every time (set cache.dir to a writable folder)")
            return
        bad = []
        for shard in shards:
            try:
                keys = _shard_keys(shard)
            except (OSError, ValueError) as exc:  # only a cache miss
                bad.append(str(exc))
                continue
            for row, key in enumerate(keys):
                self.index[key] = (shard, row)
        if bad:
            self._warn("shard", f"embedding cache: ignoring {len(bad)} inconsistent shard(s), e.g. {bad[0]}")

    def _warn(self, kind: str, message: str) -> None:
        if (str(self.dir), kind) not in _WARNED:
            _WARNED.add((str(self.dir), kind))
            warnings.warn(message)

    def _drop(self, shard: Path, why: str) -> None:
        """Forget a shard found bad on reading: its prompts are misses from now on (and rewritten by put)."""
        self.index = {k: v for k, v in self.index.items() if v[0] != shard}
        self._warn("shard", f"embedding cache: ignoring inconsistent shard {why}")

    def __len__(self) -> int:
        return len(self.index)

    def keys(self, prompts: list[str], max_len: int) -> list[str]:
        return [prompt_key(self.teacher_id, max_len, p) for p in prompts]

    def has(self, prompts: list[str], max_len: int) -> bool:
        return self.enabled and all(k in self.index for k in self.keys(prompts, max_len))

    def get(self, prompts: list[str], max_len: int) -> Cond | None:
        """All prompts' embeddings in order, or None if any is missing (or its shard turns out bad)."""
        keys = self.keys(prompts, max_len)
        if not self.enabled or not all(k in self.index for k in keys):
            return None
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for i, key in enumerate(keys):
            shard, row = self.index[key]
            by_shard.setdefault(shard, []).append((i, row))
        embeds: list[torch.Tensor | None] = [None] * len(keys)
        pooled: list[torch.Tensor | None] = [None] * len(keys)
        for shard, pairs in by_shard.items():
            rows = self._read_rows(shard, [row for _, row in pairs])
            if rows is None:
                return None
            for (i, _), e, p in zip(pairs, *rows):
                embeds[i], pooled[i] = e, p
        return Cond(torch.stack(embeds), torch.stack(pooled))

    def _read_rows(self, shard: Path, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        try:
            with safe_open(str(shard), framework="pt") as f:
                e, p = f.get_tensor("embeds"), f.get_tensor("pooled")
            e, p = e[rows], p[rows]
        except Exception as exc:  # SafetensorError, OSError, IndexError: whatever it is, a miss
            self._drop(shard, f"{shard} ({one_line(exc, 160)})")
            return None
        if not (torch.isfinite(e).all() and torch.isfinite(p).all()):
            self._drop(shard, f"{shard} (NaN or inf values)")
            return None
        return e, p

    def put(self, prompts: list[str], max_len: int, cond: Cond) -> None:
        """Store a batch as one shard; a no-op once writing failed, or for non-finite embeddings."""
        if not self.writable or not (torch.isfinite(cond.embeds).all() and torch.isfinite(cond.pooled).all()):
            return
        keys = self.keys(prompts, max_len)
        name = hashlib.sha256("".join(keys).encode()).hexdigest()[:24]
        shard = self.dir / f"shard-{name}.safetensors"
        tmp = self.dir / f".{shard.name}.tmp-{os.getpid()}"
        try:
            save_file(
                {"embeds": cond.embeds.detach().cpu().contiguous(), "pooled": cond.pooled.detach().cpu().contiguous()},
                str(tmp),
                metadata={"keys": json.dumps(keys), "teacher": self.teacher_id, "max_sequence_length": str(max_len)},
            )
            os.replace(tmp, shard)
        except (OSError, SafetensorError) as exc:  # read-only folder, full disk, folder gone
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            self.writable = False
            self._warn("write", f"embedding cache: cannot write to {self.dir} ({one_line(exc, 160)}); "
                                "new teacher embeddings are no longer cached")
            return
        for row, key in enumerate(keys):
            self.index[key] = (shard, row)


def _shard_keys(shard: Path) -> list[str]:
    """A shard's prompt keys, checked against its tensors from the header alone (no data read)."""
    header = read_header(shard)
    try:
        keys = json.loads(header.metadata.get("keys", "null"))
    except ValueError:
        keys = None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"{shard}: no list of prompt keys in its metadata")
    rows = {name: header.shapes.get(name, ())[:1] for name in ("embeds", "pooled")}
    if any(r != (len(keys),) for r in rows.values()):
        raise ValueError(f"{shard}: {len(keys)} keys but rows {rows}")
    return keys
