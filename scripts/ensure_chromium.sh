#!/usr/bin/env bash
# Make sure headless Chromium is available for the Prefect UI tests (tests/support/browser.py).
#
# Exits 0 at once when chromium (or chromium-browser / google-chrome) is on PATH; otherwise
# installs Debian's "chromium" package with apt-get and checks again. Safe to run repeatedly.
# Fails loudly, never half-way quietly: the UI tests are not skipped when the browser is missing.
set -euo pipefail

log() { printf 'ensure_chromium: %s\n' "$*" >&2; }

find_chromium() {
    local name
    for name in chromium chromium-browser google-chrome google-chrome-stable; do
        if command -v "$name" >/dev/null 2>&1; then
            command -v "$name"
            return 0
        fi
    done
    return 1
}

describe() {
    # Debian's wrapper script prints a harmless "[: ... unexpected operator" on stderr.
    "$1" --version 2>/dev/null || echo "$1"
}

if browser=$(find_chromium); then
    log "found $browser ($(describe "$browser")); nothing to do"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    log "ERROR: chromium not found and apt-get is unavailable; install Chromium by hand"
    exit 1
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        log "ERROR: chromium not found; installing needs root, and sudo is unavailable"
        exit 1
    fi
    sudo=(sudo)
fi

log "chromium not found; installing the chromium package with apt-get"
if ! "${sudo[@]}" apt-get update -qq; then
    log "ERROR: apt-get update failed"
    exit 1
fi
if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; then
    log "ERROR: apt-get install chromium failed"
    exit 1
fi

if ! browser=$(find_chromium); then
    log "ERROR: the chromium package installed, but no chromium is on PATH"
    exit 1
fi
log "installed $browser ($(describe "$browser"))"
