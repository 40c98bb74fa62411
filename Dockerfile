# syntax=docker/dockerfile:1
# SyncKairos: a release build in a Rust image, run from a slim Debian image as
# a non-root user. protoc comes from the protoc-bin-vendored crate, so the
# build needs no system packages beyond the Rust image.
#
#   docker build -t synckairos .
#   docker run -p 50051:50051 synckairos                  # memory engine, one replica
#   docker compose -f docs/deploy/compose.yaml up --build # Redis, PostgreSQL, 3 replicas
#
# Checked by tests/run.sh (hadolint) and tests/api/deploy_files.rs (what a
# linter cannot see: the HEALTHCHECK command, the user, the binary's name,
# the dependency layer). Docker itself does not run on the project's machines.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src

# 1. The dependency layer: the manifest, the lock, the build script and the
# proto it compiles, with empty sources. This layer (every dependency built
# in release) is reused by every build until Cargo.toml, Cargo.lock, build.rs
# or the proto change; a change to src/ rebuilds only the crate itself.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --bin synckairos \
 && rm -rf src

# 2. The crate. COPY keeps the files' own times, which may be older than the
# empty sources' build above: touch them, or cargo would keep that build.
COPY migrations ./migrations
COPY src ./src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin synckairos \
 && cp target/release/synckairos /usr/local/bin/synckairos

FROM debian:bookworm-slim
# ca-certificates is not pinned: Debian replaces a stable release's package
# versions with each point release and security update (a pinned version
# disappears from the archive and the build breaks), and the newest root
# certificates are what a TLS client wants anyway.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 synckairos \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin synckairos
COPY --from=build /usr/local/bin/synckairos /usr/local/bin/synckairos
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001

# gRPC (SyncService, grpc.health.v1.Health, reflection) and, on the same
# port, HTTP/1.1 GET /health and /ready. It listens on SYNCKAIROS_LISTEN,
# else on 0.0.0.0:$PORT when the platform sets PORT (Railway does), else on
# 0.0.0.0:50051: so SYNCKAIROS_LISTEN is deliberately not set here.
# Prometheus /metrics on 9090. Set REDIS_URL for the redis engine (several
# replicas) and DATABASE_URL for the audit trail.
ENV SYNCKAIROS_LOG_FORMAT=json \
    SYNCKAIROS_METRICS_LISTEN=0.0.0.0:9090
EXPOSE 50051 9090

# The probe is the binary itself (src/healthcheck.rs): grpc.health.v1 Check
# on the port the server listens on, over TLS when SYNCKAIROS_TLS_CERT is
# set; exit 0 SERVING, 1 otherwise. Its own timeout (2 s) is inside Docker's.
# The start period covers start-up (connecting to Redis, migrating Postgres).
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["/usr/local/bin/synckairos", "healthcheck"]

# Shutdown: on SIGTERM the replica turns not ready at once (health
# NOT_SERVING, /ready 503), keeps serving for SYNCKAIROS_PRESTOP_DELAY
# (default 1 s) so load balancers move away, then stops accepting, ends
# Subscribe streams with UNAVAILABLE, lets unary calls finish, and flushes
# the audit; all of it within SYNCKAIROS_SHUTDOWN_GRACE (default 5 s). That
# must stay below the orchestrator's own grace, after which it sends SIGKILL:
# Docker's `docker stop` waits 10 s (compose: stop_grace_period), Kubernetes
# 30 s (terminationGracePeriodSeconds), Railway's drainingSeconds
# (railway.toml). Raise those first when raising SYNCKAIROS_SHUTDOWN_GRACE.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/synckairos"]
