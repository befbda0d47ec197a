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
PYTHON="${PYTHON:-python3}"
name=python
# shellcheck source=../serve-helper.sh
. "$here/../serve-helper.sh"
"$PYTHON" -c 'import nats, jsonschema' 2>/dev/null \
  || die "$PYTHON lacks nats-py or jsonschema (pip install nats-py jsonschema, or set PYTHON)"

serve
say "the Python client waits for the health query to answer"
"$PYTHON" "$here/mandate_client.py" --nats "$url" --wait-health 15 >&2 \
  || die "the engine did not answer health within 15 s"

say "running mandate_client.py"
set +e
"$PYTHON" "$here/mandate_client.py" --nats "$url"
status=$?
set -e
say "client exited with $status"
exit "$status"
