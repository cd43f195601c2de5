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
KSERVE_VENV ?= .venv-kserve
# The pinned stub generator (requirements/proto.txt), apart from .venv-test, which keeps protobuf 7.
PROTO_VENV ?= .venv-proto
# tests/client on protobuf 6.33.5 and grpcio 1.81.1, the oldest the client supports (requirements/pb6.txt).
PB6_VENV ?= .venv-pb6
IMAGE ?= attnserve:0.1.0
# The variant with the server's OpenVINO extra (docs/deployment.md, "The OpenVINO image").
OPENVINO_IMAGE ?= attnserve:0.1.0-openvino
# `make image` uses Docker when its engine answers, else podman (`--format docker` keeps the HEALTHCHECK).
CONTAINER_ENGINE ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo podman)
IMAGE_BUILD_FLAGS ?=

.PHONY: serve test proto proto-check lint install-serve install-test install-bench install-kserve install-proto install-pb6 container-tools image image-openvino bench clean

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
	$(TEST_VENV)/bin/python -m pip install --quiet -e client -e 'server[openvino]' -e export -r requirements/test.txt
	touch $@

install-test: $(TEST_VENV)/.installed-test

# The kserve SDK pins protobuf<7; the test venv runs protobuf 7 (the client runs on both), so the SDK gets a venv of its
# own; tests/deploy runs it only to check the InferenceService manifest against KServe's models.
$(KSERVE_VENV)/.installed-kserve: requirements/kserve.txt
	test -x $(KSERVE_VENV)/bin/python || $(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/python -m pip install --quiet -r requirements/kserve.txt
	touch $@

install-kserve: $(KSERVE_VENV)/.installed-kserve

$(PROTO_VENV)/.installed-proto: requirements/proto.txt
	test -x $(PROTO_VENV)/bin/python || $(PYTHON) -m venv $(PROTO_VENV)
	$(PROTO_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PROTO_VENV)/bin/python -m pip install --quiet -r requirements/proto.txt
	touch $@

install-proto: $(PROTO_VENV)/.installed-proto

# The server requires grpcio-health-checking/-reflection>=1.85.1, which need protobuf 7: it goes in
# without its dependencies, which requirements/pb6.txt lists (tests/ecosystem checks the two agree).
$(PB6_VENV)/.installed-pb6: client/pyproject.toml server/pyproject.toml requirements/pb6.txt
	test -x $(PB6_VENV)/bin/python || $(PYTHON) -m venv $(PB6_VENV)
	$(PB6_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PB6_VENV)/bin/python -m pip install --quiet -r requirements/pb6.txt
	$(PB6_VENV)/bin/python -m pip install --quiet --no-deps -e client -e server
	touch $@

install-pb6: $(PB6_VENV)/.installed-pb6

## container-tools: podman, buildah, runc and debootstrap for the container test (apt, as root; no-op when present)
container-tools:
	@if command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null; then \
		:; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc debootstrap; \
	else \
		echo "container-tools: podman, runc or debootstrap missing and not root: the container test will skip"; \
	fi

## test: set up .venv-test (all three packages + test tools) and run the whole suite, container test included;
## tests/ecosystem runs tests/client again in .venv-pb6 and installs the client next to tritonclient and kserve
test: install-test install-kserve install-proto install-pb6 container-tools
	$(TEST_VENV)/bin/python -m pytest $(PYTEST_ARGS)

## fuzz: the long fuzz tier, $(FUZZ_REQUESTS) requests of every RPC against real servers (`make test` runs a short one)
FUZZ_REQUESTS ?= 100000
.PHONY: fuzz
fuzz: install-test
	ATTNSERVE_FUZZ_REQUESTS=$(FUZZ_REQUESTS) $(TEST_VENV)/bin/python -m pytest tests/fuzz -m fuzz_long $(PYTEST_ARGS)

## lint: ruff and mypy over the whole tree
lint: install-test
	$(TEST_VENV)/bin/ruff check .
	$(TEST_VENV)/bin/mypy

## proto: regenerate the attnserve.v1 stubs (client/attnserve_client/pb) and the inference.* ones (server/attnserve_server/kserve/pb)
proto: install-proto
	$(PROTO_VENV)/bin/python proto/generate.py

proto-check: install-proto
	$(PROTO_VENV)/bin/python proto/generate.py --check

## image: build the server image ($(IMAGE)) with Docker, or podman where no Docker engine answers
image:
	$(CONTAINER_ENGINE) build $(if $(findstring podman,$(CONTAINER_ENGINE)),--format docker) \
		$(IMAGE_BUILD_FLAGS) -f docker/Dockerfile -t $(IMAGE) .

## image-openvino: the same image with OpenVINO for image models ($(OPENVINO_IMAGE)), pruned to what serving loads
image-openvino:
	$(CONTAINER_ENGINE) build $(if $(findstring podman,$(CONTAINER_ENGINE)),--format docker) \
		--build-arg 'SERVER_EXTRAS=[openvino]' $(IMAGE_BUILD_FLAGS) -f docker/Dockerfile -t $(OPENVINO_IMAGE) .

$(TEST_VENV)/.installed-bench: $(TEST_VENV)/.installed-test requirements/bench.txt
	$(TEST_VENV)/bin/python -m pip install --quiet -r requirements/bench.txt
	touch $@

install-bench: $(TEST_VENV)/.installed-bench

## bench: run the benchmarks (JSON on stdout, PNG plots in benchmarks/results)
bench: install-test install-bench
	$(TEST_VENV)/bin/python benchmarks/text_decode_latency.py
	$(TEST_VENV)/bin/python benchmarks/text_vs_ctranslate2.py
	$(TEST_VENV)/bin/python benchmarks/server_ttft.py
	$(TEST_VENV)/bin/python benchmarks/text_throughput.py
	$(TEST_VENV)/bin/python benchmarks/image_latency.py
	$(TEST_VENV)/bin/python benchmarks/kserve_overhead.py
	$(TEST_VENV)/bin/python benchmarks/auth_overhead.py
	$(TEST_VENV)/bin/python benchmarks/image_throughput.py
	$(TEST_VENV)/bin/python benchmarks/image_overload.py
	$(TEST_VENV)/bin/python benchmarks/openvino_speed.py
	$(TEST_VENV)/bin/python benchmarks/explain_latency.py

clean:
	rm -rf $(VENV) $(TEST_VENV) $(KSERVE_VENV) $(PROTO_VENV) $(PB6_VENV) .venv-ecosystem .pytest_cache .mypy_cache .ruff_cache
