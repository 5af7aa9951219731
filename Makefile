# Two commands for a fresh machine:  `make run`  and  `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR := /usr/share/datasets/fashion-mnist

.PHONY: run test setup data lint clean

$(BIN)/fashionlab: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[sweep,serve,export,dev]'
	touch $@

setup: $(BIN)/fashionlab

# Installs Debian's dataset-fashion-mnist when it is missing and we are allowed to (root, apt).
data:
	@if [ -z "$$FASHIONLAB_DATA" ] && [ ! -f $(DATA_DIR)/t10k-labels-idx1-ubyte.gz ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -qq dataset-fashion-mnist || \
	     (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) >/dev/null; \
	  else echo "note: Fashion-MNIST not found; run: sudo apt-get install dataset-fashion-mnist"; fi; \
	fi

run: setup data
	$(BIN)/fashionlab quickstart

test: setup data
	$(BIN)/python -m pytest -n 2 --dist loadgroup

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
