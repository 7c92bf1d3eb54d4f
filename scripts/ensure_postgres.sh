#!/usr/bin/env bash
# Make sure the PostgreSQL server binaries that tests/support/pgserver.py needs exist.
#
# Exits 0 at once when initdb is on PATH or in /usr/lib/postgresql/*/bin (the places
# pgserver.py looks); otherwise installs the Debian/Ubuntu "postgresql" package with
# apt-get and checks again. Safe to run repeatedly. Fails loudly, never half-way quietly.
set -euo pipefail

# Overridable only so the script's own failure paths can be exercised.
pg_libdir=${ENSURE_POSTGRES_LIBDIR:-/usr/lib/postgresql}

log() { printf 'ensure_postgres: %s\n' "$*" >&2; }

find_initdb() {
    local candidate
    if candidate=$(command -v initdb 2>/dev/null); then
        printf '%s\n' "$candidate"
        return 0
    fi
    # Newest major version first, as pgserver.py prefers it.
    for candidate in $(ls -d "$pg_libdir"/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x "$candidate/initdb" && -x "$candidate/postgres" && -x "$candidate/pg_ctl" ]]; then
            printf '%s\n' "$candidate/initdb"
            return 0
        fi
    done
    return 1
}

if initdb=$(find_initdb); then
    log "found $initdb ($("$initdb" --version)); nothing to do"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    log "ERROR: initdb not found and apt-get is unavailable; install PostgreSQL server binaries by hand"
    exit 1
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        log "ERROR: initdb not found; installing needs root, and sudo is unavailable"
        exit 1
    fi
    sudo=(sudo)
fi

log "initdb not found; installing the postgresql package with apt-get"
if ! "${sudo[@]}" apt-get update -qq; then
    log "ERROR: apt-get update failed"
    exit 1
fi
if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; then
    log "ERROR: apt-get install postgresql failed"
    exit 1
fi

# The package starts a system cluster on port 5432; the tests never use it and start
# their own, so it is left as the package set it up.
if ! initdb=$(find_initdb); then
    log "ERROR: the postgresql package installed, but initdb is still not on PATH or in $pg_libdir/*/bin"
    exit 1
fi
log "installed $initdb ($("$initdb" --version))"
