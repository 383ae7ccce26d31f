#!/usr/bin/env bash
# The GPU check, one command on a bare GPU machine (PyTorch with CUDA preinstalled, no network):
#   bash benchmarks/gpu_check.sh            # results in $OUT (the device tool's folder) or ./gpu_results
# 1. installs banglaslm's dependencies from the wheels in .gpu_wheels/ (made here, on a
#    machine with the package index, by `bash benchmarks/gpu_wheels.sh`; the device tool carries
#    the folder) with --no-deps, never touching torch;
# 2. runs tests/test_cuda.py (about 5 minutes), then benchmarks/gpu_throughput.py (about 2).
# Without a GPU it says so and exits 0. Budget: under 10 minutes in all.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_results}"
mkdir -p "$OUT"
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "no CUDA GPU here: nothing to check" | tee "$OUT/summary.txt"
    exit 0
fi
{ nvidia-smi; python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } > "$OUT/machine.txt" 2>&1
if [ -d .gpu_wheels ]; then
    python -m pip install --quiet --no-index --no-deps .gpu_wheels/*.whl 2>&1 | tail -3
fi
# banglaslm itself from the source tree (no build step; its subprocesses inherit the path).
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 CUBLAS_WORKSPACE_CONFIG=:4096:8
timeout 420 python -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py 2>&1 | tee "$OUT/test_cuda.log"
tests=${PIPESTATUS[0]}
timeout 150 python benchmarks/gpu_throughput.py --out "$OUT/gpu_throughput.json" 2>&1 | tee "$OUT/gpu_throughput.md"
bench=${PIPESTATUS[0]}
echo "tests/test_cuda.py exit $tests; gpu_throughput exit $bench" | tee "$OUT/summary.txt"
exit $(( tests || bench ))
