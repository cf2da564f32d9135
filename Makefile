# On a fresh machine, `make matrix` and `make test` each do all set-up first (a virtual
# environment in .venv/ with the project, its extras and the example plugin installed).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install matrix test lint format clean

$(STAMP): pyproject.toml examples/stitch-family-plugin/pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,data,weights]'
	$(BIN)/pip install -q -e examples/stitch-family-plugin
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded default: offline, no flags (trains the base models on digits
# the first time and caches them in the zoo).
matrix: $(STAMP)
	$(BIN)/stitch matrix --sender timm:resnet18 --receiver timm:resnet34

# Two workers (one torch thread each) on the 2-core machine; a test file's tests stay together.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info
