"""Every registered teacher family end to end on its tiny pipeline: train → resume → export → the family's
own diffusers pipeline. A family missing any piece (a tiny builder, a slot the export writes, a pipeline
the export does not load into) fails here. CPU only, fixed seeds."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from train.cli import main
from train.teachers.registry import FAMILIES
from train.tiny import BUILDERS, tiny_teacher_path

# what each family's pipeline needs besides the prompt to draw a 32 px image from a tiny model
PIPELINE_KWARGS = {
    "flux": {"guidance_scale": 3.5},
    "sd3": {"guidance_scale": 5.0},
    "pixart-alpha": {"guidance_scale": 4.5, "use_resolution_binning": False},  # the bins start at 256 px
    "pixart-sigma": {"guidance_scale": 4.5, "use_resolution_binning": False},
    "chroma": {"guidance_scale": 5.0},
    "ltx-video": {"guidance_scale": 3.0, "num_frames": 9},
}
MAX_LEN = 16


def test_every_family_has_a_tiny_builder_and_pipeline_settings():
    assert set(BUILDERS) == set(FAMILIES) == set(PIPELINE_KWARGS)


def _run(out, kind: str, *extra: str):
    args = ["run", "--recipe", "tiny", "--teacher", f"tiny:{kind}", "--output", str(out), "--quiet",
            "--set", "distill.sampling_steps=3", "--set", f"stages.0.max_sequence_length={MAX_LEN}",
            "--set", "validation.num_prompts=8", "--set", "student.projection_dropout=0.1",
            "--set", "checkpoint.every=2", *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_family_trains_resumes_bit_identically_exports_and_generates(kind, tmp_path):
    import diffusers

    from train.student import DistillT5EncoderModel

    family = FAMILIES[kind]
    _run(tmp_path / "a", kind, "--max-steps", "4")
    _run(tmp_path / "b", kind, "--max-steps", "2")  # stopped after the step-2 checkpoint ...
    _run(tmp_path / "b", kind, "--max-steps", "4", "--resume")  # ... and continued
    a = load_file(str(tmp_path / "a" / "student" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "student" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((tmp_path / "a" / "student" / "t5shrink.json").read_text())
    assert meta["teacher_kind"] == kind and meta["t5_slot"] == family.t5_slot

    result = CliRunner().invoke(main, ["export", "--checkpoint", str(tmp_path / "a"), "--output", str(tmp_path / "exp"),
                                       "--format", "diffusers"])
    assert result.exit_code == 0, result.output
    student = DistillT5EncoderModel.from_pretrained(tmp_path / "exp", subfolder=family.t5_slot)
    pipeline = getattr(diffusers, family.pipeline_class)
    pipe = pipeline.from_pretrained(str(tiny_teacher_path(kind)), **{family.t5_slot: student})
    assert getattr(pipe, family.t5_slot) is student
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red cube on a blue chair", height=32, width=32, num_inference_steps=2, max_sequence_length=MAX_LEN,
               generator=torch.Generator().manual_seed(0), **PIPELINE_KWARGS[kind])
    if family.frames is None:
        assert out.images[0].size == (32, 32)
    else:  # a video: one clip of num_frames frames
        assert len(out.frames[0]) == PIPELINE_KWARGS[kind]["num_frames"] and out.frames[0][0].size == (32, 32)

    # the evaluation suite on the exported student: the gap, and images drawn from the same noise
    result = CliRunner().invoke(main, ["eval", "--student", str(tmp_path / "exp"), "--teacher", f"tiny:{kind}",
                                       "--data", "builtin:tiny", "--max-prompts", "8", "--images", "2", "--steps", "2",
                                       "--resolution", "32", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["models"][0]["overall"]["gap"] == pytest.approx(0.0, abs=1e-9)  # the teacher's own T5
    assert 0 < report["models"][1]["overall"]["gap"] and report["settings"]["image_prompts"] == 2


@pytest.mark.parametrize("kind, steps", [("pixart-alpha", 200), ("pixart-sigma", 200), ("chroma", 50), ("ltx-video", 50)])
def test_masked_families_shrink_the_held_out_gap_5x(kind, steps, tmp_path):
    """The tiny recipe on the new families (FLUX's and SD3's are in test_train.py). PixArt masks all
    padding, so only the few real tokens of each prompt carry signal (FLUX's gap also counts the 70-odd
    padding positions, which a student learns first): it needs about 4x the tiny recipe's 50 steps."""
    _run(tmp_path / "run", kind, "--max-steps", str(steps), "--set", "teacher.empty_prompt_prob=0.1", "--set", "validation.every=0", "--set", "checkpoint.every=0",
         "--set", "stages.0.max_sequence_length=77", "--set", "student.projection_dropout=0.0")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["gap_final"] * 5 <= summary["gap_initial"], summary


def test_frames_are_for_video_teachers(tmp_path):
    result = CliRunner().invoke(main, ["run", "--recipe", "tiny", "--teacher", "tiny:flux", "--output", str(tmp_path / "r"),
                                       "--set", "teacher.frames=9", "--quiet"])
    assert result.exit_code != 0 and "teacher.frames is for video teachers" in result.output


def test_pixart_student_reads_the_padding_mask_like_the_pipelines_t5(tmp_path):
    """The teacher's own T5 through the student's calling convention gives the pipeline's embeddings, and
    the gap is blind to what a student puts at padded positions (the transformer masks them)."""
    from train.evaluate import GapEvaluator
    from train.teachers.registry import load_teacher

    teacher = load_teacher("tiny:pixart-alpha")
    texts = ["A Red Cat", "two dogs on a sofa"]
    ids = teacher.tokenize(texts, MAX_LEN)
    assert ids[0].tolist() == teacher.tokenize(["a red cat"], MAX_LEN)[0].tolist()  # preprocessed as the pipeline does
    t5 = teacher.pipe.text_encoder

    def own(ids, attention_mask=None):
        return (t5(ids, attention_mask=attention_mask)[0],)

    assert torch.allclose(teacher.student_sequence(own, ids), teacher.encode(texts, MAX_LEN).embeds)

    def padded_noise(ids, attention_mask=None):
        seq = own(ids, attention_mask)[0]
        return (torch.where(attention_mask[..., None].bool(), seq, torch.randn_like(seq) * 100),)

    prompts = [{"text": t, "category": "c"} for t in texts]
    gap = GapEvaluator(teacher, prompts, MAX_LEN, 32, batch_size=2)
    student = torch.nn.Module()
    student.forward = padded_noise
    assert gap(student)["gap"] == pytest.approx(0.0, abs=1e-10)
