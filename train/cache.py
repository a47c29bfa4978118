"""On-disk cache of teacher embeddings, so the teacher's text encoders (T5-XXL is ~9 GB in bf16) need
not stay on the device: encode once, train many epochs.

The storage and its damage policy are core.tensor_cache's (sharded safetensors, written atomically; a
folder or shard in trouble costs a warning and some re-encoding, never the run). What is teacher-specific
lives here: the folder DIR/<teacher key>/ and a prompt's key, which hashes the teacher
(`teacher_cache_id`: source, content fingerprint of a local folder, dtype), the max_sequence_length and
the text, so changing any of them never returns stale embeddings; and the packing of a Cond into the
shard tensors `embeds` (n, S, D) and `pooled` (n, P). Disk: about S x D x 2 bytes a prompt in bf16
(77 x 4096 x 2 = 630 kB for FLUX/SD3).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from core.tensor_cache import KEY_BYTES, TensorCache, key_array
from train.teachers.base import Cond


def teacher_cache_id(source: str, dtype: torch.dtype) -> str:
    """The teacher part of every cache key. A local folder is also fingerprinted by content (as the
    curation embedding cache does), so a checkpoint replaced in place never reads stale embeddings."""
    from core.paths import fingerprint

    content = fingerprint(source) if Path(source).exists() else "hub"
    return f"{source}#{content}:{dtype}"


class EmbeddingCache:
    """The teacher's embeddings by (prompt, max_len). It never fails a run (core.tensor_cache): `enabled`
    is false when its folder cannot be used, `writable` once a write failed. The trainer offloads the
    text encoders only while both hold, since after that a miss could not be encoded."""

    def __init__(self, root: str | Path, teacher_id: str):
        self.teacher_id = teacher_id
        self.store = TensorCache(Path(root) / hashlib.sha256(teacher_id.encode()).hexdigest()[:16],
                                 label="embedding cache", hint="set cache.dir to a writable folder",
                                 framework="torch")

    @property
    def dir(self) -> Path:
        return self.store.folder

    @property
    def enabled(self) -> bool:
        return self.store.enabled

    @property
    def writable(self) -> bool:
        return self.store.writable

    def __len__(self) -> int:
        return len(self.store)

    def keys(self, prompts: list[str], max_len: int) -> np.ndarray:
        return key_array([hashlib.sha256(f"{self.teacher_id}\x00{max_len}\x00{p}".encode("utf-8")).digest()[:KEY_BYTES]
                          for p in prompts])

    def has(self, prompts: list[str], max_len: int) -> bool:
        return self.enabled and bool(self.store.contains(self.keys(prompts, max_len)).all())

    def get(self, prompts: list[str], max_len: int) -> Cond | None:
        """All prompts' embeddings in order, or None if any is missing (or its shard turns out damaged)."""
        keys = self.keys(prompts, max_len)
        if not self.enabled or not self.store.contains(keys).all():
            return None
        embeds: list[torch.Tensor | None] = [None] * len(keys)
        pooled: list[torch.Tensor | None] = [None] * len(keys)
        for positions, rows in self.store.read(keys):
            for row, i in enumerate(positions):
                embeds[i], pooled[i] = rows["embeds"][row], rows["pooled"][row]
        if any(e is None for e in embeds):
            return None
        return Cond(torch.stack(embeds), torch.stack(pooled))

    def put(self, prompts: list[str], max_len: int, cond: Cond) -> None:
        """Store a batch as one shard; a no-op once writing failed, or for non-finite embeddings."""
        self.store.write(self.keys(prompts, max_len), {"embeds": cond.embeds.detach().cpu().contiguous(),
                                                        "pooled": cond.pooled.detach().cpu().contiguous()})
