# syntax=docker/dockerfile:1
# The analyzer image: one static binary (musl) on distroless/static, run as the
# image's non-root user. Build from the repository root: `make image`, or
#   docker build -f packaging/analyzer.Dockerfile -t canary-analyzer .
# The binary is both the service (`serve`, the default command) and the CLI
# (`status`, `register`, `wait`, ...), so `kubectl exec` can run the CLI in the pod.

FROM rust:1-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
# The toolchain file asks for the wasm32 target and the image's toolchain is enough
# for the native analyzer: build with what the image has instead of downloading.
RUN rm -f rust-toolchain.toml
# musl links statically by default; the analyzer's HTTP client has no TLS and so no
# C dependency. Caches keep rebuilds incremental.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release -p canary-analyzer --bin canary-analyzer \
    && cp target/release/canary-analyzer /canary-analyzer \
    && mkdir -p /state
# Fails the build if the binary is not static (it would not run on distroless/static).
RUN ! ldd /canary-analyzer 2>/dev/null | grep -q '=>'

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /canary-analyzer /usr/local/bin/canary-analyzer
# The state directory exists and belongs to the runtime user, so a fresh named
# volume mounted there (docker compose) is writable.
COPY --from=build --chown=65532:65532 /state /var/lib/canary-analyzer
ENV CANARY_ANALYZER_LISTEN=0.0.0.0:8080 \
    CANARY_ANALYZER_STATE_DIR=/var/lib/canary-analyzer
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/canary-analyzer"]
CMD ["serve"]
