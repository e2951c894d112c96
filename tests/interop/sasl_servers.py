"""A Postfix + Dovecot pair whose SASL offers every mechanism the library implements.

:class:`SASLMailStack` is a :class:`~.mailstack.MailStack` (its own processes, ports and
directory, stopped by pid) whose Dovecot configuration differs from the shared one in
its auth section only: the mechanisms, and an OAuth2 passdb that validates bearer
tokens locally against a key the test made. Postfix asks that Dovecot through
``smtpd_sasl_type = dovecot``, as in the shared stack, so a login through Postfix runs
Dovecot's implementation of each mechanism. The shared configuration stays untouched:
the rendered text is amended here.

Dovecot 2.3 has no ``-PLUS`` SCRAM variants, so this Postfix offers SCRAM-SHA-256
without channel binding, and that is what the library's default choice must pick.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from pathlib import Path

from . import mailconfig
from .mailstack import MailStack, _require
from .processes import Probe

#: What Dovecot offers (and through it, Postfix) in this stack.
MECHANISMS = (
    "plain",
    "login",
    "scram-sha-256",
    "scram-sha-1",
    "cram-md5",
    "oauthbearer",
    "xoauth2",
)
#: The key id and authorized party the test's tokens name.
KEY_ID = "mailhandlers-test"
AZP = "mailhandlers"


class SASLMailStack(MailStack):
    """:class:`MailStack` with every SASL mechanism on, and OAuth2 tokens validated by
    Dovecot with a local HS256 key (see :meth:`token`)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.oauth2_key = hashlib.sha256(self._instance.encode()).digest()

    def token(self, user: str, lifetime: float = 300.0) -> str:
        """An HS256 JWT for ``user`` that this Dovecot accepts until ``lifetime`` ends
        (a negative lifetime makes an expired one)."""
        now = int(time.time())
        header = {"alg": "HS256", "typ": "JWT", "kid": KEY_ID}
        claims = {"sub": user, "azp": AZP, "iat": now - 10, "nbf": now - 10}
        claims["exp"] = now + int(lifetime)

        def part(data: Mapping[str, object]) -> bytes:
            raw = json.dumps(data, separators=(",", ":")).encode()
            return base64.urlsafe_b64encode(raw).rstrip(b"=")

        signing_input = part(header) + b"." + part(claims)
        signature = hmac.new(self.oauth2_key, signing_input, hashlib.sha256).digest()
        return (signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()

    def _start_dovecot(self) -> None:
        layout = self._layout()
        keys = layout.dovecot / "oauth2-keys"
        # Dovecot's local validation reads <prefix><azp>/<alg>/<kid>, HMAC keys base64.
        key_file = keys / AZP / "HS256" / KEY_ID
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(base64.b64encode(self.oauth2_key).decode())
        for path in [keys, *keys.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        oauth2_conf = layout.dovecot / "oauth2.conf.ext"
        self._write(
            oauth2_conf,
            f"introspection_mode = local\n"
            f"local_validation_key_dict = fs:posix:prefix={keys}/\n"
            "username_attribute = sub\n",
        )
        conf_text = re.sub(
            r"(?m)^auth_mechanisms = .*$",
            "auth_mechanisms = " + " ".join(MECHANISMS),
            mailconfig.dovecot_conf(layout),
        )
        conf_text += (
            "passdb {\n"
            "  driver = oauth2\n"
            "  mechanisms = oauthbearer xoauth2\n"
            f"  args = {oauth2_conf}\n"
            "}\n"
        )
        conf = layout.dovecot / "dovecot.conf"
        self._write(conf, conf_text)
        server = self._spawn("dovecot", [_require("dovecot"), "-F", "-c", str(conf)])
        self._servers.append(server)
        tls = self.client_ssl_context()
        self._wait_ready(
            server,
            [
                Probe("pop3", self.host, self._ports["pop3"], b"+OK"),
                Probe("pop3s", self.host, self._ports["pop3s"], b"+OK", tls),
            ],
        )

    def log_text(self) -> str:
        """Everything Postfix and Dovecot logged so far."""
        return self.log_since(dict.fromkeys(self._log_sizes(), 0))


def dovecot_log(stack: SASLMailStack) -> Path:
    """Where this stack's Dovecot writes its log."""
    return stack._layout().logs / "dovecot.log"
