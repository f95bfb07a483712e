#!/usr/bin/env bash
# Start the servers the tests use (Tansu Kafka broker, moto S3, PostgreSQL with wal2json) on loopback,
# print their endpoints and a tierflow.toml for them, and stop them all on Ctrl-C. See infra/local_stack.py.
#   bash infra/local-stack.sh [--workdir DIR] [--no-postgres] [--check]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
if [ ! -x "$PYTHON" ]; then
  echo "local-stack: $PYTHON not found; run bash infra/bootstrap.sh first (or set PYTHON)" >&2
  exit 2
fi
exec "$PYTHON" infra/local_stack.py "$@"
