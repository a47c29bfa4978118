"""Teacher-guided curation: `curate mine` (train/mine.py) and the adaptive mixture (train/mixture.py), on a
tiny FLUX teacher and a tiny student trained for a few steps on a curated pool. CPU only, fixed seeds."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from core.records import Prompt
from curate.curated_set import read_columns, read_manifest
from curate.report import _load, summarize
from curate.report_diff import diff
from train.distill import train
from train.mine import mine
from train.mixture import StratifiedStream, mixture_weights, update_excess

FAMILY_SUFFIXES = (", 8k", ", hdr", ", sharp focus", ", film grain")


def tiny_cfg(data: str, steps: int, **over) -> dict:
    """A resolved recipe for a few-second CPU run on `data`."""
    from train.config import resolve

    recipe = {
        "seed": 0,
        "teacher": {"path": "tiny:flux", "guidance": [2.0, 5.0]},
        "student": {"init": "config", "config": {"num_layers": 1}, "projection_dropout": 0.1},
        "optim": {"lr": 3.0e-3, "warmup_steps": 2, "schedule": "cosine", "batch_size": 4},
        "distill": {"sampling_steps": 3},
        "validation": {"every": over.pop("val_every", 0), "num_prompts": 16, "batch_size": 16},
        "checkpoint": {"every": over.pop("ckpt_every", 0), "keep": 5},
        "log": {"every": 1, "tensorboard": False},
        "stages": over.pop("stages", None) or [{"name": "pool", "data": data, "steps": steps, "resolution": 32,
                                                "max_sequence_length": 32}],
    }
    recipe.update(over)
    return resolve(recipe)[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A curated pool (the tiny recipe) and a run that trained a student on it for a few steps."""
    from curate.pipeline import build, resolve_recipe

    root = tmp_path_factory.mktemp("mining")
    name, data = resolve_recipe("tiny", size=240, seed=0)
    build(name, data, root / "pool", progress=False, log=lambda m: None)
    train(tiny_cfg(str(root / "pool"), steps=6), root / "run", progress=False)
    return root


def kept_and_rejected_scores(folder: Path) -> dict[str, float]:
    """text -> gap of every prompt a mined set scored (kept rows and rejected ones)."""
    _, kept, _ = _load(folder)
    rejected = read_columns(folder, "rejected", ("text", "scores"))
    out = {t: s["gap"] for t, s in zip(kept["text"], kept["scores"]) if "gap" in s}
    out.update({t: s["gap"] for t, s in zip(rejected["text"], rejected["scores"]) if s and s.get("gap") is not None})
    return out


def test_mining_fills_the_quotas_with_hard_prompts_spread_over_clusters_and_one_of_near_identical_ones(world, tmp_path):
    clusters = ["steps.cluster={k: 4, criteria: [quality]}"]
    first = mine(str(world / "run"), [str(world / "pool")], tmp_path / "first", recipe="tiny", size=60,
                 overrides=clusters, progress=False)
    assert first.kept == 60
    gaps = kept_and_rejected_scores(tmp_path / "first")
    # plant near-identical copies (word 3-gram Jaccard >= 0.8) of the hardest long caption
    long_captions = [t for t in gaps if len(t.split()) >= 12 and t in _texts(tmp_path / "first", "quality")]
    hardest = max(long_captions, key=gaps.get)
    family = {hardest, *(hardest + s for s in FAMILY_SUFFIXES)}
    planted = tmp_path / "planted.jsonl"
    planted.write_text("".join(json.dumps({"text": t}) + "\n" for t in sorted(family - {hardest})))
    pools = [f"quality={planted}", str(world / "pool")]

    def mined(out: str, near_dup: float | None) -> tuple[set[str], dict]:
        mine(str(world / "run"), pools, tmp_path / out, recipe="tiny", size=60, overrides=clusters, near_dup=near_dup,
             progress=False)
        return _texts(tmp_path / out), read_manifest(tmp_path / out)

    without_guard, _ = mined("unguarded", None)
    assert len(family & without_guard) >= 2  # the planted copies are among the hardest: the guard has work to do
    texts, manifest = mined("guarded", 0.8)
    assert len(family & texts) == 1
    # the quotas hold exactly, as in a plain build
    for criterion, entry in manifest["quotas"].items():
        assert entry["selected"] == entry["target"], criterion
        for category, cat in entry["categories"].items():
            assert cat["selected"] == cat["target"], (criterion, category)
    # every cluster of the captions keeps a share: not the top-k of one topic
    _, kept, _ = _load(tmp_path / "guarded")
    quality_clusters = Counter(c for c, crit in zip(kept["cluster"], kept["criterion"]) if crit == "quality")
    assert len(quality_clusters) == 4 and min(quality_clusters.values()) >= 3
    # within each quota group, nothing left out is harder than what was taken
    selection = manifest["selection"]
    assert selection["selected"]["mean"] > selection["plain"]["mean"]
    scores = kept_and_rejected_scores(tmp_path / "guarded")
    assert all(scores[text] > 0 for text in kept["text"])
    semantic_color = sorted((g for t, g in scores.items() if t in _texts(tmp_path / "guarded", "semantic", "color")))
    left_out = _rejected_texts(tmp_path / "guarded", "semantic", "color")
    assert min(semantic_color) >= max(scores[t] for t in left_out)


def _texts(folder: Path, criterion: str | None = None, category: str | None = None) -> set[str]:
    _, kept, _ = _load(folder)
    return {t for t, c, k in zip(kept["text"], kept["criterion"], kept["category"])
            if criterion in (None, c) and category in (None, k)}


def _rejected_texts(folder: Path, criterion: str, category: str) -> list[str]:
    _, _, rejected = _load(folder)
    return [t for t, c, k, r in zip(rejected["text"], rejected["criterion"], rejected["category"], rejected["reason"])
            if c == criterion and k == category and "over_quota" in r]


def test_curate_mine_cli_caches_scores_and_its_set_trains_as_a_further_stage(world, tmp_path, monkeypatch):
    from curate.cli import main as curate_main

    monkeypatch.setenv("T5SHRINK_CACHE", str(tmp_path / "cache"))  # scores of its own: the other test's are cached

    args = ["mine", "--student", str(world / "run"), "--pool", str(world / "pool"), "--recipe", "tiny",
            "--size", "40", "--quiet"]
    result = CliRunner().invoke(curate_main, [*args, "--output", str(tmp_path / "mined"),
                                              "--plain-output", str(tmp_path / "plain")])
    assert result.exit_code == 0, result.output
    assert "mined 40 prompts" in result.output
    steps = {s["name"]: s for s in read_manifest(tmp_path / "mined")["steps"]}
    # the run's validation prompts are never mined (a stage trained on them would void its validation)
    assert steps["mine_heldout"]["reasons"] == {"heldout": 16}
    scoring = steps["mine_gap"]
    assert scoring["scored"] == steps["mine_heldout"]["kept"] and scoring["transformer_passes"] == 3 * scoring["scored"]
    again = CliRunner().invoke(curate_main, [*args, "--size", "30", "--output", str(tmp_path / "again")])
    assert again.exit_code == 0, again.output
    rescoring = next(s for s in read_manifest(tmp_path / "again")["steps"] if s["name"] == "mine_gap")
    assert rescoring["scored"] == 0 and rescoring["from_cache"] == scoring["scored"]

    # inspect shows the selection against the plain one; diff looks the plain set's prompts up in the mined rows
    selection = summarize(tmp_path / "mined")["selection"]
    assert selection["selected"]["mean"] > selection["plain"]["mean"] and selection["mining"]["step"] == 6
    changes = diff(tmp_path / "plain", tmp_path / "mined")["scores"]["gap"]
    assert changes["a"]["scored"] == changes["a"]["total"] == 40
    assert changes["b"]["mean"] > changes["a"]["mean"]
    assert changes["only_b"]["mean"] > changes["only_a"]["mean"]

    stages = [{"name": "pool", "data": str(world / "pool"), "steps": 2, "resolution": 32, "max_sequence_length": 32},
              {"name": "mined", "data": str(tmp_path / "mined"), "steps": 2, "resolution": 32, "max_sequence_length": 32}]
    summary = train(tiny_cfg("", 0, stages=stages), tmp_path / "run2", progress=False)
    assert summary["steps"] == 4
    logged = [json.loads(line) for line in (tmp_path / "run2" / "log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in logged if "loss" in r] == ["pool", "pool", "mined", "mined"]


def test_adaptive_mixture_is_logged_checkpointed_and_resumes_bit_identically(world, tmp_path):
    cfg = tiny_cfg(str(world / "pool"), steps=6, val_every=2, ckpt_every=3,
                   mixture={"adaptive": True, "power": 2.0, "floor": 0.2})
    train(cfg, tmp_path / "a", progress=False)
    train(cfg, tmp_path / "b", progress=False, max_steps=3)
    train(cfg, tmp_path / "b", progress=False, resume=True)
    a = load_file(str(tmp_path / "a" / "student" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "student" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    def weights(run: str) -> dict[int, dict]:
        records = [json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
        return {r["step"]: r["mixture_weights"] for r in records if "mixture_weights" in r}

    # b's log also keeps the final validation of its first, 3-step invocation
    assert list(weights("a")) == [0, 2, 4, 6] and weights("a") == {s: weights("b")[s] for s in weights("a")}
    shares = StratifiedStream(_pool_prompts(world / "pool"), 0).shares
    last = weights("a")[6]
    assert abs(sum(last.values()) - 1) < 1e-9 and max(abs(last[s] - shares[s]) for s in shares) > 0.01
    assert all(last[s] >= 0.2 * shares[s] - 1e-12 for s in shares)
    state = json.loads((tmp_path / "a" / "checkpoints" / "step-00000006" / "state.json").read_text())
    assert set(state["mixture"]["excess"]) == set(shares)
    assert sum(state["mixture"]["positions"][0].values()) == 6 * 4


def _pool_prompts(folder: Path) -> list[dict]:
    from train.data import load_prompts

    return load_prompts(folder)


def test_mixture_weights_follow_the_excess_gap_within_the_floor():
    shares = {"a": 0.5, "b": 0.3, "c": 0.2}
    assert mixture_weights(shares, {}, 0.3, 1.0) == pytest.approx(shares)
    assert mixture_weights(shares, {"a": 3.0, "b": 1.0, "c": 0.5}, 0.3, 0.0) == pytest.approx(shares)
    w = mixture_weights(shares, {"a": 0.2, "b": 1.0, "c": 4.0}, 0.25, 1.0)
    assert sum(w.values()) == pytest.approx(1) and w["c"] > shares["c"] and w["a"] < shares["a"]
    assert w["a"] >= 0.25 * shares["a"]
    assert mixture_weights(shares, {"a": 0.0, "b": 0.0, "c": 1.0}, 0.4, 1.0)["a"] == pytest.approx(0.4 * 0.5)
    # the running excess: relative to the overall gap, smoothed, blind to non-finite categories
    report = {"gap": 0.5, "per_category": {"a": 1.0, "b": 0.25, "c": float("nan")}}
    excess = update_excess({}, report, 0.5)
    assert excess == {"a": 2.0, "b": 0.5}
    assert update_excess(excess, {"gap": 1.0, "per_category": {"a": 1.0, "b": 1.0}}, 0.5) == {"a": 1.5, "b": 0.75}


def test_stratified_stream_draws_by_weight_and_is_a_function_of_its_positions():
    prompts = [{"text": f"{c} {i}", "category": c} for c in ("x", "y") for i in range(5)]
    stream = StratifiedStream(prompts, seed=3)
    positions: dict[str, int] = {}
    drawn = stream.take(positions, 400, {"x": 0.9, "y": 0.1}, torch.Generator().manual_seed(0))
    share_x = sum(p["category"] == "x" for p in drawn) / 400
    assert 0.85 < share_x < 0.95 and sum(positions.values()) == 400
    again = stream.take({}, 400, {"x": 0.9, "y": 0.1}, torch.Generator().manual_seed(0))
    assert drawn == again


def test_balance_by_score_takes_each_groups_highest_and_keeps_the_quotas():
    from curate.balance import balance

    records = [Prompt(f"prompt {i}", "semantic", "s", category="color" if i % 2 else "shape",
                      scores={"gap": float(i)} if i != 7 else None) for i in range(40)]
    quotas = {"semantic": {"fraction": 1.0, "categories": {"color": 0.5, "shape": 0.5}}}
    picked, dropped, _ = balance(records, 10, quotas, seed=0, select_by="gap")
    by_category = {c: sorted(r.scores["gap"] for r in picked if r.category == c) for c in ("color", "shape")}
    assert by_category == {"color": [31.0, 33.0, 35.0, 37.0, 39.0], "shape": [30.0, 32.0, 34.0, 36.0, 38.0]}
    plain, _, _ = balance(records, 10, quotas, seed=0)
    assert Counter(r.category for r in plain) == Counter(r.category for r in picked)
    assert len(dropped) == 30
