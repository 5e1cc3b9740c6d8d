# diji — `make test` and `make quickstart` each create/refresh a local virtualenv, install, and run.
#
# torch: on this reference machine we pin the CPU build (TORCH=torch==2.13.0). With a GPU/NPU, install
# your vendor's torch (and plugin, e.g. torch_npu) into .venv first, then run `make ... TORCH=` so the
# pin is skipped and your build is kept.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
EXTRAS ?= dev,fast,serve,hf,data,external,track,distill
PY := $(VENV)/bin/python
STAMP := $(VENV)/.diji-installed

.PHONY: install test test-slow quickstart lint clean

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ -n "$(TORCH)" ]; then $(PY) -m pip install -q "$(TORCH)"; fi
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

quickstart: $(STAMP)
	$(VENV)/bin/diji quickstart --out quickstart --overwrite $(if $(filter true,$(CI)),--fast,)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) quickstart runs .pytest_cache
