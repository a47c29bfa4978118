#!/usr/bin/env bash
# bench/train_step.py on one lent H100, in one call of the `device` tool (that machine has only torch,
# transformers and accelerate, and no network). Prepare here, in the repo root:
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl diffusers==0.42.1 torchao==0.18.0  # torchao: comparison row
#   echo /.whl/ >> .git/info/exclude
# then: run(command="bash bench/device_train_step.sh", carry=[".whl"], timeout_s=560)
# FLUX.1-dev scale first (the goals), then SD3; each writes its JSON after every configuration.
# On an H100 (2026-11-27) the whole script took 255 s before the ours+compile row was added, which
# compiles cold for about a minute more; the first call also spends 30-110 s starting the machine.
set -uo pipefail
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, diffusers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__)"
timeout 380 python3 bench/train_step.py --scale flux-dev --device cuda --batch 4 --resolution 512 --tokens 77 \
    --iters 3 --warmup 1 --json "$OUT/flux-dev.json" 2>&1 | tee "$OUT/flux-dev.log"
timeout 120 python3 bench/train_step.py --scale sd3 --device cuda --batch 4 --resolution 512 --tokens 77 \
    --iters 3 --warmup 1 --configs reference,ours,ours+ckpt,ours+fp8 --json "$OUT/sd3.json" 2>&1 | tee "$OUT/sd3.log"
