#!/usr/bin/env bash
# Install Debian packages that are missing, idempotently: apt-install.sh LABEL PACKAGE...
# Does nothing when every package is installed. Runs as root, or through sudo when it is available.
# Used by install-postgres.sh and install-chromium.sh (which bootstrap.sh calls).
set -euo pipefail

LABEL=$1
shift

installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

missing=()
for package in "$@"; do
  installed "$package" || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "$LABEL: already installed: $*" >&2
  exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    echo "$LABEL: need root (or sudo) to install ${missing[*]}" >&2
    exit 1
  fi
fi

echo "$LABEL: installing ${missing[*]}" >&2
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Use-Pty=0 --no-install-recommends "${missing[@]}"
