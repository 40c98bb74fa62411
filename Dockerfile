# syntax=docker/dockerfile:1
# SyncKairos: a release build in a Rust image, run from a slim Debian image as
# a non-root user. protoc comes from the protoc-bin-vendored crate, so the
# build needs no system packages beyond the Rust image.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY migrations ./migrations
COPY src ./src
RUN cargo build --release --locked --bin synckairos \
 && cp target/release/synckairos /usr/local/bin/synckairos

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates=20250419~deb12u2 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home synckairos
COPY --from=build /usr/local/bin/synckairos /usr/local/bin/synckairos
USER 10001
# gRPC (SyncService, grpc.health.v1.Health, reflection). Set REDIS_URL for the
# redis engine (several replicas) and DATABASE_URL for the audit trail.
ENV SYNCKAIROS_LISTEN=0.0.0.0:50051 \
    SYNCKAIROS_LOG_FORMAT=json
EXPOSE 50051
# SIGTERM ends streams with UNAVAILABLE and drains calls within 5 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/synckairos"]
