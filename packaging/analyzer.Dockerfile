# The analyzer image: two static binaries (musl) on an empty base, FROM scratch, run
# as a numeric non-root user. Nothing is pulled, so a machine without network access
# builds the same image as one with it. `make image` builds the binaries on the host
# (cargo, target x86_64-unknown-linux-musl) and stages them with an empty state
# directory under target/image/analyzer/, the build context:
#   docker build -f packaging/analyzer.Dockerfile -t canary-analyzer target/image/analyzer
#
# - canary-analyzer is the service (`serve`, the default command) and the CLI
#   (`status`, `register`, `wait`, ...), so `kubectl exec` can run the CLI in the pod.
#   Its https client (webhooks, Prometheus) carries its CA roots compiled in
#   (rustls with webpki-roots): there is no /etc/ssl in the image and none is needed.
# - canary-healthcheck asks the analyzer's /healthz from inside the container (there
#   is no curl or shell); HEALTHCHECK runs it. Podman keeps HEALTHCHECK only in the
#   Docker image format (`make image` passes --format docker to Podman).
FROM scratch
COPY canary-analyzer canary-healthcheck /usr/local/bin/
# The state directory exists and belongs to the runtime user, so a fresh named volume
# mounted there (compose) starts out writable by it.
COPY --chown=65532:65532 state/ /var/lib/canary-analyzer/
# NO_COLOR: logs go to `docker logs` / `kubectl logs`, not a terminal; without it
# every log line carries ANSI colour codes.
ENV CANARY_ANALYZER_LISTEN=0.0.0.0:8080 \
    CANARY_ANALYZER_STATE_DIR=/var/lib/canary-analyzer \
    NO_COLOR=1
# 65532: the `nonroot` user of distroless images, also in istio/analyzer.yaml's
# securityContext. No /etc/passwd is needed for a numeric user.
USER 65532:65532
EXPOSE 8080
# Every 10 s, 2 s to answer (the check's own timeouts are 2 s); opening a large state
# replays the audit log, so failures in the first 30 s do not count.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/canary-healthcheck"]
ENTRYPOINT ["/usr/local/bin/canary-analyzer"]
CMD ["serve"]
