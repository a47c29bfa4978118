"""`curate inspect` / `curate diff` functions on small fixture sets (tests/report_fixtures.py)."""

from __future__ import annotations

import base64
import html
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

from report_fixtures import make_set, pool, scale_manifest, split_rejected, write_set  # noqa: E402

from core.records import parse_reason  # noqa: E402
from curate.plots import HashingEmbedder, pca_2d  # noqa: E402
from curate.report import ReportError, reason_counts_line, render_tables, summarize  # noqa: E402
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


def _figure_alts(doc: str) -> list[str]:
    """The alt text of every embedded plot, in page order."""
    return [html.unescape(a) for a in re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,', doc)]


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


def test_html_without_scores_still_has_its_other_plots(tmp_path):
    folder = make_set(tmp_path / "s", size=60, scores=False)
    out = write_html(folder, summarize(folder), tmp_path / "r.html", embedder=HashingEmbedder())
    # targets, categories, length, embedding map; no score histograms
    assert _figure_alts(out.read_text()) == ["kept against targets: criterion split and every quota",
                                             "prompts per category by criterion", "prompt length histogram",
                                             "embedding map"]


def test_html_is_deterministic(set_a, summary_a, html_a, tmp_path):
    again = write_html(set_a, summary_a, tmp_path / "again.html", embedder=HashingEmbedder())
    assert again.read_bytes() == html_a.read_bytes()


def test_embedding_points_sample_and_default_fallback(set_a, monkeypatch):
    coords, labels, explained, label = embedding_points(set_a, HashingEmbedder(), max_points=50)
    rows = sorted(_read(set_a / "data").select(["id", "criterion"]).to_pylist(), key=lambda r: r["id"])[:50]
    assert coords.shape == (50, 2) and labels == [r["criterion"] for r in rows]
    assert 0 < explained[1] <= explained[0] < 1
    # with no embedder and filters.lib.embed unusable, the map still renders, labelled as a fallback
    monkeypatch.setitem(sys.modules, "filters.lib.embed", None)
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
    from filters.lib.embed import build_embedder

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


# --- targets after on_shortfall: scale (issue 16) -------------------------------------------

_WORDS_ON_SIGNS = ["open", "bar", "sale", "exit", "hello", "coffee", "stop", "fresh", "welcome", "peace"]
_PLACES = ["a bakery door", "a dark street", "a shop window", "a train station"]
# 40 readable text-rendering prompts (too few for the tiny recipe's text quota of 69, enough to stay
# above any floor at half the size) and rows that cannot be read, one of each kind.
BAD_JSONL_ROWS = [
    json.dumps({"text": f'a wooden sign that says "{w}" on {p}'}) for w in _WORDS_ON_SIGNS for p in _PLACES
] + [
    '{broken json',
    '[1, 2, 3]',
    '"a bare string"',
    '{"text": 42}',
    '{"prompt": "the text is under another key"}',
    '{"text": ""}',
    '{"text": null}',
    '{"text": "' + "x" * 100_001 + '"}',
]


@pytest.fixture(scope="module")
def scaled_build(tmp_path_factory) -> Path:
    """A real `curate build` (tiny recipe) whose text pool is a small, partly unreadable JSONL file:
    the text quota falls short, so `on_shortfall: scale` shrinks the set, and ingest rejects rows."""
    from curate.pipeline import build, resolve_recipe

    tmp = tmp_path_factory.mktemp("scaled")
    source = tmp / "bad.jsonl"
    source.write_bytes(("\n".join(BAD_JSONL_ROWS) + "\n").encode() + b"\xff\xfe not utf-8\n")
    name, data = resolve_recipe("tiny", [], [f"text={source}"])
    build(name, data, tmp / "out", progress=False, log=lambda message: None)
    return tmp / "out"


def _table_block(text: str, title: str) -> list[list[str]]:
    """The rows of one plain-text table (split on 2+ spaces), header first, rule dropped."""
    block = text.split(title + "\n", 1)[1].split("\n\n", 1)[0].splitlines()
    return [re.split(r"\s{2,}", line.strip()) for i, line in enumerate(block) if i != 1]


def test_scaled_set_targets_add_up_to_the_planned_size(scaled_build):
    manifest = json.loads((scaled_build / "manifest.json").read_text())
    summary = summarize(scaled_build)
    m = summary["manifest"]
    assert manifest["shortfalls"] and m["size"] == manifest["size"]
    assert m["scaled"] and m["planned_size"] < m["size"]
    targets = {c: e["target"] for c, e in summary["criteria"].items()}
    assert sum(targets.values()) == m["planned_size"]
    assert summary["total"] <= m["planned_size"]
    for crit, cats in summary["categories"].items():
        cat_targets = [e["target"] for e in cats.values() if e["target"] is not None]
        if cat_targets:  # category targets split their criterion's target exactly
            assert sum(cat_targets) == targets[crit], crit
    text = render_tables(summary)
    header, *rows = _table_block(text, "Mixture by criterion")
    total = next(r for r in rows if r[0] == "total")
    # the total row's target is the sum of the rows above it, not the recipe's size
    assert int(total[header.index("target")].replace(",", "")) == m["planned_size"]
    assert sum(int(r[header.index("target")]) for r in rows if r[0] != "total") == m["planned_size"]
    # both sizes are shown, each with its label
    assert f"recipe size {m['size']}" in text and f"planned size {m['planned_size']}" in text


def test_planned_size_from_the_manifest_key_and_unscaled_sets(tmp_path):
    folder = make_set(tmp_path / "s", size=200)
    plain = summarize(folder)
    assert plain["manifest"]["planned_size"] == 200 and not plain["manifest"]["scaled"]
    assert "planned size" not in render_tables(plain) and "size 200" in render_tables(plain)
    scale_manifest(folder, recipe_size=1000)
    scaled = summarize(folder)
    assert scaled["manifest"]["scaled"] and scaled["manifest"]["planned_size"] == 200
    assert "recipe size 1000" in render_tables(scaled)
    # a manifest that records planned_size is taken at its word
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "planned_size": 150}))
    assert summarize(folder)["manifest"]["planned_size"] == 150


def test_a_quota_with_nothing_kept_is_listed(tmp_path):
    folder = make_set(tmp_path / "s", size=200)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["quotas"]["semantic"]["categories"]["shape"]["target"] += 5  # a target nothing filled
    (folder / "data" / "part-00000.parquet").unlink()
    (folder / "data" / "part-00001.parquet").unlink()
    write_set(folder, pool("quality", "general", 10), [], manifest)  # semantic: none kept at all
    summary = summarize(folder)
    assert summary["criteria"]["semantic"]["count"] == 0 and summary["criteria"]["semantic"]["target"] > 0
    assert summary["categories"]["semantic"]["shape"]["count"] == 0
    assert sum(e["target"] for e in summary["criteria"].values()) == summary["manifest"]["planned_size"]
    rows = _table_block(render_tables(summary), "Mixture by criterion x category")
    assert ["semantic", "shape"] == rows[[r[:2] for r in rows].index(["semantic", "shape"])][:2]


# --- rejection summary (issue 16) ----------------------------------------------------------


def test_every_unreadable_row_is_counted_under_its_kind(scaled_build):
    manifest = json.loads((scaled_build / "manifest.json").read_text())
    rejected = _read(scaled_build / "rejected").select(["reason", "step"]).to_pylist()
    want = Counter(parse_reason(r["reason"], r["step"]) for r in rejected)
    summary = summarize(scaled_build)
    rej = summary["rejected"]
    got = Counter({(step, kind): n for step, e in rej["by_step"].items() for kind, n in e["reasons"].items()})
    assert got == want and sum(got.values()) == rej["total"] == manifest["counts"]["rejected"]
    ingest = rej["by_step"]["ingest"]
    source = next(s for s in manifest["sources"] if s["uri"].endswith("bad.jsonl"))
    assert ingest["count"] == source["rejected"] >= 8
    assert list(rej["by_step"])[0] == "ingest"  # rows that were never read come first
    # the text table lists every (step, kind) and its count, and they add up to the total
    header, *rows = _table_block(render_tables(summary), "Rejected by step and reason")
    listed = {(r[0], r[1]): int(r[2].replace(",", "")) for r in rows if r[0] != "total"}
    assert listed == dict(want)
    assert sum(listed.values()) == int(next(r for r in rows if r[0] == "total")[-2].replace(",", ""))


def test_reason_counts_line_never_drops_a_kind_silently():
    kinds = Counter({"over_quota": 482, "malformed_json": 3, "missing_text": 2, "not_object": 1, "wrong_type": 1,
                     "empty": 1, "too_long": 1, "encoding": 1, "no_rendered_text": 1})
    for limit in range(1, len(kinds) + 2):
        line = reason_counts_line(kinds, limit=limit)
        shown = dict((k, int(n.replace(",", ""))) for k, n in re.findall(r"(\w+) ([\d,]+)(?=,| and|$)", line))
        more = re.search(r"and (\d+) more kinds? \(([\d,]+) rows?\)", line)
        hidden_kinds, hidden_rows = (int(more[1]), int(more[2].replace(",", ""))) if more else (0, 0)
        assert all(kinds[k] == n for k, n in shown.items()), line
        assert len(shown) + hidden_kinds == len(kinds), line
        assert sum(shown.values()) + hidden_rows == sum(kinds.values()), line
    assert reason_counts_line(Counter()) == "none"


def test_missing_rejected_part_is_pointed_out(tmp_path):
    folder = make_set(tmp_path / "s", size=100)
    split_rejected(folder, parts=3)
    sorted((folder / "rejected").glob("*.parquet"))[-1].unlink()
    summary = summarize(folder)
    assert summary["rejected"]["manifest_total"] > summary["rejected"]["total"]
    note = render_tables(summary).split("Rejected by step and reason\n", 1)[1].split("\n\n", 1)[0]
    assert "manifest counts" in note and str(summary["rejected"]["manifest_total"]) in note


# --- --html destination (issue 16) ---------------------------------------------------------


def test_html_to_a_folder_is_one_line_naming_it(set_a, summary_a, tmp_path):
    target = tmp_path / "reports"
    target.mkdir()
    with pytest.raises(ReportError) as err:
        write_html(set_a, summary_a, target, embedder=HashingEmbedder())
    message = str(err.value)
    assert "\n" not in message and str(target) in message and "report.html" in message  # what to give instead
    assert list(target.iterdir()) == []
    # the curated set's own folder: a report inside it would block rebuilding the set
    with pytest.raises(ReportError, match="curated set"):
        write_html(set_a, summary_a, set_a, embedder=HashingEmbedder())


def test_html_to_an_unwritable_place_names_the_path_not_a_temp_file(set_a, summary_a, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ReportError, match=re.escape(str(blocker))):
        write_html(set_a, summary_a, blocker / "r.html", embedder=HashingEmbedder())

    def refuse(src, dst):  # a read-only or full disk fails at the rename of the temporary file
        raise PermissionError(13, "Permission denied", str(src))

    monkeypatch.setattr("core.fileio.os.replace", refuse)
    target = tmp_path / "r.html"
    with pytest.raises(ReportError) as err:
        write_html(set_a, summary_a, target, embedder=HashingEmbedder())
    message = str(err.value)
    assert str(target) in message and "permission denied" in message and ".tmp" not in message
    assert "\n" not in message and not list(tmp_path.glob(".*tmp"))


def test_inspect_html_folder_is_a_one_line_error_on_the_command_line(set_a, tmp_path):
    from click.testing import CliRunner

    from curate.cli import main

    result = CliRunner().invoke(main, ["inspect", str(set_a), "--html", str(tmp_path)])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(tmp_path) in errors[0] and ".tmp" not in errors[0]
    assert "Traceback" not in result.output


# --- HTML views (issue 16) -----------------------------------------------------------------


def _html_rows(doc: str, title: str) -> list[list[str]]:
    """Cell texts of the HTML table under <h3>title</h3>, header row first."""
    section = doc.split(f"<h3>{html.escape(title)}</h3>", 1)[1].split("</table>", 1)[0]
    return [[html.unescape(c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", section)]


def test_html_shows_criteria_and_categories_against_targets(tmp_path):
    folder = make_set(tmp_path / "s", size=300)
    scale_manifest(folder, recipe_size=900)
    summary = summarize(folder)
    doc = write_html(folder, summary, tmp_path / "r.html", embedder=HashingEmbedder()).read_text()
    assert "kept against targets: criterion split and every quota" in _figure_alts(doc)
    header, *rows = _html_rows(doc, "Mixture by criterion")
    for row in rows:
        name = row[0]
        if name == "total":
            assert row[header.index("target")] == f"{summary['manifest']['planned_size']:,}"
            continue
        e = summary["criteria"][name]
        assert row[header.index("target share")] == f"{100 * e['target_fraction']:.1f}%"
        assert row[header.index("target")] == f"{e['target']:,}"
        assert row[header.index("vs target")] in ("0", f"{e['count'] - e['target']:+,}")
    header, *rows = _html_rows(doc, "Mixture by criterion x category")
    for row in rows:
        e = summary["categories"][row[0]][row[1]]
        assert row[header.index("target")] == ("" if e["target"] is None else f"{e['target']:,}")
    assert "planned size (scaled)" in doc and "recipe size" in doc


def test_targets_plot_covers_every_quota(summary_a):
    from curate.plots import _target_rows

    rows = _target_rows(summary_a)
    # every category target of a criterion with category quotas, else the criterion's own target
    want = sum(len(cats) if any(e["target"] is not None for e in cats.values()) else 1
               for cats in summary_a["categories"].values())
    assert len(rows) == want
    by_crit = Counter()
    for _, crit, _, target in rows:
        by_crit[crit] += target
    assert dict(by_crit) == {c: e["target"] for c, e in summary_a["criteria"].items()}


def _captured_figures(monkeypatch) -> list:
    from curate import plots

    figures = []
    real_png = plots.png_bytes
    monkeypatch.setattr(plots, "png_bytes", lambda fig: figures.append(fig) or real_png(fig))
    return figures


def test_one_length_histogram_with_labelled_axes(summary_a, monkeypatch):
    from curate import plots

    assert summary_a["length"]["unit"] == "tokens" and "tokens" in summary_a["scores"]
    figures = _captured_figures(monkeypatch)
    plots.score_histograms(summary_a)
    plots.length_histogram(summary_a)
    score_fig, length_fig = figures
    titles = [ax.get_title() for ax in score_fig.axes]
    assert titles and not any(t.startswith("tokens") for t in titles)  # length is drawn once, below
    for ax in [*score_fig.axes, *length_fig.axes]:
        assert ax.get_xlabel() and ax.get_ylabel(), ax.get_title()
    # a set whose only score is its length has no score plot at all
    only_tokens = {**summary_a, "scores": {"tokens": summary_a["scores"]["tokens"]}}
    assert plots.score_histograms(only_tokens) is None


def test_html_has_a_single_length_histogram(html_a):
    alts = _figure_alts(html_a.read_text(encoding="utf-8"))
    assert alts.count("prompt length histogram") == 1
    assert len(alts) == len(set(alts))


def test_steps_say_which_criteria_they_ran_on(tmp_path):
    folder = make_set(tmp_path / "s", size=100)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["steps"][0]["criteria"] = None  # length: every criterion
    manifest["steps"][1]["criteria"] = ["quality", "text"]  # dedup_exact
    # dedup_semantic: no key (an older manifest), so the recipe's steps.*.criteria says
    manifest["recipe"]["steps"]["dedup_semantic"]["criteria"] = ["quality"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    summary = summarize(folder)
    assert [s["criteria"] for s in summary["steps"]] == [None, ["quality", "text"], ["quality"], None]
    doc = write_html(folder, summary, tmp_path / "r.html", embedder=HashingEmbedder()).read_text()
    header, *rows = _html_rows(doc, "Pipeline steps (manifest)")
    col = header.index("criteria")
    assert {r[0]: r[col] for r in rows} == {"length": "all", "dedup_exact": "quality, text",
                                            "dedup_semantic": "quality", "balance": "all"}


def test_steps_criteria_of_a_real_build(scaled_build):
    manifest = json.loads((scaled_build / "manifest.json").read_text())
    steps = {s["name"]: s["criteria"] for s in summarize(scaled_build)["steps"]}
    for name, params in manifest["recipe"]["steps"].items():
        if params is not None:
            assert steps[name] == params.get("criteria"), name  # e.g. require_rendered_text: [text]
    assert steps["balance"] is None


# --- diff across part files and skipped sources (issue 16) -------------------------------


def test_diff_reads_rejected_parts_with_different_score_structs(two_sets, tmp_path):
    a, b = two_sets
    b2 = tmp_path / "b2"
    shutil.copytree(b, b2)
    split_rejected(b2, parts=3)
    schemas = {str(pq.read_schema(p).field("scores").type) if "scores" in pq.read_schema(p).names else None
               for p in (b2 / "rejected").glob("*.parquet")}
    assert len(list((b2 / "rejected").glob("*.parquet"))) == 3 and len(schemas) == 3
    assert diff(a, b2) == {**diff(a, b), "b": {**diff(a, b)["b"], "dir": str(b2)}}
    assert summarize(b2)["rejected"]["by_step"] == summarize(b)["rejected"]["by_step"]


def test_diff_with_skipped_source_files(two_sets, tmp_path):
    a, b = two_sets
    b2 = tmp_path / "b2"
    shutil.copytree(b, b2)
    manifest = json.loads((b2 / "manifest.json").read_text())
    manifest["sources"][0]["skipped_files"] = [{"path": "pool/broken.parquet", "reason": "truncated parquet"}]
    (b2 / "manifest.json").write_text(json.dumps(manifest))
    d = diff(a, b2)
    assert d["skipped_files"] == {"a": 0, "b": 1, "only_a": [], "only_b": ["pool/broken.parquet"]}
    assert d["criteria"] == diff(a, b)["criteria"]
    text = render_diff(d)
    assert "files skipped" in text and "pool/broken.parquet" in text
    assert summarize(b2)["inputs"][0]["skipped_files"] == 1
