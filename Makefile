# The two commands a newcomer needs:
#   make tutorial   executes every notebook in notebooks/ in order at the tiny preset (executed copies in
#                   executed/, figures in figures/)
#   make test       runs the test suite (notebooks included)
# Both create .venv and install pathkit into it when needed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pathkit-installed
XVFB := $(shell command -v xvfb-run 2>/dev/null)
XVFB_RUN := $(if $(XVFB),xvfb-run -a -s "-screen 0 1280x1024x24",)
PRESET ?= tiny

.PHONY: tutorial test test-fast benchmarks lint install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,viewer]"
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

lint: $(STAMP)
	$(BIN)/ruff check pathkit tests benchmarks

clean:
	rm -rf executed .pytest_cache
