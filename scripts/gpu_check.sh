#!/usr/bin/env bash
# GPU check: build with CUDA, run the CUDA tests and the GPU benchmarks, write results to OUTDIR.
# usage: scripts/gpu_check.sh OUTDIR
# Needs python3 with torch (CUDA), pybind11, ninja, pytest, pytest-benchmark; torch-geometric for
# the attention peer. RDKit is not needed: the tests here are kernel, optimizer and layer tests,
# and the end-to-end benchmark trains on synthetic molecule-like graphs when RDKit is missing.
#
# Written to OUTDIR: summary.txt (every step, ok / FAILED, the tail of its log), gpu.txt (the
# card), STEP.log for each step, bench-optimizers.md, bench-training.md, bench-attention.md
# (pytest-benchmark tables) with their .json, and targets.md (the issue's targets computed from
# those tables). Meant to finish well inside 10 minutes on an H100/H200 including the build:
# the build is for this card's architecture only (set TORCH_CUDA_ARCH_LIST to override), and
# the attention benchmark, already recorded, runs only while the time budget allows.
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
budget=${GPU_CHECK_BUDGET_S:-480}  # optional steps start only before this many seconds
status=0
: > "$out/summary.txt"

step() {  # step NAME TIMEOUT_S COMMAND...: run, log to OUTDIR/NAME.log, remember failures
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name: $*" | tee -a "$out/summary.txt"
  if timeout "$limit" "$@" > "$out/$name.log" 2>&1; then echo "   ok ($((SECONDS - t0)) s)" | tee -a "$out/summary.txt"
  else echo "   FAILED (exit $?, $((SECONDS - t0)) s), see $name.log" | tee -a "$out/summary.txt"; status=1; fi
  tail -n 3 "$out/$name.log" | sed 's/^/   /' >> "$out/summary.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv > "$out/gpu.txt" 2>&1 || true
"$py" - >> "$out/gpu.txt" 2>&1 <<'EOF'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}")
for i in range(torch.cuda.device_count()):
    major, minor = torch.cuda.get_device_capability(i)
    print(f"cuda:{i} {torch.cuda.get_device_name(i)} sm_{major}{minor}")
EOF
cat "$out/gpu.txt" | tee -a "$out/summary.txt"
arch=${TORCH_CUDA_ARCH_LIST:-$("$py" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null)}

echo "TORCH_CUDA_ARCH_LIST=${arch:-(setup.py default)}" | tee -a "$out/summary.txt"
step build 420 env GRAPHSAM_EXT_BUILD_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}" ${arch:+TORCH_CUDA_ARCH_LIST=$arch} \
  "$py" setup.py -q build_ext --inplace
step info 60 "$py" -m graphsam_ext.info
# the CUDA tests skip without CUDA kernels: make a build without them a failure here
step cuda-kernels 60 "$py" -c "import torch; from graphsam_ext import _backend; info = _backend.build_info(); \
assert info.get('cuda') and torch.cuda.is_available() and _backend.use_native('cuda'), info; print(info)"

# the CUDA cases of every test file that has some (device-parametrized or CUDA-only tests),
# then the CUDA-only file in full and the backend choice
tests=()
for f in $(grep -lE "cuda|DEVICES" tests/test_*.py); do
  case "$f" in tests/test_cuda_ops.py|tests/test_backend.py) ;; *) tests+=("$f") ;; esac
done
step cuda-tests 300 "$py" -m pytest -q -k "cuda" "${tests[@]}" -p no:cacheprovider
step cuda-ops-tests 300 "$py" -m pytest -q tests/test_cuda_ops.py tests/test_backend.py -p no:cacheprovider

step bench-optimizers 240 env GRAPHSAM_BENCH_DEVICE=cuda GRAPHSAM_BENCH_ROUNDS=50 \
  GRAPHSAM_BENCH_REPORT="$out/bench-optimizers.md" \
  "$py" -m pytest -q benchmarks/bench_optimizers.py -p no:cacheprovider --benchmark-json="$out/bench-optimizers.json"
step bench-training 300 env GRAPHSAM_BENCH_DEVICE=cuda GRAPHSAM_BENCH_ROUNDS=${GRAPHSAM_BENCH_ROUNDS:-5} \
  GRAPHSAM_BENCH_REPORT="$out/bench-training.md" \
  "$py" -m pytest -q benchmarks/bench_training.py -p no:cacheprovider --benchmark-json="$out/bench-training.json"

# the issue's targets, from the two tables above
"$py" - "$out" > "$out/targets.md" 2>> "$out/summary.txt" <<'EOF'
import pathlib
import sys

out = pathlib.Path(sys.argv[1])
PAPER_GRAPHSAM = 174.0  # graphs/s of CoMPT + GraphSAM on BBBP in the GraphSAM paper


def tables(path):
    """{title: [row dicts]} of the markdown tables benchmarks/conftest.py writes."""
    found, title, head = {}, None, None
    if not path.exists():
        return found
    for line in path.read_text().splitlines():
        if line.startswith("### "):
            title, head = line[4:], None
        elif line.startswith("|") and not line.startswith("|---") and title:
            cells = [c.strip() for c in line.strip("|").split("|")]
            if head is None:
                head = cells
            else:
                found.setdefault(title, []).append(dict(zip(head, cells)))
    return found


print("## Optimizer steps (targets: fused GraphSAM <= 2.2x Adam(fused=True), >= 80% of the copy's GB/s)\n")
print("| timed | contender | median ms | x Adam(fused=True) | GB/s | GB/s / copy GB/s |")
print("|---|---|---|---|---|---|")
for title, rows in tables(out / "bench-optimizers.md").items():
    by_name = {r["name"]: r for r in rows}
    copy = float(by_name["copy (same size)"]["GB/s"]) if "copy (same size)" in by_name else float("nan")
    for name in ("torch Adam(fused=True)", "ours fused Adam", "ours fused SAM", "ours fused GraphSAM"):
        r = by_name.get(name)
        if r:
            print(f"| {'in turn' if title.startswith('the same step') else 'alone'} | {name} | {r['median ms']} | {r.get('x torch Adam(fused=True)', '')} | "
                  f"{r['GB/s']} | {float(r['GB/s']) / copy:.2f} |")
print("\n## Training throughput (targets: GraphSAM >= 0.95x Adam, >= 50x the paper's 174 graphs/s)\n")
print("| table | optimizer | molecules/s | x adam | x paper's GraphSAM (174/s) |")
print("|---|---|---|---|---|")
for title, rows in tables(out / "bench-training.md").items():
    for r in rows:
        print(f"| {title.split(', default model')[0]} | {r['name']} | {r['molecules/s']} | "
              f"{r['x adam molecules/s']} | {float(r['molecules/s']) / PAPER_GRAPHSAM:.1f} |")
EOF
cat "$out/targets.md" >> "$out/summary.txt"

if [ -f benchmarks/bench_graph_attention.py ] && (( SECONDS < budget )); then
  step bench-attention 180 env GRAPHSAM_BENCH_DEVICE=cuda GRAPHSAM_BENCH_REPORT="$out/bench-attention.md" \
    "$py" -m pytest -q benchmarks/bench_graph_attention.py -p no:cacheprovider \
    --benchmark-max-time=0.2 --benchmark-min-rounds=5 --benchmark-json="$out/bench-attention.json"
else
  echo "== bench-attention: skipped (${SECONDS} s used, budget ${budget} s)" | tee -a "$out/summary.txt"
fi
echo "total: ${SECONDS} s" | tee -a "$out/summary.txt"
cat "$out/summary.txt"
exit $status
