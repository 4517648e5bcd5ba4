#!/usr/bin/env bash
# Generates the Python modules of the KMS v2 plugin API from its .proto, with grpcio-tools
# (the exact version of the dev extra, so the output is reproducible):
#   src/kms_operator/kmsplugin/v2/api_pb2.py, api_pb2.pyi, api_pb2_grpc.py
# They are committed; tests/unit/test_kmsplugin_proto.py runs this script into a temporary
# directory and compares, so they cannot go stale.
#   hack/proto/generate.sh [OUTPUT_ROOT]   (default: src, in place)
set -euo pipefail
cd "$(dirname "$0")/../.."
python="${PYTHON:-.venv/bin/python}"
out="${1:-src}"
mkdir -p "$out"
exec "$python" -m grpc_tools.protoc -I src \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  src/kms_operator/kmsplugin/v2/api.proto
