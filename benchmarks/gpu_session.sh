#!/usr/bin/env bash
# Everything a session lent one GPU box runs, in one call (about 5 minutes on an H200; needs torch, torchvision,
# OpenCV, numpy and pytest there, no ray or wandb):
#   1. the tests that need CUDA (views and photometric distortion on the GPU against the CPU),
#   2. benchmarks/gpu_check.py, whose one JSON line is the measurement to quote.
# Writes cuda_tests.log, gpu_check.json and gpu_check.err into $OUT (the device tool's folder) or ./gpu_check_out.
# Exit status: 0 when both passed; gpu_check.py names a failed measurement under "errors" and still reports the rest.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check_out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_views.py tests/test_photometric.py -k cuda \
    2>&1 | tee "$out/cuda_tests.log"
tests=${PIPESTATUS[0]}
python3 benchmarks/gpu_check.py --work /tmp/gpu_check "$@" 2> "$out/gpu_check.err" | tee "$out/gpu_check.json"
check=${PIPESTATUS[0]}
tail -n 20 "$out/gpu_check.err"
echo "cuda tests: exit $tests; gpu_check: exit $check"
[ "$tests" -eq 0 ] && [ "$check" -eq 0 ]
