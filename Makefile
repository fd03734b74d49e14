# Two entry points for a fresh clone: `make demo` and `make test`.
# Each creates .venv, installs wm with pinned versions, then runs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench-embed datasets mlserver clean

# Fashion-MNIST (the benchmarks' data): Debian's dataset-fashion-mnist, installed
# when missing and apt-get is usable (CI runs as root); otherwise a note, and the
# tests that need it skip saying why. $WM_DATA_DIR/fashion-mnist/ also counts.
FMNIST_SYSTEM := /usr/share/datasets/fashion-mnist
FMNIST_FILES  := train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte

# MLServer (a real Open Inference Protocol server, as deployed with a custom runtime) for
# tests/verifier/test_mlserver.py, in a venv of its own: its pins (starlette < 0.47, fastapi)
# clash with wm's. Built when missing and the package index is reachable; otherwise a note,
# and those tests skip saying why. $WM_MLSERVER_VENV points the tests at another one.
MLSERVER_VENV := .venv-mlserver

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP) datasets
	$(BIN)/wm demo --out demo-out

datasets:
	@have() { for f in $(FMNIST_FILES); do [ -f "$$1/$$f.gz" ] || [ -f "$$1/$$f" ] || return 1; done; }; \
	if have "$${WM_DATA_DIR:-/nonexistent}/fashion-mnist" || have $(FMNIST_SYSTEM); then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -q dataset-fashion-mnist || \
	  { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; } || \
	  echo "note: could not install dataset-fashion-mnist; Fashion-MNIST tests will skip"; \
	else \
	  echo "note: Fashion-MNIST is missing and apt-get is not usable here (not root):"; \
	  echo "      apt-get install dataset-fashion-mnist, or set WM_DATA_DIR; its tests will skip"; \
	fi

mlserver:
	@[ -f $(MLSERVER_VENV)/.installed ] && exit 0; \
	{ test -x $(MLSERVER_VENV)/bin/python || $(PYTHON) -m venv $(MLSERVER_VENV); } && \
	$(MLSERVER_VENV)/bin/python -m pip install --quiet -c constraints-mlserver.txt mlserver torch && \
	touch $(MLSERVER_VENV)/.installed || \
	echo "note: could not install MLServer in $(MLSERVER_VENV); its tests will skip"

test: $(STAMP) datasets mlserver
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench-embed: $(STAMP)
	$(BIN)/python -m benchmarks.embed

clean:
	rm -rf $(VENV) $(MLSERVER_VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
