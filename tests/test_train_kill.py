"""`train run` killed with SIGKILL mid-run, then `--resume`, ends where an uninterrupted run ends."""

import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

SMALL = ["--max-steps", "24", "--set", "checkpoint.every=2", "--set", "checkpoint.keep=20",
         "--set", "validation.num_prompts=8", "--set", "validation.every=0", "--set", "distill.sampling_steps=4",
         "--set", "optim.batch_size=4"]


def _cmd(out, *extra):
    return [sys.executable, "-m", "train.cli", "run", "--recipe", "tiny", "--output", str(out), *SMALL, *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("train-ref") / "run"
    subprocess.run(_cmd(out), check=True, capture_output=True, env=_env())
    return load_file(str(out / "student" / "model.safetensors"))


@pytest.mark.parametrize("kill_at_checkpoint, extra_delay", [(2, 0.0), (4, 0.3)])
def test_sigkill_then_resume_matches_the_uninterrupted_run(tmp_path, reference, kill_at_checkpoint, extra_delay):
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    marker = out / "checkpoints" / f"step-{kill_at_checkpoint:08d}"
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(extra_delay)  # the second case lands inside a later step or checkpoint write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the run should have reached the checkpoint before the kill"
    assert not (out / "student").exists(), "killed before the end: no final student"
    resumed = subprocess.run(_cmd(out, "--resume"), capture_output=True, text=True, env=_env())
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    weights = load_file(str(out / "student" / "model.safetensors"))
    assert weights.keys() == reference.keys()
    for key in reference:
        assert (weights[key] == reference[key]).all(), key
