"""`train eval` as an evaluation suite: several students beside the teacher's own T5, the gap, CLIP,
OCR and FID/KID per category, the image cache, the HTML report. Tiny FLUX/SD3 teachers and a tiny
open_clip model built from configs; FID/KID through a tiny feature extractor (no Inception weights
offline). CPU only, 2 sampling steps at 32 px."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from shared_helpers import save_tiny_clip
from train.cli import main

LEN, RES = 12, 32


class TinyFeatures(torch.nn.Module):
    """A fixed random conv + pooling: FID/KID features from uint8 images, as Inception would give."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 8, 4, stride=4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images.float() / 255).mean((2, 3))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    return save_tiny_clip(tmp_path_factory.mktemp("clip"), embed_dim=32, patch_size=8, image_size=RES)


def save_random_student(teacher, folder, seed: int):
    from train.student import build_student

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        student = build_student("config", teacher.width, teacher.vocab_size, base_config=teacher.t5_config,
                                overrides={"num_layers": 1}, projection_dropout=0.0)
    student.save_pretrained(folder, tokenizer=teacher.tokenizer,
                            meta={"teacher_kind": teacher.kind, "max_sequence_length": LEN, "resolution": RES})
    return folder


@pytest.fixture(scope="module")
def flux_students(tmp_path_factory):
    from train.teachers.registry import load_teacher
    from train.tiny import tiny_teacher_path

    teacher = load_teacher(str(tiny_teacher_path("flux")))
    root = tmp_path_factory.mktemp("students")
    return [save_random_student(teacher, root / name, seed) for seed, name in ((1, "a"), (2, "b"))]


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_the_teachers_own_t5_as_a_student_scores_like_the_teacher(kind, tiny_clip, tmp_path):
    """The teacher's T5 in the student's place, through the student's code path (student_cond, the
    student's own SD3 unconditional branch): gap 0, the same images (similarity 1, FID ~0), and a random
    student beside it scores worse. KID with 4 images: its subset size shrinks to fit."""
    from filters.lib.embed import build_embedder
    from train.eval_suite import (Encoder, ImageCache, Sampling, SuiteOptions, Tools, heldout_prompts, run_suite,
                                  student_encoder, teacher_encoder)
    from train.metrics.fid import feature_extractor
    from train.teachers.registry import load_teacher
    from train.tiny import tiny_teacher_path

    teacher = load_teacher(str(tiny_teacher_path(kind)))
    random_dir = save_random_student(teacher, tmp_path / "random", seed=1)
    encoders = [teacher_encoder(teacher), Encoder("copy", teacher_encoder(teacher).module, "copy-of-teacher-t5"),
                student_encoder(teacher, str(random_dir), "cpu")[0]]
    extractor, info = feature_extractor(None, TinyFeatures())
    tools = Tools(clip=build_embedder("clip", model=tiny_clip, progress=False), extractor=extractor,
                  info={"fid_kid": info, "clip": {"model": "tiny"}, "ocr": {"engine": None, "note": "off in this test"}})
    prompts = heldout_prompts("builtin:tiny", 6)
    options = SuiteOptions(images=4, batch_size=4, progress=False)
    result = run_suite(teacher, encoders, prompts, Sampling(LEN, RES, 2, 3.5, 0), tools, options, ImageCache("t", tmp_path))
    rows = {m["name"]: m for m in result.report["models"]}
    for name in ("teacher", "copy"):
        overall = rows[name]["overall"]
        assert overall["gap"] == pytest.approx(0.0, abs=1e-10)
        assert overall["image_similarity"] == pytest.approx(1.0, abs=1e-6)
        assert overall["fid_teacher"] == pytest.approx(0.0, abs=1e-9)
        assert abs(overall["kid_teacher"]) < 1e-4  # KID's unbiased estimate of 0 is not exactly 0
        assert overall["clip_score"] == pytest.approx(rows["teacher"]["overall"]["clip_score"], rel=1e-6)
        assert overall["num_images"] == 4 and overall["ocr_word_accuracy"] is None
    assert all(a.tobytes() == b.tobytes() for a, b in zip(result.images["teacher"], result.images["copy"]))
    random = rows[str(random_dir)]["overall"]
    # the tiny teachers' images move by ~1/255 a pixel with the text: other images, at small distances
    assert random["gap"] > 0.01 and random["fid_teacher"] > rows["copy"]["overall"]["fid_teacher"]
    assert any(a.tobytes() != b.tobytes() for a, b in zip(result.images["teacher"], result.images[str(random_dir)]))
    assert set(rows["copy"]["per_category"]) == {p["category"] for p in prompts}
    assert result.report["metrics"]["fid_kid"]["features"] == "custom extractor TinyFeatures"


def test_two_students_end_to_end_json_table_html_and_the_image_cache(flux_students, tiny_clip, tmp_path):
    a, b = (str(s) for s in flux_students)
    html = tmp_path / "report.html"
    base = ["eval", "--student", a, "--student", b, "--teacher", "tiny:flux", "--data", "builtin:tiny",
            "--max-prompts", "12", "--images", "6", "--steps", "2", "--clip", tiny_clip, "--quiet"]
    runner = CliRunner()
    res = runner.invoke(main, base + ["--json", "--html", str(html)])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert [m["name"] for m in report["models"]] == ["teacher", a, b]
    assert [m["images"] for m in report["models"]] == [{"drawn": 6, "from_cache": 0}] * 3
    settings = report["settings"]
    assert (settings["gap_prompts"], settings["image_prompts"], settings["max_sequence_length"]) == (12, 6, LEN)
    assert settings["text_prompts"] >= 1 and report["categories"] == sorted(report["models"][0]["per_category"])
    for model in report["models"]:
        for scope in [model["overall"], *model["per_category"].values()]:
            assert set(scope) >= {"gap", "clip_score", "image_similarity", "ocr_word_accuracy", "fid_teacher", "num_images"}
            assert scope["fid_teacher"] is None  # no Inception weights offline: skipped, not failed
        assert 0 <= model["overall"]["clip_score"] <= 100
    assert report["models"][0]["overall"]["gap"] == pytest.approx(0.0, abs=1e-10)
    assert all(m["overall"]["gap"] > 0.01 for m in report["models"][1:])
    assert report["metrics"]["fid_kid"]["note"].startswith("skipped: no Inception-v3 weights")
    assert report["metrics"]["clip"]["model"].startswith("clip:") and report["metrics"]["clip"]["note"] is None
    ocr = report["metrics"]["ocr"]
    assert ocr == {"engine": "rapidocr", "note": None}  # a dependency: it must load
    text = report["models"][1]["per_category"]["text_rendering"]
    assert 0 <= text["ocr_word_accuracy"] <= 1 and len(report["models"][1]["ocr_readings"]) == settings["text_prompts"]

    page = html.read_text()
    assert report["html"] == str(html) and page.count("data:image/png;base64,") == 3 * 6
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "text_rendering" in page and "FID(T)" not in page  # a skipped metric has no column

    # a rerun draws nothing; the table names every row and says why FID/KID were skipped
    res = runner.invoke(main, base)
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[1].split()[:4] == ["category", "model", "images", "gap"]
    assert [line.split()[1] for line in lines[2:5]] == ["teacher", a, b] and lines[2].split()[0] == "overall"
    assert any(line.startswith("fid_kid: skipped: no Inception-v3 weights") for line in lines)
    rerun = json.loads(runner.invoke(main, base + ["--json"]).stdout)
    assert [m["images"] for m in rerun["models"]] == [{"drawn": 0, "from_cache": 6}] * 3
    assert rerun["models"][1]["overall"]["clip_score"] == pytest.approx(report["models"][1]["overall"]["clip_score"])


def test_a_new_student_beside_cached_ones_draws_only_its_own_images(flux_students, tmp_path):
    from train.teachers.registry import load_teacher
    from train.tiny import tiny_teacher_path

    c = save_random_student(load_teacher(str(tiny_teacher_path("flux"))), tmp_path / "c", seed=3)
    args = ["eval", "--teacher", "tiny:flux", "--data", "builtin:tiny", "--max-prompts", "6", "--images", "3",
            "--steps", "2", "--seed", "7", "--save-grid", str(tmp_path / "grid.png"), "--json", "--quiet"]
    first = CliRunner().invoke(main, args + ["--student", str(flux_students[0])])
    assert first.exit_code == 0, first.output
    res = CliRunner().invoke(main, args + ["--student", str(flux_students[0]), "--student", str(c)])
    assert res.exit_code == 0, res.output
    drawn = [m["images"]["drawn"] for m in json.loads(res.stdout)["models"]]
    assert drawn == [0, 0, 3]
    from PIL import Image

    assert Image.open(tmp_path / "grid.png").size == (3 * RES, 3 * RES)  # teacher | student | student


def test_weights_that_are_missing_or_wrong_are_notes_and_bad_paths_fail_fast(flux_students, tmp_path):
    from train.metrics.fid import feature_extractor

    bad = tmp_path / "inception.pth"
    bad.write_bytes(b"not a checkpoint")
    extractor, info = feature_extractor(str(bad), None)
    assert extractor is None and info["note"].startswith(f"skipped: Inception-v3 weights {bad} did not load")
    runner = CliRunner()
    base = ["eval", "--student", str(flux_students[0]), "--teacher", "tiny:flux", "--data", "builtin:tiny"]
    for extra, message in (
        (["--inception-weights", str(tmp_path / "none.pth")], f"error: --inception-weights {tmp_path / 'none.pth'}: no such file"),
        (["--html", str(tmp_path)], f"error: --html {tmp_path}: is a folder"),
        (["--student", str(flux_students[0])], f"error: --student {flux_students[0]} is given twice"),
        (["--clip", "ViT-B-32", "--clip-pretrained", str(tmp_path / "v.pt")], f"error: --clip-pretrained {tmp_path / 'v.pt'}: no such file"),
        (["--ocr", "tesseract"], "error: Invalid value for '--ocr'"),
        (["--reference-images", str(tmp_path)], f"error: --reference-images {tmp_path}: no readable image"),
        (["--max-prompts", "0"], "error: Invalid value for '--max-prompts'"),
    ):
        res = runner.invoke(main, base + extra)
        assert res.exit_code == 2 and res.stderr.startswith(message), res.stderr
        assert len(res.stderr.strip().splitlines()) == 1


def test_held_out_prompts_the_student_was_trained_on_are_counted_and_warned_about(flux_students, tmp_path):
    from train.data import load_prompts, split_heldout, training_prompts
    from train.teachers.registry import load_teacher
    from train.tiny import tiny_teacher_path

    teacher = load_teacher(str(tiny_teacher_path("flux")))
    notes = {"training_data": [["builtin:tiny"]], "heldout": {"data": None, "num_prompts": 4}}
    trained = save_random_student(teacher, tmp_path / "trained", 3)
    meta_file = trained / "t5shrink.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), **notes}))
    seen = set(training_prompts(notes))
    heldout = split_heldout(load_prompts("builtin:tiny"), 12)
    exact = sum(p["text"] in seen for p in heldout)
    assert 0 < exact < 12  # the trainer held out 4 of them: the rest it trained on

    untold = str(flux_students[0])  # saved without notes on its training data
    res = CliRunner().invoke(main, ["eval", "--student", str(trained), "--student", untold, "--teacher", "tiny:flux",
                                    "--data", "builtin:tiny", "--max-prompts", "12", "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    rows = {m["name"]: m for m in json.loads(res.stdout)["models"]}
    found = rows[str(trained)]["training_overlap"]
    assert found["checked"] and found["prompts"] == 12 and found["by_kind"]["exact"] == exact
    assert found["overlapping"] == sum(found["by_kind"].values()) >= exact and found["examples"][0] in seen
    assert rows[untold]["training_overlap"] == {"checked": False,
                                                "note": "its notes (t5shrink.json) do not name its training data"}
    assert "training_overlap" not in rows["teacher"]
    assert f"warning: {found['overlapping']} of the 12 held-out prompts (exact {exact}" in res.stderr


def test_hub_clip_weights_offline_are_a_note_and_a_mistyped_model_an_error(tmp_path, monkeypatch):
    from train.eval_suite import SuiteOptions, load_clip

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip, info = load_clip(SuiteOptions(clip="RN50", clip_pretrained="openai"), "cpu")
    assert clip is None and info["model"] is None
    assert info["note"].startswith("skipped: the CLIP weights RN50/openai could not be loaded")
    with pytest.raises(ValueError, match=r"--clip RN05: not an open_clip model; did you mean 'RN50'"):
        load_clip(SuiteOptions(clip="RN05"), "cpu")
    with pytest.raises(RuntimeError, match="could not load open_clip"):  # local weights the user named: an error
        load_clip(SuiteOptions(clip="local-dir:" + str(tmp_path / "none")), "cpu")


class _Trap:
    """A pickle that would create a file when loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_inception_weights_are_never_unpickled_beyond_tensors(tmp_path):
    from train.metrics.fid import feature_extractor

    marker, weights = tmp_path / "ran", tmp_path / "inception.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": _Trap(marker)}, weights)
    extractor, info = feature_extractor(str(weights), None)
    assert extractor is None and info["note"].startswith(f"skipped: Inception-v3 weights {weights} did not load")
    assert not marker.exists()


def test_an_image_cache_that_cannot_be_written_only_stops_caching(tmp_path):
    import warnings

    from PIL import Image

    from train.eval_suite import ImageCache

    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = ImageCache("t", blocker / "eval-images")  # under a file: nothing can be made there
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for key in ("a" * 64, "b" * 64):
            cache.put(key, Image.new("RGB", (4, 4)))
    assert not cache.writable and cache.get("a" * 64) is None
    assert [str(w.message) for w in caught] == [f"image cache: cannot write to {blocker / 'eval-images'} (Not a "
                                                "directory); images are no longer cached (set T5SHRINK_CACHE to a "
                                                "writable folder)"]
