# The README's two commands: `make demo` and `make test`. Both create and use .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, in its own pip call: the pinned wheel (CPU here, CUDA elsewhere).
	$(BIN)/pip install --quiet "torch==2.13.0"
	# The mesh extra (TetGen and meshio wheels, under 1 MB) so the tests cover volume meshes.
	$(BIN)/pip install --quiet -e ".[dev,mesh]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/siblings demo --out demo_out

# The layer contracts (pyproject.toml [tool.importlinter]) first, then the tests.
test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) demo_out build *.egg-info src/*.egg-info
