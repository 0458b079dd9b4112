#!/usr/bin/env bash
# Runs the test suite. The whole-service tests also run against Debian's mosquitto broker, and
# the dashboard is tested in Debian's headless Chromium, so both are installed first when
# missing (as root, or through sudo). With arguments, only `cargo test` runs, with them
# (e.g. `scripts/test.sh --test api resilience::`).
set -euo pipefail

cd "$(dirname "$0")/.."

have_mosquitto() {
    command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || [ -x /usr/local/sbin/mosquitto ]
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo -n "$@"
    fi
}

if ! have_mosquitto; then
    if [ "$(id -u)" -ne 0 ] && ! { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; }; then
        echo "The tests need the mosquitto MQTT broker, which is not installed." >&2
        echo "Install it as root, then run this script again:" >&2
        echo "    sudo apt-get install -y mosquitto" >&2
        exit 1
    fi
    echo "Installing mosquitto (the whole-service tests run against it)..." >&2
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mosquitto
    if ! have_mosquitto; then
        echo "mosquitto is still not found after apt-get install" >&2
        exit 1
    fi
fi

if [ $# -eq 0 ]; then
    # The dashboard in a real browser, against the demo built from this tree.
    missing=()
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "Installing ${missing[*]} (the dashboard test drives headless Chromium from Node)..." >&2
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    cargo build --locked
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error && node --test)
fi

exec cargo test --locked "$@"
