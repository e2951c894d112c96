#!/usr/bin/env bash
# Install the Postfix and Dovecot binaries that the interoperability tests (tests/interop) run
# as private, loopback-only instances.
#
# Only the programs are wanted: the system-wide services are never configured, started or
# enabled. While apt-get runs, a temporary policy-rc.d refuses every service start (exit 101);
# any policy-rc.d that was there before is put back afterwards, even when the install fails.
#
# Idempotent: when the binaries are already present the script only checks and exits.
# Needs root (it uses apt-get). Usage: bash .ci/install-mail-servers.sh
set -euo pipefail

PACKAGES=(postfix dovecot-core dovecot-pop3d)
# shellcheck source=lib/apt.sh
. "$(dirname "$0")/lib/apt.sh"

log() { printf 'install-mail-servers: %s\n' "$*"; }

have_binaries() {
    command -v postfix >/dev/null 2>&1 \
        && command -v dovecot >/dev/null 2>&1 \
        && command -v doveconf >/dev/null 2>&1 \
        && [ -x /usr/lib/dovecot/pop3 ] \
        && [ -x /usr/lib/dovecot/pop3-login ]
}

# A system-wide instance is one whose pid file, at the packages' default place, names a live
# process. We only look: nothing here stops processes by name.
system_instance_running() {
    local pidfile pid
    for pidfile in /var/spool/postfix/pid/master.pid /run/dovecot/master.pid; do
        [ -r "$pidfile" ] || continue
        pid=$(tr -dc '0-9' <"$pidfile")
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            log "a system-wide server is running (pid $pid from $pidfile)"
            return 0
        fi
    done
    return 1
}

versions() {
    printf 'postfix %s, dovecot %s' "$(postconf -d -h mail_version 2>/dev/null || echo '?')" \
        "$(dovecot --version 2>/dev/null | cut -d' ' -f1)"
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

# 'No configuration' makes the postfix package install without writing a main.cf.
debconf-set-selections <<'EOF'
postfix postfix/main_mailer_type select No configuration
postfix postfix/mailname string localhost
EOF

ensure_package_lists "${PACKAGES[@]}"

apt_install "${PACKAGES[@]}"

if ! have_binaries; then
    log "install finished but the postfix/dovecot binaries are still missing" >&2
    exit 1
fi

disable_at_boot postfix dovecot dovecot.socket

if system_instance_running; then
    if [ "$was_running" = yes ]; then
        # Someone runs these services on purpose; they do not clash with the tests' private
        # instances (own directories, own loopback ports), so leave them alone.
        log "note: a system-wide postfix/dovecot was already running before this script"
    else
        log "a system-wide postfix/dovecot started during the install despite policy-rc.d" >&2
        exit 1
    fi
fi

log "installed: $(versions); system services neither started nor enabled"
