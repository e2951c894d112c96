"""A second private Dovecot that offers every SASL mechanism the library speaks.

It runs beside the stack's own Dovecot (which keeps offering PLAIN and LOGIN only,
as the SMTP tests through Postfix expect), with its own directory, ports and log, and
stops by its pid like the other private servers. Bearer tokens are HS256 JWTs that
:meth:`SASLDovecot.issue_token` signs with a key written for Dovecot's local
validation, so no token endpoint exists or is contacted.
"""

from __future__ import annotations

import base64
import grp
import hashlib
import hmac
import json
import os
import pwd
import secrets
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

from src.testing.tls import TestCertificates

from . import mailconfig
from .extra_servers import _PrivateServer
from .processes import SBIN_PATH, Probe

__all__ = ["SASLDovecot"]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class SASLDovecot(_PrivateServer):
    """Dovecot with ``auth_mechanisms`` = :data:`mailconfig.SASL_MECHANISMS`.

    ``users`` (``alice`` and ``bob`` by default, random passwords) log in with a
    password by any of the password mechanisms or APOP, or with a token from
    :meth:`issue_token`.
    """

    name = "dovecot"
    port_names = ("pop3", "pop3s")
    greeting = b"+OK"

    def __init__(
        self,
        directory: Path,
        certificates: TestCertificates,
        *,
        users: Mapping[str, str] | None = None,
        mail_user: str = "mail",
        **options: float,
    ) -> None:
        super().__init__(directory, certificates, **options)
        if users is None:
            users = {name: secrets.token_urlsafe(12) for name in ("alice", "bob")}
        self.users = dict(users)
        account = pwd.getpwnam(mail_user)
        self.mail_uid, self.mail_gid = account.pw_uid, account.pw_gid
        self._key = secrets.token_bytes(32)

    def issue_token(self, user: str, *, lifetime: float = 300.0) -> str:
        """An HS256 JWT for ``user`` that Dovecot accepts until ``lifetime`` has passed
        (a negative lifetime gives a token that has already expired)."""
        now = int(time.time())
        header = {"typ": "JWT", "alg": "HS256"}
        claims = {"sub": user, "iat": now - 60, "exp": int(now + lifetime)}
        if lifetime < 0:
            claims["iat"] = int(now + lifetime) - 60
        signing_input = ".".join(
            _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        signature = hmac.new(self._key, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64url(signature)}"

    def _prepare(self) -> list[str]:
        d = self.directory
        self._write_tls()
        for sub in ("run", "state"):
            (d / sub).mkdir(exist_ok=True)
            (d / sub).chmod(0o755)
        mail = d / "mail"
        mail.mkdir(exist_ok=True)
        os.chown(mail, self.mail_uid, self.mail_gid)
        mail.chmod(0o700)

        users = d / "users"
        users.write_text(
            "".join(f"{name}:{{PLAIN}}{pw}::::::\n" for name, pw in sorted(self.users.items()))
        )
        os.chown(users, 0, grp.getgrnam("dovecot").gr_gid)
        users.chmod(0o640)

        key = d / "keys" / "default" / "HS256" / "default"
        key.parent.mkdir(parents=True, exist_ok=True)
        for folder in (d / "keys", d / "keys" / "default", key.parent):
            folder.chmod(0o755)
        key.write_text(base64.b64encode(self._key).decode("ascii"))
        os.chown(key, 0, grp.getgrnam("dovecot").gr_gid)
        key.chmod(0o640)
        oauth2 = d / "dovecot-oauth2.conf.ext"
        oauth2.write_text(mailconfig.dovecot_oauth2_conf(d))
        oauth2.chmod(0o644)

        conf = d / "dovecot.conf"
        conf.write_text(
            mailconfig.dovecot_sasl_conf(
                d,
                host=self.host,
                ports=self.ports,
                instance_name=self.instance,
                mail_uid=self.mail_uid,
                mail_gid=self.mail_gid,
            )
        )
        conf.chmod(0o644)
        return [shutil.which("dovecot", path=SBIN_PATH) or "dovecot", "-F", "-c", str(conf)]

    def _probes(self) -> list[Probe]:
        return [
            Probe("pop3", self.host, self.ports["pop3"], b"+OK"),
            Probe("pop3s", self.host, self.ports["pop3s"], b"+OK", self.client_ssl_context()),
        ]
