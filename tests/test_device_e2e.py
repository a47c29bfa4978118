"""bench/device_e2e.py rehearsed on the CPU at tiny scale: the phases the GPU run goes through (a pipeline
folder on disk, `train run` through the CLI with the cache precomputed and the text encoders offloaded,
SIGKILL mid-step and --resume, export, FluxPipeline, train eval) all pass, and the resumed student is the
uninterrupted one's, byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_device_e2e_script_passes_every_phase_at_tiny_scale(tmp_path):
    done = subprocess.run([sys.executable, "bench/device_e2e.py", "--scale", "tiny", "--out", str(tmp_path), "--no-compile",
                           "--steps", "4", "--sampling-steps", "3"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {r["phase"]: r for r in json.loads((tmp_path / "e2e.json").read_text())}
    assert all(r["ok"] for r in rows.values()), rows
    assert rows["resumed == uninterrupted"]["detail"].startswith("bit-identical")
    assert "killed after step 2" in rows["train run, SIGKILL, --resume"]["detail"]
    assert (tmp_path / "student.png").exists() and "held-out gap" in rows["train eval"]["detail"]
    assert "ms/step" in rows["ms/step, peak"]["detail"] and "train eval" in done.stdout  # the printed table
