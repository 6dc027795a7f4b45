# Test-only stand-in for hashicorp/http-echo (no image can be pulled here): the static
# binary the Makefile's `test-images` builds from http-echo.rs. Context: target/image/http-echo.
FROM scratch
COPY http-echo /http-echo
USER 65532:65532
ENTRYPOINT ["/http-echo"]
