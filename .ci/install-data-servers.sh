#!/usr/bin/env bash
# Install the Redis and PostgreSQL binaries that the many-worker tests (tests/services,
# tests/test_many_workers.py, the chaos test) run as private, loopback-only instances.
#
# Only the programs are wanted: the system-wide services are never configured, started or
# enabled. While apt-get runs, a temporary policy-rc.d refuses every service start (exit 101);
# any policy-rc.d that was there before is put back afterwards, even when the install fails.
#
# Idempotent: when the binaries are already present the script only checks and exits.
# Needs root (it uses apt-get). Usage: bash .ci/install-data-servers.sh
set -euo pipefail

PACKAGES=(redis-server postgresql)
# shellcheck source=lib/apt.sh
. "$(dirname "$0")/lib/apt.sh"

log() { printf 'install-data-servers: %s\n' "$*"; }

# Debian keeps the PostgreSQL programs under /usr/lib/postgresql/<version>/bin.
pg_bindir() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ] && [ -x "$dir/pg_ctl" ]; then
            printf '%s\n' "$dir"
            return 0
        fi
    done
    return 1
}

have_binaries() {
    command -v redis-server >/dev/null 2>&1 && pg_bindir >/dev/null
}

# A system-wide instance is one whose pid file, at the packages' default place, names a live
# process. We only look: nothing here stops processes by name.
system_instance_running() {
    local pidfile pid
    for pidfile in /run/redis/redis-server.pid /var/run/postgresql/*.pid; do
        [ -r "$pidfile" ] || continue
        pid=$(head -n 1 "$pidfile" | tr -dc '0-9')
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            log "a system-wide server is running (pid $pid from $pidfile)"
            return 0
        fi
    done
    return 1
}

versions() {
    printf 'redis %s, postgresql %s' \
        "$(redis-server --version 2>/dev/null | sed -n 's/.*v=\([^ ]*\).*/\1/p')" \
        "$("$(pg_bindir)/postgres" --version 2>/dev/null | awk '{print $3}')"
}

if have_binaries; then
    log "already installed: $(versions)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root to install: ${PACKAGES[*]}" >&2
    exit 1
fi

was_running=no
if system_instance_running; then
    was_running=yes
fi

hold_services

ensure_package_lists "${PACKAGES[@]}"

apt_install "${PACKAGES[@]}"

if ! have_binaries; then
    log "install finished but the redis-server/postgresql binaries are still missing" >&2
    exit 1
fi

disable_at_boot redis-server postgresql

if system_instance_running; then
    if [ "$was_running" = yes ]; then
        # Someone runs these services on purpose; they do not clash with the tests' private
        # instances (own directories, own loopback ports), so leave them alone.
        log "note: a system-wide redis/postgresql was already running before this script"
    else
        log "a system-wide redis/postgresql started during the install despite policy-rc.d" >&2
        exit 1
    fi
fi

log "installed: $(versions); system services neither started nor enabled"
