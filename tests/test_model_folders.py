"""Hostile model folders, checkpoints and caches (issue: reliability, round 2): config.json against its
weights before anything is built, load errors that name their file, resume past a damaged checkpoint,
non-finite students refused, a gap that survives NaN prompts, comfyui exports that never replace
someone else's file, and an embedding cache that degrades instead of failing the run.

Every hostile file is made in tmp_path; models are tiny and built from configs (tests/test_train.py's
builders), so the whole module runs in well under a minute on a CPU."""

from __future__ import annotations

import json
import math
import pickle
import shutil
import struct
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from test_train import small_cfg
from transformers import T5Config, T5EncoderModel

from train.cli import main

T5_SHAPE = dict(vocab_size=50, d_model=16, num_heads=2, d_kv=8, d_ff=24, num_layers=2, feed_forward_proj="gated-gelu")


def save_student(folder: Path, **meta: object) -> Path:
    """A random two-layer student written as `train run` writes one (config.json + model.safetensors)."""
    from train.student import DistillT5EncoderModel

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = DistillT5EncoderModel(T5Config(**T5_SHAPE, project_in_dim=16, project_out_dim=24))
    model.save_pretrained(folder, meta={"teacher_kind": "flux", **meta})
    return folder


def edit_config(folder: Path, **values: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **values}))


def one_line_error(args: list[str]) -> str:
    """Run the train CLI expecting a bad-input error: exactly one `error:` line, last, after at most
    some one-line warnings; no traceback. Returns the error line."""
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert "Traceback" not in res.stderr and lines and lines[-1].startswith("error: "), res.stderr
    assert all(line.startswith("warning: ") for line in lines[:-1]), res.stderr
    return lines[-1]


# ---- 1. config.json against the weights' header ----------------------------------------------------


@pytest.mark.parametrize("key, value, says", [
    ("num_layers", 10_000_000, "config.json num_layers=10000000 but model.safetensors holds 2 layers"),
    ("d_model", 1_000_000, "config.json d_model=1000000 but model.safetensors holds d_model=16 (encoder.shared.weight is [50, 16])"),
    ("d_ff", 4096, "config.json d_ff=4096 but model.safetensors holds d_ff=24"),
    ("num_heads", 64, "config.json num_heads*d_kv=64*8 but model.safetensors holds num_heads*d_kv=16"),
    ("vocab_size", 32128, "config.json vocab_size=32128 but model.safetensors holds vocab_size=50"),
    ("project_out_dim", 4096, "config.json project_out_dim=4096 but model.safetensors holds project_out_dim=24"),
])
def test_a_config_its_weights_contradict_is_refused_before_building(tmp_path, key, value, says):
    from train.student import DistillT5EncoderModel

    folder = save_student(tmp_path / "student")
    edit_config(folder, **{key: value})
    # before the check, num_layers 10,000,000 allocated until the machine gave out and d_model 1,000,000
    # 4.4 GB before a shape error that did not name config.json
    with pytest.raises(ValueError) as caught:
        DistillT5EncoderModel.from_pretrained(folder)
    assert str(caught.value).startswith(f"{folder}: {says}") and "\n" not in str(caught.value)
    assert says in one_line_error(["export", "--checkpoint", str(folder), "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    assert says in one_line_error(["eval", "--student", str(folder), "--teacher", "tiny:flux", "--data", "builtin:tiny"])


def test_a_pretrained_t5_folder_is_checked_too_sharded_or_not(tmp_path):
    """student.init may name a T5 folder; transformers would build whatever its config.json says."""
    from train.student import build_student

    with torch.random.fork_rng():
        torch.manual_seed(0)
        t5 = T5EncoderModel(T5Config(**T5_SHAPE))
    t5.save_pretrained(tmp_path / "t5")
    t5.save_pretrained(tmp_path / "sharded", max_shard_size="4KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert build_student(str(tmp_path / "sharded"), project_out_dim=24, vocab_size=50).config.num_layers == 2
    for name, holds in (("t5", "model.safetensors holds 2 layers"),
                        ("sharded", r"model.safetensors.index.json \(\d+ shards\) holds 2 layers")):
        edit_config(tmp_path / name, num_layers=10_000_000)
        with pytest.raises(ValueError, match=f"config.json num_layers=10000000 but .*{holds}"):
            build_student(str(tmp_path / name), project_out_dim=24, vocab_size=50)
    # an index naming a shard that is not there, or one outside the folder
    index = tmp_path / "sharded" / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    shard = next(iter(data["weight_map"].values()))
    (tmp_path / "sharded" / shard).unlink()
    with pytest.raises(FileNotFoundError, match=f"{index}: shard {shard} is missing"):
        build_student(str(tmp_path / "sharded"), project_out_dim=24, vocab_size=50)
    index.write_text(json.dumps({"weight_map": {k: "../../etc/x.safetensors" for k in data["weight_map"]}}))
    with pytest.raises(ValueError, match="is not a .safetensors file name inside"):
        build_student(str(tmp_path / "sharded"), project_out_dim=24, vocab_size=50)


def test_absurd_values_are_refused_even_without_readable_shapes(tmp_path):
    from train.student import build_student

    # a T5 folder whose weights are a .bin (shapes unknown without unpickling): its config is bounded
    folder = tmp_path / "bin-t5"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**T5_SHAPE, "model_type": "t5", "num_layers": 10_000_000}))
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match=r"config.json num_layers=10000000 is not a whole number from 1 to 1,024"):
        build_student(str(folder), project_out_dim=24, vocab_size=50)
    (folder / "config.json").write_text(json.dumps({**T5_SHAPE, "model_type": "t5", "d_model": 60_000, "d_ff": 200_000}))
    with pytest.raises(ValueError, match="describes over .* parameters \\(limit"):
        build_student(str(folder), project_out_dim=24, vocab_size=50)
    (folder / "config.json").write_text(json.dumps({**T5_SHAPE, "num_heads": "eight"}))
    with pytest.raises(ValueError, match=f"^{folder / 'config.json'}: .*'num_heads' expected int, got str"):
        build_student(str(folder), project_out_dim=24, vocab_size=50)
    # a config with no weights file at all
    (folder / "pytorch_model.bin").unlink()
    (folder / "config.json").write_text(json.dumps(T5_SHAPE))
    with pytest.raises(FileNotFoundError, match=f"{folder}: no model.safetensors"):
        build_student(str(folder), project_out_dim=24, vocab_size=50)


# ---- 2. every load error names its file --------------------------------------------------------------


def hostile_safetensors(path: Path, kind: str) -> None:
    """Damage a valid .safetensors file in place."""
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) - 100])
    elif kind == "huge-header":  # a length that, read whole, would take 4 EiB
        path.write_bytes(struct.pack("<Q", 2**62) + data[8:])
    elif kind == "bad-json":
        length = struct.unpack("<Q", data[:8])[0]
        path.write_bytes(data[:8] + b"{" * length + data[8 + length:])
    elif kind == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize("kind, component, key, value, says", [
    ("flux", "transformer", "num_layers", 10_000_000, "config.json num_layers=10,000,000 but"),
    ("flux", "transformer", "attention_head_dim", 1_000_000, "config.json attention_head_dim=1,000,000 is larger"),
    ("flux", "transformer", "num_attention_heads", 60_000, "config.json gives 60,000 heads of"),
    ("flux", "transformer", "axes_dims_rope", [4, 4, 10_000_000], "config.json axes_dims_rope=10,000,000 is larger"),
    ("flux", "vae", "layers_per_block", 20_000, "config.json layers_per_block=20,000 but"),
    ("flux", "text_encoder", "num_hidden_layers", 5_000_000, "config.json num_hidden_layers=5,000,000 but"),
    ("flux", "text_encoder_2", "num_layers", 10_000_000, "config.json num_layers=10000000 but model.safetensors"),
    ("sd3", "transformer", "num_layers", 10_000_000, "config.json num_layers=10,000,000 but"),
    ("sd3", "text_encoder_3", "d_model", 1_000_000, "config.json d_model=1000000 but model.safetensors"),
])
def test_a_teacher_folder_with_an_inflated_config_is_refused_before_building(tmp_path, kind, component, key, value,
                                                                            says):
    from train.teachers.registry import load_teacher
    from train.tiny import tiny_teacher_path

    folder = tmp_path / "teacher"
    shutil.copytree(tiny_teacher_path(kind), folder)
    edit_config(folder / component, **{key: value})
    with pytest.raises(ValueError) as caught:
        load_teacher(str(folder))
    assert str(caught.value).startswith(f"{folder / component}: {says}"), caught.value
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("kind, says", [("truncated", "truncated"), ("huge-header", "not a safetensors file"),
                                        ("bad-json", "damaged safetensors header"), ("empty", "not a safetensors file")])
def test_damaged_safetensors_are_one_line_naming_the_file(tmp_path, kind, says):
    from train.student import DistillT5EncoderModel

    folder = save_student(tmp_path / "student")
    hostile_safetensors(folder / "model.safetensors", kind)
    with pytest.raises(ValueError) as caught:
        DistillT5EncoderModel.from_pretrained(folder)
    assert str(caught.value).startswith(f"{folder / 'model.safetensors'}: {says}") and "\n" not in str(caught.value)
    assert says in one_line_error(["export", "--checkpoint", str(folder), "--output", str(tmp_path / "o")])


def test_checkpoint_files_that_do_not_load_name_themselves(tmp_path):
    from train.weights import load_torch, read_json

    opt = tmp_path / "optimizer.pt"
    opt.write_bytes(pickle.dumps(print))  # a pickle of a global: weights_only refuses it
    with pytest.raises(ValueError, match=f"^{opt}: not a loadable optimizer state") as caught:
        load_torch(opt, "optimizer state")
    assert "\n" not in str(caught.value)
    opt.write_bytes(b"PK\x03\x04 cut off")
    with pytest.raises(ValueError, match=f"^{opt}: not a loadable optimizer state"):
        load_torch(opt, "optimizer state")
    state = tmp_path / "state.json"
    state.write_text('{"step": 3, "posit')
    with pytest.raises(ValueError, match=f"^{state}: not valid JSON"):
        read_json(state)
    meta = save_student(tmp_path / "student") / "t5shrink.json"
    meta.write_bytes(b"\xff\xfe not json")
    assert str(meta) in one_line_error(["export", "--checkpoint", str(meta.parent), "--output", str(tmp_path / "o")])


# ---- 3. resume past a damaged checkpoint ---------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """An uninterrupted 6-step run, and a run with checkpoints at steps 2, 4, 6 to damage (dropout on,
    so the restored random state matters too)."""
    from train.distill import train
    from train.tiny import tiny_teacher_path

    tiny_teacher_path("flux")
    root = tmp_path_factory.mktemp("runs")
    cfg = small_cfg("tiny:flux", steps=6, dropout=0.1, ckpt_every=2)
    train(cfg, root / "a", progress=False)
    train(cfg, root / "b", progress=False)
    shutil.rmtree(root / "b" / "student")  # as if killed after the last checkpoint
    return {"a": root / "a", "b": root / "b", "cfg": cfg}


def damage_checkpoint(ckpt: Path, kind: str) -> None:
    if kind == "weights-truncated":
        hostile_safetensors(ckpt / "student" / "model.safetensors", "truncated")
    elif kind == "weights-nan":
        weights = load_file(str(ckpt / "student" / "model.safetensors"))
        weights["final_projection.3.weight"][0, 0] = float("nan")
        save_file(weights, str(ckpt / "student" / "model.safetensors"))
    elif kind == "optimizer-pickle":
        (ckpt / "optimizer.pt").write_bytes(pickle.dumps(print))
    elif kind == "state-not-json":
        (ckpt / "state.json").write_text("{not json")
    elif kind == "rng-garbage":
        (ckpt / "rng-0.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")


@pytest.mark.parametrize("kind", ["weights-truncated", "weights-nan", "optimizer-pickle", "state-not-json", "rng-garbage"])
def test_resume_falls_back_past_a_damaged_checkpoint_to_the_same_result(runs, tmp_path, kind):
    from train.distill import train

    run = tmp_path / "b"
    shutil.copytree(runs["b"], run)
    damage_checkpoint(run / "checkpoints" / "step-00000006", kind)
    with pytest.warns(UserWarning) as caught:
        summary = train(runs["cfg"], run, progress=False, resume=True)
    damaged = [str(w.message) for w in caught if "damaged checkpoint" in str(w.message)]
    assert len(damaged) == 1 and "step-00000006" in damaged[0] and "\n" not in damaged[0], damaged
    assert summary["steps"] == 6
    # steps 5 and 6 trained again from step 4: bit for bit the uninterrupted run
    a = load_file(str(runs["a"] / "student" / "model.safetensors"))
    b = load_file(str(run / "student" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_says_so_when_no_checkpoint_loads(runs, tmp_path):
    from train.distill import train
    from train.runs import TrainingError

    run = tmp_path / "b"
    shutil.copytree(runs["b"], run)
    for ckpt in (run / "checkpoints").iterdir():
        damage_checkpoint(ckpt, "state-not-json")
    with pytest.warns(UserWarning, match="damaged checkpoint"), \
            pytest.raises(TrainingError, match="none of the 3 checkpoint\\(s\\) in .* loads \\(newest step-00000006: "):
        train(runs["cfg"], run, progress=False, resume=True)


# ---- 4. non-finite students ---------------------------------------------------------------------------


def test_a_student_with_nan_or_inf_weights_is_refused_by_export_and_eval(tmp_path):
    folder = save_student(tmp_path / "student")
    weights = load_file(str(folder / "model.safetensors"))
    weights["encoder.encoder.block.1.layer.1.DenseReluDense.wo.weight"][3, 2] = float("inf")
    save_file(weights, str(folder / "model.safetensors"))
    says = f"{folder / 'model.safetensors'}: tensor encoder.encoder.block.1.layer.1.DenseReluDense.wo.weight holds NaN or inf"
    assert says in one_line_error(["export", "--checkpoint", str(folder), "--output", str(tmp_path / "o"),
                                   "--format", "comfyui"])
    assert not (tmp_path / "o").exists()
    assert says in one_line_error(["eval", "--student", str(folder), "--teacher", "tiny:flux", "--data", "builtin:tiny"])


# ---- 5. the gap over the prompts that stay finite ---------------------------------------------------------


def test_gap_report_leaves_out_and_lists_non_finite_prompts():
    from train.evaluate import gap_report

    rows = [("a red cat", "color", 1.0, 2.0), ("two\ndogs", "numeracy", math.nan, 1.0),
            ("a blue car", "color", 2.0, 2.0), ("three cups", "numeracy", 3.0, math.inf)]
    with pytest.warns(UserWarning, match="2 of 4 held-out prompts gave non-finite values .*#1 'two dogs'"):
        report = gap_report(rows)
    assert report["gap"] == pytest.approx(3 / 4) and report["per_category"] == {"color": pytest.approx(3 / 4)}
    assert report["nonfinite_prompts"] == [{"index": 1, "text": "two dogs"}, {"index": 3, "text": "three cups"}]


def test_a_student_that_blows_up_on_one_word_still_gets_a_gap(tmp_path):
    from train.data import load_prompts, split_heldout
    from train.evaluate import GapEvaluator
    from train.student import build_student
    from train.teachers.registry import load_teacher
    from train.tiny import tiny_teacher_path

    teacher = load_teacher(str(tiny_teacher_path("flux")))
    prompts = split_heldout(load_prompts("builtin:tiny"), 12)
    evaluator = GapEvaluator(teacher, prompts, 12, 32, batch_size=5)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        student = build_student("config", teacher.width, teacher.vocab_size, base_config=teacher.t5_config,
                                overrides={"num_layers": 1}, projection_dropout=0.0)
    ids = teacher.tokenize([p["text"] for p in prompts], 12)
    counts = torch.stack([(ids == t).any(1) for t in range(3, teacher.vocab_size)]).sum(1)
    token = 3 + int(torch.nonzero((counts > 0) & (counts < len(prompts) // 2))[0])  # in some prompts, not most
    with torch.no_grad():
        student.encoder.shared.weight[token] = float("nan")
    with pytest.warns(UserWarning, match="held-out prompts gave non-finite values"):
        report = evaluator(student)
    hit = [i for i in range(len(prompts)) if bool((ids[i] == token).any())]
    assert [b["index"] for b in report["nonfinite_prompts"]] == hit
    assert report["nonfinite_prompts"][0]["text"] == prompts[hit[0]]["text"][:60]
    assert math.isfinite(report["gap"]) and all(math.isfinite(g) for g in report["per_category"].values())


# ---- 6. comfyui exports replace only their own files -------------------------------------------------------


def test_comfyui_export_never_overwrites_a_file_it_did_not_write(tmp_path):
    from train.export import export_student

    student = save_student(tmp_path / "student")
    foreign = tmp_path / "someones-model.safetensors"
    save_file({"w": torch.ones(2)}, str(foreign), metadata={"format": "pt"})
    before = foreign.read_bytes()
    with pytest.raises(ValueError, match=f"^{foreign} exists and was not written by t5shrink's comfyui export; "
                                         "choose another --output path"):
        export_student(student, foreign, fmt="comfyui")
    notes = tmp_path / "notes.safetensors"
    notes.write_text("my notes, not a model")
    assert "choose another --output path" in one_line_error(
        ["export", "--checkpoint", str(student), "--output", str(notes), "--format", "comfyui"])
    assert foreign.read_bytes() == before and notes.read_text() == "my notes, not a model"
    ours = tmp_path / "t5.safetensors"
    export_student(student, ours, fmt="comfyui")
    export_student(student, ours, fmt="comfyui", dtype="bf16")  # its own earlier export: replaced
    assert load_file(str(ours))["final_projection.3.weight"].dtype == torch.bfloat16
    assert not list(tmp_path.glob(".t5.safetensors.*"))  # no staging folder left beside it


# ---- 7. the embedding cache degrades, never fails --------------------------------------------------------


def cond(n: int, fill: float = 0.5):
    from train.teachers.base import Cond

    return Cond(torch.full((n, 4, 8), fill), torch.full((n, 8), fill))


def test_a_cache_folder_that_cannot_be_made_turns_the_cache_off_with_one_warning(tmp_path):
    from train.cache import EmbeddingCache

    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a folder under a regular file: mkdir fails even as root, where chmod would not
    with pytest.warns(UserWarning) as caught:
        cache = EmbeddingCache(blocker / "cache", "teacher")
        cache.put(["a cat"], 4, cond(1))
        assert cache.get(["a cat"], 4) is None and not cache.has(["a cat"], 4)
        EmbeddingCache(blocker / "cache", "teacher")  # the trainer reopens it after precomputing
    assert [str(w.message).split(":")[0] for w in caught] == ["embedding cache off"]


def test_a_failed_write_stops_caching_with_one_warning(tmp_path):
    from train.cache import EmbeddingCache

    cache = EmbeddingCache(tmp_path / "c", "teacher")
    cache.put(["a cat"], 4, cond(1))
    assert torch.equal(cache.get(["a cat"], 4).embeds, cond(1).embeds)
    shutil.rmtree(cache.dir)
    cache.dir.write_text("")  # the folder is now a file: every write fails, as on a full disk
    with pytest.warns(UserWarning) as caught:
        for text in ("a dog", "a cup", "a car"):  # the trainer's pattern: miss, encode, put
            assert cache.get([text], 4) is None
            cache.put([text], 4, cond(1))
    assert len(caught) == 1 and "cannot write to" in str(caught[0].message)


def test_inconsistent_shards_are_misses_with_one_warning(tmp_path):
    from core.tensor_cache import shard_bytes
    from train.cache import EmbeddingCache

    cache = EmbeddingCache(tmp_path / "c", "teacher")

    def forge(prompts: list[str], embeds: torch.Tensor, pooled: torch.Tensor) -> None:
        keys = cache.keys(prompts, 4)
        cache.store.shard_path(keys).write_bytes(shard_bytes(keys, {"embeds": embeds, "pooled": pooled}, "torch"))

    # rows that do not match the key list, and a truncated shard: refused from the header
    forge(["a", "b", "c"], torch.zeros(2, 4, 8), torch.zeros(2, 8))
    cache.put(["d", "e"], 4, cond(2))
    hostile_safetensors(cache.store.shard_path(cache.keys(["d", "e"], 4)), "truncated")
    # NaN values (a teacher run in fp16 that overflowed), checksums intact: only visible when read
    forge(["f"], torch.full((1, 4, 8), float("nan")), torch.zeros(1, 8))
    with pytest.warns(UserWarning) as caught:
        again = EmbeddingCache(tmp_path / "c", "teacher")
        assert not again.has(["a"], 4) and not again.has(["d"], 4)
        assert again.has(["f"], 4) and again.get(["f"], 4) is None and not again.has(["f"], 4)
    assert len(caught) == 1 and "inconsistent shard" in str(caught[0].message)
    again.put(["f"], 4, cond(1))  # the miss is encoded again and its shard rewritten
    assert torch.equal(EmbeddingCache(tmp_path / "c", "teacher").get(["f"], 4).pooled, cond(1).pooled)


@pytest.mark.parametrize("offload", [False, True])
def test_training_runs_with_the_cache_off(tmp_path, offload):
    from train.distill import train
    from train.tiny import tiny_teacher_path

    tiny_teacher_path("flux")
    (tmp_path / "blocker").write_text("")
    cfg = small_cfg("tiny:flux", steps=2, cache={"dir": str(tmp_path / "blocker" / "cache"), "precompute": True,
                                                  "offload_text_encoders": offload})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["steps"] == 2 and math.isfinite(summary["gap_final"])
    assert sum("embedding cache" in str(w.message) for w in caught) == 1
    # offloading would leave nothing to encode a miss with: the encoders stay, and the run says so
    assert sum("text encoders stay on the device" in str(w.message) for w in caught) == offload


def test_a_damaged_tokenizer_beside_a_student_is_one_line_naming_its_folder(tmp_path):
    folder = save_student(tmp_path / "student")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5TokenizerFast"}))
    (folder / "tokenizer.json").write_text("{ not json")
    says = one_line_error(["export", "--checkpoint", str(folder), "--output", str(tmp_path / "out")])
    assert f"{folder}: the tokenizer files cannot be loaded" in says
