# Set-up and the everyday commands. Each target installs what it needs into .venv first,
# so on a fresh machine `make demo` and `make test` are all there is to type.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1
STAMP := $(VENV)/.vdm_fast_installed
SOURCES := setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)

.PHONY: install demo test bench env clean

install: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "setuptools>=70" wheel ninja
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

clean:
	rm -rf build $(VENV) vdm_fast/_C*.so *.egg-info
