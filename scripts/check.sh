#!/usr/bin/env bash
# Everything CI checks, in the order CI checks it: install, format, lint, types, tests.
# Extra arguments go to pytest (e.g. `bash scripts/check.sh -k split -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bin=.venv/bin
"$bin/ruff" format --check .
"$bin/ruff" check .
"$bin/mypy" partitioner runtime bench tests
"$bin/python" -m pytest "$@"
