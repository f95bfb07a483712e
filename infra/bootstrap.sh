#!/usr/bin/env bash
# Set up tierflow on a fresh machine: a virtualenv at ./.venv with the project and its test tools.
# Idempotent: a second run only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $PYTHON" >&2
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
# torch first and pinned: on this kind of machine 2.13.0 is a CPU build served from local disk; letting
# sentence-transformers pull torch would fetch a multi-GB CUDA build instead.
"${PIP[@]}" install "torch==2.13.0"
# The rest, pinned by infra/constraints.txt (the versions CI runs with).
"${PIP[@]}" install -c infra/constraints.txt -e ".[dev]"
# PostgreSQL + wal2json (Debian packages) for the Postgres CDC connector's tests; needs root or sudo.
if ! bash infra/install-postgres.sh; then
  echo "bootstrap: could not install PostgreSQL/wal2json; the Postgres CDC tests will skip (and fail under CI)" >&2
fi
# Headless Chromium (Debian package) renders the HTML evaluation report to a PNG in the tests.
if ! bash infra/install-chromium.sh; then
  echo "bootstrap: could not install chromium; the report screenshot test will skip (and fail under CI)" >&2
fi
# promtool (from Debian's prometheus package, extracted without root) checks the Grafana dashboard's PromQL.
if ! bash infra/install-promtool.sh; then
  echo "bootstrap: could not fetch promtool; the dashboard PromQL test will skip (and fail under CI)" >&2
fi
echo "bootstrap: ready ($(.venv/bin/python -c 'import torch, faiss, apache_beam; print(f"torch {torch.__version__}, faiss {faiss.__version__}, beam {apache_beam.__version__}")'))" >&2
