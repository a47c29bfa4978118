"""On-disk cache of teacher embeddings (safetensors), so the teacher's text encoders (T5-XXL is
~9 GB in bf16) need not stay on the device: encode once, train many epochs.

Layout: DIR/<teacher key>/shard-<hash>.safetensors, one shard per `put` (a batch), each holding
`embeds` (n, S, D), `pooled` (n, P) and, in its metadata, the JSON list of the n prompt keys. A
prompt's key hashes the teacher (`teacher_cache_id`: source, content fingerprint of a local folder,
dtype), the max_sequence_length and the text, so changing any of them never returns stale embeddings. Shards are written to a temp name and renamed, so a run killed
mid-write leaves no half shard behind. Disk: about S x D x 2 bytes a prompt in bf16 (77 x 4096 x 2
= 630 kB for FLUX/SD3).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from train.teachers.base import Cond


def teacher_cache_id(source: str, dtype: torch.dtype) -> str:
    """The teacher part of every cache key. A local folder is also fingerprinted by content (as the
    curation embedding cache does), so a checkpoint replaced in place never reads stale embeddings."""
    from filters.embed import fingerprint

    content = fingerprint(source) if Path(source).exists() else "hub"
    return f"{source}#{content}:{dtype}"


def prompt_key(teacher_id: str, max_len: int, text: str) -> str:
    return hashlib.sha256(f"{teacher_id}\x00{max_len}\x00{text}".encode("utf-8")).hexdigest()[:32]


class EmbeddingCache:
    def __init__(self, root: str | Path, teacher_id: str):
        self.teacher_id = teacher_id
        self.dir = Path(root) / hashlib.sha256(teacher_id.encode()).hexdigest()[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index: dict[str, tuple[Path, int]] = {}
        for shard in sorted(self.dir.glob("shard-*.safetensors")):
            try:
                with safe_open(str(shard), framework="pt") as f:
                    keys = json.loads((f.metadata() or {}).get("keys", "[]"))
            except Exception:  # an unreadable shard is only a cache miss
                continue
            for row, key in enumerate(keys):
                self.index[key] = (shard, row)

    def __len__(self) -> int:
        return len(self.index)

    def keys(self, prompts: list[str], max_len: int) -> list[str]:
        return [prompt_key(self.teacher_id, max_len, p) for p in prompts]

    def has(self, prompts: list[str], max_len: int) -> bool:
        return all(k in self.index for k in self.keys(prompts, max_len))

    def get(self, prompts: list[str], max_len: int) -> Cond | None:
        """All prompts' embeddings in order, or None if any is missing."""
        keys = self.keys(prompts, max_len)
        if not all(k in self.index for k in keys):
            return None
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for i, key in enumerate(keys):
            shard, row = self.index[key]
            by_shard.setdefault(shard, []).append((i, row))
        embeds: list[torch.Tensor | None] = [None] * len(keys)
        pooled: list[torch.Tensor | None] = [None] * len(keys)
        for shard, pairs in by_shard.items():
            with safe_open(str(shard), framework="pt") as f:
                e, p = f.get_tensor("embeds"), f.get_tensor("pooled")
            for i, row in pairs:
                embeds[i], pooled[i] = e[row], p[row]
        return Cond(torch.stack(embeds), torch.stack(pooled))

    def put(self, prompts: list[str], max_len: int, cond: Cond) -> None:
        keys = self.keys(prompts, max_len)
        name = hashlib.sha256("".join(keys).encode()).hexdigest()[:24]
        shard = self.dir / f"shard-{name}.safetensors"
        tmp = self.dir / f".{shard.name}.tmp-{os.getpid()}"
        save_file(
            {"embeds": cond.embeds.detach().cpu().contiguous(), "pooled": cond.pooled.detach().cpu().contiguous()},
            str(tmp),
            metadata={"keys": json.dumps(keys), "teacher": self.teacher_id, "max_sequence_length": str(max_len)},
        )
        os.replace(tmp, shard)
        for row, key in enumerate(keys):
            self.index[key] = (shard, row)
