#!/usr/bin/env bash
# Headless Chromium and ChromeDriver for the web app's browser tests (tests/web/test_browser.py), from the
# system's packages (Debian/Ubuntu: chromium + chromium-driver). Does nothing when both are on PATH; asks for
# sudo when not root. Browsers that download themselves at run time are not used: they fail offline.
set -euo pipefail
if command -v chromium > /dev/null && command -v chromedriver > /dev/null; then
  exit 0
fi
if ! command -v apt-get > /dev/null; then
  echo "install-test-browser: no chromium/chromedriver on PATH and no apt-get to install them;" \
       "install Chromium and ChromeDriver with your package manager (the browser tests need both)" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
echo "install-test-browser: installing chromium and chromium-driver (Debian packages) for the browser tests"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver
