"""`aesthetic`: the LAION improved-aesthetic-predictor (an MLP on L2-normalised CLIP
ViT-L/14 image embeddings) as a keep/drop filter on record.scores["aesthetic"].

Layout, as published: Linear(768,1024) Dropout(0.2) Linear(1024,128) Dropout(0.2)
Linear(128,64) Dropout(0.1) Linear(64,16) Linear(16,1), no activations, under a module
attribute `layers` (state-dict keys layers.0, .2, .4, .6, .7). Weights come from a local
file or a URL (downloaded once into the cache folder), as safetensors or a torch pickle
read with weights_only=True.

Modes:
- column: the source already gives record.scores["aesthetic"] (LAION-Aesthetics does);
  no model is loaded.
- image: record.meta["image"] is a local image path; CLIP image embedding -> MLP. This is
  what the predictor was trained for.
- text: the prompt's CLIP text embedding -> MLP. A proxy only: the MLP never saw text
  embeddings, which sit in another region of CLIP's space (the modality gap), so the
  scores are shifted and compressed and the 6.5 of the published recipe does not carry
  over. Use it to rank, and pick min_score from the scores of your own data.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.paths import cache_dir as default_cache_dir  # the parameter is called cache_dir
from filters.base import Context, Filter, register

if TYPE_CHECKING:
    from core.records import Prompt

DEFAULT_WEIGHTS = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac+logos+ava1-l14-linearMSE.pth"
)
MODES = ("column", "image", "text")


def build_mlp(input_size: int = 768):
    """The predictor in the LAION layout with fresh (random) weights."""
    from collections import OrderedDict

    from torch import nn

    layers = nn.Sequential(
        nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
        nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
    )
    return nn.Sequential(OrderedDict(layers=layers))


def fetch_weights(path_or_url: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local path as is; a URL downloaded once into <cache_dir>/aesthetic/."""
    src = str(path_or_url)
    if not src.startswith(("http://", "https://")):
        if not Path(src).is_file():
            raise FileNotFoundError(f"aesthetic: weights file not found: {src}")
        return Path(src)
    import torch

    folder = Path(cache_dir or default_cache_dir()) / "aesthetic"
    target = folder / src.split("?")[0].rsplit("/", 1)[-1]
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(src, str(target), progress=False)  # writes a temp file, then renames
        except Exception as exc:
            raise RuntimeError(f"aesthetic: could not download {src} ({exc}); fetch it on a machine with internet "
                               f"access and pass its local path as `weights`") from exc
    return target


def load_mlp(path_or_url: str | os.PathLike, cache_dir: str | os.PathLike | None = None, device: str = "cpu"):
    """The predictor with weights from a .safetensors file or a torch state dict."""
    import torch

    path = fetch_weights(path_or_url, cache_dir)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if "layers.0.weight" not in state:
        raise ValueError(f"aesthetic: {path} is not in the LAION layout (keys: {', '.join(list(state)[:6])} ...)")
    mlp = build_mlp(int(state["layers.0.weight"].shape[1]))
    try:
        mlp.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"aesthetic: {path} does not match the LAION layout: {exc}") from exc
    return mlp.to(device).eval()


def predict(mlp, embeddings: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Scores for L2-normalised embeddings (n, d) -> (n,) float32."""
    import torch

    device = next(mlp.parameters()).device
    out = []
    with torch.inference_mode():
        for s in range(0, len(embeddings), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(embeddings[s : s + batch_size])).to(device)
            out.append(mlp(batch).float().cpu())
    return torch.cat(out)[:, 0].numpy() if out else np.empty(0, np.float32)


@register
class Aesthetic(Filter):
    """Keeps records whose aesthetic score is >= min_score (6.5: the LAION-Aesthetics cut of
    the published recipe); drops the rest as "aesthetic: 5.91 < 6.50". A record without a
    score (no column in column mode, no image path, an unreadable image) is dropped with
    its reason, as nothing shows it qualifies; missing="keep" keeps it instead."""

    kind = "aesthetic"

    def __init__(self, mode: str = "column", min_score: float = 6.5, weights: str = DEFAULT_WEIGHTS,
                 clip_model: str = "ViT-L-14", clip_pretrained: str | None = "openai", batch_size: int = 32,
                 device: str = "cpu", missing: str = "drop"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if missing not in ("drop", "keep"):
            raise ValueError(f"missing must be 'drop' or 'keep', got {missing!r}")
        self.mode, self.min_score, self.weights, self.missing = mode, float(min_score), weights, missing
        self.clip_model, self.clip_pretrained = clip_model, clip_pretrained
        self.batch_size, self.device = batch_size, device
        self._why: dict[int, str] = {}
        self._models = None

    def _load(self, ctx: Context):
        if self._models is None:
            from filters.lib.embed import build_embedder

            clip = build_embedder("clip", model=self.clip_model, pretrained=self.clip_pretrained,
                                  batch_size=self.batch_size, device=self.device, cache_dir=ctx.cache_dir,
                                  progress=ctx.progress)
            mlp = load_mlp(self.weights, ctx.cache_dir, self.device)
            if mlp[0][0].in_features != clip.dim:
                raise ValueError(f"aesthetic: predictor takes {mlp[0][0].in_features}-d embeddings, "
                                 f"{self.clip_model} gives {clip.dim}-d")
            self._models = clip, mlp
        return self._models

    def score(self, records: list[Prompt], ctx: Context) -> None:
        self._why = {}
        if self.mode == "column":
            for r in records:
                if "aesthetic" not in r.scores:
                    self._why[id(r)] = "no_score (no aesthetic value in the source row; mode column)"
            return
        if not records:
            return
        clip, mlp = self._load(ctx)
        if self.mode == "text":
            todo, emb = records, clip.encode([r.text for r in records])
        else:
            todo = [r for r in records if r.meta.get("image")]
            for r in records:
                if not r.meta.get("image"):
                    self._why[id(r)] = "no image path in meta['image'] (mode image)"
            emb = clip.encode_images([r.meta["image"] for r in todo]) if todo else np.empty((0, clip.dim), np.float32)
        ok = ~np.isnan(emb).any(axis=1)
        scores = predict(mlp, emb[ok])
        for r, s in zip([r for r, good in zip(todo, ok) if good], scores.tolist()):
            r.scores["aesthetic"] = s
        for r, good in zip(todo, ok):
            if not good:
                self._why[id(r)] = f"unreadable_image {r.meta['image']}"

    def reason(self, record: Prompt) -> str | None:
        why = self._why.get(id(record))
        if why is not None or not math.isfinite(record.scores.get("aesthetic", math.nan)):
            return None if self.missing == "keep" else (why or "no_score")
        score = record.scores["aesthetic"]
        return f"low_aesthetic {score:.2f} < {self.min_score:.2f}" if score < self.min_score else None
