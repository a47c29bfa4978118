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
    image = pipe("a red cube on a blue chair", height=32, width=32, num_inference_steps=2, max_sequence_length=MAX_LEN,
                 generator=torch.Generator().manual_seed(0), **PIPELINE_KWARGS[kind]).images[0]
    assert image.size == (32, 32)


@pytest.mark.parametrize("kind, steps", [("pixart-alpha", 200), ("pixart-sigma", 200), ("chroma", 50)])
def test_masked_families_shrink_the_held_out_gap_5x(kind, steps, tmp_path):
    """The tiny recipe on the new families (FLUX's and SD3's are in test_train.py). PixArt masks all
    padding, so only the few real tokens of each prompt carry signal (FLUX's gap also counts the 70-odd
    padding positions, which a student learns first): it needs about 4x the tiny recipe's 50 steps."""
    _run(tmp_path / "run", kind, "--max-steps", str(steps), "--set", "teacher.empty_prompt_prob=0.1", "--set", "validation.every=0", "--set", "checkpoint.every=0",
         "--set", "stages.0.max_sequence_length=77", "--set", "student.projection_dropout=0.0")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["gap_final"] * 5 <= summary["gap_initial"], summary


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
