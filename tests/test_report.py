"""`curate inspect` / `curate diff` functions on small fixture sets (tests/report_fixtures.py)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from report_fixtures import make_set, pool, write_set  # noqa: E402

from curate.plots import HashingEmbedder, pca_2d  # noqa: E402
from curate.records import parse_reason  # noqa: E402
from curate.report import ReportError, render_tables, summarize  # noqa: E402
from curate.report_diff import diff, flatten, render_diff  # noqa: E402
from curate.report_html import embedding_points, write_html  # noqa: E402

XSS = '<script>alert("pwned")</script> a red cube on a table'
IMG = 'a poster <img src="http://evil.example/x.png"> with a logo'


@pytest.fixture(scope="module")
def set_a(tmp_path_factory) -> Path:
    return make_set(tmp_path_factory.mktemp("a"), size=400, seed=0, extra_texts=[XSS, IMG])


@pytest.fixture(scope="module")
def summary_a(set_a) -> dict:
    return summarize(set_a)


@pytest.fixture(scope="module")
def html_a(set_a, summary_a, tmp_path_factory) -> Path:
    return write_html(set_a, summary_a, tmp_path_factory.mktemp("html") / "report.html", embedder=HashingEmbedder())


def _read(folder: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("*.parquet"))])


# --- summarize ---------------------------------------------------------------------------


def test_summary_counts_match_the_data(set_a, summary_a):
    table = _read(set_a / "data")
    crit = table.column("criterion").to_pylist()
    cat = table.column("category").to_pylist()
    src = table.column("source").to_pylist()
    assert summary_a["total"] == table.num_rows == 402
    assert {k: v["count"] for k, v in summary_a["criteria"].items()} == dict(Counter(crit))
    got_pairs = {(c, k): e["count"] for c, cats in summary_a["categories"].items() for k, e in cats.items()}
    assert got_pairs == dict(Counter(zip(crit, cat)))
    assert {k: v["count"] for k, v in summary_a["sources"].items()} == dict(Counter(src))
    # shares are of all kept records, and add up
    assert summary_a["criteria"]["text"]["share"] == pytest.approx(Counter(crit)["text"] / table.num_rows, abs=1e-6)
    assert sum(v["share"] for v in summary_a["criteria"].values()) == pytest.approx(1.0, abs=1e-5)
    # canonical order from curate.records, not alphabetical or by count
    assert list(summary_a["criteria"]) == ["quality", "semantic", "text"]
    assert list(summary_a["categories"]["semantic"])[:3] == ["color", "shape", "texture"]
    # quota targets come through from the manifest
    assert summary_a["criteria"]["semantic"]["target"] == 120
    assert summary_a["categories"]["semantic"]["color"]["target"] == 15


def test_summary_rejections_by_step_and_kind(set_a, summary_a):
    reasons = _read(set_a / "rejected").column("reason").to_pylist()
    expected = Counter((r.split(": ", 1)[0], r.split(": ", 1)[1].split()[0]) for r in reasons)
    got = {(s, k): n for s, e in summary_a["rejected"]["by_step"].items() for k, n in e["reasons"].items()}
    assert got == dict(expected)
    assert summary_a["rejected"]["total"] == len(reasons) == 21
    # pipeline order from the manifest, not by count
    assert list(summary_a["rejected"]["by_step"]) == ["length", "dedup_exact", "dedup_semantic", "balance"]
    assert summary_a["rejected"]["by_step"]["dedup_semantic"]["reasons"] == {"semantic_dup": 6}


def test_summary_scores_length_clusters(set_a, summary_a):
    table = _read(set_a / "data")
    scores = table.column("scores").to_pylist()
    aesthetic = np.array([s["aesthetic"] for s in scores if s["aesthetic"] is not None])
    a = summary_a["scores"]["aesthetic"]
    assert a["count"] == len(aesthetic) and a["missing"] == table.num_rows - len(aesthetic)
    assert a["median"] == pytest.approx(np.median(aesthetic), abs=1e-6)
    assert a["p25"] == pytest.approx(np.percentile(aesthetic, 25), abs=1e-6)
    assert a["min"] == pytest.approx(aesthetic.min()) and a["max"] == pytest.approx(aesthetic.max())
    assert sum(a["histogram"]["counts"]) == len(aesthetic)
    assert len(a["histogram"]["edges"]) == len(a["histogram"]["counts"]) + 1
    # only quality records carry an aesthetic score
    assert list(a["by_criterion"]) == ["quality"]
    assert list(a["histogram"]["counts_by_criterion"]) == ["quality"]

    length = summary_a["length"]
    tokens = np.array([s["tokens"] for s in scores])
    assert length["unit"] == "tokens"  # every record has scores.tokens
    assert length["median"] == pytest.approx(np.median(tokens))
    assert sum(length["histogram"]["counts"]) == table.num_rows
    for crit, counts in length["histogram"]["counts_by_criterion"].items():
        assert sum(counts) == summary_a["criteria"][crit]["count"]

    clusters = table.column("cluster").to_pylist()
    crit = table.column("criterion").to_pylist()
    sem = Counter(c for c, k in zip(clusters, crit) if k == "semantic")
    got = summary_a["clusters"]["by_criterion"]["semantic"]
    assert got["clusters"] == len(sem)
    assert got["per_cluster"]["max"] == max(sem.values()) and got["per_cluster"]["min"] == min(sem.values())
    assert got["largest"]["share"] == pytest.approx(max(sem.values()) / sum(sem.values()), abs=1e-6)
    assert summary_a["clusters"]["overall"]["clusters"] == len(set(clusters))


def test_summary_examples_are_first_by_id(set_a):
    table = _read(set_a / "data")
    rows = table.select(["id", "criterion", "category"]).to_pylist()
    summary = summarize(set_a, examples=2)
    want = sorted(r["id"] for r in rows if r["criterion"] == "semantic" and r["category"] == "numeracy")[:2]
    assert [e["id"] for e in summary["examples"]["semantic"]["numeracy"]] == want
    assert all(len(items) <= 2 for cats in summary["examples"].values() for items in cats.values())


def test_summary_is_json_and_deterministic(set_a, summary_a):
    text = json.dumps(summary_a, allow_nan=False, sort_keys=True)
    assert json.loads(text) == summary_a
    assert json.dumps(summarize(set_a), sort_keys=True) == text
    assert summary_a["manifest"]["recipe_name"] == "balanced"
    assert summary_a["manifest"]["seed"] == 0
    assert summary_a["manifest"]["shortfalls"] == ["text: 300 available for a quota of 690"]


def test_length_falls_back_to_words_without_tokens(tmp_path):
    folder = make_set(tmp_path / "s", size=80, scores=False)
    summary = summarize(folder)
    texts = _read(folder / "data").column("text").to_pylist()
    assert summary["length"]["unit"] == "words"
    assert summary["length"]["max"] == max(len(t.split()) for t in texts)
    assert summary["scores"] == {}
    assert "Score distributions" not in render_tables(summary)


def test_not_a_curated_set(tmp_path):
    with pytest.raises(ReportError, match="no such folder"):
        summarize(tmp_path / "missing")
    with pytest.raises(ReportError, match="not a curated set"):
        summarize(tmp_path)


def test_parse_reason():
    assert parse_reason("dedup_semantic: semantic_dup of 1a2b3c4d5e6f7a8b cos=0.97") == (
        "dedup_semantic", "semantic_dup")
    assert parse_reason("length: too_short 2 words < 3", "length") == ("length", "too_short")
    assert parse_reason("over_quota", "balance") == ("balance", "over_quota")
    assert parse_reason(None) == ("unknown", "unspecified")


# --- text tables ---------------------------------------------------------------------------


def test_render_tables_aligns_columns(summary_a):
    text = render_tables(summary_a)
    block = text.split("Mixture by criterion\n", 1)[1].split("\n\n", 1)[0].splitlines()
    header, rule, *rows = block
    # right-aligned numeric columns end where their header ends
    end = header.index("count") + len("count")
    for row in rows:
        assert re.match(r"\S", row[end - 1]) and (len(row) == end or row[end] == " ")
    assert rows[-1].split()[:2] == ["total", "402"]
    assert "dedup_semantic  semantic_dup" in text
    assert "! text: 300 available for a quota of 690" in text


# --- HTML ----------------------------------------------------------------------------------


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.refs: list[str] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._in_style = tag == "style"
        for name, value in attrs:
            if name in ("src", "href", "srcset", "action", "poster", "data"):
                self.refs.append(value or "")
            if name == "style":
                self.styles.append(value or "")

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)


def test_html_is_self_contained(html_a):
    doc = html_a.read_text(encoding="utf-8")
    parser = _Refs()
    parser.feed(doc)
    imgs = [r for r in parser.refs if r.startswith("data:image/png;base64,")]
    assert len(imgs) >= 4  # category bars, scores, length, embedding map
    for ref in imgs:
        assert base64.b64decode(ref.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    # every reference is inline data or an in-page anchor
    assert all(r.startswith(("data:", "#")) for r in parser.refs), [r[:40] for r in parser.refs]
    css = "\n".join(parser.styles)
    assert "@import" not in css
    assert all(u.strip("'\" ").startswith("data:") for u in re.findall(r"url\(([^)]*)\)", css))
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", doc, re.I)
    assert "script" not in parser.tags and "iframe" not in parser.tags and "link" not in parser.tags


def test_html_escapes_prompt_text(html_a):
    doc = html_a.read_text(encoding="utf-8")
    assert "<script>" not in doc
    assert '<img src="http://evil' not in doc


def test_html_shows_every_prompt_category_and_escapes_examples(tmp_path):
    folder = make_set(tmp_path / "s", size=60, extra_texts=[XSS, IMG])
    summary = summarize(folder, examples=1000)  # every record is an example
    out = write_html(folder, summary, tmp_path / "r.html", embedder=HashingEmbedder())
    doc = out.read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt; a red cube on a table" in doc
    assert "&lt;img src=&quot;http://evil.example/x.png&quot;&gt;" in doc
    assert "<script" not in doc and "<img src=\"http" not in doc
    for cat in ("color", "numeracy", "text_rendering", "general"):
        assert f"/ {cat}</h3>" in doc


def test_html_without_scores_still_has_three_plots(tmp_path):
    folder = make_set(tmp_path / "s", size=60, scores=False)
    out = write_html(folder, summarize(folder), tmp_path / "r.html", embedder=HashingEmbedder())
    assert out.read_text().count('src="data:image/png;base64,') == 3


def test_html_is_deterministic(set_a, summary_a, html_a, tmp_path):
    again = write_html(set_a, summary_a, tmp_path / "again.html", embedder=HashingEmbedder())
    assert again.read_bytes() == html_a.read_bytes()


def test_embedding_points_sample_and_default_fallback(set_a, monkeypatch):
    coords, labels, explained, label = embedding_points(set_a, HashingEmbedder(), max_points=50)
    rows = sorted(_read(set_a / "data").select(["id", "criterion"]).to_pylist(), key=lambda r: r["id"])[:50]
    assert coords.shape == (50, 2) and labels == [r["criterion"] for r in rows]
    assert 0 < explained[1] <= explained[0] < 1
    # with no embedder and filters.embed unusable, the map still renders, labelled as a fallback
    monkeypatch.setitem(sys.modules, "filters.embed", None)
    coords2, _, _, label2 = embedding_points(set_a, None, max_points=50)
    assert "hashed n-grams" in label2
    np.testing.assert_allclose(coords2, coords)


def test_pca_recovers_the_main_axis():
    rng = np.random.default_rng(0)
    direction = np.array([3.0, 4.0, 0.0, 0.0]) / 5
    x = rng.normal(size=(500, 1)) * 10 * direction + rng.normal(size=(500, 4)) * 0.1
    coords, explained = pca_2d(x)
    assert explained[0] > 0.99
    centred = x - x.mean(axis=0)
    np.testing.assert_allclose(np.abs(coords[:, 0]), np.abs(centred @ direction), atol=0.2)
    # sign convention: the largest loading (here the 2nd feature) is positive, so the
    # map never mirrors at random, and negating the data mirrors it exactly
    assert np.corrcoef(coords[:, 0], centred[:, 1])[0, 1] > 0.99
    coords_neg, _ = pca_2d(-x)
    np.testing.assert_allclose(coords_neg, -coords, atol=1e-9)


def test_hashing_embedder():
    emb = HashingEmbedder()
    v = emb.encode(["a red cube and a blue ball", "a red cube and a blue sphere", "A cat holding a sign 'open'", ""])
    assert v.dtype == np.float32 and v.shape == (4, 512)
    np.testing.assert_allclose(np.linalg.norm(v[:3], axis=1), 1.0, rtol=1e-5)
    assert not v[3].any()
    assert v[0] @ v[1] > v[0] @ v[2]
    np.testing.assert_array_equal(HashingEmbedder().encode(["a red cube and a blue ball"])[0], v[0])


@pytest.mark.slow
def test_html_with_the_bundled_embedder(tmp_path):
    from filters.embed import build_embedder

    folder = make_set(tmp_path / "s", size=40)
    embedder = build_embedder(progress=False)  # the bundled MiniLM: a dependency, so no skip
    coords, labels, _, _ = embedding_points(folder, embedder, max_points=40)
    assert coords.shape == (40, 2) and np.isfinite(coords).all()


@pytest.mark.slow
def test_html_screenshot(html_a, tmp_path):
    binary = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if binary is None:
        pytest.skip("no chromium binary")
    png = tmp_path / "shot.png"
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={png}", "--window-size=1280,2000", html_a.resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert png.exists(), "chromium wrote no screenshot"
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 2000)
    # a blank page compresses to a few KB; a rendered report with plots is far larger
    assert len(data) > 50_000


# --- diff ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("diff")
    a = make_set(root / "a", size=400, seed=0, fractions={"quality": 0.5, "semantic": 0.3, "text": 0.2})
    b = make_set(root / "b", size=400, seed=0, fractions={"quality": 0.4, "semantic": 0.3, "text": 0.3},
                 recipe_extra={"steps": {"length": {"min_words": 4, "max_tokens": 77}, "dedup_exact": {},
                                         "dedup_semantic": {"threshold": 0.9}}})
    return a, b


def test_diff_counts_and_recipe_keys(two_sets):
    a, b = two_sets
    d = diff(a, b, sample=5)
    assert d["total"] == {"a": 400, "b": 400, "delta": 0}
    assert d["criteria"]["quality"] == {"a": 200, "b": 160, "delta": -40, "share_a": 0.5, "share_b": 0.4,
                                        "share_delta": -0.1}
    assert d["criteria"]["text"]["delta"] == 40 and d["criteria"]["semantic"]["delta"] == 0
    assert d["categories"]["text/text_rendering"]["delta"] == 40
    assert d["sources"]["generator:quality"]["delta"] == -40
    # pools are shared prefixes: B drops 40 quality prompts and adds 40 text prompts
    assert d["prompts"]["only_a"]["count"] == 40 and d["prompts"]["only_b"]["count"] == 40
    assert d["prompts"]["common"] == 360 and d["prompts"]["reassigned"]["count"] == 0
    assert {x["criterion"] for x in d["prompts"]["only_a"]["sample"]} == {"quality"}
    assert {x["criterion"] for x in d["prompts"]["only_b"]["sample"]} == {"text"}
    ids_a = set(_read(a / "data").column("id").to_pylist())
    ids_b = set(_read(b / "data").column("id").to_pylist())
    assert [x["id"] for x in d["prompts"]["only_b"]["sample"]] == sorted(ids_b - ids_a)[:5]
    assert d["recipe"] == {
        "quotas.quality.fraction": {"a": 0.5, "b": 0.4, "status": "changed"},
        "quotas.text.fraction": {"a": 0.2, "b": 0.3, "status": "changed"},
        "steps.dedup_semantic.threshold": {"a": 0.95, "b": 0.9, "status": "changed"},
        "steps.length.min_words": {"a": 3, "b": 4, "status": "changed"},
    }
    assert d["seed"] == {"a": 0, "b": 0, "changed": False}
    json.dumps(d, allow_nan=False)
    text = render_diff(d)
    assert "quotas.text.fraction" in text and "0.2" in text and "0.3" in text
    assert re.search(r"quality\s+200\s+160\s+-40\s+50\.0%\s+40\.0%\s+-10\.0pp", text)


def test_diff_of_a_set_with_itself_is_empty(two_sets):
    a, _ = two_sets
    d = diff(a, a)
    assert d["recipe"] == {} and d["prompts"]["only_a"]["count"] == 0 and d["prompts"]["only_b"]["count"] == 0
    assert all(e["delta"] == 0 for e in d["criteria"].values())


def test_diff_reports_seed_size_added_and_removed_keys(tmp_path):
    rows = pool("semantic", "color", 10)
    base = {"format": "t5shrink.curated/1", "recipe_name": "x", "seed": 0, "size": 10,
            "recipe": {"cluster": {"k": 8}, "steps": [{"name": "length", "min_words": 3}], "gone": True}}
    a = write_set(tmp_path / "a", rows, [], base)
    moved = [{**r, "category": "shape"} if i == 0 else r for i, r in enumerate(rows)]
    b = write_set(tmp_path / "b", moved, [], {**base, "seed": 1, "size": 20, "recipe": {
        "cluster": {"k": 16, "algo": "kmeans"}, "steps": [{"name": "length", "min_words": 5}]}})
    d = diff(a, b)
    assert d["seed"]["changed"] and d["size"] == {"a": 10, "b": 20, "changed": True}
    assert d["recipe"]["cluster.k"] == {"a": 8, "b": 16, "status": "changed"}
    assert d["recipe"]["cluster.algo"] == {"a": None, "b": "kmeans", "status": "added"}
    assert d["recipe"]["gone"] == {"a": True, "b": None, "status": "removed"}
    assert d["recipe"]["steps.0.min_words"]["b"] == 5
    assert d["prompts"]["reassigned"]["count"] == 1
    assert d["categories"]["semantic/shape"] == {"a": 0, "b": 1, "delta": 1, "share_a": 0.0, "share_b": 0.1,
                                                 "share_delta": 0.1}
    assert "(absent)" in render_diff(d)


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": [{"e": 2}], "f": {}}) == {
        "a.b": 1, "a.c": [1, 2], "d.0.e": 2, "f": {}}


# --- edge cases ----------------------------------------------------------------------------


def test_empty_set_renders(tmp_path):
    folder = write_set(tmp_path / "s", [], [], {"format": "t5shrink.curated/1", "recipe_name": "x", "seed": 0,
                                                "size": 0, "recipe": {}})
    summary = summarize(folder)
    assert summary["total"] == 0 and summary["criteria"] == {} and summary["rejected"]["total"] == 0
    json.dumps(summary, allow_nan=False)
    assert "kept 0  rejected 0" in render_tables(summary)
    out = write_html(folder, summary, tmp_path / "r.html", embedder=HashingEmbedder())
    assert out.read_text().count('src="data:image/png;base64,') == 3


def test_minimal_columns_and_no_manifest(tmp_path):
    # Only the required fields, no manifest, no rejected/: still a readable set.
    (tmp_path / "s" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["b", "a"], "text": ["a red cube", "z"], "criterion": ["text", "quality"],
                             "category": ["text_rendering", None], "source": ["s", "s"]}),
                   tmp_path / "s" / "data" / "p.parquet")
    summary = summarize(tmp_path / "s")
    assert summary["categories"] == {
        "quality": {"general": {"count": 1, "share": 0.5, "share_in_criterion": 1.0, "target": None,
                                "available": None}},
        "text": {"text_rendering": {"count": 1, "share": 0.5, "share_in_criterion": 1.0, "target": None,
                                    "available": None}}}
    assert summary["length"]["unit"] == "words" and summary["length"]["max"] == 3
    assert summary["clusters"]["overall"] == {"records": 2, "clustered": 0, "clusters": 0}
    assert summary["manifest"]["recipe_name"] is None
    assert "Cluster coverage" not in render_tables(summary)
