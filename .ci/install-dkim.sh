#!/usr/bin/env bash
# Install OpenDKIM, the independent verifier the DKIM tests (tests/test_dkim.py) check our
# signatures with: `opendkim -t` runs the milter's own verification on a message file.
#
# Only the programs are wanted: the system-wide opendkim service is never configured,
# started or enabled. While apt-get runs, a temporary policy-rc.d refuses every service
# start (exit 101); any policy-rc.d that was there before is put back afterwards, even when
# the install fails.
#
# Idempotent: when the binaries are already present the script only checks and exits.
# Needs root (it uses apt-get). Usage: bash .ci/install-dkim.sh
set -euo pipefail

PACKAGES=(opendkim opendkim-tools)
# shellcheck source=lib/apt.sh
. "$(dirname "$0")/lib/apt.sh"

log() { printf 'install-dkim: %s\n' "$*"; }

have_binaries() {
    command -v opendkim >/dev/null 2>&1 && command -v opendkim-testkey >/dev/null 2>&1
}

version() {
    opendkim -V 2>/dev/null | head -n 1 || echo '?'
}

# A system-wide instance is one whose pid file, at the package's default place, names a
# live process. We only look: nothing here stops processes by name.
system_instance_running() {
    local pidfile=/run/opendkim/opendkim.pid pid
    [ -r "$pidfile" ] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        log "a system-wide opendkim is running (pid $pid from $pidfile)"
        return 0
    fi
    return 1
}

if have_binaries; then
    log "already installed: $(version)"
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
    log "install finished but the opendkim binaries are still missing" >&2
    exit 1
fi

disable_at_boot opendkim

if system_instance_running; then
    if [ "$was_running" = yes ]; then
        log "note: a system-wide opendkim was already running before this script"
    else
        log "a system-wide opendkim started during the install despite policy-rc.d" >&2
        exit 1
    fi
fi

log "installed: $(version); system service neither started nor enabled"
