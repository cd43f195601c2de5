# attnserve: the two newcomer commands are `make serve` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
TEST_VENV ?= .venv-test
HOST ?= 127.0.0.1
PORT ?= 50051
MODELS ?= models
PYTEST_ARGS ?=
# torch is pinned: a looser spec can pull a multi-GB CUDA build.
TORCH_SPEC := torch==2.13.0

.PHONY: serve test proto proto-check lint install-serve install-test bench clean

$(VENV)/.installed-serve: client/pyproject.toml server/pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e client -e server
	touch $@

install-serve: $(VENV)/.installed-serve

## serve: set up .venv (client + server) and serve ./models on $(HOST):$(PORT)
serve: install-serve
	$(VENV)/bin/attnserve-server --model-repository $(MODELS) --host $(HOST) --port $(PORT)

$(TEST_VENV)/.installed-test: client/pyproject.toml server/pyproject.toml export/pyproject.toml requirements/test.txt
	test -x $(TEST_VENV)/bin/python || $(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TEST_VENV)/bin/python -m pip install --quiet $(TORCH_SPEC)
	$(TEST_VENV)/bin/python -m pip install --quiet -e client -e server -e export -r requirements/test.txt
	touch $@

install-test: $(TEST_VENV)/.installed-test

## test: set up .venv-test (all three packages + test tools) and run the whole suite
test: install-test
	$(TEST_VENV)/bin/python -m pytest $(PYTEST_ARGS)

## lint: ruff and mypy over the whole tree
lint: install-test
	$(TEST_VENV)/bin/ruff check .
	$(TEST_VENV)/bin/mypy

## proto: regenerate the attnserve.v1 stubs in client/attnserve_client/pb
proto: install-test
	$(TEST_VENV)/bin/python proto/generate.py

proto-check: install-test
	$(TEST_VENV)/bin/python proto/generate.py --check

## bench: run the benchmarks (JSON on stdout, PNG plots in benchmarks/results)
bench: install-test
	$(TEST_VENV)/bin/python benchmarks/text_decode_latency.py
	$(TEST_VENV)/bin/python benchmarks/server_ttft.py
	$(TEST_VENV)/bin/python benchmarks/text_throughput.py
	$(TEST_VENV)/bin/python benchmarks/image_latency.py

clean:
	rm -rf $(VENV) $(TEST_VENV) .pytest_cache .mypy_cache .ruff_cache
