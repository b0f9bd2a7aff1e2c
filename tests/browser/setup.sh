#!/bin/sh
# Installs what tests/test_notebooks_browser.py needs: Debian's chromium, Node.js with npm, and
# playwright-core (pinned in package-lock.json; it drives the system chromium, it downloads no browser).
# Idempotent: does nothing that is already done. apt-get needs root (CI runs as root).
set -eu
cd "$(dirname "$0")"

missing=""
[ -x /usr/bin/chromium ] || missing="$missing chromium"
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "browser test: please install$missing (apt-get install -y$missing)" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
fi

if [ ! -d node_modules/playwright-core ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
fi
