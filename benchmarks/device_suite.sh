#!/usr/bin/env bash
# One-command device suite (benchmarks/device_suite.py): one JSON with training
# snippets/s per dtype policy with and without XLA, the largest batch, the quantile
# estimators' share, the input pipeline ratio, two-replica scaling and serving latency.
#
#   benchmarks/device_suite.sh            # needs a GPU; refuses (exit 3) without one
#   benchmarks/device_suite.sh --cpu      # reduced CPU version (or COOPNET_SUITE_CPU=1)
#
# Extra arguments go to benchmarks/device_suite.py (--help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."

cpu=0
for arg in "$@"; do
  [[ "$arg" == "--cpu" ]] && cpu=1
done
[[ "${COOPNET_SUITE_CPU:-}" == "1" ]] && cpu=1

# Fast refusal before TensorFlow is imported: no NVIDIA device listed, or all hidden.
if [[ "$cpu" == 0 ]]; then
  if [[ "${CUDA_VISIBLE_DEVICES-unset}" == "" || "${CUDA_VISIBLE_DEVICES-}" == "-1" ]] \
      || ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q "^GPU"; then
    echo "device_suite: no GPU visible (nvidia-smi lists none or CUDA_VISIBLE_DEVICES hides" \
         "them); refusing to run the GPU suite. Pass --cpu (or COOPNET_SUITE_CPU=1) for the" \
         "reduced CPU version." >&2
    exit 3
  fi
fi
exec python3 benchmarks/device_suite.py "$@"
