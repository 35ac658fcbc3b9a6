# graphsam-ext developer commands. Every target sets up what it needs from scratch.
PYTHON ?= python3
VENV := .venv
CUDA_VENV := .venv-cuda
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_CPU := torch==2.13.0
TORCH_CUDA := torch==2.14.1
export GRAPHSAM_DATA_DIR ?= $(abspath ../shared/data/moleculenet)

.PHONY: setup build test run bench bench-smoke bench-chemprop cuda-check cmake-check study clean

setup: $(VENV)/.ready

$(VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q $(TORCH_CPU)
	$(PIP) install -q pybind11 ninja numpy
	# the package in editable mode without native code; `build` compiles it in place (once)
	GRAPHSAM_EXT_BUILD_NATIVE=0 $(PIP) install -q --no-build-isolation -e ".[test]"
	touch $@

# incremental native rebuild (ninja) after editing csrc/
build: setup
	$(PY) setup.py -q build_ext --inplace

test: build
	GRAPHSAM_REQUIRE_NATIVE=1 $(PY) -m pytest -q tests

# the study's budget (40 epochs, early stop after 10 without improvement), two runs at once; sized
# for the two cores of the machine it is measured on (docs/model.md, "make run with these defaults")
RUN_BUDGET ?= --epochs 40 --patience 10
RUN_ARGS ?= --jobs 2
run: build
	$(VENV)/bin/graphsam compare $(RUN_BUDGET) $(RUN_ARGS)

bench: build
	$(PY) -m pytest benchmarks -q --benchmark-columns=min,median,mean,rounds --benchmark-sort=name $(BENCH_ARGS)

bench-smoke: build
	$(PY) -m pytest benchmarks -q --benchmark-disable -k "not study" $(BENCH_ARGS)

# chemprop's default D-MPNN (own venv .venv-chemprop, made when missing; never our dependency) beside
# `graphsam train` on identical splits; options in BENCH_CHEMPROP_ARGS (see docs/benchmarks.md)
bench-chemprop: build
	$(PY) scripts/bench_chemprop.py $(BENCH_CHEMPROP_ARGS)

# compile AND link the CUDA kernels against a CUDA build of torch (no GPU needed)
cuda-check:
	test -x $(CUDA_VENV)/bin/python || $(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/python -c "import torch, pybind11, ninja" 2>/dev/null || \
		$(CUDA_VENV)/bin/pip install -q $(TORCH_CUDA) pybind11 ninja numpy setuptools wheel
	GRAPHSAM_EXT_BUILD_CUDA=1 $(CUDA_VENV)/bin/python setup.py -q build_ext \
		--build-lib build/cuda-check/lib --build-temp build/cuda-check/tmp
	$(CUDA_VENV)/bin/python scripts/check_native_lib.py build/cuda-check/lib --expect-cuda

# the C++ build of the same sources against libtorch (for IDEs and C++ work)
cmake-check: setup
	mkdir -p build
	cmake -S . -B build/cmake -G Ninja -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" > build/cmake.log
	cmake --build build/cmake >> build/cmake.log
	$(PY) scripts/check_native_lib.py build/cmake

clean:
	rm -rf build graphsam_ext/_C*.so

# Lightning, chemprop and PyG integrations (tests/test_integrations_*.py) in their own venv with the
# versions they were tested with; the package is installed there editable, using the native library
# that `build` compiles in place against the same torch
INTEGRATIONS_VENV := .venv-integrations
INTEGRATION_PACKAGES := chemprop==2.3.1 lightning==2.6.6 torch_geometric==2.8.1 rdkit pytest numpy
.PHONY: test-integrations

$(INTEGRATIONS_VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(INTEGRATIONS_VENV)
	$(INTEGRATIONS_VENV)/bin/pip install -q --upgrade pip setuptools wheel
	$(INTEGRATIONS_VENV)/bin/pip install -q $(TORCH_CPU) $(INTEGRATION_PACKAGES)
	GRAPHSAM_EXT_BUILD_NATIVE=0 $(INTEGRATIONS_VENV)/bin/pip install -q --no-build-isolation --no-deps -e .
	touch $@

test-integrations: build $(INTEGRATIONS_VENV)/.ready
	GRAPHSAM_REQUIRE_NATIVE=1 $(INTEGRATIONS_VENV)/bin/python -m pytest -q tests/test_integrations_*.py
