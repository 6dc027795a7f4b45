# The filter as an OCI image in the layout Istio's WasmPlugin pulls (`url: oci://...`):
# an image with one layer holding the module at /plugin.wasm, nothing else. Build
# with `make wasm-image`, which builds the module first and uses its directory as
# the context:
#   docker build -f packaging/wasm.Dockerfile -t canary-filter target/wasm32-wasip1/wasm-release
FROM scratch
COPY canary_filter.wasm /plugin.wasm
