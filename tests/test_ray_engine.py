"""`curate build --engine ray` builds what the local engine builds: the same kept rows in the same order,
the same rejected rows with the same reasons, the same manifest counts, on the shipped recipes and on a
file source with planted copies; and a worker killed mid-build changes nothing."""

from __future__ import annotations

import json
import os
import random
import sys
from collections import Counter

import pytest
from click.testing import CliRunner

from curate.cli import main
from curate.curated_set import read_manifest, read_records
from curate.pipeline import build, resolve_recipe
from filters.base import STEPS, Filter, Step, StepResult


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _both(tmp_path, recipe: str, size: int, sources=(), overrides=(), ray_overrides=()):
    from curate.engine_ray import build_ray

    name, data = resolve_recipe(recipe, list(overrides), list(sources), size=size)
    build(name, data, tmp_path / "local", progress=False)
    name, data = resolve_recipe(recipe, list(overrides) + list(ray_overrides), list(sources), size=size)
    build_ray(name, data, tmp_path / "ray", progress=False)
    return tmp_path / "local", tmp_path / "ray"


def _rejected(out):
    return Counter((r["id"], r["step"], r["reason"], r["text"]) for r in read_records(out, "rejected"))


def _counts(manifest, ignore_step: str = ""):
    out = {k: manifest[k] for k in ("sources", "counts", "quotas", "shortfalls", "planned_size")}
    out["steps"] = [{k: v for k, v in s.items() if k != "seconds"} for s in manifest["steps"] if s["name"] != ignore_step]
    return out


def _assert_same(local, ray_out, ignore_step: str = ""):
    assert read_records(local) == read_records(ray_out)  # every field, in the same order
    assert (local / "data/part-00000.parquet").read_bytes() == (ray_out / "data/part-00000.parquet").read_bytes()
    assert _rejected(local) == _rejected(ray_out)
    assert _counts(read_manifest(local)) == _counts(read_manifest(ray_out), ignore_step)
    assert read_manifest(ray_out)["engine"] == "ray"


def test_without_ray_the_engine_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    result = CliRunner().invoke(main, ["build", "--recipe", "tiny", "--engine", "ray", "--output", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert 'pip install "t5shrink[ray]"' in result.output and len(result.output.strip().splitlines()) == 1


def test_balanced_builds_the_same_set(ray_cluster, tmp_path):
    _assert_same(*_both(tmp_path, "balanced", 300))  # tiny: in the kill test below


def _caption(rng: random.Random, vocabulary: list[str]) -> list[str]:
    return rng.sample(vocabulary, 34)


def test_a_file_source_with_planted_copies_builds_the_same_set(ray_cluster, tmp_path):
    rng = random.Random(0)
    # 200 words: with fewer, random captions share so many words that MiniLM scores them over 0.97
    vocabulary = [f"{a}{b}" for a in "red old tall misty quiet bright small dark green frozen".split() for b in
                  "hill boat lamp tower field river cloud stone garden bridge horse castle forest window road "
                  "market desert ship candle mountain".split()]
    captions = [_caption(rng, vocabulary) for _ in range(60)]
    lines = [" ".join(c) for c in captions]
    near = []
    for c in captions[:15]:  # one word changed in 34: 3-gram Jaccard 0.83, over dedup_near's 0.8
        copy = list(c)
        copy[20] = "purple"
        near.append(" ".join(copy))
    exact = [line.upper() + "." for line in lines[15:25]]  # dedup_exact's copies: case and edge punctuation
    paraphrases = []
    for c in captions[25:35]:  # three words dropped: 3-gram Jaccard 0.6, cosine over 0.99 (distinct: under 0.97)
        paraphrases.append(" ".join(c[:10] + c[11:20] + c[21:30] + c[31:]))
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "a.txt").write_text("\n".join(lines[:40] + near[:8] + exact[:5] + paraphrases[:5]) + "\n")
    rows = [{"text": t} for t in lines[40:] + near[8:] + exact[5:] + paraphrases[5:]] + [{"caption": "no text field"}]
    (pool / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n\n")
    (pool / "c.parquet").write_bytes(b"PAR1 truncated")  # skipped with a warning, listed in the manifest
    with pytest.warns(UserWarning, match="c.parquet"):
        # dedup_semantic over IVF cells (exact_max 10); the balanced test above takes its exact search
        local, ray_out = _both(tmp_path, "balanced", 200, sources=[f"quality={pool}"],
                               overrides=["on_shortfall=warn", "steps.dedup_semantic.exact_max=10",
                                          "steps.dedup_semantic.threshold=0.98"])
    _assert_same(local, ray_out)
    assert len({r["cluster"] for r in read_records(ray_out) if r["criterion"] == "quality"}) > 3
    reasons = Counter(r["reason"].split()[1] for r in read_records(ray_out, "rejected"))
    assert reasons["near_dup"] == 15 and reasons["exact_dup"] == 10 and reasons["malformed_json"] == 1
    assert reasons["semantic_dup"] == 10
    assert read_manifest(ray_out)["sources"][0]["skipped_files"][0]["path"].endswith("c.parquet")


class KillOnce(Filter):
    """Keeps every record; the first worker to run it (no marker file yet) dies on the spot."""

    kind = "kill_once"

    def __init__(self, marker: str = "") -> None:
        self.marker = marker

    def reason(self, record) -> None:
        if self.marker and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)  # no cleanup, no exception: what an OOM kill or a lost node looks like
        return None


def test_a_worker_killed_mid_build_changes_nothing(ray_cluster, tmp_path):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    STEPS[KillOnce.kind] = KillOnce
    marker = tmp_path / "killed"
    try:
        local, ray_out = _both(tmp_path, "tiny", 300, ray_overrides=[f"steps.kill_once.marker={marker}"])
    finally:
        STEPS.pop(KillOnce.kind)
    assert marker.exists()  # a worker did die
    _assert_same(local, ray_out, ignore_step="kill_once")  # tiny, the shipped recipe, otherwise equal
    assert [s["name"] for s in read_manifest(ray_out)["steps"]][-2:] == ["kill_once", "balance"]


class EveryOtherByEmbedding(Step):
    """A user's whole-pool step that no engine knows how to partition: keeps every other record in the pool's
    order, and those only when ctx.embed gives them a vector (so the Ray engine must embed for it)."""

    kind = "every_other"
    embeds = True

    def run(self, records, ctx) -> StepResult:
        x = ctx.embed(records)
        kept = [r for i, r in enumerate(records) if i % 2 == 0 and x[i].any()]
        return StepResult(kept=kept, dropped=[(r, self.drop("odd")) for i, r in enumerate(records) if i % 2])


def test_a_step_registered_by_the_user_runs_on_the_driver(ray_cluster, tmp_path):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    STEPS[EveryOtherByEmbedding.kind] = EveryOtherByEmbedding
    try:
        local, ray_out = _both(tmp_path, "tiny", 300, overrides=["steps.every_other={}"])
    finally:
        STEPS.pop(EveryOtherByEmbedding.kind)
    _assert_same(local, ray_out)
    assert Counter(r["step"] for r in read_records(ray_out, "rejected"))["every_other"] > 100


def test_a_bad_source_is_the_same_one_line_error(ray_cluster, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"caption_x": "a red cup"}\n')
    results = [CliRunner().invoke(main, ["build", "--recipe", "tiny", "--source", f"quality={bad}", "--quiet",
                                         "--output", str(tmp_path / engine), "--engine", engine])
               for engine in ("local", "ray")]
    assert [r.exit_code for r in results] == [2, 2]
    assert results[0].output.strip().splitlines()[-1] == results[1].output.strip().splitlines()[-1]
    assert "no text column" in results[1].output
