# Shared by the .ci/install-*.sh scripts (sourced, not run): installing Debian packages
# for the tests without ever starting or enabling their system-wide services.
#
# The sourcing script sets `set -euo pipefail` and defines `log`. It calls
# `hold_services` before apt runs: a policy-rc.d that refuses every service start stays
# in place until the script exits, then whatever policy-rc.d was there before comes back,
# even when the install fails.

POLICY=/usr/sbin/policy-rc.d
export PATH="$PATH:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive

_policy_backup=""
_restore_policy() {
    if [ -n "$_policy_backup" ]; then
        mv -f "$_policy_backup" "$POLICY"
    else
        rm -f "$POLICY"
    fi
}

# Refuse every service start (exit 101) until the calling script exits.
hold_services() {
    if [ -e "$POLICY" ]; then
        _policy_backup=$(mktemp "${POLICY}.saved.XXXXXX")
        cp -p "$POLICY" "$_policy_backup"
    fi
    trap _restore_policy EXIT
    printf '#!/bin/sh\n# Installed by %s: start no services.\nexit 101\n' \
        "$(basename "$0")" >"$POLICY"
    chmod 0755 "$POLICY"
}

# Run `apt-get update` only when the package lists do not know every package named.
ensure_package_lists() {
    local pkg version
    for pkg in "$@"; do
        version=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
        if [ -z "$version" ] || [ "$version" = "(none)" ]; then
            log "package lists do not know $pkg: running apt-get update"
            apt-get update -q
            return 0
        fi
    done
}

# Install the packages named, keeping any configuration files already there.
apt_install() {
    log "installing $*"
    apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}

# Maintainer scripts enable their services for the next boot even when policy-rc.d
# refuses to start them now; take that back for the services named. Each mechanism is
# tried because which one applies depends on how the machine boots.
disable_at_boot() {
    local service unit
    for service in "$@"; do
        unit=$service
        case "$unit" in *.*) service=${unit%.*} ;; *) unit="$unit.service" ;; esac
        if command -v systemctl >/dev/null 2>&1; then
            systemctl disable "$unit" >/dev/null 2>&1 || true
        fi
        if command -v deb-systemd-helper >/dev/null 2>&1; then
            deb-systemd-helper disable "$unit" >/dev/null 2>&1 || true
        fi
        if [ -e "/etc/init.d/$service" ]; then
            update-rc.d "$service" disable >/dev/null 2>&1 || true
        fi
    done
}
