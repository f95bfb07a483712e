#!/usr/bin/env bash
# Put promtool (from Debian's prometheus package) at .venv/bin/promtool, for the test that checks the
# Grafana dashboard's PromQL. Needs no root: the package is downloaded and only promtool is extracted;
# nothing is installed system-wide and no Prometheus server is started. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=.venv/bin/promtool
if [ -x "$TARGET" ]; then
  echo "install-promtool: already installed: $("$TARGET" --version 2>&1 | head -1)" >&2
  exit 0
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && apt-get download -q prometheus >/dev/null 2>&1)
dpkg-deb -x "$WORK"/prometheus_*.deb "$WORK/root"
install -m 0755 "$WORK/root/usr/bin/promtool" "$TARGET"
echo "install-promtool: ready ($("$TARGET" --version 2>&1 | head -1))" >&2
