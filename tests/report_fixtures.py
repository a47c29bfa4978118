"""Small curated-set folders in the `curate build` layout, written directly with pyarrow.

The report must not depend on the build command, so its tests make their own sets:
deterministic synthetic prompts per criterion x category, selected by quota exactly as
a balanced build would (first N of a fixed pool), plus rejected records and a manifest.
Two sets with the same seed share their pools, so a quota change shows up in `diff` as
prompts only in one set.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from core.records import Prompt
from curate.curated_set import _schema

SEMANTIC_CATEGORIES = ("color", "shape", "texture", "spatial", "3d_spatial", "non_spatial", "numeracy", "complex")
DEFAULT_FRACTIONS = {"quality": 0.47, "semantic": 0.30, "text": 0.23}

_OBJECTS = ["cube", "sphere", "vase", "chair", "book", "apple", "car", "lamp", "bird", "dog", "cat", "bench", "clock",
            "bottle", "kite", "guitar", "teapot", "umbrella", "boat", "tree", "horse", "cup", "shoe", "hat"]
_COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink", "brown"]
_SHAPES = ["round", "square", "triangular", "oval", "hexagonal", "cylindrical", "conical", "star-shaped"]
_TEXTURES = ["wooden", "metallic", "fluffy", "glass", "leather", "rubber", "velvet", "stone", "plastic"]
_REL2D = ["on the left of", "on the right of", "on top of", "below", "next to"]
_REL3D = ["in front of", "behind", "hidden behind", "far away from"]
_VERBS = ["a man is holding", "a woman is painting", "a child is hugging", "a robot is repairing", "a girl is feeding"]
_NUMS = ["two", "three", "four", "five", "six"]
_STYLES = ["oil painting", "35mm photo", "watercolor", "digital art", "studio lighting", "cinematic still",
           "golden hour", "highly detailed", "soft focus", "isometric render"]
_SCENES = ["a misty forest", "a neon city street at night", "a quiet harbour", "an alpine lake", "a desert canyon",
           "a cosy library", "a flower market", "a snowy village", "a rooftop garden", "an old lighthouse"]
_SUBJECTS = ["A cat", "A robot", "A penguin", "An astronaut", "A chef", "A fox", "A knight", "A teddy bear"]
_CARRY = ["holding a sign reading", "carrying a banner with the words", "next to a billboard that says",
          "wearing a t-shirt printed with", "standing under a neon sign reading"]
_WORDS = ["hello", "open", "coffee", "dream big", "sale", "welcome", "stop", "peace", "t5shrink", "bonjour", "exit",
          "fresh bread", "good vibes", "2025", "free hugs", "keep out"]


def _semantic_text(cat: str, rng: random.Random) -> str:
    o1, o2 = rng.sample(_OBJECTS, 2)
    if cat == "color":
        c1, c2 = rng.sample(_COLORS, 2)
        return f"a {c1} {o1} and a {c2} {o2}"
    if cat == "shape":
        return f"a {rng.choice(_SHAPES)} {o1} and a {rng.choice(_SHAPES)} {o2}"
    if cat == "texture":
        return f"a {rng.choice(_TEXTURES)} {o1} and a {rng.choice(_TEXTURES)} {o2}"
    if cat == "spatial":
        return f"a {o1} {rng.choice(_REL2D)} a {o2}"
    if cat == "3d_spatial":
        return f"a {o1} {rng.choice(_REL3D)} a {o2}"
    if cat == "non_spatial":
        return f"{rng.choice(_VERBS)} a {o1} near a {o2}"
    if cat == "numeracy":
        n1, n2 = rng.sample(_NUMS, 2)
        return f"{n1} {o1}s and {n2} {o2}s"
    c1, c2 = rng.sample(_COLORS, 2)
    return (f"a {c1} {rng.choice(_TEXTURES)} {o1} {rng.choice(_REL2D)} two {c2} {o2}s "
            f"while {rng.choice(_VERBS)} a {rng.choice(_OBJECTS)}")


def _quality_text(rng: random.Random) -> str:
    return (f"{rng.choice(_STYLES)} of a {rng.choice(_COLORS)} {rng.choice(_OBJECTS)} in {rng.choice(_SCENES)}, "
            f"{rng.choice(_STYLES)}, {rng.choice(_STYLES)}")


def pool(criterion: str, category: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """The first n distinct records of a deterministic pool for (criterion, category)."""
    rng = random.Random(f"{seed}:{criterion}:{category}")
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n + 1000:
            raise ValueError(f"pool {criterion}/{category} cannot make {n} distinct prompts")
        rendered: list[str] = []
        if criterion == "quality":
            text = _quality_text(rng)
        elif criterion == "semantic":
            text = _semantic_text(category, rng)
        else:
            word = rng.choice(_WORDS)
            rendered = [word]
            text = f"{rng.choice(_SUBJECTS)} {rng.choice(_CARRY)} '{word}' in {rng.choice(_SCENES)}"
        p = Prompt(text=text, criterion=criterion, category=category, source=f"generator:{criterion}",
                   tags=[category], rendered_text=rendered)
        if p.id in seen:
            continue
        seen.add(p.id)
        words = len(text.split())
        p.scores = {"tokens": float(round(words * 1.3) + 1)}
        if criterion == "quality":
            p.scores["aesthetic"] = round(6.5 + 1.5 * rng.random() ** 2, 4)
        p.scores["visual"] = round(rng.random(), 4)
        p.cluster = {"quality": 0, "semantic": 100, "text": 200}[criterion] + rng.randrange(12)
        p.stage = "mixed"
        out.append(p.to_dict())
    return out


SCORE_KEYS = ["aesthetic", "tokens", "visual"]
SCHEMA = _schema(SCORE_KEYS, rejected=False)  # the writer's own layout, so the fixture cannot drift from it
REJECTED_SCHEMA = _schema(SCORE_KEYS, rejected=True)


def _rows(records: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    rows = []
    for r in records:
        row = dict(r)
        scores = row.get("scores")
        row["scores"] = None if scores is None else {k: scores.get(k) for k in SCORE_KEYS}
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=schema)


def write_set(folder: Path, kept: list[dict[str, Any]], rejected: list[dict[str, Any]], manifest: dict[str, Any],
              parts: int = 2) -> Path:
    """Write DIR/data/part-*.parquet (kept split into `parts`), DIR/rejected/, manifest.json."""
    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "rejected").mkdir(parents=True, exist_ok=True)
    step = max(1, -(-len(kept) // parts))
    for i in range(parts):
        chunk = kept[i * step:(i + 1) * step]
        if chunk or i == 0:
            pq.write_table(_rows(chunk, SCHEMA), folder / "data" / f"part-{i:05d}.parquet")
    if rejected:
        pq.write_table(_rows(rejected, REJECTED_SCHEMA), folder / "rejected" / "part-00000.parquet")
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return folder


def _reject(records: list[dict[str, Any]], reason: str) -> list[dict[str, Any]]:
    return [{**r, "reason": reason.format(id=r["id"]), "step": reason.split(":", 1)[0]} for r in records]


def make_set(folder: Path, size: int = 600, seed: int = 0, fractions: dict[str, float] | None = None,
             extra_texts: list[str] | None = None, recipe_extra: dict[str, Any] | None = None,
             scores: bool = True) -> Path:
    """A balanced-like curated set: `size` kept records split by `fractions` (semantic
    evenly over its 8 categories), 4 kinds of rejections, and a matching manifest."""
    fractions = dict(fractions or DEFAULT_FRACTIONS)
    kept: list[dict[str, Any]] = []
    quotas: dict[str, Any] = {}
    for crit, frac in fractions.items():
        target = round(frac * size)
        cats = SEMANTIC_CATEGORIES if crit == "semantic" else ("general",) if crit == "quality" else ("text_rendering",)
        per_cat = {}
        for j, cat in enumerate(cats):
            n = target // len(cats) + (1 if j < target % len(cats) else 0)
            kept += pool(crit, cat, n, seed)
            per_cat[cat] = {"target": n, "available": n + 40, "selected": n}
        quotas[crit] = {"fraction": frac, "target": target, "available": target + 40 * len(cats),
                        "selected": target, "categories": per_cat}
    for i, text in enumerate(extra_texts or []):
        kept.append(Prompt(text=text, criterion="quality", category="general", source="manual",
                           scores={"tokens": float(len(text.split()))}, cluster=i).to_dict())
    if not scores:
        for r in kept:
            r["scores"] = None

    # Rejections: drawn from beyond each pool's kept prefix, so they never collide with kept ids.
    spare_q = pool("quality", "general", round(fractions.get("quality", 0) * size) + 12, seed)[-12:]
    spare_s = pool("semantic", "color", quotas.get("semantic", {}).get("categories", {}).get("color", {})
                   .get("target", 0) + 9, seed)[-9:]
    rejected = (_reject(spare_q[:5], "length: too_short 2 words < 3")
                + _reject(spare_q[5:12], "dedup_exact: exact_dup of {id}")
                + _reject(spare_s[:6], "dedup_semantic: semantic_dup of 1a2b3c4d5e6f7a8b cos=0.97")
                + _reject(spare_s[6:9], "balance: over_quota semantic/color"))

    recipe = {
        "description": "fixture",
        "steps": {"length": {"min_words": 3, "max_tokens": 77}, "dedup_exact": {},
                  "dedup_semantic": {"threshold": 0.95}},
        "quotas": {c: {"fraction": f} for c, f in fractions.items()},
        "embedder": {"kind": "hf"},
        **(recipe_extra or {}),
    }
    steps = [
        {"name": "length", "in": len(kept) + 30, "kept": len(kept) + 25, "dropped": 5,
         "reasons": {"too_short": 5}, "seconds": 0.01},
        {"name": "dedup_exact", "in": len(kept) + 25, "kept": len(kept) + 18, "dropped": 7,
         "reasons": {"exact_dup": 7}, "seconds": 0.02},
        {"name": "dedup_semantic", "in": len(kept) + 18, "kept": len(kept) + 12, "dropped": 6,
         "reasons": {"semantic_dup": 6}, "seconds": 1.5},
        {"name": "balance", "in": len(kept) + 12, "kept": len(kept), "dropped": 3,
         "reasons": {"over_quota": 3}, "seconds": 0.05},
    ]
    manifest = {
        "format": "t5shrink.curated/1", "recipe_name": "balanced", "recipe": recipe,
        "recipe_hash": f"fixture{seed:02d}{size:06d}", "seed": seed, "size": size,
        "sources": [{"criterion": c, "uri": f"generator:{c}", "rows_read": quotas[c]["available"],
                     "records": quotas[c]["available"], "rejected": 0, "reasons": {}} for c in fractions],
        "steps": steps, "quotas": quotas,
        "shortfalls": ["text: 300 available for a quota of 690"],
        "counts": {"rows_read": len(kept) + 30, "kept": len(kept), "rejected": len(rejected)},
        "outputs": {}, "versions": {"t5shrink": "0.1.0"}, "seconds": 1.6,
    }
    return write_set(folder, kept, rejected, manifest)


def split_rejected(folder: Path, parts: int = 3) -> Path:
    """Rewrite DIR/rejected/ as `parts` part files, each with its own `scores` struct (as the
    writer makes them when the scores seen change between parts): tokens only, aesthetic + visual,
    and no scores column at all."""
    folder = Path(folder)
    files = sorted((folder / "rejected").glob("*.parquet"))
    rows = pa.concat_tables([pq.read_table(f) for f in files]).to_pylist()
    for f in files:
        f.unlink()
    layouts = [lambda r: {**r, "scores": {"tokens": 7.0}},
               lambda r: {**r, "scores": {"aesthetic": 5.5, "visual": 0.25}},
               lambda r: {k: v for k, v in r.items() if k != "scores"}]
    step = max(1, -(-len(rows) // parts))
    for i in range(parts):
        chunk = [layouts[i % len(layouts)](r) for r in rows[i * step:(i + 1) * step]]
        if chunk:
            pq.write_table(pa.Table.from_pylist(chunk), folder / "rejected" / f"part-{i:05d}.parquet")
    return folder


def scale_manifest(folder: Path, recipe_size: int) -> dict[str, Any]:
    """Make DIR's manifest read like an `on_shortfall: scale` build: the recipe asked for
    `recipe_size`, the quotas (left as they are) were planned for the smaller size kept."""
    path = Path(folder) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["size"] = recipe_size
    manifest["recipe"]["on_shortfall"] = "scale"
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest
