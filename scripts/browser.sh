#!/usr/bin/env bash
# Make sure Debian's Chromium and its WebDriver are installed: the dashboard's browser
# test drives them headless. Nothing is downloaded from outside the Debian archive.
set -euo pipefail
cd "$(dirname "$0")/.."
LOGS=.stack/logs
mkdir -p "$LOGS"

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "browser: installing Debian's chromium and chromium-driver (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq > "$LOGS/apt-browser.log" 2>&1 \
    || { echo "browser: apt-get update failed; see $LOGS/apt-browser.log" >&2; exit 1; }
  apt-get install -y -qq --no-install-recommends chromium chromium-driver \
    >> "$LOGS/apt-browser.log" 2>&1 \
    || { echo "browser: apt-get install chromium chromium-driver failed; see $LOGS/apt-browser.log" >&2; exit 1; }
else
  echo "browser: chromium and chromedriver are missing: sudo apt-get install chromium chromium-driver" >&2
  exit 1
fi
