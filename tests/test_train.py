"""Tests for the `train` package: tiny FLUX / SD3 pipelines built from configs, saved, and loaded back
through the same path-loading code a real checkpoint takes. CPU only, fixed seeds."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from shared_helpers import needs_cpp_compiler, needs_cpu_float8, published_keys

from train.cli import main


@pytest.fixture(scope="session")
def tiny():
    """Build the tiny FLUX and SD3 teachers once into the session's cache (conftest isolates it); that
    is what `tiny:flux` / `tiny:sd3` resolve to."""
    from train.tiny import tiny_teacher_path

    return {"flux": tiny_teacher_path("flux"), "sd3": tiny_teacher_path("sd3")}


def small_cfg(teacher: str, **over) -> dict:
    """A resolved recipe small enough for a few-second CPU run."""
    from train.config import resolve

    stage = {"name": "s", "data": "builtin:tiny", "steps": over.pop("steps", 4), "resolution": 32,
             "max_sequence_length": over.pop("max_len", 12)}
    recipe = {
        "seed": 0,
        "teacher": {"path": teacher, "guidance": [2.0, 5.0], "empty_prompt_prob": over.pop("empty", 0.0),
                    "gradient_checkpointing": over.get("ckpt_grad", False)},
        "student": {"init": "config", "config": {"num_layers": 1}, "projection_dropout": over.pop("dropout", 0.0),
                    "gradient_checkpointing": over.pop("ckpt_grad", False)},
        "optim": {"lr": over.pop("lr", 2.0e-3), "warmup_steps": 2, "schedule": "cosine", "batch_size": over.pop("batch", 4),
                  "max_bad_steps": over.pop("max_bad", 10)},
        "distill": {"sampling_steps": over.pop("n", 3)},
        "validation": {"every": 0, "num_prompts": 8, "batch_size": 8, "images": over.pop("images", False),
                       "image_prompts": 2, "image_seeds": [0, 1], "image_steps": 2},
        "checkpoint": {"every": over.pop("ckpt_every", 0), "keep": 5},
        "log": {"every": 1, "tensorboard": False},
        "stages": [stage],
    }
    recipe.update(over)
    return resolve(recipe)[1]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- recipes and config -------------------------------------------------------------------------


def test_shipped_recipes_validate_and_name_their_command():
    from core.recipe import list_recipes, recipe_dir
    from train.config import resolve
    from train.teachers.registry import FAMILIES

    names = list_recipes("train")
    assert {"tiny", "flux-t5-base", "sd3-t5-base"} <= set(names)
    for name in names:
        _, cfg = resolve(name)
        first = (recipe_dir("train") / f"{name}.yaml").read_text().splitlines()[0]
        assert first.startswith(f"# train run --recipe {name}"), first
        lengths = {s["max_sequence_length"] for s in cfg["stages"]}
        if name.startswith(("pixart", "chroma", "ltx")):  # at the pipeline's own default length: inference needs none
            import inspect

            import diffusers

            pipeline = getattr(diffusers, FAMILIES[name.rsplit("-t5", 1)[0]].pipeline_class)
            assert lengths == {inspect.signature(pipeline.__call__).parameters["max_sequence_length"].default}
        else:
            assert lengths == {77}  # as published
    _, flux = resolve("flux-t5-base")
    assert [s["steps"] for s in flux["stages"]] == [2500, 3500, 10000]  # x 20 updates = the published 320k
    assert flux["distill"]["update"] == "step"
    assert [s["resolution"] for s in flux["stages"]] == [512, 1024, 512]
    assert flux["optim"]["batch_size"] == 32 and flux["optim"]["lr"] == 1e-4
    assert flux["distill"]["sampling_steps"] == 20 and flux["teacher"]["guidance"] == [2.0, 5.0]


def test_unknown_keys_fail_naming_the_key(tmp_path):
    from core.errors import ConfigError
    from train.config import resolve

    with pytest.raises(ConfigError, match="optim.lrr"):
        resolve("tiny", overrides=["optim.lrr=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"teacher": {"path": "tiny:flux", "colour": 1}, "stages": []}))
    with pytest.raises(ConfigError, match="teacher.colour"):
        resolve(str(bad))
    _, cfg = resolve("tiny", overrides=["optim.lr=0.01"], data="x.txt", teacher="some/dir")
    assert cfg["optim"]["lr"] == 0.01 and cfg["stages"][0]["data"] == "x.txt" and cfg["teacher"]["path"] == "some/dir"


@pytest.mark.parametrize("override, message", [
    ("optim.batch_size=0", "optim.batch_size must be a positive integer, got 0"),
    ("optim.lr=null", "optim.lr must be a number > 0, got None"),
    ("log.every=0", "log.every must be a positive integer, got 0"),
    ("stages.0.resolution=0", "stages.0.resolution must be a positive integer, got 0"),
    ("validation.sigmas=[]", r"validation.sigmas must be a non-empty list of noise levels in \(0, 1\]"),
    ("student.config.num_layer=1", "unknown key student.config.num_layer .*did you mean num_layers"),
    ("cache.offload_text_encoders=true", "cache.offload_text_encoders needs cache.dir and cache.precompute"),
])
def test_values_out_of_range_fail_naming_the_key(override, message):
    from core.errors import ConfigError
    from train.config import resolve

    with pytest.raises(ConfigError, match=message):
        resolve("tiny", overrides=[override])


def test_null_switches_off_and_t5_aliases_are_t5_fields():
    from train.config import resolve

    _, cfg = resolve("tiny", overrides=["optim.grad_clip=null", "checkpoint.every=null", "validation.every=null",
                                        "student.config.hidden_size=16"])  # T5Config maps hidden_size to d_model
    assert cfg["optim"]["grad_clip"] is None and cfg["student"]["config"] == {"hidden_size": 16}


# ---- student ------------------------------------------------------------------------------------


def published_state(vocab=50, d=16, heads=2, dkv=8, dff=24, layers=2, out=24, buckets=32, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    shapes = {"encoder.shared.weight": (vocab, d), "encoder.encoder.final_layer_norm.weight": (d,),
              "final_projection.0.weight": (out, d), "final_projection.3.weight": (out, out),
              "encoder.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (buckets, heads)}
    for i in range(layers):
        b = f"encoder.encoder.block.{i}.layer"
        shapes.update({f"{b}.0.SelfAttention.{w}.weight": (heads * dkv, d) for w in "qkv"})
        shapes[f"{b}.0.SelfAttention.o.weight"] = (d, heads * dkv)
        shapes.update({f"{b}.0.layer_norm.weight": (d,), f"{b}.1.layer_norm.weight": (d,)})
        shapes.update({f"{b}.1.DenseReluDense.wi_0.weight": (dff, d), f"{b}.1.DenseReluDense.wi_1.weight": (dff, d),
                       f"{b}.1.DenseReluDense.wo.weight": (d, dff)})
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def test_published_state_dict_loads_with_no_missing_or_unexpected_keys(tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import T5Config

    from train.student import DistillT5EncoderModel, load_student_state_dict

    sd = published_state()
    assert set(sd) == published_keys(2)
    cfg = T5Config(vocab_size=50, d_model=16, num_heads=2, d_kv=8, d_ff=24, num_layers=2, feed_forward_proj="gated-gelu",
                   project_in_dim=16, project_out_dim=24)
    model = DistillT5EncoderModel(cfg)
    assert load_student_state_dict(model, sd) == ([], [])
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in sd.items())
    # the tied alias reads the shared embedding, as the published loader's T5EncoderModel does
    assert torch.equal(model.encoder.encoder.embed_tokens.weight, sd["encoder.shared.weight"])
    model.save_pretrained(tmp_path / "s")
    assert set(load_file(str(tmp_path / "s" / "model.safetensors"))) == published_keys(2)
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["project_in_dim"] == 16 and config["project_out_dim"] == 24 and config["d_model"] == 16
    again = DistillT5EncoderModel.from_pretrained(tmp_path / "s")
    assert all(torch.equal(again.state_dict()[k], v) for k, v in sd.items())
    # strictness: a missing or an extra key is reported, and from_pretrained refuses it
    missing = {k: v for k, v in sd.items() if k != "final_projection.3.weight"}
    assert load_student_state_dict(model, missing)[0] == ["final_projection.3.weight"]
    assert load_student_state_dict(model, {**sd, "extra.weight": torch.zeros(1)})[1] == ["extra.weight"]
    save_file(missing, str(tmp_path / "s" / "model.safetensors"))
    with pytest.raises(ValueError, match="missing keys"):
        DistillT5EncoderModel.from_pretrained(tmp_path / "s")


def test_student_from_pretrained_t5_keeps_its_encoder_weights(tmp_path):
    """The reference script replaced the pretrained encoder by a random one; ours must not."""
    from transformers import T5Config, T5EncoderModel

    from train.student import build_student

    torch.manual_seed(0)
    t5 = T5EncoderModel(T5Config(vocab_size=60, d_model=16, num_heads=2, d_kv=8, d_ff=24, num_layers=1))
    t5.save_pretrained(tmp_path / "t5")
    student = build_student(str(tmp_path / "t5"), project_out_dim=20, vocab_size=60)
    assert all(torch.equal(v, student.encoder.state_dict()[k]) for k, v in t5.state_dict().items())
    assert student.config.project_out_dim == 20 and student.config.project_in_dim == 16
    with pytest.raises(ValueError, match="vocab"):
        build_student(str(tmp_path / "t5"), project_out_dim=20, vocab_size=61)
    # a pretrained T5 whose own tokenizer numbers tokens differently from the teacher's is refused
    from train.tiny import train_t5_tokenizer

    teacher_tok = train_t5_tokenizer()
    teacher_tok.save_pretrained(str(tmp_path / "t5"))
    build_student(str(tmp_path / "t5"), project_out_dim=20, vocab_size=60, teacher_tokenizer=teacher_tok)
    with pytest.raises(ValueError, match="differs from the teacher"):
        build_student(str(tmp_path / "t5"), project_out_dim=20, vocab_size=60, teacher_tokenizer=train_t5_tokenizer(60))


# ---- teachers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_student_conditioning_equals_the_pipelines_own_encoding(tiny, kind):
    """student_cond builds what encode_prompt builds with the student in the T5 slot; pooled CLIP is
    the pipeline's (never zeroed); our sampler reproduces the pipeline's own denoising loop."""
    from train.student import build_student
    from train.teachers.registry import load_teacher

    teacher = load_teacher(str(tiny[kind]))
    assert teacher.kind == kind
    student = build_student("config", teacher.width, teacher.vocab_size, base_config=teacher.t5_config).eval()
    prompts, L = ["a red cat", "a dog on top of a car"], 12
    tc = teacher.encode(prompts, L)
    sc = teacher.student_cond(student(teacher.tokenize(prompts, L))[0], tc, L)
    original = getattr(teacher.pipe, teacher.t5_slot)
    setattr(teacher.pipe, teacher.t5_slot, student)
    ref = teacher.encode(prompts, L)
    ref_empty = teacher.encode([""], L)  # SD3's unconditional branch with the student plugged in
    setattr(teacher.pipe, teacher.t5_slot, original)
    torch.testing.assert_close(sc.embeds, ref.embeds, atol=1e-6, rtol=1e-5)
    su = teacher.student_uncond(student, L)
    if kind == "sd3":
        torch.testing.assert_close(su.embeds, ref_empty.embeds, atol=1e-6, rtol=1e-5)
        assert not torch.allclose(su.embeds, teacher.uncond(L).embeds)  # not the teacher's own
    else:
        assert su is None  # FLUX samples without an unconditional branch
    assert torch.equal(sc.pooled, tc.pooled) and tc.pooled.abs().sum() > 0

    x0 = teacher.noise(2, 32, torch.Generator().manual_seed(0))
    x = x0.clone()
    for t in teacher.timesteps(3, x):
        x = teacher.step(teacher.velocity(x, t, teacher.predict(x, t, tc, 4.0), 4.0, L), t, x)
    kwargs = dict(prompt_embeds=tc.embeds, pooled_prompt_embeds=tc.pooled, height=32, width=32, num_inference_steps=3,
                  guidance_scale=4.0, latents=x0, output_type="latent", max_sequence_length=L)
    if kind == "sd3":
        u = teacher.uncond(L)
        kwargs.update(negative_prompt_embeds=u.embeds.expand(2, -1, -1), negative_pooled_prompt_embeds=u.pooled.expand(2, -1))
    torch.testing.assert_close(teacher.pipe(**kwargs).images, x, atol=1e-5, rtol=1e-4)


def test_gap_is_zero_for_the_teacher_t5_and_one_for_no_text(tiny):
    from train.data import load_prompts
    from train.evaluate import GapEvaluator
    from train.teachers.registry import load_teacher

    teacher = load_teacher(str(tiny["sd3"]))
    prompts = load_prompts("builtin:tiny")[::60]
    ev = GapEvaluator(teacher, prompts, max_len=10, resolution=32, batch_size=4)

    class Zeros(torch.nn.Module):
        def forward(self, ids):
            return (torch.zeros(*ids.shape, teacher.width),)

    same = ev(teacher.pipe.text_encoder_3)
    assert same["gap"] == pytest.approx(0.0, abs=1e-10)
    assert set(same["per_category"]) == {p["category"] for p in prompts}
    assert ev(Zeros())["gap"] == pytest.approx(1.0, rel=1e-5)


# ---- training -----------------------------------------------------------------------------------


def test_tiny_recipe_shrinks_the_gap_5x_and_exports_into_flux(tiny, tmp_path):
    """`train run --recipe tiny` end to end (teacher tiny:flux through the folder loader), then every
    export format, and the diffusers export generating an image inside FluxPipeline."""
    from diffusers import FluxPipeline
    from safetensors.torch import load_file

    from train.student import DistillT5EncoderModel

    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["run", "--recipe", "tiny", "--output", str(out), "--max-steps", "12", "--quiet",
                                    "--set", "distill.sampling_steps=4", "--set", "checkpoint.every=6",
                                    "--set", "log.every=1"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 12
    assert summary["gap_final"] * 5 <= summary["gap_initial"], summary
    assert set(summary["gap_final_per_category"]) == {"color", "numeracy", "shape", "spatial", "text_rendering", "texture"}
    losses = [r["loss"] for r in read_jsonl(out / "log.jsonl") if "loss" in r]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000006", "step-00000012"]
    meta = json.loads((out / "student" / "t5shrink.json").read_text())
    assert meta["max_sequence_length"] == 77 and meta["teacher_kind"] == "flux"
    # its training data, as the trainer split it: every prompt of the stages but the held-out ones
    from train.data import load_prompts, training_prompts

    pool = {p["text"] for p in load_prompts("builtin:tiny")}
    assert meta["training_data"] == [["builtin:tiny"]] and 0 < len(set(training_prompts(meta))) < len(pool)

    runner = CliRunner()
    for fmt in ("diffusers", "distillt5", "comfyui"):
        r = runner.invoke(main, ["export", "--checkpoint", str(out), "--output", str(tmp_path / fmt), "--format", fmt])
        assert r.exit_code == 0, r.output
    dt5 = tmp_path / "distillt5"
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= {p.name for p in dt5.iterdir()}
    trained = DistillT5EncoderModel.from_pretrained(out / "student")
    exported = DistillT5EncoderModel.from_pretrained(dt5)
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), exported.state_dict().values()))
    (comfy,) = (tmp_path / "comfyui").glob("*.safetensors")
    assert set(load_file(str(comfy))) == published_keys(trained.config.num_layers)

    student = DistillT5EncoderModel.from_pretrained(tmp_path / "diffusers", subfolder="text_encoder_2")
    pipe = FluxPipeline.from_pretrained(str(tiny["flux"]), text_encoder_2=student)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red cat on top of a blue car", height=32, width=32, num_inference_steps=2, guidance_scale=3.5,
                 max_sequence_length=77, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (32, 32)

    r = runner.invoke(main, ["eval", "--student", str(tmp_path / "diffusers"), "--teacher", "tiny:flux",
                             "--data", "builtin:tiny", "--max-prompts", "12", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    student_gap = report["models"][1]["overall"]["gap"]
    assert 0 <= student_gap < summary["gap_initial"] / 5 and report["settings"]["max_sequence_length"] == 77


def test_sd3_trains_through_the_folder_loader_and_drops_into_its_pipeline(tiny, tmp_path):
    from diffusers import StableDiffusion3Pipeline
    from PIL import Image

    from train.distill import train
    from train.eval_suite import SuiteOptions, evaluate_suite
    from train.export import export_student
    from train.student import DistillT5EncoderModel

    # also: gradient checkpointing in the student and the transformer, and the preview grids
    cfg = small_cfg(str(tiny["sd3"]), steps=12, empty=0.25, lr=3e-3, ckpt_grad=True, images=True)
    summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["gap_final"] < 0.5 * summary["gap_initial"], summary
    grids = sorted((tmp_path / "run" / "val").glob("*.png"))
    assert [g.name for g in grids] == ["step-00000000.png", "step-00000012.png"]
    # teacher | student, 2 prompts x 2 seeds: 32 px images scaled to 128, a header row and a prompt line each
    assert Image.open(grids[-1]).size == (256, 18 + 4 * (128 + 18))
    with pytest.warns(UserWarning, match="distilled from a sd3 teacher; scoring it against flux"):
        evaluate_suite([str(tmp_path / "run")], str(tiny["flux"]), "builtin:tiny",
                       SuiteOptions(max_prompts=4, max_len=12, resolution=32, steps=2, progress=False))
    export_student(tmp_path / "run", tmp_path / "exp", fmt="diffusers")
    assert (tmp_path / "exp" / "text_encoder_3" / "model.safetensors").exists()
    assert (tmp_path / "exp" / "tokenizer_3" / "tokenizer_config.json").exists()
    student = DistillT5EncoderModel.from_pretrained(tmp_path / "exp", subfolder="text_encoder_3")
    pipe = StableDiffusion3Pipeline.from_pretrained(str(tiny["sd3"]), text_encoder_3=student)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("two dogs", height=32, width=32, num_inference_steps=2, guidance_scale=5.0, max_sequence_length=12,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (32, 32)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny, tmp_path):
    from safetensors.torch import load_file

    from train.distill import train

    # dropout on, so the restored RNG state matters too
    cfg = small_cfg("tiny:flux", steps=6, dropout=0.1, ckpt_every=3)
    train(cfg, tmp_path / "a", progress=False)
    train(cfg, tmp_path / "b", progress=False, max_steps=3)
    # a checkpoint cut off mid-write (temp folder) and one missing its state are skipped with a warning
    (tmp_path / "b" / "checkpoints" / ".step-00000004.tmp").mkdir()
    broken = tmp_path / "b" / "checkpoints" / "step-00000005"
    broken.mkdir()
    (broken / "student").mkdir()
    with pytest.warns(UserWarning) as caught:
        train(cfg, tmp_path / "b", progress=False, resume=True)
    text = " ".join(str(w.message) for w in caught)
    assert "cut off mid-write" in text and "step-00000005" in text
    a = load_file(str(tmp_path / "a" / "student" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "student" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps_b = [r["step"] for r in read_jsonl(tmp_path / "b" / "log.jsonl") if "loss" in r]
    assert steps_b == [1, 2, 3, 4, 5, 6]


def test_a_run_folder_is_reused_only_by_resume_which_keeps_an_extended_length(tiny, tmp_path):
    from core.errors import ConfigError
    from train.distill import train

    cfg = small_cfg("tiny:flux", steps=2, ckpt_every=1)
    run = tmp_path / "run"
    train(cfg, run, progress=False, max_steps=4)  # extended past the recipe's 2 steps
    with pytest.raises(ConfigError, match="already holds a run .*pass --resume"):
        train(cfg, run, progress=False)  # its checkpoints would outrank the new run's
    # killed after step 3, with the log's last line cut off mid-write
    shutil.rmtree(run / "checkpoints" / "step-00000004")
    shutil.rmtree(run / "student")
    with open(run / "log.jsonl", "a") as log:
        log.write('{"step": 4, "stage": "s')
    with pytest.warns(UserWarning, match="dropped 1 unreadable line"):
        summary = train(cfg, run, progress=False, resume=True)  # no --max-steps: the run's own 4
    assert summary["steps"] == 4
    first_gap = next(r["val_gap"] for r in read_jsonl(run / "log.jsonl") if r["step"] == 0)
    assert summary["gap_initial"] == first_gap  # kept from the log, not lost on resume
    assert [r["step"] for r in read_jsonl(run / "log.jsonl") if "loss" in r] == [1, 2, 3, 4]
    # nothing to resume from (killed before the first checkpoint): the run and its log start over
    shutil.rmtree(run / "checkpoints")
    with pytest.warns(UserWarning, match="no complete checkpoint"):
        train(cfg, run, progress=False, resume=True, max_steps=4)
    assert [r["step"] for r in read_jsonl(run / "log.jsonl") if "loss" in r] == [1, 2, 3, 4]
    # resuming the finished run validates again and replaces its final record instead of adding one
    with pytest.warns(UserWarning, match="nothing to train"):
        again = train(cfg, run, progress=False, resume=True)
    assert [r["step"] for r in read_jsonl(run / "log.jsonl") if "val_gap" in r] == [0, 4]
    assert again["gap_initial"] is not None and again["steps"] == 4


def test_lr_ramps_per_update_and_ends_at_the_floor():
    from train.distill import lr_at

    opt = {"lr": 1.0, "warmup_steps": 2, "schedule": "cosine", "min_lr_ratio": 0.1}
    per_traj = [lr_at(u, opt, total=6) for u in range(6)]
    per_update = [lr_at(u, opt, total=6, per_step=4) for u in range(24)]
    assert per_traj[:3] == [0.5, 1.0, 1.0] and per_traj[-1] > 0.1
    assert per_update[:8] == [(u + 1) / 8 for u in range(8)]  # 8 distinct warmup lrs, not 2 blocks of 4
    assert per_update[7] == 1.0 and all(a >= b for a, b in zip(per_update[7:], per_update[8:]))
    assert lr_at(24, opt, total=6, per_step=4) == pytest.approx(0.1)


def test_update_per_step_and_per_trajectory(tiny, tmp_path):
    """update: step makes an AdamW update per regressed step, update: trajectory one per batch. With one
    regressed step they are the same algorithm, so they must give the same weights (with micro-batches:
    the lockstep accumulation must match the student-once leaf path)."""
    from safetensors.torch import load_file

    from train.distill import train

    weights, updates = {}, {}
    for mode, k in [("step", 1), ("trajectory", 1), ("step", 3), ("trajectory", 3)]:
        cfg = small_cfg("tiny:flux", steps=3, distill={"sampling_steps": 3, "train_steps": k, "update": mode})
        cfg["optim"]["micro_batch_size"] = 2  # batch 4: two micro-batches
        out = tmp_path / f"{mode}{k}"
        train(cfg, out, progress=False)
        weights[mode, k] = load_file(str(out / "student" / "model.safetensors"))
        updates[mode, k] = [r["updates"] for r in read_jsonl(out / "log.jsonl") if "loss" in r]
    assert updates == {("step", 1): [1, 1, 1], ("trajectory", 1): [1, 1, 1], ("step", 3): [3, 3, 3],
                       ("trajectory", 3): [1, 1, 1]}
    a, b = weights["step", 1], weights["trajectory", 1]
    assert all(torch.allclose(a[n], b[n], rtol=1e-4, atol=1e-6) for n in a)
    c, d = weights["step", 3], weights["trajectory", 3]
    assert any(not torch.allclose(c[n], d[n], rtol=1e-4, atol=1e-6) for n in c)  # 3 updates vs 1 differ


@pytest.mark.parametrize("mode", ["step", "trajectory"])
def test_any_micro_batch_split_gives_the_whole_batch_result(tiny, tmp_path, mode):
    """Micro-batches of 3 + 1 prompts train like one micro-batch of 4: per-prompt noise, and micro-batches
    weighted by their size (weighting them equally changes the loss by tens of percent). Compared through
    the logged losses and the held-out gap, not bit for bit: 3 + 1 rounds differently from 4, and AdamW
    turns rounding noise in a near-zero gradient into a full-size step for that one weight."""
    from train.distill import train

    runs = []
    for micro in (4, 3):
        cfg = small_cfg("tiny:flux", steps=3, distill={"sampling_steps": 3, "update": mode})
        cfg["optim"]["micro_batch_size"] = micro
        summary = train(cfg, tmp_path / f"m{micro}", progress=False)
        losses = [r["loss"] for r in read_jsonl(tmp_path / f"m{micro}" / "log.jsonl") if "loss" in r]
        runs.append((losses, summary["gap_final"]))
    (losses4, gap4), (losses31, gap31) = runs
    assert len(losses4) == 3 and losses31 == pytest.approx(losses4, rel=1e-4)
    assert gap31 == pytest.approx(gap4, rel=1e-3) and gap4 < 0.9 * summary["gap_initial"]


def test_trajectory_stops_after_its_last_regressed_step_and_after_a_skipped_update(tiny):
    import contextlib

    from train.distill import MicroBatch, distill_trajectory
    from train.student import build_student
    from train.teachers.registry import load_teacher

    teacher = load_teacher("tiny:flux")
    student = build_student("config", teacher.width, teacher.vocab_size, base_config=teacher.t5_config,
                            projection_dropout=0.0)
    texts = ["a red cube", "two cats"]
    part = MicroBatch(teacher.encode(texts, 12), teacher.tokenize(texts, 12), teacher.noise(2, 32, torch.Generator().manual_seed(0)))
    passes, real_predict = [], teacher.predict
    teacher.predict = lambda *a, **kw: passes.append(1) or real_predict(*a, **kw)  # counts transformer passes
    for per_step in (True, False):
        losses: list[float] = []
        passes.clear()
        distill_trajectory(student, teacher, [part], 12, 6, {1, 3}, 3.5, contextlib.nullcontext,
                           lambda loss: losses.append(loss) or True, per_step=per_step)
        assert len(losses) == (2 if per_step else 1) and all(loss > 0 for loss in losses)
        assert len(passes) == 4 + 2  # targets at steps 0-3 (none after the last regressed one) + 2 regressed
    losses, passes[:] = [], []
    distill_trajectory(student, teacher, [part], 12, 6, {1, 3}, 3.5, contextlib.nullcontext,
                       lambda loss: losses.append(loss) or False)  # the update at step 1 is skipped
    assert len(losses) == 1 and len(passes) == 2 + 1


def test_resume_refuses_a_checkpoint_whose_steps_counted_updates(tiny, tmp_path):
    from train.distill import train
    from train.runs import TrainingError

    cfg = small_cfg("tiny:flux", steps=2, ckpt_every=1)
    train(cfg, tmp_path / "r", progress=False, max_steps=1)
    state_file = tmp_path / "r" / "checkpoints" / "step-00000001" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["format"] == 2
    del state["format"]  # as written before steps counted trajectories
    state_file.write_text(json.dumps(state))
    with pytest.raises(TrainingError, match="older t5shrink"):
        train(cfg, tmp_path / "r", progress=False, resume=True)


def test_two_processes_train_like_one_with_micro_batches(tiny, tmp_path):
    """torchrun with 2 CPU processes (gloo) x 2 prompts gives the weights of 1 process with micro-batches of
    2: the same noise per micro-batch, gradients averaged over ranks before every update."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    cfg = small_cfg("tiny:flux", steps=3, batch=4)
    cfg["optim"]["micro_batch_size"] = 2
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k != "description"}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: torchrun picks a free port itself (a port probed here could be taken before it binds)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "train.cli", "run", "--recipe", str(recipe),
                          "--output", str(tmp_path / "two"), "--quiet"], env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("held-out gap") == 1  # rank 0 reports
    one = CliRunner().invoke(main, ["run", "--recipe", str(recipe), "--output", str(tmp_path / "one"), "--quiet"])
    assert one.exit_code == 0, one.output
    a = load_file(str(tmp_path / "one" / "student" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "student" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["gap_final"] < summary["gap_initial"]  # it trained


@needs_cpu_float8
def test_fp8_transformer_passes_gradients_to_the_student(tiny, tmp_path):
    """teacher.fp8: the gradient still reaches the text input through the frozen float8 transformer,
    and training still closes the gap."""
    from train.distill import train
    from train.fp8 import Float8FrozenLinear
    from train.teachers.registry import load_teacher

    teacher = load_teacher("tiny:flux")
    linears = sum(isinstance(m, torch.nn.Linear) for m in teacher.transformer.modules())
    assert teacher.transformer_to_fp8() == linears  # the tiny FLUX's sizes are all multiples of 16
    assert not any(isinstance(m, torch.nn.Linear) for m in teacher.transformer.modules())
    assert any(isinstance(m, Float8FrozenLinear) for m in teacher.transformer.modules())
    tcond = teacher.encode(["a red cube"], 12)
    seq = tcond.embeds.clone().requires_grad_(True)
    x = teacher.noise(1, 32, torch.Generator().manual_seed(0))
    teacher.predict(x, teacher.sigma_to_timestep(0.5), teacher.student_cond(seq, tcond, 12), 3.5).square().mean().backward()
    assert seq.grad is not None and bool(seq.grad.abs().sum() > 0)

    cfg = small_cfg("tiny:flux", steps=6, lr=3e-3)
    cfg["teacher"]["fp8"] = True
    with pytest.warns(UserWarning, match="teacher.fp8 without teacher.compile is slower"):
        summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["gap_final"] < 0.5 * summary["gap_initial"], summary


@needs_cpu_float8
@needs_cpp_compiler
def test_compiled_training_trains_like_the_eager_one(tiny, tmp_path):
    """teacher.compile (regional torch.compile of the transformer's blocks, on top of teacher.fp8 as on an
    H100) and student.compile change speed, not the algorithm. Compared through the transformer's outputs
    (gap, loss), not weight by weight: Adam turns the compiled kernels' rounding differences in near-zero
    gradients into full-size steps."""
    from safetensors.torch import load_file

    from train.distill import train

    summaries, losses = {}, {}
    for compiled in (False, True):
        cfg = small_cfg("tiny:flux", steps=2)
        cfg["teacher"].update(fp8=True, compile=compiled)
        cfg["student"]["compile"] = compiled
        cfg["validation"]["batch_size"] = 4  # the training batch's shapes: no second compilation
        summaries[compiled] = train(cfg, tmp_path / str(compiled), progress=False)
        losses[compiled] = [r["loss"] for r in read_jsonl(tmp_path / str(compiled) / "log.jsonl") if "loss" in r]
    torch._dynamo.reset()
    eager, compiled = summaries[False], summaries[True]
    assert compiled["gap_initial"] == pytest.approx(eager["gap_initial"], rel=1e-3)  # the same forward
    assert losses[True][0] == pytest.approx(losses[False][0], rel=0.05)
    assert compiled["gap_final"] < compiled["gap_initial"]  # and gradients flow through the compiled blocks
    # compiled in place: the saved student has the eager one's parameter names (export and resume read them)
    names = [sorted(load_file(str(Path(run["student"]) / "model.safetensors"))) for run in (eager, compiled)]
    assert names[0] == names[1]


def test_non_finite_losses_skip_then_abort(tiny, tmp_path):
    from train.config import resolve

    recipe = tmp_path / "nan.yaml"
    cfg = small_cfg("tiny:flux", steps=8, lr=1.0e30, max_bad=1)
    recipe.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k != "description"}))
    resolve(str(recipe))
    res = CliRunner().invoke(main, ["run", "--recipe", str(recipe), "--output", str(tmp_path / "o"), "--quiet"])
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines()[-1].startswith("error: aborting at step")
    assert "Traceback" not in res.stderr
    assert "non-finite" in res.stderr  # the skipped step's warning came first


def test_embedding_cache_roundtrip_and_offloaded_training(tiny, tmp_path, monkeypatch):
    from train.cache import EmbeddingCache, teacher_cache_id
    from train.distill import train
    from train.teachers.registry import load_teacher

    teacher = load_teacher(str(tiny["flux"]))
    cache = EmbeddingCache(tmp_path / "c", teacher.source)
    cond = teacher.encode(["a cat", "a dog"], 8)
    cache.put(["a cat", "a dog"], 8, cond)
    again = EmbeddingCache(tmp_path / "c", teacher.source).get(["a dog", "a cat"], 8)
    assert torch.equal(again.embeds, cond.embeds[[1, 0]]) and torch.equal(again.pooled, cond.pooled[[1, 0]])
    assert cache.get(["a dog"], 9) is None  # the length is part of the key

    # Once the encoders have left the device, nothing may need them: held-out prompts that no stage has
    # (validation.data) are precomputed too. On CPU "leaving" moves nothing, so watch the calls instead.
    from train.teachers.flux import FluxTeacher

    offloaded, encode = [], FluxTeacher.encode
    monkeypatch.setattr(FluxTeacher, "offload_text_encoders", lambda self: offloaded.append(True))

    def watched_encode(self, prompts, max_len):
        assert not offloaded, f"encoded {prompts[:2]} after the text encoders left the device"
        return encode(self, prompts, max_len)

    monkeypatch.setattr(FluxTeacher, "encode", watched_encode)
    (tmp_path / "val.txt").write_text("a lighthouse made of glass\na purple kettle on a stove\n")
    cfg = small_cfg("tiny:flux", steps=2, images=True,
                    cache={"dir": str(tmp_path / "c2"), "precompute": True, "offload_text_encoders": True})
    cfg["validation"]["data"] = str(tmp_path / "val.txt")
    train(cfg, tmp_path / "run", progress=False)
    assert offloaded
    cache_id = teacher_cache_id(str(tiny["flux"]), teacher.dtype)
    assert len(EmbeddingCache(tmp_path / "c2", cache_id)) >= 500  # every stage prompt + held-out

    # the same folder path with other contents, or another dtype, is another teacher
    copy = tmp_path / "teacher"
    shutil.copytree(tiny["flux"], copy)
    before = teacher_cache_id(str(copy), teacher.dtype)
    config = copy / "text_encoder_2" / "config.json"
    config.write_text(config.read_text().replace("{", '{"edited": 1, ', 1))
    assert teacher_cache_id(str(copy), teacher.dtype) != before
    assert teacher_cache_id(str(copy), torch.bfloat16) != teacher_cache_id(str(copy), torch.float32)


# ---- data and CLI -------------------------------------------------------------------------------


def test_data_sources_and_heldout_split(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from train.data import PromptStream, load_prompts, split_heldout

    (tmp_path / "set" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["1", "2"], "text": ["a red cat", "two dogs"], "criterion": ["semantic"] * 2,
                             "category": ["color", "numeracy"], "tags": [["color"], ["numeracy"]],
                             "rendered_text": [[], []], "source": ["x", "x"]}), tmp_path / "set" / "data" / "part-0.parquet")
    expected = [{"text": "a red cat", "category": "color"}, {"text": "two dogs", "category": "numeracy"}]
    assert load_prompts(tmp_path / "set") == expected  # a folder of parquet files (an HF snapshot reads so too)
    (tmp_path / "set" / "rejected").mkdir()
    pq.write_table(pa.table({"text": ["a red cat."], "category": ["color"]}), tmp_path / "set" / "rejected" / "part-0.parquet")
    (tmp_path / "set" / "manifest.json").write_text("{}")
    assert load_prompts(tmp_path / "set") == expected  # a curated set: its kept prompts only
    (tmp_path / "p.txt").write_text("a cat\n\na dog\n")
    assert [p["text"] for p in load_prompts(tmp_path / "p.txt")] == ["a cat", "a dog"]
    # held out from a file without categories: tagged, so the gap is still reported per category
    (tmp_path / "held.txt").write_text("a red car and a blue bench\nthree apples on a table\n")
    assert load_prompts(tmp_path / "held.txt")[0]["category"] == "all"
    assert {p["category"] for p in split_heldout(load_prompts(tmp_path / "held.txt"), 2)} == {"color", "numeracy"}
    (tmp_path / "p.jsonl").write_text('{"text": "a cat", "category": "color"}\n')
    assert load_prompts(tmp_path / "p.jsonl") == [{"text": "a cat", "category": "color"}]
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.txt").write_text("a red cat\n")
    (tmp_path / "folder" / "b.csv").write_text("prompt\ntwo dogs\n")
    assert sorted(p["text"] for p in load_prompts(tmp_path / "folder")) == ["a red cat", "two dogs"]
    rows = load_prompts("builtin:tiny")
    held = split_heldout(rows, 12)
    assert len({p["category"] for p in held}) == 6 and split_heldout(list(reversed(rows)), 12) == held
    s = PromptStream(rows, seed=1)
    assert s.take(5, 10) == s.take(0, 15)[5:] and len(s.take(len(rows) - 2, 4)) == 4


def test_cli_help_and_one_line_errors(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["--help"])
    assert res.exit_code == 0 and "train run --recipe tiny" in res.output
    for cmd in ("run", "eval", "export"):
        assert runner.invoke(main, [cmd, "--help"]).exit_code == 0
    res = runner.invoke(main, ["run", "--recipe", "tiny", "--set", "optim.nope=1"])
    assert res.exit_code == 2 and res.stderr.strip() == "error: unknown key 'optim.nope' in --set optim.nope=1"
    res = runner.invoke(main, ["run", "--recipe", "no-such-recipe"])
    assert res.exit_code == 2 and res.stderr.startswith("error: no train recipe named 'no-such-recipe'")
    res = runner.invoke(main, ["export", "--checkpoint", str(tmp_path), "--output", str(tmp_path / "o")])
    assert res.exit_code == 2 and "not a student, checkpoint or run folder" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = runner.invoke(main, ["export", "--checkpoint", str(tmp_path), "--output", "o", "--format", "onnx"])
    assert res.exit_code == 2 and res.stderr.strip().splitlines() == [  # click's usage errors: one line too
        "error: Invalid value for '--format': 'onnx' is not one of 'diffusers', 'distillt5', 'comfyui'. "
        "(see `main export --help`)"]
    res = runner.invoke(main, ["run", "--recipe", "tiny", "--teacher", str(tmp_path / "nope"), "--output", str(tmp_path / "r")])
    assert res.exit_code == 2 and res.stderr.strip() == f"error: teacher {tmp_path / 'nope'}: no such file or folder"
    assert not (tmp_path / "r").exists()  # nothing written for a run that could not start
