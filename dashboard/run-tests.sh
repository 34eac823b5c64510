#!/usr/bin/env bash
# Dashboard tests: JavaScript unit tests (node --test), then the browser tests in headless
# Chromium against a real bridge + Mosquitto + simulated fleet.
#
# Installs what is missing: node packages (npm ci), Chromium and Mosquitto (Debian packages);
# builds the Rust binaries the browser tests start. Screenshots and process logs go to
# dashboard/test-results/. Exits non-zero when anything fails.
#
# Usage: dashboard/run-tests.sh [unit|e2e|all]   (default: all)
set -euo pipefail
cd "$(dirname "$0")"
what=${1:-all}

log() { printf '\n==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "need root to run: $*" >&2; return 1; fi
}

apt_updated=0
need_pkg() { # need_pkg COMMAND PACKAGE...
    local cmd=$1; shift
    if ! command -v "$cmd" >/dev/null 2>&1; then
        log "installing $* (missing $cmd)"
        if [ "$apt_updated" -eq 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    fi
}

need_pkg node nodejs
need_pkg npm npm

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
    log "npm ci"
    npm ci --no-audit --no-fund
fi

if [ "$what" = unit ] || [ "$what" = all ]; then
    log "dashboard unit tests"
    node --test test/*.test.js
fi

if [ "$what" = e2e ] || [ "$what" = all ]; then
    need_pkg mosquitto mosquitto
    if [ -z "${CHROMIUM_PATH:-}" ] && [ ! -x /usr/bin/chromium ]; then
        need_pkg chromium chromium fonts-dejavu-core
    fi

    # The bridge embeds dashboard/public/ at build time (its build script watches the folder).
    # scripts/test runs `cargo test --workspace` first, which builds these binaries already
    # (with the test feature set, so a plain `cargo build` here would rebuild half the tree).
    if [ -z "${IOT_BINARIES_BUILT:-}" ]; then
        log "cargo build (the binaries the browser tests start)"
        (cd .. && cargo build --locked -p iot-bridge -p device-sim -p iot-certs)
    fi

    log "dashboard browser tests"
    mkdir -p test-results
    node --test e2e/*.test.js
fi

log "dashboard tests passed"
