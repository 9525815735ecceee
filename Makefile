# Set-up and the everyday commands. Each target installs what it needs into .venv first,
# so on a fresh machine `make demo` and `make test` are all there is to type.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1
STAMP := $(VENV)/.vdm_fast_installed
SOURCES := setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)

# The Python that holds torch on a GPU machine (make gpu-check builds in place with it; no venv).
GPU_PYTHON ?= python3

.PHONY: install demo test bench env gpu-check clean

install: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "setuptools>=77" wheel ninja
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip install -q -e ".[test]" --no-build-isolation
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vdm-fast demo

test: $(STAMP)
	$(PY) -m pytest tests -q -p no:cacheprovider -n $${TEST_JOBS:-2}

bench: $(STAMP)
	$(VENV)/bin/vdm-fast bench

env: $(STAMP)
	$(VENV)/bin/vdm-fast env

# On a machine with an NVIDIA GPU: build for it, run the CUDA and Triton tests and the GPU
# benchmarks, write benchmarks/RESULTS-gpu.json (tools/gpu_check.py; about 10 minutes on 16 cores).
gpu-check:
	$(GPU_PYTHON) tools/gpu_check.py

clean:
	rm -rf build dist $(VENV) $(VENV)-smoke vdm_fast/_C*.so *.egg-info
