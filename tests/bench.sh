#!/usr/bin/env bash
# The issue-4 benchmarks in one run (not part of the test suite): a private
# redis-server on a free port, three release replicas on free ports, the load
# generator against them; everything is stopped at the end. The replicas'
# rate limits are set far above any load here, so they are checked on every
# call (their cost is in the figures) but never refuse one.
#   tests/bench.sh                 # all modes
#   tests/bench.sh breakdown flags # only these
#   tests/bench.sh watch           # WatchSessions fan-out over 10000 sessions; its RSS vs 10000 Subscribes
#   tests/bench.sh auth            # SwitchCycle: open mode vs an API key vs play tokens
#   AUTH_ROUNDS=5 tests/bench.sh auth  # more rounds of it
#   tests/bench.sh observe         # SwitchCycle with metrics + traces on (E) beside off (A), /metrics scrape time
#   OBSERVE_ROUNDS=5 tests/bench.sh observe
#   BENCH_BIN=/some/dir tests/bench.sh  # binaries built elsewhere (A/B runs)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/synckairos-target}"
if [ -n "${BENCH_BIN:-}" ]; then
  R="$BENCH_BIN"
else
  cargo build --release --locked --bins >&2
  R="$CARGO_TARGET_DIR/release"
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

redis_port="$(free_port)"
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/dev/null &
redis_pid=$!
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; kill "$redis_pid" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
ports=()
for _ in 1 2 3; do
  p="$(free_port)"; ports+=("$p")
  REDIS_URL="redis://127.0.0.1:$redis_port" SYNCKAIROS_LISTEN="127.0.0.1:$p" RUST_LOG=warn \
    SYNCKAIROS_CREATE_RATE=10000000 SYNCKAIROS_MUTATION_RATE=10000000 "$R/synckairos" &
  pids+=($!)
done
sleep 2
A="127.0.0.1:${ports[0]}"; B="127.0.0.1:${ports[1]}"; C="127.0.0.1:${ports[2]}"
# The server's own CPU per call, beside the load generator's figures: its
# utime+stime over 5 s in the middle of the run, divided by the calls of
# those 5 s (the run's rate). (This VM's perf counts no instructions; the
# `auth-cost` mode of the load generator times authentication alone.)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz="$(getconf CLK_TCK)"
switch_cpu() { # server-pid, load generator args...
  local pid="$1"; shift
  local out; out="$(mktemp)"
  "$R/synckairos-load" switch --seconds 10 "$@" > "$out" &
  local load=$!
  sleep 4
  local t1; t1="$(ticks "$pid")"; sleep 5; local t2; t2="$(ticks "$pid")"
  wait "$load"
  local rate; rate="$(sed -n 's/.* \([0-9]*\)\/s,.*/\1/p' "$out")"
  printf '%s | server CPU %s us/call\n' "$(cat "$out")" \
    "$(awk -v d=$((t2 - t1)) -v hz="$hz" -v r="${rate:-0}" 'BEGIN { if (r > 0) printf "%.1f", d / hz / 5 * 1e6 / r; else print "?" }')"
  rm -f "$out"
}
want() { [ -z "$MODES" ] || [[ " $MODES " == *" $1 "* ]]; }
MODES="$*"
if want breakdown; then echo "== breakdown (one call in flight)"
"$R/synckairos-load" breakdown --target "$A" --redis "redis://127.0.0.1:$redis_port" --seconds 5; fi
if want time; then echo "== GetServerTime at 64 in flight"
"$R/synckairos-load" time --target "$A" --concurrency 64 --seconds 5; fi
if want switch; then echo "== SwitchCycle at 64 in flight over 1000 sessions"
execs() { redis-cli -p "$redis_port" info commandstats | sed -n 's/^cmdstat_exec:calls=\([0-9]*\).*/\1/p'; }
before="$(execs)"
"$R/synckairos-load" switch --target "$A" --sessions 1000 --concurrency 64 --seconds 10
echo "EXECs during the run (warm-up and set-up included): $(( $(execs) - ${before:-0} ))"; fi
if want fanout; then echo "== fan-out: switch on A, 1000 streams on B"
"$R/synckairos-load" fanout --target "$A" --subscribe-target "$B" --sessions 100 --streams 1000 --rate 200 --seconds 10; fi
if want watch; then echo "== watch: switch on A, one WatchSessions over 10000 sessions on B; RSS of it on B vs 10000 Subscribe streams on C"
"$R/synckairos-load" watch --target "$A" --watch-target "$B" --watch-pid "${pids[1]}" --subscribe-target "$C" --subscribe-pid "${pids[2]}" --sessions 10000 --rate 200 --seconds 10; fi
if want flood; then echo "== flood: switch on A, 20 streams on B, without and then with 2000 Subscribe/s to missing ids on B"
"$R/synckairos-load" subscribe-flood --target "$A" --subscribe-target "$B" --sessions 20 --rate 200 --flood-rate 2000 --seconds 10; fi
if want auth; then echo "== auth: SwitchCycle at 64 in flight over 1000 sessions, open mode (A, and B as a control) beside a replica with keys (D), ${AUTH_ROUNDS:-2} rounds in turn"
keys_dir="$(mktemp -d)"
secret="sk-bench-0123456789abcdef"
signer="$(printf 'bench-signer-secret-0123456789ab' | base64)"
printf '[[key]]\nid = "bench"\ntenant = "bench"\nrole = "admin"\nsha256 = "%s"\n\n[[signer]]\nkid = "bench-kid"\ntenant = "bench"\nhs256 = "%s"\n' \
  "$(printf '%s' "$secret" | sha256sum | cut -d' ' -f1)" "$signer" > "$keys_dir/keys.toml"
p="$(free_port)"
REDIS_URL="redis://127.0.0.1:$redis_port" SYNCKAIROS_LISTEN="127.0.0.1:$p" RUST_LOG=warn \
  SYNCKAIROS_CREATE_RATE=10000000 SYNCKAIROS_MUTATION_RATE=10000000 \
  SYNCKAIROS_API_KEYS_FILE="$keys_dir/keys.toml" "$R/synckairos" &
D_pid=$!
pids+=("$D_pid")
sleep 2
D="127.0.0.1:$p"
A_pid="${pids[0]}"; B_pid="${pids[1]}"
# B is a second open-mode replica: the control (how far two identical
# replicas differ here), beside A (open) and D (keys).
rounds="${AUTH_ROUNDS:-2}"   # more rounds, steadier medians (this machine is noisy)
for _ in $(seq "$rounds"); do
  switch_cpu "$A_pid" --target "$A" --sessions 1000 --concurrency 64
  echo "(control, open mode on B) $(switch_cpu "$B_pid" --target "$B" --sessions 1000 --concurrency 64)"
  switch_cpu "$D_pid" --target "$D" --sessions 1000 --concurrency 64 --api-key "$secret"
  switch_cpu "$D_pid" --target "$D" --sessions 1000 --concurrency 64 --api-key "$secret" --token "bench-kid:$signer"
done
echo "== auth: one call in flight (its p50), open mode (A, B) beside keys (D), $rounds rounds in turn"
for _ in $(seq "$rounds"); do
  switch_cpu "$A_pid" --target "$A" --sessions 64 --concurrency 1 --connections 1
  echo "(control, open mode on B) $(switch_cpu "$B_pid" --target "$B" --sessions 64 --concurrency 1 --connections 1)"
  switch_cpu "$D_pid" --target "$D" --sessions 64 --concurrency 1 --connections 1 --api-key "$secret"
  switch_cpu "$D_pid" --target "$D" --sessions 64 --concurrency 1 --connections 1 --api-key "$secret" --token "bench-kid:$signer"
done
echo "== auth: what authenticating one call costs, in this process"
"$R/synckairos-load" auth-cost
rm -rf "$keys_dir"; fi
if want flags; then echo "== flags: 10000 deadlines within one second over three replicas"
"$R/synckairos-load" flags --target "$A,$B,$C" --sessions 10000 --spread-ms 1000 --concurrency 64 --connections 2; fi
if want observe; then echo "== observe: SwitchCycle at 64 in flight over 1000 sessions, metrics and traces off (A, and B as a control) beside both on (E: SYNCKAIROS_METRICS_LISTEN, OTLP to a local sink, default sampling), ${OBSERVE_ROUNDS:-3} rounds in turn"
sink_log="$(mktemp)"
python3 tests/python/otlp_sink.py > "$sink_log.port" 2> "$sink_log" &
sink_pid=$!
pids+=("$sink_pid")
sleep 1
sink_port="$(head -n 1 "$sink_log.port")"
p="$(free_port)"; mp="$(free_port)"
REDIS_URL="redis://127.0.0.1:$redis_port" SYNCKAIROS_LISTEN="127.0.0.1:$p" RUST_LOG=warn \
  SYNCKAIROS_CREATE_RATE=10000000 SYNCKAIROS_MUTATION_RATE=10000000 \
  SYNCKAIROS_METRICS_LISTEN="127.0.0.1:$mp" OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$sink_port" \
  "$R/synckairos" &
E_pid=$!
pids+=("$E_pid")
sleep 2
E="127.0.0.1:$p"
for _ in $(seq "${OBSERVE_ROUNDS:-3}"); do
  echo "(off, A) $(switch_cpu "${pids[0]}" --target "$A" --sessions 1000 --concurrency 64)"
  echo "(off, control B) $(switch_cpu "${pids[1]}" --target "$B" --sessions 1000 --concurrency 64)"
  echo "(on, E) $(switch_cpu "$E_pid" --target "$E" --sessions 1000 --concurrency 64)"
done
echo "== observe: /metrics scrape time on E with 10000 live sessions and 1000 open streams"
used() { redis-cli -p "$redis_port" info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p'; }
keys() { redis-cli -p "$redis_port" dbsize; }
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
m0="$(used)"; k0="$(keys)"
"$R/synckairos-load" switch --target "$E" --sessions 10000 --concurrency 64 --seconds 3 >/dev/null
m1="$(used)"; k1="$(keys)"
echo "Redis memory: $(( (m1 - m0) / 10000 )) bytes per session ($(( k1 - k0 )) keys for 10000 sessions created and switched for 3 s; used_memory $m0 -> $m1)"
r0="$(rss "$E_pid")"
"$R/synckairos-load" fanout --target "$E" --subscribe-target "$E" --sessions 100 --streams 1000 --rate 200 --seconds 15 > /dev/null &
fan=$!
sleep 8
r1="$(rss "$E_pid")"
echo "replica E RSS: ${r0} kB before the 1000 streams, ${r1} kB with them open ($(( (r1 - r0) * 1024 / 1000 )) bytes per stream, the load's sessions and buffers included)"
streams="$(curl -s "127.0.0.1:$mp/metrics" | sed -n 's/^synckairos_streams_open \(.*\)/\1/p')"
times="$(for _ in $(seq 20); do curl -s -o /dev/null -w '%{time_total}\n' "127.0.0.1:$mp/metrics"; done | sort -n)"
size="$(curl -s "127.0.0.1:$mp/metrics" | wc -c)"
echo "streams open during the scrapes: $streams; body $size bytes; 20 scrapes: median $(echo "$times" | sed -n 10p) s, max $(echo "$times" | tail -n 1) s"
wait "$fan"
kill "$sink_pid" 2>/dev/null; wait "$sink_pid" 2>/dev/null || true
cat "$sink_log"; rm -f "$sink_log" "$sink_log.port"; fi
