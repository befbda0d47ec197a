#!/usr/bin/env bash
# The Python package's checks: installs mandate-guard (with its test extras)
# into the given virtualenv, runs `mypy --strict` on it, then the pytest
# suite against its own nats-server and `mandate serve` (started and stopped
# by the suite). Creates nothing outside that virtualenv and temporary dirs.
#
#   PYTHON          a virtualenv's python (required: packages go there)
#   MANDATE_BIN     the built engine (default: <repo>/target/debug/mandate)
#   NATS_SERVER_BIN nats-server (default: /usr/sbin/nats-server)
#
# Extra arguments go to pytest (e.g. -k revoke).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
say() { printf '[python] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ -n "${PYTHON:-}" ] || die "set PYTHON to a virtualenv's python (python3 -m venv .ci-cache/venv)"
# A relative path is made absolute (not resolved: a venv's python is a
# symlink), as the checks below run from another directory.
case "$PYTHON" in /*) ;; */*) PYTHON="$PWD/$PYTHON" ;; esac
"$PYTHON" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' \
  || die "$PYTHON is not in a virtualenv: this script installs packages, and only into one"
export MANDATE_BIN="${MANDATE_BIN:-$repo/target/debug/mandate}"
export NATS_SERVER_BIN="${NATS_SERVER_BIN:-/usr/sbin/nats-server}"
case "$MANDATE_BIN" in /*) ;; *) MANDATE_BIN="$PWD/$MANDATE_BIN" ;; esac
case "$NATS_SERVER_BIN" in /*) ;; */*) NATS_SERVER_BIN="$PWD/$NATS_SERVER_BIN" ;; esac
[ -x "$MANDATE_BIN" ] || die "no engine binary at $MANDATE_BIN (cargo build --bin mandate, or set MANDATE_BIN)"
[ -x "$NATS_SERVER_BIN" ] || die "no nats-server at $NATS_SERVER_BIN (set NATS_SERVER_BIN)"

say "pip install $here[test] (into $("$PYTHON" -c 'import sys; print(sys.prefix)'))"
"$PYTHON" -m pip install --disable-pip-version-check -q "$here[test]"

say "mypy --strict on the package"
(cd "$here" && "$PYTHON" -m mypy --strict src/mandate_guard)

say "pytest against $("$NATS_SERVER_BIN" --version) and $MANDATE_BIN"
cd "$here"
exec "$PYTHON" -m pytest -p no:cacheprovider -q "$@"
