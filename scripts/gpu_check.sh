#!/usr/bin/env bash
# GPU check: build with CUDA, run the CUDA tests and the GPU benchmarks, write results to OUTDIR.
# usage: scripts/gpu_check.sh OUTDIR
# Needs python3 with torch (CUDA), pybind11, ninja, pytest, pytest-benchmark; torch-geometric for
# the attention peer. RDKit is not needed: only kernel, optimizer and layer tests run here.
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
status=0

step() {  # step NAME COMMAND...: run, log to OUTDIR/NAME.log, remember failures
  local name=$1; shift
  echo "== $name: $*" | tee -a "$out/summary.txt"
  if "$@" > "$out/$name.log" 2>&1; then echo "   ok" | tee -a "$out/summary.txt"
  else echo "   FAILED (exit $?), see $name.log" | tee -a "$out/summary.txt"; status=1; fi
  tail -n 3 "$out/$name.log" | sed 's/^/   /' >> "$out/summary.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1 || true
step build env GRAPHSAM_EXT_BUILD_CUDA=1 MAX_JOBS=16 "$py" setup.py -q build_ext --inplace
step info "$py" -m graphsam_ext.info
tests=(tests/test_ops_sam.py tests/test_optim_parity.py tests/test_optim_behaviour.py)
for f in tests/test_graph_attention.py tests/test_nn_attention.py; do [ -f "$f" ] && tests+=("$f"); done
step cuda-tests "$py" -m pytest -q -k "cuda" "${tests[@]}" -p no:cacheprovider
step bench-optimizers env GRAPHSAM_BENCH_DEVICE=cuda GRAPHSAM_BENCH_ROUNDS=50 \
  GRAPHSAM_BENCH_REPORT="$out/bench-optimizers.md" \
  "$py" -m pytest -q benchmarks/bench_optimizers.py -p no:cacheprovider --benchmark-json="$out/bench-optimizers.json"
if [ -f benchmarks/bench_graph_attention.py ]; then
  step bench-attention env GRAPHSAM_BENCH_DEVICE=cuda GRAPHSAM_BENCH_REPORT="$out/bench-attention.md" \
    "$py" -m pytest -q benchmarks/bench_graph_attention.py -p no:cacheprovider --benchmark-json="$out/bench-attention.json"
fi
cat "$out/summary.txt"
exit $status
