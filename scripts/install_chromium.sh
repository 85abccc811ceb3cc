#!/usr/bin/env bash
# Installs headless Debian chromium for tests/test_report.py (real-browser check).
# No-op when /usr/bin/chromium already exists. Needs root (or sudo) and apt access.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium
test -x /usr/bin/chromium
