# syntax=docker/dockerfile:1
# iot-bridge, device-sim and iot-certs in one small image.
#
#   docker build -t iot-bridge:dev .
#   docker compose up            (see docker-compose.yml)
#
# Build stage: the whole workspace is needed for Cargo to resolve it, but only the three
# binaries are built. The dashboard's files are embedded into iot-bridge at compile time.
FROM rust:1-bookworm AS build
WORKDIR /src
# Everything but what .dockerignore keeps out (target/, dev-certs/ with its private keys,
# node_modules/): Cargo needs every workspace member's sources to resolve the workspace.
COPY . .
# Cache mounts keep the registry and compiled dependencies between builds; the binaries are
# copied out because the target cache is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p iot-bridge -p device-sim -p iot-certs \
    && mkdir -p /out \
    && cp target/release/iot-bridge target/release/device-sim target/release/iot-certs /out/

# Runtime: glibc only. TLS is rustls with ring and our own CA, so no OpenSSL or system CA bundle.
FROM debian:bookworm-slim
COPY --from=build /out/ /usr/local/bin/
# Not root by default. docker-compose runs the containers as the user who made dev-certs/,
# because the private keys in it are readable by that user only.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin iot
USER 10001
EXPOSE 8443
CMD ["iot-bridge", "--help"]
