#!/usr/bin/env bash
# Install headless Chromium (Debian package chromium) for evaluation/screenshot.py, which renders the HTML
# evaluation report to a PNG, and for its test (tests/test_evaluation_html.py, marker "chromium").
# Idempotent: when the package is installed it does nothing. Runs as root, or through sudo when available.
set -euo pipefail

bash "$(dirname "$0")/apt-install.sh" install-chromium chromium
echo "install-chromium: ready ($(chromium --version 2>/dev/null | tail -n 1))" >&2
