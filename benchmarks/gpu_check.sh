#!/usr/bin/env bash
# The GPU check, one command on a bare GPU machine (PyTorch with CUDA preinstalled, no network):
#   bash benchmarks/gpu_check.sh            # results in $OUT (the device tool's folder) or ./gpu_results
# 1. installs banglaslm's dependencies from the wheels in .gpu_wheels/ (made here, on a
#    machine with the package index, by `bash benchmarks/gpu_wheels.sh`; the device tool carries
#    the folder) with --no-deps, never touching torch;
# 2. runs tests/test_cuda.py (at most 5.5 minutes), then benchmarks/gpu_throughput.py at
#    batch 64 and 512 (at most 3.5).
# Without a GPU it says so and exits 0. Budget: under 9.5 minutes in all, so that a lease of
# 15 minutes leaves time to start a machine again and rerun what failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_results}"
mkdir -p "$OUT"
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "no CUDA GPU here: nothing to check" | tee "$OUT/summary.txt"
    exit 0
fi
{ nvidia-smi; python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } > "$OUT/machine.txt" 2>&1
# Only the wheels whose package the machine lacks: an image's own versions (transformers,
# tokenizers, pytest...) are left as they are.
if [ -d .gpu_wheels ]; then
    missing=$(python - <<'PY'
import glob, importlib.metadata as md, os
for wheel in sorted(glob.glob(".gpu_wheels/*.whl")):
    name = os.path.basename(wheel).split("-")[0]
    try:
        md.version(name)
    except md.PackageNotFoundError:
        print(wheel)
PY
)
    echo "installing: $(echo $missing | xargs -n1 basename 2>/dev/null | cut -d- -f1 | tr '\n' ' ')" | tee "$OUT/installed.txt"
    [ -n "$missing" ] && python -m pip install --quiet --no-index --no-deps $missing 2>&1 | tail -3
fi
# banglaslm itself from the source tree (no build step; its subprocesses inherit the path).
# (No CUBLAS_WORKSPACE_CONFIG here: the exact-resume test sets it for its own subprocesses, and
# set for the whole check it makes every small matmul ~8x slower on the CPU side; see
# docs/speedrun-log.md.)
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# One hung test must not take the others' time: a per-test limit where pytest-timeout is there.
per_test=$(python -c "import pytest_timeout" 2>/dev/null && echo "--timeout=120")
timeout 330 python -m pytest -v --tb=short -p no:cacheprovider -rs --durations=0 $per_test tests/test_cuda.py 2>&1 | tee "$OUT/test_cuda.log"
tests=${PIPESTATUS[0]}
# The course's batch (64 x 128 tokens), then one large enough to feed an H100/H200-class GPU.
bench=0
for batch in 64 512; do
    timeout 100 python benchmarks/gpu_throughput.py --batch-size $batch --out "$OUT/gpu_throughput_b$batch.json" \
        2>&1 | tee "$OUT/gpu_throughput_b$batch.md"
    bench=$(( bench || PIPESTATUS[0] ))
done
echo "tests/test_cuda.py exit $tests; gpu_throughput exit $bench" | tee "$OUT/summary.txt"
exit $(( tests || bench ))
