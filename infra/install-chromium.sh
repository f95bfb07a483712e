#!/usr/bin/env bash
# Install headless Chromium (Debian package chromium) for evaluation/screenshot.py, which renders the HTML
# evaluation report to a PNG, and for its test (tests/test_evaluation_html.py, marker "chromium").
# Idempotent: when the package is installed it does nothing. Runs as root, or through sudo when available.
set -euo pipefail

PACKAGE=chromium

installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

if installed "$PACKAGE"; then
  echo "install-chromium: already installed: $PACKAGE" >&2
  exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    echo "install-chromium: need root (or sudo) to install $PACKAGE" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-chromium: installing $PACKAGE" >&2
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Use-Pty=0 --no-install-recommends "$PACKAGE"
echo "install-chromium: ready ($(chromium --version 2>/dev/null | tail -n 1))" >&2
