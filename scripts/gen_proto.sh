#!/usr/bin/env bash
# Regenerate runtime/wire/ from proto/splitinfer.proto (Python modules and .pyi stubs).
# Usage: bash scripts/gen_proto.sh [OUT_DIR]   (default runtime/wire; the staleness
# test writes to a temporary directory and compares).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runtime/wire}"
mkdir -p "$out"
.venv/bin/python -m grpc_tools.protoc -I proto \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" proto/splitinfer.proto
# protoc writes a top-level import; the modules live in the runtime.wire package
sed -i 's/^import splitinfer_pb2 as splitinfer__pb2$/from runtime.wire import splitinfer_pb2 as splitinfer__pb2/' \
  "$out/splitinfer_pb2_grpc.py"
