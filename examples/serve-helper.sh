# shellcheck shell=bash
# Sourced by examples/guard_only/run.sh and examples/python/run.sh: a
# nats-server of their own on a free port and `mandate serve` on it, both
# stopped, and the temporary directory `$tmp` removed, on exit.
#
# The sourcing script sets `name` (the prefix of what it says) first, may
# redefine `before_exit STATUS` (run first on exit: to stop what it started
# itself and show its output on failure), then calls `serve`, which sets
# `url`; `cli ARGS...` runs the mandate CLI against it, in tenant acme.
#
#   MANDATE_BIN     the built engine (default: <repo>/target/debug/mandate)
#   NATS_SERVER_BIN nats-server (default: /usr/sbin/nats-server)

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MANDATE_BIN="${MANDATE_BIN:-$repo/target/debug/mandate}"
NATS_SERVER_BIN="${NATS_SERVER_BIN:-/usr/sbin/nats-server}"

say() { printf '[%s] %s\n' "$name" "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ -x "$MANDATE_BIN" ] || die "no engine binary at $MANDATE_BIN (cargo build --bin mandate, or set MANDATE_BIN)"
[ -x "$NATS_SERVER_BIN" ] || die "no nats-server at $NATS_SERVER_BIN (set NATS_SERVER_BIN)"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/mandate-$name.XXXXXX")"
nats_pid="" engine_pid="" url=""

# Stops process $1, if any: TERM, then KILL after 5 s; reaps it.
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

before_exit() { :; }

cleanup() {
  local status=$?
  before_exit "$status"
  stop "$engine_pid"; stop "$nats_pid"
  if [ "$status" -ne 0 ] && [ -n "$nats_pid" ]; then
    say "engine log (tail):"; tail -n 30 "$tmp/engine.log" >&2 2>/dev/null || true
    say "nats-server log (tail):"; tail -n 10 "$tmp/nats.log" >&2 2>/dev/null || true
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

cli() { "$MANDATE_BIN" --nats "$url" --tenant acme "$@"; }

# Starts nats-server on a free port, then `mandate serve` on it, and waits
# until the engine answers `health`.
serve() {
  local port
  port="$("${PYTHON:-python3}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
  url="nats://127.0.0.1:$port"
  say "nats-server on $url, then mandate serve"
  "$NATS_SERVER_BIN" -a 127.0.0.1 -p "$port" -js -sd "$tmp/nats" >"$tmp/nats.log" 2>&1 &
  nats_pid=$!
  until_true bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null || die "nats-server did not listen on $port"
  "$MANDATE_BIN" serve --nats "$url" --data "$tmp/data" --allow-open-tenants >"$tmp/engine.log" 2>&1 &
  engine_pid=$!
  until_true cli health >/dev/null 2>&1 || die "the engine did not answer health"
}
