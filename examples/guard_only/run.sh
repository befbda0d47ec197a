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
name=guard_only
# shellcheck source=../serve-helper.sh
. "$here/../serve-helper.sh"
GUARD_BIN="${GUARD_BIN:-$repo/target/debug/examples/guard_only}"
[ -x "$GUARD_BIN" ] || die "no guard at $GUARD_BIN (cargo build --no-default-features --features client --example guard_only)"

guard_pid=""
before_exit() {
  stop "$guard_pid"
  if [ "$1" -ne 0 ]; then
    say "guard output:"; cat "$tmp/guard.log" >&2 2>/dev/null || true
  fi
}

serve
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
