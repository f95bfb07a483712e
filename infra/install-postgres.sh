#!/usr/bin/env bash
# Install PostgreSQL and the wal2json logical-decoding plugin (Debian packages) for the Postgres CDC
# connector and its tests. The tests start their own throwaway cluster (tests/postgres_server.py); this
# script only installs binaries. Idempotent: when both packages are installed it does nothing.
# Runs as root, or through sudo when it is available.
set -euo pipefail

PG_MAJOR=${PG_MAJOR:-15}
bash "$(dirname "$0")/apt-install.sh" install-postgres postgresql "postgresql-${PG_MAJOR}-wal2json"
echo "install-postgres: ready ($(/usr/lib/postgresql/"${PG_MAJOR}"/bin/postgres --version))" >&2
