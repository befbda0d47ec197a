#!/usr/bin/env bash
# Runs the SDK-only guard against a real engine: its own nats-server on a
# free port, `mandate serve` on it, a mandate issued with the CLI, the guard
# started on it, then a revoke. Passes when the guard prints that the revoke
# cancelled it, and now denies, and exits 0. Everything it starts is stopped,
# and every temporary directory removed, on exit.
#
#   MANDATE_BIN     the built engine (default: <repo>/target/debug/mandate)
#   GUARD_BIN       the guard, built with --no-default-features --features client
#                   (default: <repo>/target/debug/examples/guard_only)
#   NATS_SERVER_BIN nats-server (default: /usr/sbin/nats-server)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
MANDATE_BIN="${MANDATE_BIN:-$root/target/debug/mandate}"
GUARD_BIN="${GUARD_BIN:-$root/target/debug/examples/guard_only}"
NATS_SERVER_BIN="${NATS_SERVER_BIN:-/usr/sbin/nats-server}"

say() { printf '[guard_only] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ -x "$MANDATE_BIN" ] || die "no engine binary at $MANDATE_BIN (cargo build --bin mandate, or set MANDATE_BIN)"
[ -x "$GUARD_BIN" ] || die "no guard at $GUARD_BIN (cargo build --no-default-features --features client --example guard_only)"
[ -x "$NATS_SERVER_BIN" ] || die "no nats-server at $NATS_SERVER_BIN (set NATS_SERVER_BIN)"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/mandate-guard-only.XXXXXX")"
nats_pid="" engine_pid="" guard_pid=""

stop() {
  local pid="$1"
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local status=$?
  stop "$guard_pid"; stop "$engine_pid"; stop "$nats_pid"
  if [ "$status" -ne 0 ]; then
    say "guard output:"; cat "$tmp/guard.log" >&2 2>/dev/null || true
    say "engine log (tail):"; tail -n 30 "$tmp/engine.log" >&2 2>/dev/null || true
  fi
  rm -rf "$tmp"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Polls `$@` every 0.1 s for up to 30 s.
until_true() {
  for _ in $(seq 300); do "$@" && return 0; sleep 0.1; done
  return 1
}

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
url="nats://127.0.0.1:$port"
say "nats-server on $url, then mandate serve"
"$NATS_SERVER_BIN" -a 127.0.0.1 -p "$port" -js -sd "$tmp/nats" >"$tmp/nats.log" 2>&1 &
nats_pid=$!
until_true bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null || die "nats-server did not listen on $port"
"$MANDATE_BIN" serve --nats "$url" --data "$tmp/data" --allow-open-tenants >"$tmp/engine.log" 2>&1 &
engine_pid=$!
cli() { "$MANDATE_BIN" --nats "$url" --tenant acme "$@"; }
until_true cli health >/dev/null 2>&1 || die "the engine did not answer health"

mandate="$(cli --actor principal:cfo --json issue --principal cfo --agent research-lead \
  --purpose "Guard only" --grant "finance:read on reports/**" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["mandate"])')"
say "issued $mandate; starting the guard"
"$GUARD_BIN" "$url" acme "$mandate" finance:read reports/q3 >"$tmp/guard.log" 2>&1 &
guard_pid=$!
until_true grep -q '^guarding' "$tmp/guard.log" || die "the guard did not start"
grep -q "^guarding $mandate: Active, finance:read on reports/q3: Allow$" "$tmp/guard.log" \
  || die "the guard did not allow within its mandate"

say "revoking $mandate"
cli --actor principal:cfo revoke "$mandate" --reason "guard-only check" >/dev/null
set +e
wait "$guard_pid"
guard_status=$?
set -e
guard_pid=""
cat "$tmp/guard.log"
[ "$guard_status" -eq 0 ] || die "the guard exited with $guard_status"
grep -q "^cancelled $mandate: Terminated(Revoked), finance:read on reports/q3: Deny$" "$tmp/guard.log" \
  || die "the guard did not report the revoke"
say "the revoke cancelled the guard"
