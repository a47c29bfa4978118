"""The LAION aesthetic predictor: the MLP layout and its loaders, and the `aesthetic` step in
column, text and image modes (a tiny open_clip model built from a config, loaded through
open_clip's 'local-dir:' path as a user's checkpoint would be)."""

from __future__ import annotations

import numpy as np
import pytest
from shared_helpers import count_calls, save_tiny_clip

from core.errors import ConfigError
from core.records import Prompt
from filters.aesthetic import build_mlp, fetch_weights, load_mlp, predict
from filters.base import Context, build_step

LAYOUT_KEYS = {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}


def _prompt(text: str, **kw) -> Prompt:
    return Prompt(text=text, criterion="quality", source="t", **kw)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A LAION-layout MLP with random weights, saved both ways."""
    import torch
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("mlp")
    torch.manual_seed(0)
    mlp = build_mlp(768)
    with torch.no_grad():  # spread the outputs so a threshold splits them
        mlp[0][7].bias.fill_(5.0)
    state = mlp.state_dict()
    save_file(state, str(folder / "mlp.safetensors"))
    torch.save(state, folder / "mlp.pth")
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    return save_tiny_clip(tmp_path_factory.mktemp("clip"), embed_dim=768, patch_size=16)  # 768: the LAION MLP's input


def test_layout_and_both_formats_load_and_agree(weights):
    assert set(build_mlp().state_dict()) == LAYOUT_KEYS
    a, b = load_mlp(weights / "mlp.safetensors"), load_mlp(weights / "mlp.pth")
    x = np.random.default_rng(0).standard_normal((5, 768)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sa, sb = predict(a, x), predict(b, x)
    assert sa.shape == (5,) and np.isfinite(sa).all() and len(set(sa.round(5))) == 5
    np.testing.assert_allclose(sa, sb, rtol=1e-6)
    np.testing.assert_allclose(predict(a, x), sa)  # eval mode: dropout off, repeatable


def test_wrong_layout_and_missing_weights_fail_clearly(tmp_path):
    import torch

    torch.save({"fc.weight": torch.zeros(1, 768)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not in the LAION layout"):
        load_mlp(tmp_path / "other.pth")
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        load_mlp(tmp_path / "absent.pth")
    with pytest.raises(RuntimeError, match="could not download .* pass its local path"):
        fetch_weights("http://127.0.0.1:9/sac+logos+ava1-l14-linearMSE.pth", tmp_path)  # nothing listens on port 9


def test_column_mode_needs_no_model():
    step = build_step("aesthetic", {"mode": "column", "weights": "/nowhere/at/all.pth", "clip_model": "no-such-model"})
    recs = [_prompt("a", scores={"aesthetic": 7.1}), _prompt("b", scores={"aesthetic": 5.91}), _prompt("c")]
    result = step.run(recs, Context(progress=False))
    assert [r.text for r in result.kept] == ["a"]
    assert [why for _, why in result.dropped] == ["aesthetic: low_aesthetic 5.91 < 6.50",
                                                  "aesthetic: no_score (no aesthetic value in the source row; mode column)"]
    keep = build_step("aesthetic", {"min_score": 5.0, "missing": "keep"}).run(recs, Context(progress=False))
    assert [r.text for r in keep.kept] == ["a", "b", "c"]


def test_text_mode_scores_with_clip_text_tower(weights, tiny_clip, tmp_path):
    from filters.lib.embed import build_embedder

    texts = ["a castle at dawn", "a bowl of fruit", "a portrait of a sailor", "a foggy harbour", "a neon city"]
    clip = build_embedder("clip", model=tiny_clip, progress=False)
    expected = predict(load_mlp(weights / "mlp.safetensors"), clip.encode(texts))
    cut = float(np.median(expected))
    step = build_step("aesthetic", {"mode": "text", "weights": str(weights / "mlp.safetensors"), "min_score": cut,
                                    "clip_model": tiny_clip, "clip_pretrained": None})
    recs = [_prompt(t) for t in texts]
    result = step.run(recs, Context(cache_dir=tmp_path, progress=False))
    np.testing.assert_allclose([r.scores["aesthetic"] for r in recs], expected, rtol=1e-5)
    assert len(result.kept) == 3 and len(result.dropped) == 2  # the median and above stay
    assert all(why.startswith("aesthetic: ") and f" < {cut:.2f}" in why for _, why in result.dropped)


def test_image_mode_scores_images_and_drops_missing_ones(weights, tiny_clip, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray((rng.random((40 + i, 48, 3)) * 255).astype("uint8")).save(paths[-1])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    recs = [_prompt(f"p{i}", meta={"image": str(p)}) for i, p in enumerate(paths)]
    recs += [_prompt("broken", meta={"image": str(tmp_path / "broken.png")}), _prompt("no image")]
    step = build_step("aesthetic", {"mode": "image", "weights": str(weights / "mlp.pth"), "min_score": -1e9,
                                    "clip_model": tiny_clip, "clip_pretrained": None})
    result = step.run(recs, Context(cache_dir=tmp_path / "cache", progress=False))
    assert [r.text for r in result.kept] == ["p0", "p1", "p2"]
    scores = [r.scores["aesthetic"] for r in result.kept]
    assert np.isfinite(scores).all() and len(set(np.round(scores, 6))) == 3
    assert [why for _, why in result.dropped] == [f"aesthetic: unreadable_image {tmp_path / 'broken.png'}",
                                                  "aesthetic: no image path in meta['image'] (mode image)"]
    # Image embeddings are cached by file content: a second build reads them back.
    again = build_step("aesthetic", {"mode": "image", "weights": str(weights / "mlp.pth"), "min_score": -1e9,
                                     "clip_model": tiny_clip, "clip_pretrained": None})
    ctx = Context(cache_dir=tmp_path / "cache", progress=False)
    clip, _ = again._load(ctx)
    calls = count_calls(clip, "_encode_image_files")
    fresh = [_prompt(f"q{i}", meta={"image": str(p)}) for i, p in enumerate(paths)]
    again.run(fresh, ctx)
    np.testing.assert_allclose([r.scores["aesthetic"] for r in fresh], scores, rtol=1e-6)
    assert calls == []


def test_bad_options():
    with pytest.raises(ConfigError, match="mode must be"):
        build_step("aesthetic", {"mode": "vibes"})
    with pytest.raises(ConfigError, match="missing must be"):
        build_step("aesthetic", {"missing": "maybe"})
