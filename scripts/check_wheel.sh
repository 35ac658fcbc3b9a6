#!/usr/bin/env bash
# Build a wheel of this tree, install it (not editable) into a fresh virtual environment that
# has only torch and the build tools, and use it from outside the source tree:
# `graphsam --version`, one fused SAM and one GraphSAM step, and the clear error of
# `graphsam bench` without a benchmarks directory. With --train, RDKit is installed too and a
# 1-epoch `graphsam train` runs on the embedded default data set.
#
#   scripts/check_wheel.sh [--train] [--keep]
#
# Everything happens in a temporary directory (a copy of the tracked and untracked-not-ignored
# files, the venv, the wheel), removed on exit unless --keep. Needs python3 (PYTHON=...), a C++
# compiler and the package index for torch, pybind11, ninja, numpy, setuptools, wheel (and rdkit).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
train=0
keep=0
for arg in "$@"; do
  case "$arg" in
    --train) train=1 ;;
    --keep) keep=1 ;;
    *) echo "check_wheel.sh: unknown argument $arg (use --train and/or --keep)" >&2; exit 2 ;;
  esac
done

work="$(mktemp -d "${TMPDIR:-/tmp}/graphsam-wheel.XXXXXX")"
cleanup() {
  if [ "$keep" = 1 ]; then
    echo "check_wheel: kept $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

echo "check_wheel: copying the source tree to $work/src"
mkdir -p "$work/src"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    [ -e "$f" ] && printf '%s\0' "$f"
  done | tar --null -T - -cf - | tar -xf - -C "$work/src"
else
  tar --exclude='./.venv*' --exclude=./build --exclude=./runs --exclude='*.so' -cf - . | tar -xf - -C "$work/src"
fi

echo "check_wheel: fresh venv with $TORCH_SPEC"
"$PYTHON" -m venv "$work/venv"
vpy="$work/venv/bin/python"
"$vpy" -m pip install -q --upgrade pip
"$vpy" -m pip install -q "$TORCH_SPEC" pybind11 ninja numpy setuptools wheel

echo "check_wheel: building the wheel"
(cd "$work/src" && MAX_JOBS="${MAX_JOBS:-2}" "$vpy" -m pip wheel -q --no-build-isolation --no-deps . -w "$work/dist")
wheel="$(ls "$work"/dist/graphsam_ext-*.whl)"
echo "check_wheel: built $(basename "$wheel")"
listing="$("$vpy" -m zipfile -l "$wheel")"
grep -q "graphsam_ext/_C" <<<"$listing" || {
  echo "check_wheel: the wheel holds no native library graphsam_ext/_C*" >&2; exit 1; }
grep -q "graphsam_ext/integrations/" <<<"$listing" || {
  echo "check_wheel: the wheel holds no graphsam_ext/integrations" >&2; exit 1; }

rm -rf "$work/src"  # the installed package must not need the source tree
"$vpy" -m pip install -q --no-deps "$wheel"
if [ "$train" = 1 ]; then
  "$vpy" -m pip install -q rdkit
fi

mkdir -p "$work/run"
cd "$work/run"
"$work/venv/bin/graphsam" --version
"$vpy" - <<'EOF'
import os
import torch
import graphsam_ext
from graphsam_ext import _backend
from graphsam_ext.optim import SAM, GraphSAM

assert "site-packages" in graphsam_ext.__file__, graphsam_ext.__file__
assert _backend.use_native(torch.device("cpu")), "the installed wheel did not load its native library"
for cls in (SAM, GraphSAM):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    before = [p.detach().clone() for p in model.parameters()]
    opt = cls(model.parameters(), lr=0.1, rho=0.05)
    x, y = torch.randn(8, 4), torch.randn(8, 1)

    def closure():
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert opt.implementation == "fused", opt.implementation
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), f"{cls.__name__} changed nothing"
    print(f"check_wheel: {cls.__name__} fused step ok, {opt.closure_calls} closure calls, loss {float(loss):.4f}")
EOF

set +e
bench_out="$("$work/venv/bin/graphsam" bench 2>&1)"
bench_rc=$?
set -e
if [ "$bench_rc" != 2 ] || ! grep -q "no benchmarks directory" <<<"$bench_out"; then
  echo "check_wheel: expected 'graphsam bench' to fail with status 2 and a clear message, got $bench_rc:" >&2
  echo "$bench_out" >&2
  exit 1
fi
echo "check_wheel: graphsam bench without a benchmarks directory: $bench_out"

if [ "$train" = 1 ]; then
  "$work/venv/bin/graphsam" train --epochs 1 --seeds 1 --hidden 16 --layers 1 --heads 2 --edge-hidden 8 \
    --quiet --output-dir "$work/run/train"
  test -f "$work/run/train/results.json" || { echo "check_wheel: graphsam train wrote no results.json" >&2; exit 1; }
  echo "check_wheel: graphsam train (1 epoch, embedded data set) ok"
fi
echo "check_wheel: ok"
