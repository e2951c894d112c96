#!/usr/bin/env bash
# Install the extra mail servers that the interoperability tests (tests/interop) run as
# private, loopback-only instances beside Postfix and Dovecot:
#
#   * OpenSMTPD and Exim, unpacked from their Debian packages into $PREFIX, NOT installed.
#     Debian's MTA packages conflict with each other (installing opensmtpd removes postfix,
#     Exim's removes both), so the packages are fetched with `apt-get download` and
#     extracted with `dpkg -x`. Only their shared libraries are installed with apt.
#     OpenSMTPD looks for its helpers in /usr/libexec/opensmtpd and keeps its queue in
#     /var/spool/smtpd (both compiled in), and runs as the users opensmtpd and opensmtpq;
#     this script provides those. Exim needs nothing outside $PREFIX: the tests give it its
#     own exim_user, spool_directory, log_file_path and exim_path.
#   * GNU Mailutils' pop3d, installed normally (mailutils-pop3d does not pull in an MTA).
#
# No system service is configured, started or enabled: nothing unpacked is registered with
# dpkg or systemd, and while apt-get runs a temporary policy-rc.d refuses every service
# start (exit 101); a policy-rc.d that was there before is put back afterwards.
#
# Idempotent: when everything is in place the script only checks and exits.
# Needs root. Usage: bash .ci/install-extra-servers.sh
set -euo pipefail

PREFIX=/opt/mailhandlers-mtas
OPENSMTPD_LIBEXEC=/usr/libexec/opensmtpd
OPENSMTPD_SPOOL=/var/spool/smtpd
OPENSMTPD_CHROOT=/var/lib/opensmtpd/empty
UNPACKED=(opensmtpd exim4-daemon-light)
INSTALLED=(mailutils-pop3d)
# shellcheck source=lib/apt.sh
. "$(dirname "$0")/lib/apt.sh"

log() { printf 'install-extra-servers: %s\n' "$*"; }

smtpd_binary() { printf '%s/opensmtpd/usr/sbin/smtpd' "$PREFIX"; }
exim_binary() { printf '%s/exim4-daemon-light/usr/sbin/exim4' "$PREFIX"; }

have_everything() {
    [ -x "$(smtpd_binary)" ] \
        && [ -x "$(exim_binary)" ] \
        && [ -x "$OPENSMTPD_LIBEXEC/mail.maildir" ] \
        && [ -d "$OPENSMTPD_CHROOT" ] \
        && [ -d "$OPENSMTPD_SPOOL" ] \
        && id opensmtpd >/dev/null 2>&1 \
        && id opensmtpq >/dev/null 2>&1 \
        && command -v pop3d >/dev/null 2>&1 \
        && getent passwd Debian-exim >/dev/null \
        && [[ "$("$(smtpd_binary)" -h 2>&1 || true)" == *usage:* ]] \
        && "$(exim_binary)" -C /dev/null -bV >/dev/null 2>&1
}

versions() {
    printf 'opensmtpd %s, exim %s, mailutils pop3d %s' \
        "$(cat "$PREFIX/opensmtpd/VERSION" 2>/dev/null || echo '?')" \
        "$("$(exim_binary)" -C /dev/null -bV 2>/dev/null | awk 'NR == 1 {print $3}')" \
        "$(pop3d --version 2>/dev/null | awk 'NR == 1 {print $NF}')"
}

if have_everything; then
    log "already installed: $(versions)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root to install ${UNPACKED[*]} (unpacked) and ${INSTALLED[*]}" >&2
    exit 1
fi

hold_services
workdir=$(mktemp -d)
trap '_restore_policy; rm -rf "$workdir"' EXIT

ensure_package_lists "${UNPACKED[@]}" "${INSTALLED[@]}"

# The shared libraries the unpacked binaries link against: only lib* packages among the
# direct dependencies, so no MTA (and nothing that conflicts with Postfix) comes along.
libraries=()
for pkg in "${UNPACKED[@]}"; do
    while read -r dep; do
        libraries+=("$dep")
    done < <(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
        --no-replaces --no-enhances "$pkg" | awk '$1 == "Depends:" && $2 ~ /^lib/ {print $2}')
done
mapfile -t libraries < <(printf '%s\n' "${libraries[@]}" | sort -u)
log "installing ${INSTALLED[*]} and libraries: ${libraries[*]}"
# Simulate first: refuse to go on if apt would remove anything (postfix, say).
if apt-get install -s -q --no-install-recommends "${INSTALLED[@]}" "${libraries[@]}" \
    | grep -q '^Remv '; then
    log "apt-get would remove packages to install ${INSTALLED[*]}; refusing" >&2
    exit 1
fi
apt_install "${INSTALLED[@]}" "${libraries[@]}"

# Unpack (not install) the MTAs, each into its own directory below $PREFIX.
mkdir -p "$PREFIX"
chmod 0755 "$PREFIX"
for pkg in "${UNPACKED[@]}"; do
    # Fetched as root into our private directory (not apt's sandbox user, who cannot write it).
    (cd "$workdir" && apt-get download -q -o APT::Sandbox::User=root "$pkg")
    deb=$(ls "$workdir/${pkg}"_*.deb)
    rm -rf "${PREFIX:?}/$pkg.new"
    dpkg -x "$deb" "$PREFIX/$pkg.new"
    dpkg-deb -f "$deb" Version >"$PREFIX/$pkg.new/VERSION"
    rm -rf "${PREFIX:?}/$pkg"
    mv "$PREFIX/$pkg.new" "$PREFIX/$pkg"
    log "unpacked $pkg $(cat "$PREFIX/$pkg/VERSION") into $PREFIX/$pkg"
done
# OpenSMTPD: helpers where the binary looks for them, its users, chroot and spool.
mkdir -p "$OPENSMTPD_LIBEXEC"
cp -a "$PREFIX/opensmtpd/usr/libexec/opensmtpd/." "$OPENSMTPD_LIBEXEC/"
for name in opensmtpd opensmtpq; do
    getent group "$name" >/dev/null || addgroup --system --quiet "$name"
    id "$name" >/dev/null 2>&1 || adduser --system --quiet --home "$OPENSMTPD_CHROOT" \
        --no-create-home --disabled-password --ingroup "$name" "$name"
done
mkdir -p "$OPENSMTPD_CHROOT" "$OPENSMTPD_SPOOL"
chmod 0755 "$OPENSMTPD_CHROOT"
chown root:root "$OPENSMTPD_SPOOL"
chmod 0711 "$OPENSMTPD_SPOOL"
# smtpctl must be setgid opensmtpq (the package does this with dpkg-statoverride).
chgrp opensmtpq "$PREFIX/opensmtpd/usr/sbin/smtpctl"
chmod 2755 "$PREFIX/opensmtpd/usr/sbin/smtpctl"

# Exim looks up its compiled-in user (Debian-exim) before it reads any configuration, so
# that account must exist even though the tests run Exim as another exim_user. This is
# the account exim4-base's maintainer script would create.
if ! getent passwd Debian-exim >/dev/null; then
    adduser --system --group --quiet --home /var/spool/exim4 --no-create-home \
        --disabled-login --force-badname Debian-exim
fi

disable_at_boot mailutils-pop3d

if ! have_everything; then
    log "install finished but a binary, user or directory is still missing" >&2
    exit 1
fi
log "installed: $(versions); system services neither started nor enabled"
