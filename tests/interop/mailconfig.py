"""Configuration files for the private Postfix and Dovecot of :mod:`.mailstack`.

Each function renders one file from a :class:`Layout`, the paths and settings of one
stack. Nothing here touches the disk or starts a process, so the files can be read
(and reviewed) on their own.

Choices worth knowing when reading test results:

* Listeners bind only ``Layout.host`` (a loopback address); Postfix runs no port-25
  listener and no smtp/lmtp/local delivery agents; every transport except
  ``virtual`` is ``error``, so nothing is ever relayed and no DNS lookup is made.
* ``smtpd_error_sleep_time = 0`` and ``in_flow_delay = 0`` keep refusals fast.
* Dovecot: ``auth_failure_delay = 0`` removes the 2 s delay on failed logins, but
  Dovecot still flushes failures on a 500 ms timer, so a wrong password is answered
  after up to half a second. The growing per-address penalty is switched off by
  giving anvil's penalty socket mode 0, so repeated failures stay that fast.
* Dovecot 2.3 treats a connection as secured when client and server address are
  equal, so from 127.0.0.1 to 127.0.0.1 it allows USER/PASS before STLS despite
  ``disable_plaintext_auth = yes``. A stack on another loopback address (say
  127.0.0.2, with clients connecting from 127.0.0.1) enforces TLS before login.
* The ``plain`` listener is shaped like a domain's inbound MX on port 25: no TLS
  required (STARTTLS offered), no AUTH, and mail only for the stack's own domain.
* The ``accepting`` listener is submission that takes mail for unknown local
  recipients; virtual(8) then bounces it (5.1.1), so the sender gets a delivery
  status notification (and, with ``NOTIFY=SUCCESS``, one for each delivery).
* Users in ``Layout.locked_sessions`` get ``pop3_lock_session = yes`` (through
  passwd-file userdb fields): a second POP3 login waits up to Dovecot's fixed 10 s
  for the first session to end, then gets ``-ERR [IN-USE]``. Everyone else may
  have any number of concurrent sessions, which is Dovecot's default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "SASL_MECHANISMS",
    "Layout",
    "dovecot_conf",
    "dovecot_oauth2_conf",
    "dovecot_passwd",
    "dovecot_sasl_conf",
    "postfix_full_mailboxes",
    "postfix_main_cf",
    "postfix_master_cf",
    "postfix_virtual_mailboxes",
]

FULL_MAILBOX_REPLY = "552 5.2.2 Mailbox is over its size limit"
NO_RELAY = "error:5.7.1 this test server never sends mail off the machine"


@dataclass(frozen=True)
class Layout:
    """Where one stack keeps its files, and the settings its configuration needs."""

    root: Path
    host: str
    domain: str
    users: Mapping[str, str]
    full_mailboxes: frozenset[str]
    mail_uid: int
    mail_gid: int
    message_size_limit: int
    limited_message_size: int
    instance_name: str  # also in the greetings, to recognise our own servers
    ports: Mapping[str, int] = field(default_factory=dict)
    locked_sessions: frozenset[str] = frozenset()
    milters: str = ""  # smtpd_milters, e.g. "inet:127.0.0.1:8891"; empty for none
    # Dovecot's high-performance mode: login and pop3 processes serve many sessions.
    reuse_processes: bool = False

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def mail(self) -> Path:
        return self.root / "mail"

    @property
    def tls_cert(self) -> Path:
        return self.root / "tls" / "server-chain.pem"

    @property
    def tls_key(self) -> Path:
        return self.root / "tls" / "server-key.pem"

    @property
    def sasl_socket(self) -> Path:
        return self.root / "sasl" / "auth"

    @property
    def dovecot(self) -> Path:
        return self.root / "dovecot"

    @property
    def postfix_etc(self) -> Path:
        return self.root / "postfix" / "etc"

    @property
    def postfix_spool(self) -> Path:
        return self.root / "postfix" / "spool"

    @property
    def postfix_data(self) -> Path:
        return self.root / "postfix" / "data"

    def address(self, user: str) -> str:
        return f"{user}@{self.domain}"


def dovecot_passwd(layout: Layout) -> str:
    """Dovecot passwd-file: ``user:{PLAIN}password``, empty fields, then extra fields.

    The extra fields of a ``locked_sessions`` user switch on the POP3 session lock.
    """
    lines = []
    for name, pw in sorted(layout.users.items()):
        extra = "userdb_pop3_lock_session=yes" if name in layout.locked_sessions else ""
        lines.append(f"{name}:{{PLAIN}}{pw}::::::{extra}\n")
    return "".join(lines)


def _login_processes(layout: Layout) -> str:
    # Dovecot's default forks a pop3-login process per connection (and a pop3 process
    # per session): about 9 ms of CPU per session here. A server that many sync
    # workers log into runs the documented high-performance mode instead.
    if not layout.reuse_processes:
        return ""
    return "  service_count = 0\n  process_min_avail = 2\n"


def _pop3_processes(layout: Layout) -> str:
    if not layout.reuse_processes:
        return ""
    # All mailboxes share one uid, so one pop3 process may serve them in turn.
    return "service pop3 {\n  service_count = 0\n}\n"


def dovecot_conf(layout: Layout) -> str:
    """A self-contained ``dovecot.conf`` (nothing from the system's is included)."""
    log = layout.logs / "dovecot.log"
    uid, gid, mail = layout.mail_uid, layout.mail_gid, layout.mail
    return f"""\
# Written by MailStack: a private, loopback-only POP3 server for one test session.
protocols = pop3
listen = {layout.host}
base_dir = {layout.dovecot / "run"}
state_dir = {layout.dovecot / "state"}
instance_name = {layout.instance_name}
login_greeting = {layout.instance_name} ready.
log_path = {log}
info_log_path = {log}
debug_log_path = {log}
auth_verbose = yes

ssl = yes
ssl_cert = <{layout.tls_cert}
ssl_key = <{layout.tls_key}
# USER/PASS and AUTH PLAIN only once TLS is on (but see equal addresses, above).
disable_plaintext_auth = yes

auth_mechanisms = plain login
# "alice" and "alice@<domain>" both log in as alice.
auth_username_format = %Ln
auth_failure_delay = 0
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
last_valid_gid = {gid}
mail_location = maildir:{mail}/%u
mail_max_userip_connections = 100

passdb {{
  driver = passwd-file
  args = scheme=PLAIN {layout.dovecot / "users"}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={mail}/%u
}}

service pop3-login {{
{_login_processes(layout)}  inet_listener pop3 {{
    address = {layout.host}
    port = {layout.ports["pop3"]}
  }}
  inet_listener pop3s {{
    address = {layout.host}
    port = {layout.ports["pop3s"]}
    ssl = yes
  }}
}}
{_pop3_processes(layout)}# Postfix asks this socket to check SMTP AUTH.
service auth {{
  unix_listener {layout.sasl_socket} {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
# The auth process cannot open anvil's penalty socket, so it applies no penalty.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""


def postfix_main_cf(layout: Layout) -> str:
    """``main.cf`` of the private Postfix; listener details are in master.cf."""
    etc = layout.postfix_etc
    return f"""\
# Written by MailStack: a private, loopback-only Postfix for one test session.
compatibility_level = 3.6
queue_directory = {layout.postfix_spool}
data_directory = {layout.postfix_data}
mail_owner = postfix
setgid_group = postdrop
maillog_file = {layout.logs / "postfix.log"}
maillog_file_prefixes = {layout.logs}

myhostname = mx.{layout.domain}
mydomain = {layout.domain}
myorigin = $mydomain
mydestination =
local_recipient_maps =
relay_domains =
# Postfix requires inet_interfaces to name addresses of an interface, and 127.0.0.1
# is the one lo has; the listeners in master.cf bind layout.host explicitly.
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = {layout.host}/32

# Nothing leaves this machine, and nothing is looked up in DNS.
relayhost =
default_transport = {NO_RELAY}
relay_transport = {NO_RELAY}
local_transport = error:5.1.1 local delivery is disabled
disable_dns_lookups = yes
smtp_dns_support_level = disabled
smtp_host_lookup = native
lmtp_host_lookup = native
smtpd_peername_lookup = no
alias_maps =
alias_database =
biff = no
append_dot_mydomain = no
notify_classes =

# Delivery: Postfix's virtual(8) agent writes the Maildirs that Dovecot serves.
virtual_transport = virtual
virtual_mailbox_domains = {layout.domain}
virtual_mailbox_base = {layout.mail}
virtual_mailbox_maps = texthash:{etc / "virtual_mailboxes"}
virtual_alias_maps =
virtual_minimum_uid = {layout.mail_uid}
virtual_uid_maps = static:{layout.mail_uid}
virtual_gid_maps = static:{layout.mail_gid}
virtual_mailbox_limit = 0
mailbox_size_limit = 0
message_size_limit = {layout.message_size_limit}

# Quick answers for tests: no pause after client errors or under load.
smtpd_error_sleep_time = 0
in_flow_delay = 0

smtpd_banner = $myhostname ESMTP {layout.instance_name}
smtpd_tls_cert_file = {layout.tls_cert}
smtpd_tls_key_file = {layout.tls_key}
smtpd_tls_security_level = encrypt
smtpd_tls_auth_only = yes
smtpd_tls_loglevel = 1
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = {layout.sasl_socket}
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions =
    check_recipient_access texthash:{etc / "full_mailboxes"},
    reject_unlisted_recipient, permit
""" + _milter_settings(layout)


def _milter_settings(layout: Layout) -> str:
    """Mail filters (an OpenDKIM verifier, say) for mail that smtpd accepts; a filter
    that cannot be reached makes smtpd answer 451 rather than let mail through unchecked."""
    if not layout.milters:
        return ""
    return f"""
smtpd_milters = {layout.milters}
non_smtpd_milters =
milter_default_action = tempfail
milter_protocol = 6
"""


# Only what the stack needs: no port 25 and no smtp, lmtp or local delivery agents.
_INTERNAL_SERVICES = """\
pickup     unix  n - n 60    1 pickup
cleanup    unix  n - n -     0 cleanup
qmgr       unix  n - n 300   1 qmgr
tlsmgr     unix  - - n 1000? 1 tlsmgr
rewrite    unix  - - n -     - trivial-rewrite
bounce     unix  - - n -     0 bounce
defer      unix  - - n -     0 bounce
trace      unix  - - n -     0 bounce
verify     unix  - - n -     1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -     - proxymap
proxywrite unix  - - n -     1 proxymap
showq      unix  n - n -     - showq
error      unix  - - n -     - error
retry      unix  - - n -     - error
discard    unix  - - n -     - discard
virtual    unix  - n n -     - virtual
anvil      unix  - - n -     1 anvil
scache     unix  - - n -     1 scache
postlog    unix-dgram n - n - 1 postlogd
"""


def postfix_master_cf(layout: Layout) -> str:
    """``master.cf``: four submission listeners, one MX-like plain listener, and the
    internal services."""
    submission = [
        "smtpd_tls_security_level=encrypt",
        "smtpd_sasl_auth_enable=yes",
        "smtpd_tls_auth_only=yes",
        "smtpd_relay_restrictions=permit_sasl_authenticated,reject",
    ]
    listeners = {
        "submission": submission,
        "smtps": [*submission, "smtpd_tls_wrappermode=yes"],
        "limited": [*submission, f"message_size_limit={layout.limited_message_size}"],
        # Like a server that checks recipients only at delivery: unknown local
        # recipients are accepted at RCPT and bounced afterwards, with a DSN to the sender.
        "accepting": [
            *submission,
            "smtpd_reject_unlisted_recipient=no",
            "smtpd_recipient_restrictions=permit",
        ],
        # Like a server with PIPELINING and SIZE but no CHUNKING: mail goes with DATA.
        "unchunked": [*submission, "smtpd_discard_ehlo_keywords=chunking"],
        # Like a domain's MX: plain text allowed, no AUTH, local recipients only.
        "plain": [
            "smtpd_tls_security_level=may",
            "smtpd_sasl_auth_enable=no",
            "smtpd_relay_restrictions=reject_unauth_destination",
        ],
    }
    parts = [
        "# Written by MailStack.\n",
        "# service type private unpriv chroot wakeup maxproc command\n",
    ]
    for name, options in listeners.items():
        parts.append(f"{layout.host}:{layout.ports[name]} inet n - n - - smtpd\n")
        for option in [f"syslog_name=postfix/{name}", *options]:
            parts.append(f"  -o {option}\n")
    parts.append(_INTERNAL_SERVICES)
    return "".join(parts)


def postfix_virtual_mailboxes(layout: Layout) -> str:
    """``virtual_mailbox_maps``: address to Maildir (the trailing slash means Maildir)."""
    return "".join(f"{layout.address(user)} {user}/\n" for user in sorted(layout.users))


def postfix_full_mailboxes(layout: Layout) -> str:
    """The recipient access table that refuses mail to the full mailboxes."""
    lines = [
        f"{layout.address(user)} {FULL_MAILBOX_REPLY}\n" for user in sorted(layout.full_mailboxes)
    ]
    return "".join(lines) or "# no full mailboxes\n"


#: What the second Dovecot (``dovecot_sasl_conf``) offers, in its own spelling.
SASL_MECHANISMS = "plain login scram-sha-256 scram-sha-1 cram-md5 apop oauthbearer xoauth2"
_PASSWORD_MECHANISMS = "plain login scram-sha-256 scram-sha-1 cram-md5 apop"


def dovecot_sasl_conf(
    root: Path,
    *,
    host: str,
    ports: Mapping[str, int],
    instance_name: str,
    mail_uid: int,
    mail_gid: int,
) -> str:
    """A second, separate Dovecot that offers every mechanism of :data:`SASL_MECHANISMS`.

    Passwords are stored as ``{PLAIN}`` in a passwd-file, the one scheme from which
    Dovecot can answer SCRAM, CRAM-MD5 and APOP alike (APOP needs the plaintext).
    Bearer tokens go to an oauth2 passdb that validates JWTs locally (``introspection_mode
    = local``) with keys from ``<root>/keys`` (see :func:`dovecot_oauth2_conf`), so no
    token endpoint is contacted. Nothing here is shared with the stack's first Dovecot:
    its own directories, ports, log and no socket for Postfix.
    """
    log = root / "logs" / "dovecot.log"
    return f"""\
# Written by the interop tests: a private, loopback-only Dovecot with every SASL mechanism.
protocols = pop3
listen = {host}
base_dir = {root / "run"}
state_dir = {root / "state"}
instance_name = {instance_name}
login_greeting = {instance_name} ready.
log_path = {log}
info_log_path = {log}
debug_log_path = {log}
auth_verbose = yes
auth_debug = yes

ssl = yes
ssl_cert = <{root / "tls" / "server-chain.pem"}
ssl_key = <{root / "tls" / "server-key.pem"}
disable_plaintext_auth = yes

auth_mechanisms = {SASL_MECHANISMS}
auth_username_format = %Ln
auth_failure_delay = 0
first_valid_uid = {mail_uid}
last_valid_uid = {mail_uid}
first_valid_gid = {mail_gid}
last_valid_gid = {mail_gid}
mail_location = maildir:{root / "mail"}/%u
mail_max_userip_connections = 100

passdb {{
  driver = passwd-file
  mechanisms = {_PASSWORD_MECHANISMS}
  args = scheme=PLAIN {root / "users"}
}}
passdb {{
  driver = oauth2
  mechanisms = oauthbearer xoauth2
  args = {root / "dovecot-oauth2.conf.ext"}
}}
userdb {{
  driver = static
  args = uid={mail_uid} gid={mail_gid} home={root / "mail"}/%u
}}

service pop3-login {{
  inet_listener pop3 {{
    address = {host}
    port = {ports["pop3"]}
  }}
  inet_listener pop3s {{
    address = {host}
    port = {ports["pop3s"]}
    ssl = yes
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""


def dovecot_oauth2_conf(root: Path) -> str:
    """The oauth2 passdb settings: local JWT validation, the user in ``sub``.

    Dovecot 2.3 looks a key up as ``<azp>/<alg>/<kid>`` in the dictionary, ``default``
    standing for a missing ``azp`` or ``kid``; an HMAC key is stored base64-encoded.
    """
    return f"""\
introspection_mode = local
local_validation_key_dict = fs:posix:prefix={root / "keys"}/
username_attribute = sub
username_format = %Ln
"""
