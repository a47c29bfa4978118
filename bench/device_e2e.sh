#!/usr/bin/env bash
# bench/device_e2e.py at FLUX.1-dev size on one lent GPU, in one call of the `device` tool (that machine has
# only torch, transformers and accelerate, and no network). Prepare here, in the repo root:
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl diffusers==0.42.1 click==8.5.1 \
#       pillow pyyaml tqdm sentencepiece importlib_metadata zipp
#   echo /.whl/ >> .git/info/exclude
# then: run(command="bash bench/device_e2e.sh", carry=[".whl"], timeout_s=590)
# Rehearsed on the CPU at tiny scale by tests/test_device_e2e.py (the same phases, compile off).
# Phases: write the ~34 GB folder (bf16 shards) to local disk, train 6 steps (flux-t5-base's settings:
# compile, embedding cache precomputed, text encoders offloaded, + fp8 on compute capability 8.9+), the same
# run SIGKILLed after its step-2 checkpoint and resumed, export, FluxPipeline at 512 px, train eval.
# The trainer pins attention to flash on CUDA (train.distill.forward_context): the default crashed there.
set -uo pipefail
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
FP8=$(python3 -c "import torch; print('--fp8' if torch.cuda.get_device_capability() >= (8, 9) else '')")
timeout 570 python3 bench/device_e2e.py --scale flux-dev --out /tmp/e2e --device cuda $FP8 --timeout 300 \
    2>&1 | tee "$OUT/e2e.log"
cp /tmp/e2e/e2e.json /tmp/e2e/student.png "$OUT/" 2>/dev/null || true
