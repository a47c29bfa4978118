"""`train eval --clip`: CLIP scores of teacher and student images and their image similarity, beside the
conditioning gap. The tiny FLUX teacher and a tiny open_clip model are built from configs, saved, and
loaded through the same paths a user's checkpoints take (a pipeline folder, 'local-dir:'). CPU only.

Both tiny models are random, so the numbers only mean something relative to each other: the tiny
teacher's images change by ~1/255 a pixel with the text and a random CLIP tower calls most images
alike (cosine > 0.99), hence the tight tolerances below."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from shared_helpers import save_tiny_clip
from train.cli import main

LEN, RES = 12, 32


@pytest.fixture(scope="module")
def flux():
    from train.tiny import tiny_teacher_path

    return tiny_teacher_path("flux")  # into the session's throwaway cache (conftest)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    return save_tiny_clip(tmp_path_factory.mktemp("clip"), embed_dim=32, patch_size=8, image_size=RES)


def random_student(teacher):
    from train.student import build_student

    with torch.random.fork_rng():
        torch.manual_seed(1)
        return build_student("config", teacher.width, teacher.vocab_size, base_config=teacher.t5_config,
                             overrides={"num_layers": 1}, projection_dropout=0.0).eval()


@pytest.fixture(scope="module")
def student_dir(flux, tmp_path_factory):
    """A random student saved as `train run` saves one (weights, teacher tokenizer, t5shrink.json)."""
    from train.teachers.registry import load_teacher

    teacher = load_teacher(str(flux))
    folder = tmp_path_factory.mktemp("student") / "student"
    random_student(teacher).save_pretrained(folder, tokenizer=teacher.tokenizer, meta={
        "teacher_kind": "flux", "max_sequence_length": LEN, "resolution": RES})
    return folder


def test_a_student_equal_to_the_teacher_scores_like_it_and_a_random_one_does_not(flux, tiny_clip):
    from filters.lib.embed import build_embedder
    from train.data import load_prompts, split_heldout
    from train.evaluate import clip_report, image_pairs
    from train.teachers.registry import load_teacher

    teacher = load_teacher(str(flux))
    clip = build_embedder("clip", model=tiny_clip, progress=False)
    prompts = split_heldout(load_prompts("builtin:tiny"), 12)[:6]
    texts = [p["text"] for p in prompts]
    cond = teacher.encode(texts, LEN)

    def report(student):
        pairs = image_pairs(teacher, student, texts, cond, LEN, RES, 3, 3.5, [0], batch_size=4)
        return pairs, clip_report(clip, prompts, pairs)

    # the teacher's own T5 in the student's place: the same images, so the same scores
    pairs, same = report(teacher.pipe.text_encoder_2)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs)
    assert same["image_similarity"] == pytest.approx(1.0, abs=1e-6)
    assert same["clip_score_student"] == pytest.approx(same["clip_score_teacher"], rel=1e-6)
    for c in same["per_category"].values():
        assert c["image_similarity"] == pytest.approx(1.0, abs=1e-6)
        assert c["clip_score_student"] == pytest.approx(c["clip_score_teacher"], rel=1e-6)
    assert 0 < same["clip_score_teacher"] <= 100

    # a random student: other images from the same noise, so lower similarity and another CLIP score
    pairs, rand = report(random_student(teacher))
    assert not any(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs)
    assert rand["image_similarity"] < 1 - 1e-5
    assert abs(rand["clip_score_student"] - rand["clip_score_teacher"]) > 1e-3
    assert rand["clip_score_teacher"] == pytest.approx(same["clip_score_teacher"], rel=1e-6)  # teacher images unchanged
    assert {c: v["num_images"] for c, v in rand["per_category"].items()} == {c: 1 for c in {p["category"] for p in prompts}}


def test_cli_reports_clip_metrics_that_match_the_saved_images(flux, tiny_clip, student_dir, tmp_path):
    """`train eval --clip ... --json --save-grid`: keys and ranges, and the numbers recomputed
    independently from the grid's images through the embedder's file path (encode_images)."""
    from PIL import Image

    from filters.lib.embed import build_embedder
    from train.data import load_prompts, split_heldout

    grid = tmp_path / "grid.png"
    res = CliRunner().invoke(main, ["eval", "--student", str(student_dir), "--teacher", str(flux), "--data", "builtin:tiny",
                                    "--max-prompts", "12", "--json", "--clip", tiny_clip, "--images", "4", "--steps", "3",
                                    "--seed", "1", "--save-grid", str(grid)])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    teacher_row, student_row = report["models"]
    assert 0 <= student_row["overall"]["gap"] and report["settings"]["gap_prompts"] == 12 and report["grid"] == str(grid)
    assert report["metrics"]["clip"]["model"].startswith("clip:") and report["metrics"]["clip"]["note"] is None
    assert (report["settings"]["steps"], report["settings"]["seed"], report["settings"]["image_prompts"]) == (3, 1, 4)
    assert student_row["overall"]["num_images"] == 4
    assert set(student_row["per_category"]) <= set(report["categories"])
    assert sum(c["num_images"] for c in student_row["per_category"].values()) == 4
    for row in [teacher_row["overall"], student_row["overall"], *teacher_row["per_category"].values(),
                *student_row["per_category"].values()]:
        if row["num_images"]:
            assert 0 <= row["clip_score"] <= 100
            assert -1 <= row["image_similarity"] <= 1 + 1e-6
        else:
            assert row["clip_score"] is None and row["image_similarity"] is None

    # recompute from the grid: row i = prompt i, left teacher, right student
    prompts = split_heldout(load_prompts("builtin:tiny"), 12)[:4]
    image = Image.open(grid)
    assert image.size == (2 * RES, 4 * RES)
    paths = {"t": [], "s": []}
    for i in range(4):
        for side, x in (("t", 0), ("s", RES)):
            paths[side].append(tmp_path / f"{side}{i}.png")
            image.crop((x, i * RES, x + RES, (i + 1) * RES)).save(paths[side][-1])
    embedder = build_embedder("clip", model=tiny_clip, progress=False)
    text = embedder.encode([p["text"] for p in prompts])
    t_img, s_img = embedder.encode_images(paths["t"]), embedder.encode_images(paths["s"])
    clip = student_row["overall"]
    assert teacher_row["overall"]["clip_score"] == pytest.approx(100 * np.maximum((t_img * text).sum(1), 0).mean(), rel=1e-5)
    assert clip["clip_score"] == pytest.approx(100 * np.maximum((s_img * text).sum(1), 0).mean(), rel=1e-5)
    assert clip["image_similarity"] == pytest.approx((t_img * s_img).sum(1).mean(), rel=1e-5)
    assert teacher_row["overall"]["image_similarity"] == pytest.approx(1.0, abs=1e-6)
    for cat, row in student_row["per_category"].items():
        rows = [i for i, p in enumerate(prompts) if p["category"] == cat]
        assert row["num_images"] == len(rows)
        if rows:
            assert row["image_similarity"] == pytest.approx((t_img[rows] * s_img[rows]).sum(1).mean(), rel=1e-5)


def test_cli_table_and_one_line_errors(flux, tiny_clip, student_dir):
    runner = CliRunner()
    base = ["eval", "--student", str(student_dir), "--teacher", str(flux), "--data", "builtin:tiny", "--max-prompts", "6"]
    res = runner.invoke(main, base + ["--clip", tiny_clip, "--images", "2", "--steps", "1"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].startswith("teacher ") and lines[1].split()[:5] == ["category", "model", "images", "gap", "clip"]
    rows = [line.split() for line in lines[2:16]]
    assert [r[1] for r in rows] == ["teacher", str(student_dir)] * 7 and rows[0][0] == "overall"
    students = [r for r in rows[2:] if r[1] == str(student_dir)]
    assert len(students) == 6 and all(r[3] != "-" for r in students)  # a gap for every category
    assert sum(r[4] != "-" for r in students) == 2  # images (so CLIP scores) for two
    assert any(line.startswith("clip: model clip:") for line in lines[16:])
    res = runner.invoke(main, base + ["--clip-pretrained", "openai"])
    assert res.exit_code == 2 and res.stderr.strip() == "error: --clip-pretrained needs --clip (the open_clip model it belongs to)"
    res = runner.invoke(main, base + ["--clip", "local-dir:/no/such/clip"])
    assert res.exit_code == 1 and res.stderr.startswith("error: could not load open_clip")
    assert len(res.stderr.strip().splitlines()) == 1


def test_export_never_replaces_a_folder_holding_other_things(student_dir, tmp_path):
    from train.export import export_student

    (tmp_path / "exports" / "other-model").mkdir(parents=True)
    with pytest.raises(ValueError, match="other-model"):
        export_student(student_dir, tmp_path / "exports")
    assert [p.name for p in (tmp_path / "exports").iterdir()] == ["other-model"]  # untouched
    previous = tmp_path / "previous"
    previous.mkdir()
    for name in ("t5shrink.json", "config.json", "model.safetensors"):
        (previous / name).write_text("{}")
    export_student(student_dir, previous)  # a previous export is replaced, as a whole
    assert json.loads((previous / "config.json").read_text())["project_out_dim"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports", "previous"]  # no staging left behind
