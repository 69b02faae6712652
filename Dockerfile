# syntax=docker/dockerfile:1
# rust-app: multi-stage build. Dependencies are compiled in their own layer (cargo-chef), so a source change
# rebuilds only the workspace crates. The runtime image is Debian slim with the binary, its shared libraries
# (OpenSSL for librdkafka), CA certificates and curl for the HEALTHCHECK, running as an unprivileged user.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS chef
# librdkafka is built from source (rdkafka's bundled build): a C toolchain, make, zlib and OpenSSL headers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev make pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --package app --recipe-path recipe.json
COPY . .
# SQLx's migrations are embedded at compile time; no database is needed to build.
RUN cargo build --release --locked --package app --bin rust-app

FROM debian:bookworm-slim AS runtime
# The version is the workspace's (Cargo.toml): `rust-app --version`, the image tag and the default
# OTEL_SERVICE_VERSION agree (a test checks this label and the manifests' tags against it).
LABEL org.opencontainers.image.title="rust-app" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 rust-app \
    && useradd --system --uid 10001 --gid rust-app --no-create-home --shell /usr/sbin/nologin rust-app
COPY --from=builder /src/target/release/rust-app /usr/local/bin/rust-app
USER 10001:10001
ENV APP_HOST=0.0.0.0 \
    APP_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["curl", "--fail", "--silent", "--show-error", "http://127.0.0.1:8080/livez"]
# Exec form: rust-app is PID 1 and receives SIGTERM itself (graceful shutdown within SHUTDOWN_TIMEOUT).
ENTRYPOINT ["/usr/local/bin/rust-app"]
CMD ["serve"]
