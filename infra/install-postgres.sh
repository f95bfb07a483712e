#!/usr/bin/env bash
# Install PostgreSQL and the wal2json logical-decoding plugin (Debian packages) for the Postgres CDC
# connector and its tests. The tests start their own throwaway cluster (tests/postgres_server.py); this
# script only installs binaries. Idempotent: when both packages are installed it does nothing.
# Runs as root, or through sudo when it is available.
set -euo pipefail

PG_MAJOR=${PG_MAJOR:-15}
PACKAGES=(postgresql "postgresql-${PG_MAJOR}-wal2json")

installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

missing=()
for package in "${PACKAGES[@]}"; do
  installed "$package" || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-postgres: already installed: ${PACKAGES[*]}" >&2
  exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    echo "install-postgres: need root (or sudo) to install ${missing[*]}" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-postgres: installing ${missing[*]}" >&2
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Use-Pty=0 --no-install-recommends "${missing[@]}"
echo "install-postgres: ready ($(/usr/lib/postgresql/"${PG_MAJOR}"/bin/postgres --version))" >&2
