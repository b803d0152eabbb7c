# The two commands a newcomer needs:
#   make tutorial   executes every notebook in notebooks/ in order at the tiny preset (executed copies in
#                   executed/, figures in figures/)
#   make test       runs the test suite (notebooks included)
# Both create .venv and install pathkit into it when needed, with every package at the version pinned in
# requirements.lock (the whole dependency tree of the CPU install; `make lock` rebuilds it).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pathkit-installed
XVFB := $(shell command -v xvfb-run 2>/dev/null)
XVFB_RUN := $(if $(XVFB),xvfb-run -a -s "-screen 0 1280x1024x24",)
PRESET ?= tiny
LOCK := requirements.lock
EXTRAS := dev,viewer
# The one pin the lock is solved under: the CPU build of torch (a range admitting a newer torch pulls CUDA).
TORCH_PIN := torch==2.13.0
LATEST := .venv-latest

.PHONY: tutorial test test-fast test-latest benchmarks lint install lock fingerprints clean

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(LOCK) -e ".[$(EXTRAS)]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)

tutorial: $(STAMP)
	$(BIN)/python -m pathkit.notebooks --preset $(PRESET) --out executed

test: $(STAMP)
	$(XVFB_RUN) $(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not notebooks and not viewer"

benchmarks: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

# requirements.lock: every package of the CPU install at one version, solved by uv from pyproject.toml's ranges
# with torch pinned. torch's CUDA-only dependencies (nvidia-*, triton, cuda-*) are left out: the CPU build does not
# need them, and on a GPU machine pip resolves them for the CUDA build (README: "On a GPU"). No index URL or host
# is written, so the lock installs from whatever index pip is set to.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv
	printf '%s\n' "$(TORCH_PIN)" > $(VENV)/torch-pin.txt
	$(BIN)/uv pip compile -q pyproject.toml --extra dev --extra viewer -c $(VENV)/torch-pin.txt \
	  --python-version 3.11 --no-header --no-annotate -o $(VENV)/lock-full.txt
	PYTHONPATH=. $(BIN)/python -m pathkit.lockfile $(VENV)/lock-full.txt --out $(LOCK) --environment environment.yml

# The newest versions pyproject.toml allows (torch kept at its CPU pin), in a separate venv, then the suite:
# drift shows here first. If it passes, `make lock` moves the lock forward to what it installed.
test-latest:
	test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager "$(TORCH_PIN)" -e ".[$(EXTRAS)]"
	$(LATEST)/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(LATEST)/bin/python -m pip freeze --exclude-editable > $(LATEST)/installed.txt
	PATHKIT_UNLOCKED=1 $(XVFB_RUN) $(LATEST)/bin/python -m pytest -q $(PYTEST_ARGS)

# Rewrite tests/fingerprints.json from the generators' current output (after a deliberate change to them).
fingerprints: $(STAMP)
	PATHKIT_REFRESH_FINGERPRINTS=1 $(BIN)/python -m pytest -q tests/test_fingerprints.py

lint: $(STAMP)
	$(BIN)/ruff check pathkit tests benchmarks

clean:
	rm -rf executed .pytest_cache $(LATEST)
