#!/usr/bin/env bash
# Regenerate benchd's Python gRPC stubs from protos/ (committed under benchd/v1/).
# Usage: scripts/gen_protos.sh [OUT_DIR]   (default: the repository root; tests pass a temp dir)
# Needs grpcio-tools (pip install '.[test]'); PYTHON selects the interpreter.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root}"
mkdir -p "$out/benchd/v1"
"${PYTHON:-python}" -m grpc_tools.protoc \
  --proto_path="$root/protos" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  "$root/protos/benchd/v1/benchd.proto"
