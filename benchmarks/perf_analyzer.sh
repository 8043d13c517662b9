#!/usr/bin/env bash
# Triton's load generator, perf_analyzer, without the Triton SDK container:
#
#   benchmarks/perf_analyzer.sh -m teacher -u 127.0.0.1:8001 -i grpc -b 48 --input-data zero
#
# Arguments go to perf_analyzer unchanged. On first use it fetches, with pip, into
# ${PERF_ANALYZER_HOME:-~/.cache/unix-kd/perf_analyzer}:
#   - the binary inside the tritonclient 2.51.0 wheel (newer wheels' binaries need glibc 2.38;
#     `pip install perf-analyzer` is a placeholder without one),
#   - libcudart.so.12 from the nvidia-cuda-runtime-cu12 wheel (the binary links it even on CPU).
# It also needs libb64 (Debian: apt-get install libb64-0d).
# PyTriton restricts the statistics endpoint that perf_analyzer reads: serve with
# --triton-token-file F and pass -H triton-grpc-protocol-triton-access-token:$(cat F) (gRPC)
# or -H triton-access-token:$(cat F) (HTTP), or serve with --triton-open-endpoints.
set -euo pipefail
HOME_DIR=${PERF_ANALYZER_HOME:-$HOME/.cache/unix-kd/perf_analyzer}
PY=${PYTHON:-python3}
BIN=$HOME_DIR/tritonclient/tritonclient-2.51.0.data/data/bin/perf_analyzer
CUDART=$HOME_DIR/cudart/nvidia/cuda_runtime/lib
if [ ! -x "$BIN" ] || [ ! -e "$CUDART/libcudart.so.12" ]; then
  mkdir -p "$HOME_DIR/wheels"
  "$PY" -m pip download -q --no-deps -d "$HOME_DIR/wheels" tritonclient==2.51.0 nvidia-cuda-runtime-cu12
  "$PY" -m zipfile -e "$HOME_DIR"/wheels/tritonclient-2.51.0-*.whl "$HOME_DIR/tritonclient"
  "$PY" -m zipfile -e "$(ls "$HOME_DIR"/wheels/nvidia_cuda_runtime_cu12-*.whl | head -1)" "$HOME_DIR/cudart"
  chmod +x "$BIN"
fi
if ! ldconfig -p | grep -q 'libb64\.so\.0d'; then
  echo "perf_analyzer needs libb64: apt-get install -y libb64-0d" >&2
  exit 2
fi
LD_LIBRARY_PATH="$CUDART${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$BIN" "$@"
