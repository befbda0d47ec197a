#!/usr/bin/env bash
# Runs the Python client against a real engine: its own nats-server on a free
# port, `mandate serve` on it, then mandate_client.py. Everything it starts is
# stopped, and every temporary directory removed, on exit.
#
#   PYTHON          interpreter with nats-py and jsonschema (default: python3)
#   MANDATE_BIN     the built engine (default: <repo>/target/debug/mandate)
#   NATS_SERVER_BIN nats-server (default: /usr/sbin/nats-server)
#
# Exits with the client's status (0 on success).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
MANDATE_BIN="${MANDATE_BIN:-$root/target/debug/mandate}"
NATS_SERVER_BIN="${NATS_SERVER_BIN:-/usr/sbin/nats-server}"

say() { printf '[run.sh] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ -x "$MANDATE_BIN" ] || die "no engine binary at $MANDATE_BIN (cargo build --bin mandate, or set MANDATE_BIN)"
[ -x "$NATS_SERVER_BIN" ] || die "no nats-server at $NATS_SERVER_BIN (set NATS_SERVER_BIN)"
"$PYTHON" -c 'import nats, jsonschema' 2>/dev/null \
  || die "$PYTHON lacks nats-py or jsonschema (pip install nats-py jsonschema, or set PYTHON)"

nats_dir="$(mktemp -d "${TMPDIR:-/tmp}/mandate-py-nats.XXXXXX")"
data_dir="$(mktemp -d "${TMPDIR:-/tmp}/mandate-py-data.XXXXXX")"
nats_pid=""
engine_pid=""

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
  stop "$engine_pid"
  stop "$nats_pid"
  if [ "$status" -ne 0 ]; then
    say "engine log (tail):"; tail -n 30 "$data_dir.log" >&2 2>/dev/null || true
    say "nats-server log (tail):"; tail -n 10 "$nats_dir.log" >&2 2>/dev/null || true
  fi
  rm -rf "$nats_dir" "$data_dir" "$nats_dir.log" "$data_dir.log"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
url="nats://127.0.0.1:$port"

say "starting nats-server on $url"
"$NATS_SERVER_BIN" -a 127.0.0.1 -p "$port" -js -sd "$nats_dir" >"$nats_dir.log" 2>&1 &
nats_pid=$!
up=""
for _ in $(seq 100); do
  kill -0 "$nats_pid" 2>/dev/null || die "nats-server exited"
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then up=1; break; fi
  sleep 0.1
done
[ -n "$up" ] || die "nats-server did not listen on $port within 10 s"

say "starting $MANDATE_BIN serve"
"$MANDATE_BIN" serve --nats "$url" --data "$data_dir" --allow-open-tenants >"$data_dir.log" 2>&1 &
engine_pid=$!

say "waiting for the health query to answer"
"$PYTHON" "$here/mandate_client.py" --nats "$url" --wait-health 15 >&2 \
  || die "the engine did not answer health within 15 s"
kill -0 "$engine_pid" 2>/dev/null || die "mandate serve exited"

say "running mandate_client.py"
set +e
"$PYTHON" "$here/mandate_client.py" --nats "$url"
status=$?
set -e
say "client exited with $status"
exit "$status"
