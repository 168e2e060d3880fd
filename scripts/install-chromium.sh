#!/usr/bin/env bash
# Installs headless Chromium and ChromeDriver from Debian's packages, for the dashboard's
# browser test (scripts/browser-test.sh). Needs root (or sudo) and Debian's package mirrors.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  echo "chromium and chromedriver already installed: $(chromium --version 2>/dev/null | head -1)"
  exit 0
fi
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver
chromium --version
chromedriver --version
