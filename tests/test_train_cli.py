"""`train` as a new user meets it (issue 16): --max-steps and --output are validated, every path-or-hub-id
argument follows one "not found" rule, typos are reported before torch loads, --print-config, the CPU
thread choice, a progress bar worth watching, Ctrl-C that saves and says how to continue, labelled
preview grids, summaries on stdout and the rest on stderr. Tiny teachers, a few steps each."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from test_train import read_jsonl, small_cfg, tiny  # noqa: F401  (tiny: the session's tiny teachers, a fixture)

from train.cli import main


def write_recipe(path: Path, **over) -> Path:
    """small_cfg as a recipe file, for the command line."""
    cfg = small_cfg("tiny:flux", **over)
    path.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k != "description"}))
    return path


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def finished_run(tiny, tmp_path_factory):  # noqa: F811
    """A 2-step run through the command line (checkpoints at each step), shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("train-cli")
    recipe = write_recipe(root / "r.yaml", steps=2, ckpt_every=1)
    res = invoke("run", "--recipe", recipe, "--output", root / "run")
    assert res.exit_code == 0, res.output
    return {"recipe": recipe, "run": root / "run", "result": res}


# ---- --max-steps and --output -----------------------------------------------------------------------


@pytest.mark.parametrize("steps", ["0", "-5"])
def test_max_steps_below_one_is_a_one_line_error_and_writes_nothing(tmp_path, steps):
    res = invoke("run", "--recipe", "tiny", "--max-steps", steps, "--output", tmp_path / "r")
    assert res.exit_code == 2
    assert res.stderr.strip() == (f"error: Invalid value for '--max-steps': {steps} is not in the range x>=1. "
                                  "(see `main run --help`)")
    assert not (tmp_path / "r").exists()


def test_train_refuses_max_steps_below_one_from_python_too(tmp_path):
    from core.errors import ConfigError
    from train.distill import train

    with pytest.raises(ConfigError, match="--max-steps must be a whole number >= 1, got 0"):
        train(small_cfg("tiny:flux"), tmp_path / "r", max_steps=0)
    assert not (tmp_path / "r").exists()


def test_output_that_is_not_a_run_is_refused_and_left_untouched(tmp_path):
    mine = tmp_path / "mine"
    (mine / "student").mkdir(parents=True)
    (mine / "log.jsonl").write_text("my own notes\n")
    for extra in ([], ["--resume"]):
        res = invoke("run", "--recipe", "tiny", "--output", mine, *extra)
        assert res.exit_code == 2, res.output
        assert f"--output {mine} is not empty and is not a t5shrink run folder (no recipe.json" in res.stderr
        assert ("--resume continues only a run" in res.stderr) == bool(extra)
    assert sorted(p.name for p in mine.iterdir()) == ["log.jsonl", "student"]
    assert (mine / "log.jsonl").read_text() == "my own notes\n"
    # a recipe.json that is not a train recipe does not make a folder a run
    (mine / "recipe.json").write_text('{"steps": []}')
    assert invoke("run", "--recipe", "tiny", "--output", mine, "--resume").exit_code == 2


@pytest.mark.parametrize("exists", [False, True])
def test_resume_with_no_run_there_is_an_error_not_a_fresh_start(tmp_path, exists):
    out = tmp_path / "runs" / "mistyped"
    if exists:
        out.mkdir(parents=True)
    res = invoke("run", "--recipe", "tiny", "--output", out, "--resume")
    assert res.exit_code == 2
    assert res.stderr.strip() == (f"error: --resume: there is no run to continue in {out} (it "
                                  f"{'is an empty folder' if exists else 'does not exist'}); check the --output "
                                  "path, or drop --resume to start a new run")
    assert out.exists() == exists and not any(out.iterdir() if exists else [])


def test_a_run_folder_is_continued_only_with_resume_and_keeps_a_users_files(finished_run, tmp_path):
    import shutil

    from train.runs import check_output, is_run_folder

    run = tmp_path / "run"
    shutil.copytree(finished_run["run"], run)
    assert is_run_folder(run)
    res = invoke("run", "--recipe", finished_run["recipe"], "--output", run)
    assert res.exit_code == 2 and "already holds a run (log.jsonl, summary.json, student, checkpoints)" in res.stderr
    (run / "eval.png").write_bytes(b"user's")  # files a user adds to a run folder do not make it foreign
    check_output(run, resume=True)
    # a run that stopped before training anything (only its recipe.json) may start over
    only_recipe = tmp_path / "early"
    only_recipe.mkdir()
    shutil.copy(run / "recipe.json", only_recipe / "recipe.json")
    check_output(only_recipe, resume=False)
    with pytest.raises(ValueError, match="is a file; choose a folder"):
        check_output(run / "eval.png", resume=False)


# ---- one "not found" rule -----------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["run", "--recipe", "tiny", "--data", "curated/balanced/"], "data curated/balanced/: no such file or folder"),
    (["run", "--recipe", "tiny", "--data", "missing.txt"], "data missing.txt: no such file or folder"),
    (["run", "--recipe", "tiny", "--set", "validation.data=./held"], "validation.data ./held: no such file or folder"),
    (["run", "--recipe", "tiny", "--set", "student.init=./my-t5"], "student.init ./my-t5: no such file or folder"),
    (["eval", "--student", "./runs/x", "--teacher", "tiny:flux", "--data", "builtin:tiny"],
     "student ./runs/x: no such file or folder"),
    (["eval", "--student", "{run}", "--teacher", "tiny:flux", "--data", "held/out/prompts"],
     "data held/out/prompts: no such file or folder"),
    (["export", "--checkpoint", "runs/flux-base/", "--output", "{tmp}/e"], "checkpoint runs/flux-base/: no such file or folder"),
])
def test_a_missing_path_is_a_local_error_naming_it(finished_run, tmp_path, args, message):
    args = [a.format(run=finished_run["run"], tmp=tmp_path) for a in args]
    res = invoke(*args, "--output", tmp_path / "out") if args[0] == "run" else invoke(*args)
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == f"error: {message}"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, what", [
    (["run", "--recipe", "{recipe}", "--data", "someone/prompts"], "data someone/prompts"),
    (["run", "--recipe", "{recipe}", "--set", "validation.data=someone/held-out"], "validation.data someone/held-out"),
    (["run", "--recipe", "{recipe}", "--set", "student.init=someone/t5-small"], "student.init someone/t5-small"),
    (["run", "--recipe", "{recipe}", "--teacher", "someone/flux"], "teacher someone/flux"),
    (["eval", "--student", "someone/student", "--teacher", "tiny:flux", "--data", "builtin:tiny"], "student someone/student"),
    (["eval", "--student", "{run}", "--teacher", "someone/flux", "--data", "builtin:tiny"], "teacher someone/flux"),
    (["eval", "--student", "{run}", "--teacher", "tiny:flux", "--data", "someone/prompts"], "data someone/prompts"),
    (["export", "--checkpoint", "someone/student", "--output", "{tmp}/e"], "checkpoint someone/student"),
])
def test_a_hub_id_that_cannot_be_fetched_names_it_and_the_cure(finished_run, tmp_path, monkeypatch, args, what):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # what a machine without the network meets, without the retries
    args = [a.format(run=finished_run["run"], tmp=tmp_path, recipe=finished_run["recipe"]) for a in args]
    res = invoke(*args, "--output", tmp_path / "out") if args[0] == "run" else invoke(*args)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert lines[-1] == (f"error: {what}: not a local path, and it cannot be fetched from the Hugging Face Hub "
                         "(HF_HUB_OFFLINE is set); it needs the network, or give a local folder")
    assert all(line.startswith("cpu threads: ") for line in lines[:-1]), lines  # no library noise before it
    assert not (tmp_path / "out").exists()  # a run that could not start leaves no folder


# ---- fast feedback and --print-config -------------------------------------------------------------

PROBE = """
import sys, time
from click.testing import CliRunner
from train.cli import main
start = time.perf_counter()
res = CliRunner().invoke(main, sys.argv[1:])
print(res.exit_code, time.perf_counter() - start, sorted({"torch", "transformers", "diffusers"} & set(sys.modules)))
print(res.stderr.strip())
"""


@pytest.mark.parametrize("args, error", [
    (["run", "--recipe", "nope"], "error: no train recipe named 'nope'"),
    (["run", "--recipe", "tiny", "--set", "optim.lrr=1"], "error: unknown key 'optim.lrr' in --set optim.lrr=1"),
    (["run", "--recipe", "tiny", "--set", "student.config.num_layer=1"], "error: unknown key student.config.num_layer"),
    (["run", "--recipe", "tiny", "--data", "nope/"], "error: data nope/: no such file or folder"),
])
def test_recipe_typos_are_reported_before_torch_is_imported(tmp_path, args, error):
    from train.config import t5_config_fields

    assert "num_layers" in t5_config_fields()  # fills the field list's cache, as any earlier run has
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", PROBE, *args, "--output", str(tmp_path / "r")], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)
    status, message = done.stdout.strip().splitlines()[:2]
    code, seconds, heavy = status.split(" ", 2)
    assert code == "2" and message.startswith(error), done.stdout + done.stderr
    assert heavy == "[]", f"imported {heavy} before reporting a typo"
    print(f"{' '.join(args)}: reported in {float(seconds):.2f} s")


def test_print_config_prints_every_key_and_is_itself_a_recipe(tmp_path, monkeypatch):
    from train.config import SCHEMA, resolve

    monkeypatch.chdir(tmp_path)  # where the default --output (runs/tiny) would go

    res = invoke("run", "--recipe", "tiny", "--set", "optim.lr=0.01", "--print-config")
    assert res.exit_code == 0 and res.stderr == ""
    printed = yaml.safe_load(res.stdout)
    assert printed == resolve("tiny", overrides=["optim.lr=0.01"])[1]
    for key, spec in SCHEMA.items():  # every key, down to the leaves (student.config is free-form)
        assert key in printed
        if isinstance(spec, dict) and key != "stages":
            assert set(spec) - {"config"} <= set(printed[key]), key
    assert set(SCHEMA["stages"][0]) <= set(printed["stages"][0])
    (tmp_path / "again.yaml").write_text(res.stdout)
    assert resolve(str(tmp_path / "again.yaml"))[1] == printed
    assert [p.name for p in tmp_path.iterdir()] == ["again.yaml"]  # it trained nothing


# ---- CPU threads ----------------------------------------------------------------------------------


def test_cpu_threads_come_from_the_free_cores_unless_the_user_says(monkeypatch):
    from train.config import choose_cpu_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert choose_cpu_threads(None, measured=(2, 1.1, 0.9))[0] == 1  # a busy-loop beside a 2-core run
    assert choose_cpu_threads(None, measured=(2, 0.2, 1.8))[0] == 2
    assert choose_cpu_threads(None, measured=(2, 6.0, -4.0))[0] == 1  # never below one
    assert choose_cpu_threads(None, processes=2, measured=(8, 0.0, 8.0))[0] == 4  # shared by the processes
    threads, why = choose_cpu_threads(None, measured=(2, 1.1, 0.9))
    assert why == "2 cores, 1-minute load 1.10, so 0.9 free; set cpu_threads or OMP_NUM_THREADS to override"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_cpu_threads(None, measured=(2, 1.1, 0.9)) == (3, "OMP_NUM_THREADS")
    assert choose_cpu_threads(2, measured=(2, 1.1, 0.9)) == (2, "the recipe's cpu_threads")


def test_a_cpu_run_says_which_thread_count_it_chose_and_puts_the_callers_back(tiny, tmp_path, monkeypatch):  # noqa: F811
    recipe = write_recipe(tmp_path / "r.yaml", steps=1)
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    res = invoke("run", "--recipe", recipe, "--output", tmp_path / "a", "--quiet")
    assert res.exit_code == 0, res.output
    assert "cpu threads: 1 (OMP_NUM_THREADS)\n" in res.stderr
    res = invoke("run", "--recipe", recipe, "--output", tmp_path / "b", "--quiet", "--set", "cpu_threads=2")
    assert res.exit_code == 0, res.output
    assert "cpu threads: 2 (the recipe's cpu_threads)\n" in res.stderr
    assert torch.get_num_threads() == before
    # a command of its own (not inside this process, whose threads are its own) chooses from the free cores
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "RAYON_RS_NUM_CPUS")}
    done = subprocess.run([sys.executable, "-m", "train.cli", "run", "--recipe", str(recipe), "--output",
                           str(tmp_path / "c"), "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    cores = len(os.sched_getaffinity(0))
    assert re.search(rf"^cpu threads: \d+ \({cores} cores, 1-minute load [\d.]+, so [\d.]+ free; set cpu_threads "
                     r"or OMP_NUM_THREADS to override\)$", done.stderr, re.M), done.stderr


# ---- watching a run ---------------------------------------------------------------------------------


def test_summary_goes_to_stdout_and_everything_else_to_stderr(finished_run):
    res = finished_run["result"]
    assert res.stdout.count("\n") == 1 and res.stdout.startswith(f"student: {finished_run['run'] / 'student'}  steps: 2")
    assert "held-out gap" in res.stdout
    assert "2/2 [" in res.stderr and "held-out gap" not in res.stderr  # the progress bar


def test_progress_bar_shows_stage_step_loss_lr_and_the_held_out_gap(tiny, tmp_path, capsys):  # noqa: F811
    from train.distill import train

    cfg = small_cfg("tiny:flux", steps=2)
    cfg["stages"][0]["name"] = "compbench"
    train(cfg, tmp_path / "r", progress=True)
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()
    last = [line for line in bar if "2/2" in line][-1]
    gap0 = read_jsonl(tmp_path / "r" / "log.jsonl")[0]["val_gap"]
    assert last.startswith("compbench: 100%")
    assert "loss=" in last and "lr=" in last and f"gap={gap0:.4f}" in last


def test_ctrl_c_writes_a_checkpoint_prints_the_resume_command_and_exits_130(tiny, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "train.cli", "run", "--recipe", "tiny", "--output", str(out), "--max-steps", "30",
           "--set", "distill.sampling_steps=2", "--set", "optim.batch_size=4", "--set", "validation.num_prompts=8",
           "--set", "log.every=1", "--set", "checkpoint.every=0", "--quiet"]  # no checkpoints but the interrupt's
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline and not (
            (out / "log.jsonl").exists() and '"loss"' in (out / "log.jsonl").read_text()):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 130, stderr[-2000:]
    assert stdout == ""
    hint = stderr.split("To continue:\n", 1)[1].strip().splitlines()[0]
    step = int(stderr.split("interrupted at step ", 1)[1].split(";")[0])
    assert 1 <= step < 30
    ckpt = out / "checkpoints" / f"step-{step:08d}"
    assert json.loads((ckpt / "state.json").read_text())["step"] == step
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [ckpt.name]
    again = shlex.split(hint)
    assert again[:3] == ["python", "-m", "train.cli"] and again[3:] == cmd[3:-1] + ["--resume", "--quiet"]
    resumed = subprocess.run([sys.executable, *again[1:]], capture_output=True, text=True, env=env, cwd=tmp_path,
                             timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {ckpt} (step {step})" in resumed.stderr
    assert json.loads((out / "summary.json").read_text())["steps"] == 30
    assert [r["step"] for r in read_jsonl(out / "log.jsonl") if "loss" in r] == list(range(1, 31))


def test_validation_grids_are_labelled(tiny, tmp_path):  # noqa: F811
    from PIL import Image

    from train.distill import train
    from train.evaluate import GRID_LINE, GRID_MIN_CELL

    train(small_cfg("tiny:flux", steps=1, images=True), tmp_path / "r", progress=False)  # 2 prompts x 2 seeds
    grid = Image.open(tmp_path / "r" / "val" / "step-00000001.png").convert("L")
    band = GRID_LINE + 4
    assert grid.size == (2 * GRID_MIN_CELL, band + 4 * (band + GRID_MIN_CELL))

    def inked(box: tuple[int, int, int, int]) -> bool:  # black text on the white bands
        return grid.crop(box).getextrema()[0] < 100

    assert inked((0, 0, GRID_MIN_CELL, band)) and inked((GRID_MIN_CELL, 0, 2 * GRID_MIN_CELL, band))  # teacher | student
    for row in range(4):  # each pair's prompt above it
        top = band + row * (band + GRID_MIN_CELL)
        assert inked((0, top, 2 * GRID_MIN_CELL, top + band)), row


def test_a_resume_that_changes_the_length_says_so_in_a_whole_sentence(tiny, tmp_path):  # noqa: F811
    from train.distill import train

    cfg = small_cfg("tiny:flux", steps=3, ckpt_every=1)
    train(cfg, tmp_path / "r", progress=False, max_steps=1)
    with pytest.warns(UserWarning) as caught:
        train(cfg, tmp_path / "r", progress=False, resume=True, max_steps=4)
    text = next(str(w.message) for w in caught if "--max-steps 4" in str(w.message))
    assert text == ("--resume: --max-steps 4 changes the run's length (3 steps), so its lr schedule and stage bounds "
                    "change too; the resumed run will not match an uninterrupted one")
