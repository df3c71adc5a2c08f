#!/usr/bin/env bash
# The GPU check (docs/gpu.md): on a machine with a CUDA device, the GPU tier of the tests (every test marked gpu),
# then benchmarks/gpu.py; under 10 minutes on one modern GPU. Run it from the repository, in its environment
# (pip install -e ".[test]"); extra arguments go to pytest (-x, -n 4, -k kd, ...). It prints the tests' summary and
# the benchmark's table, keeps both and the figures as JSON in outputs/gpu_check/, and exits with the tests' code.
#
#   scripts/gpu_check.sh [pytest arguments...]
set -uo pipefail
cd "$(dirname "$0")/.."

if ! python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  echo "gpu_check: torch sees no CUDA device here (torch.cuda.is_available() is false): the GPU tier would only" \
       "skip; run this on a machine with one, or check its driver and torch's CUDA build" >&2
  exit 2
fi
# cuBLAS's deterministic workspace (set before CUDA starts): the tier compares runs on the GPU bit for bit.
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"
export WANDB_MODE=offline WANDB_SILENT=true
out=outputs/gpu_check
mkdir -p "$out"
started=$SECONDS

python -m pytest -m gpu -q -p no:cacheprovider "$@" | tee "$out/tests.txt"
tests=${PIPESTATUS[0]}
python benchmarks/gpu.py --json "$out/gpu.json" | tee "$out/benchmark.txt"
benchmark=${PIPESTATUS[0]}

echo
echo "gpu_check: the GPU tier $( ((tests == 0)) && echo passed || echo "FAILED (exit $tests)" ):" \
     "$(tail -n 1 "$out/tests.txt")"
echo "gpu_check: the benchmark $( ((benchmark == 0)) && echo ran || echo "FAILED (exit $benchmark)" );" \
     "$((SECONDS - started)) s in all; kept in $out/ (tests.txt, benchmark.txt, gpu.json)"
exit $((tests != 0 ? tests : benchmark))
