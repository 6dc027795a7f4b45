# The filter as an OCI image in the layout Istio's WasmPlugin pulls (`url: oci://...`),
# the *compat* variant of the Wasm image specification: one layer, a gzipped tar
# holding the module as /plugin.wasm, nothing else. Istio reads the last layer of an
# image with media type application/vnd.oci.image.layer.v1.tar+gzip (OCI manifest,
# what Podman builds) or application/vnd.docker.image.rootfs.diff.tar.gzip (Docker
# manifest, what `docker build` makes) and takes the file named plugin.wasm from it.
# tests/tests/containers.rs checks both manifests of the built image. Build with
# `make wasm-image`, which builds the module first and uses its directory as the context:
#   docker build -f packaging/wasm.Dockerfile -t canary-filter target/wasm32-wasip1/wasm-release
FROM scratch
COPY canary_filter.wasm /plugin.wasm
