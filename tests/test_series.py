"""Student presets, the `train series` workflow and its scaling report, and the encode footprint.
CPU only: the tiny FLUX / SD3 teachers built from configs, students of real widths with random weights."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from shared_helpers import needs_cpp_compiler, published_keys

from core.errors import ConfigError
from train.cli import main
from train.presets import PRESETS, STUDENT_PRESETS


@pytest.fixture(scope="session")
def tiny():
    from train.tiny import tiny_teacher_path

    return {"flux": tiny_teacher_path("flux"), "sd3": tiny_teacher_path("sd3")}


# ---- presets --------------------------------------------------------------------------------------


def test_preset_architectures_have_the_published_parameter_counts():
    """The formula the report and `train presets` use agrees with transformers' own model of each
    architecture (built on the meta device: no memory), and the sizes are the ones the paper compares."""
    from transformers import T5Config, T5EncoderModel

    from train.footprint import t5_encoder_parameters

    counts = {}
    for preset in PRESETS.values():
        with torch.device("meta"):
            model = T5EncoderModel(T5Config(**preset.config, is_encoder_decoder=False, use_cache=False))
        counts[preset.name] = sum(p.numel() for p in model.parameters())
        assert counts[preset.name] == t5_encoder_parameters(preset.config), preset.name
    assert counts["flan-t5-small"] < counts["flan-t5-base"] < counts["flan-t5-large"] < counts["t5-v1_1-xxl"]
    assert round(counts["flan-t5-base"] / 1e6) == 110 and round(counts["t5-v1_1-xxl"] / 1e9, 2) == 4.76
    for size in ("small", "base", "large"):  # flan and v1.1: one architecture, other weights
        assert PRESETS[f"flan-t5-{size}"].config == PRESETS[f"t5-v1_1-{size}"].config


def test_student_preset_in_a_recipe(tmp_path):
    from train.config import resolve

    _, cfg = resolve("flux-t5-base", ["student.preset=t5-v1_1-large"])
    assert cfg["student"]["init"] == "google/t5-v1_1-large" and cfg["student"]["config"] == {}
    # init: config -> the preset's architecture, randomly initialised; student.config still overrides it
    _, cfg = resolve("tiny", ["student.preset=flan-t5-small", "student.config.num_layers=2"])
    assert cfg["student"]["init"] == "config"
    assert cfg["student"]["config"] == {**PRESETS["flan-t5-small"].config, "num_layers": 2}
    # a local folder is kept when it has the preset's shape, and refused when it has not
    folder = tmp_path / "my-flan-small"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(PRESETS["flan-t5-small"].config))
    _, cfg = resolve("flux-t5-base", ["student.preset=flan-t5-small", f"student.init={folder}"])
    assert cfg["student"]["init"] == str(folder)
    with pytest.raises(ConfigError, match=r"is not a flan-t5-base \(d_model=512.*flan-t5-base has d_model=768"):
        resolve("flux-t5-base", ["student.preset=flan-t5-base", f"student.init={folder}"])
    with pytest.raises(ConfigError, match="student.preset must be flan-t5-small, .* got 't5-v1_1-xxl'"):
        resolve("flux-t5-base", ["student.preset=t5-v1_1-xxl"])


def test_every_preset_width_builds_a_student_that_exports_into_flux_and_sd3(tiny, tmp_path):
    """Each preset's architecture at full depth, built the way `train run` builds it (random weights:
    nothing is downloaded), has the published key layout, goes through the exporter and generates an
    image in FluxPipeline and StableDiffusion3Pipeline. flan and v1.1 presets of one size share an
    architecture, so one build per size covers every preset."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline
    from safetensors.torch import load_file

    from train.export import export_student
    from train.student import META_NAME, DistillT5EncoderModel, build_student
    from train.teachers.registry import load_teacher

    sizes = {PRESETS[name].size: PRESETS[name] for name in STUDENT_PRESETS}
    assert sorted(sizes) == ["base", "large", "small"]
    teachers = {kind: load_teacher(str(tiny[kind]), device="cpu") for kind in ("flux", "sd3")}
    pipelines = {"flux": FluxPipeline, "sd3": StableDiffusion3Pipeline}
    for size, preset in sizes.items():
        torch.manual_seed(0)
        student = build_student("config", project_out_dim=teachers["flux"].width, vocab_size=teachers["flux"].vocab_size,
                                base_config=preset.config)
        assert student.config.d_model == preset.config["d_model"]
        assert student.final_projection[0].weight.shape == (teachers["flux"].width, preset.config["d_model"])
        folder = tmp_path / size
        student.save_pretrained(folder, tokenizer=teachers["flux"].tokenizer)
        del student
        assert set(load_file(str(folder / "model.safetensors"))) == published_keys(preset.config["num_layers"])
        for kind, teacher in teachers.items():
            assert teacher.width == teachers["flux"].width  # one student serves both tiny teachers
            (folder / META_NAME).write_text(json.dumps({"teacher_kind": kind, "max_sequence_length": 16}))
            export = export_student(folder, tmp_path / f"{size}-{kind}", fmt="diffusers")
            loaded = DistillT5EncoderModel.from_pretrained(export, subfolder=teacher.t5_slot)
            pipe = pipelines[kind].from_pretrained(str(tiny[kind]), **{teacher.t5_slot: loaded})
            pipe.set_progress_bar_config(disable=True)
            image = pipe("a red cube", height=32, width=32, num_inference_steps=1, max_sequence_length=16,
                         generator=torch.Generator().manual_seed(0)).images[0]
            assert image.size == (32, 32), (size, kind)
            del pipe, loaded
            shutil.rmtree(export)
        shutil.rmtree(folder)


# ---- the series ---------------------------------------------------------------------------------

TINY_STUDENTS = ["d8: student.config.d_model=8 student.config.d_ff=16 student.config.num_layers=1",
                 "d16: student.config.d_model=16 student.config.d_ff=32 student.config.num_layers=1",
                 "d32: student.config.d_model=32 student.config.d_ff=64 student.config.num_layers=2"]
SERIES_SETS = ["distill.sampling_steps=4", "validation.num_prompts=16", "checkpoint.every=5"]


def expected_pick(students: list[dict], tolerance: float) -> str:
    """The rule, from the report's own numbers: the fewest parameters among gaps within tolerance of the best."""
    best = min(s["gap"] for s in students)
    return min((s for s in students if s["gap"] <= best * (1 + tolerance)), key=lambda s: s["parameters"])["label"]


def series_args(out, tolerance: float) -> list[str]:
    args = ["series", "--recipe", "tiny", "--output", str(out), "--max-steps", "10", "--quiet", "--no-compile",
            "--tolerance", str(tolerance)]
    for spec in TINY_STUDENTS:
        args += ["--student", spec]
    for item in SERIES_SETS:
        args += ["--set", item]
    return args


def test_series_of_three_tiny_students_writes_the_report_and_picks_by_tolerance(tmp_path):
    out = tmp_path / "series"
    result = CliRunner().invoke(main, series_args(out, 0.0))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "scaling.json").read_text())
    students = report["students"]
    assert [s["label"] for s in students] == ["d8", "d16", "d32"]
    params = [s["parameters"] for s in students]
    assert params == sorted(params) and len(set(params)) == 3
    for s in students:
        run = out / s["label"]
        summary = json.loads((run / "summary.json").read_text())
        assert s["gap"] == summary["gap_final"] < summary["gap_initial"] and s["steps"] == 10
        assert s["disk_bytes"] == (run / "student" / "model.safetensors").stat().st_size
        assert s["bf16_bytes"] == 2 * s["parameters"]
        assert set(s["gap_per_category"]) == {"color", "numeracy", "shape", "spatial", "text_rendering", "texture"}
        timing = s["encode"]["cpu-eager"]["lengths"]["77"]
        weights = s["encode"]["cpu-eager"]["weights_mib"]
        assert timing["ms"] > 0 and weights == round(s["parameters"] * 4 / 2**20, 3)
        assert timing["peak_mib"] is None or timing["peak_mib"] >= weights
    assert report["recommendation"]["pick"] == expected_pick(students, 0.0)
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "scaling.md").read_text()
    assert all(f"| {s['label']}" in md for s in students) and "![gap vs size](scaling.png)" in md
    assert f"recommended: {report['recommendation']['pick']}" in result.output

    # other tolerances: only the report is redone (no run is touched), and the pick follows each one
    logs = {s["label"]: (out / s["label"] / "log.jsonl").stat().st_mtime_ns for s in students}
    gaps = sorted(s["gap"] for s in students)
    for tolerance in (gaps[1] / gaps[0] - 1 + 1e-6, gaps[2] / gaps[0] - 1 + 1e-6):
        result = CliRunner().invoke(main, ["series", "--output", str(out), "--resume", "--quiet", "--no-compile",
                                           "--tolerance", str(tolerance)])
        assert result.exit_code == 0, result.output
        again = json.loads((out / "scaling.json").read_text())
        assert again["recommendation"]["pick"] == expected_pick(again["students"], tolerance)
        assert again["recommendation"]["within"] == sorted(
            s["label"] for s in again["students"] if s["gap"] <= gaps[0] * (1 + tolerance))
    assert again["recommendation"]["pick"] == "d8"  # every student is within the widest tolerance
    assert logs == {s["label"]: (out / s["label"] / "log.jsonl").stat().st_mtime_ns for s in students}


def test_series_resumes_a_student_cut_off_and_keeps_the_finished_ones(tmp_path):
    out = tmp_path / "series"
    assert CliRunner().invoke(main, series_args(out, 0.1)).exit_code == 0
    first = json.loads((out / "scaling.json").read_text())
    finished = (out / "d8" / "student" / "model.safetensors").stat().st_mtime_ns
    # d32 as a run killed after its step-5 checkpoint: no later checkpoint, no final student, no summary
    shutil.rmtree(out / "d32" / "checkpoints" / "step-00000010")
    shutil.rmtree(out / "d32" / "student")
    (out / "d32" / "summary.json").unlink()
    result = CliRunner().invoke(main, ["series", "--output", str(out), "--resume", "--quiet", "--no-compile"])
    assert result.exit_code == 0, result.output
    again = json.loads((out / "scaling.json").read_text())
    assert (out / "d8" / "student" / "model.safetensors").stat().st_mtime_ns == finished
    # resumed from step 5, d32 ends where the uninterrupted run ended (bit-identical resume)
    assert [s["gap"] for s in again["students"]] == [s["gap"] for s in first["students"]]


def test_series_refuses_bad_input_before_training(tmp_path):
    runner = CliRunner()
    out = tmp_path / "s"
    cases = [
        (["--student", "flan-t5-tiny"], "not a preset"),
        (["--student", "t5-v1_1-xxl"], "T5-XXL is the teacher's own encoder"),
        (["--student", "a b: student.config.d_model=8"], "names a folder"),
        (["--student", "scaling.md: student.config.d_model=8"], "names a folder"),
        (["--student", "x: student.config.d_model=8", "--student", "x: student.config.d_model=16"], "given twice"),
        (["--student", "x: student.config.dmodel=8"], "student x: unknown key student.config.dmodel"),
        (["--student", "x: optim.lr=-1"], "student x: optim.lr must be a number > 0"),
    ]
    for extra, message in cases:
        result = runner.invoke(main, ["series", "--recipe", "tiny", "--output", str(out), *extra])
        assert result.exit_code != 0 and message in result.output, (extra, result.output)
        assert not (out / "x").exists()
    result = runner.invoke(main, ["series", "--output", str(tmp_path / "none"), "--resume"])
    assert result.exit_code != 0 and "holds no series" in result.output
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    result = runner.invoke(main, ["series", "--recipe", "tiny", "--student", "flan-t5-small", "--output", str(tmp_path / "busy")])
    assert result.exit_code != 0 and "is not empty" in result.output
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_recommend_takes_the_smallest_within_tolerance():
    from train.series_report import recommend

    rows = [{"label": "s", "parameters": 10, "gap": 0.30}, {"label": "m", "parameters": 20, "gap": 0.21},
            {"label": "l", "parameters": 40, "gap": 0.20}, {"label": "broken", "parameters": 5, "gap": None}]
    assert recommend(rows, 0.0)["pick"] == "l"
    assert recommend(rows, 0.05)["pick"] == "m" and recommend(rows, 0.05)["within"] == ["l", "m"]
    assert recommend(rows, 0.5)["pick"] == "s"
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        recommend(rows, -0.1)


# ---- footprint ------------------------------------------------------------------------------------


@needs_cpp_compiler
def test_encode_footprint_eager_and_compiled_agree_on_what_they_measure():
    from transformers import T5Config

    from train.footprint import encode_footprint, parameter_count
    from train.student import DistillT5EncoderModel

    torch.manual_seed(0)
    model = DistillT5EncoderModel(T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8, vocab_size=64,
                                           project_out_dim=24)).eval()
    eager = encode_footprint(model, [8, 16], vocab_size=64, repeats=2)
    compiled = encode_footprint(model, [8], vocab_size=64, compiled=True, repeats=2)
    torch._dynamo.reset()
    assert set(eager["lengths"]) == {"8", "16"} and set(compiled["lengths"]) == {"8"}
    assert eager["weights_mib"] == compiled["weights_mib"] == round(parameter_count(model) * 4 / 2**20, 3)
    assert compiled["compile_s"] > 0 and "compile_s" not in eager
    for found in (eager, compiled):
        for at in found["lengths"].values():
            assert at["ms"] > 0 and (at["peak_mib"] is None or at["peak_mib"] >= found["weights_mib"])


def test_a_launched_series_trains_each_student_data_parallel(tmp_path):
    """torchrun with 2 CPU processes: every student's run is data-parallel (the same weights as one process
    with micro-batches of 2), rank 0 alone writes the report."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    common = ["--recipe", "tiny", "--max-steps", "3", "--quiet", "--no-compile", "--set", "validation.num_prompts=8",
              "--set", "optim.micro_batch_size=2", "--student", TINY_STUDENTS[0], "--student", TINY_STUDENTS[1]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "train.cli", "series", "--output", str(tmp_path / "two"), *common],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("recommended:") == 1
    one = CliRunner().invoke(main, ["series", "--output", str(tmp_path / "one"), *common])
    assert one.exit_code == 0, one.output
    for label in ("d8", "d16"):
        a = load_file(str(tmp_path / "one" / label / "student" / "model.safetensors"))
        b = load_file(str(tmp_path / "two" / label / "student" / "model.safetensors"))
        assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a), label


def test_series_with_eval_data_scores_every_student_with_the_suite(tmp_path):
    out = tmp_path / "series"
    result = CliRunner().invoke(main, ["series", "--recipe", "tiny", "--output", str(out), "--max-steps", "3", "--quiet",
                                       "--no-compile", "--set", "validation.num_prompts=8", "--eval-data", "builtin:tiny",
                                       "--student", TINY_STUDENTS[0], "--student", TINY_STUDENTS[1]])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "scaling.json").read_text())
    suite = json.loads((out / "eval.json").read_text())
    assert report["quality"] == "eval" and report["teacher_gap"] == suite["models"][0]["overall"]["gap"]
    rows = {m["name"]: m for m in suite["models"][1:]}
    for s in report["students"]:
        assert s["gap"] == rows[s["run"]]["overall"]["gap"]
        assert s["metrics"]["ocr_word_accuracy"] == rows[s["run"]]["overall"]["ocr_word_accuracy"]
    assert "Image metrics" in (out / "scaling.md").read_text()
