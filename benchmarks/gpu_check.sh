#!/usr/bin/env bash
# The GPU check (issue 18, part 3): one script, under 8 minutes on one H100.
#   bash benchmarks/gpu_check.sh            # on a CUDA machine with dyngraph's test deps installed
#   bash benchmarks/gpu_check.sh --smoke    # the plumbing on CPU (what CI can run)
# 1. the CUDA tests (every test that skips without a GPU: kNN CPU/GPU agreement in all
#    precisions, sync counts, projection, depth_profile and LayerTaps on CUDA);
# 2. exact kNN graphs at N = 1e5, 3e5, 1e6, D = 768: fp32, bf16 and TF32 candidates + exact fp32
#    re-rank (recall against fp32), against the fp32 GEMM of the same size and faiss-gpu where
#    it is installed. Results: benchmarks/results/gpu.json and a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "${1:-}" = "--smoke" ]; then
    exec "$PY" benchmarks/bench_gpu.py --smoke --out "${TMPDIR:-/tmp}/dyngraph_gpu_smoke.json"
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# the tests that need CUDA (they are the ones marked 'needs CUDA'); -rs lists any still skipped
timeout 240 "$PY" -m pytest -q -rs -p no:cacheprovider -k cuda tests
timeout 300 "$PY" benchmarks/bench_gpu.py
