"""Choosing mechanisms, building them, and deciding whether a refusal allows the next.

:func:`choose_mechanisms` gives the candidates best first; the protocol layer tries
them in turn with :func:`create_mechanism`, and moves on only when the server refused
the mechanism itself (:meth:`Refusal.allows_fallback`). After a refusal of the
credentials it stops: retrying with a weaker mechanism would only expose the same
password more, to a server that has already rejected it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import Final

from .._net.config import Encryption
from ..errors import ConfigurationError, MailValidationError
from .base import Mechanism
from .channel_binding import ChannelBinding
from .errors import CleartextRefusedError, NoMechanismError, safe_field
from .oauth import OAuthBearer, XOAuth2
from .scram import MAX_ITERATIONS, MIN_ITERATIONS, Scram, default_nonce
from .simple import CramMD5, External, Login, Plain


class CredentialKind(enum.Enum):
    """What the user holds to log in with."""

    PASSWORD = "password"
    TOKEN = "token"
    CLIENT_CERT = "client-cert"


#: The order tried for each kind of credential, best first.
PREFERENCE: Final[dict[CredentialKind, tuple[str, ...]]] = {
    CredentialKind.PASSWORD: (
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "CRAM-MD5",
        "PLAIN",
        "LOGIN",
    ),
    CredentialKind.TOKEN: ("OAUTHBEARER", "XOAUTH2"),
    CredentialKind.CLIENT_CERT: ("EXTERNAL",),
}
#: Mechanisms that carry a reusable secret readable on the wire; over an unencrypted
#: connection they need ``allow_cleartext``.
CLEARTEXT: Final = frozenset({"PLAIN", "LOGIN", "OAUTHBEARER", "XOAUTH2"})
#: Mechanisms that need channel-binding data, hence TLS.
CHANNEL_BOUND: Final = frozenset({"SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"})
#: Every mechanism this layer implements.
SUPPORTED: Final = frozenset(name for names in PREFERENCE.values() for name in names)


def cleartext_consent(allow_cleartext: bool | None, encryption: Encryption) -> bool:
    """Whether mechanisms that show a password or token may run without TLS.

    The rule both handlers follow: ``None`` (the default) takes choosing
    ``encryption='none'`` as consent; ``False`` withdraws it, so such a connection logs
    in only with SCRAM, CRAM-MD5 or APOP; ``True`` gives it. Over TLS it does not
    matter. Anything else is a :class:`ConfigurationError`.
    """
    if allow_cleartext is None:
        return encryption is Encryption.NONE
    if not isinstance(allow_cleartext, bool):
        raise ConfigurationError("allow_cleartext must be True, False or None", "allow_cleartext")
    return allow_cleartext


def choose_mechanisms(
    offered: Iterable[str] | None,
    credential: CredentialKind,
    *,
    tls: bool,
    channel_binding: bool = False,
    pinned: str | None = None,
    allow_cleartext: bool = False,
) -> list[str]:
    """The mechanisms to try, best first; never empty.

    ``offered`` is what the server listed (case-insensitive), or ``None`` when it did not
    say: then every candidate is returned and the server's refusals decide. ``-PLUS``
    mechanisms need ``channel_binding`` (data available for this TLS connection);
    EXTERNAL needs ``tls``. Cleartext mechanisms (:data:`CLEARTEXT`) are left out
    without ``tls`` unless ``allow_cleartext``. ``pinned`` restricts the choice to that
    one mechanism, under the same rules.

    Raises :class:`MailValidationError` for a pinned name this layer does not implement
    or that does not fit the credential, :class:`CleartextRefusedError` when only
    cleartext mechanisms remain, and :class:`NoMechanismError` when nothing does.
    """
    order = PREFERENCE[credential]
    if pinned is not None:
        pinned = pinned.upper()
        if pinned not in SUPPORTED:
            raise MailValidationError(f"unknown SASL mechanism {safe_field(pinned)!r}", "mechanism")
        if pinned not in order:
            raise MailValidationError(
                f"{pinned} cannot log in with a {credential.value} credential", "mechanism"
            )
        order = (pinned,)
    offered_names = None if offered is None else tuple(name.upper() for name in offered)
    usable: list[str] = []
    cleartext_held_back = False
    for name in order:
        if offered_names is not None and name not in offered_names:
            continue
        if name in CHANNEL_BOUND and not (tls and channel_binding):
            continue
        if name == "EXTERNAL" and not tls:
            continue
        if name in CLEARTEXT and not tls and not allow_cleartext:
            cleartext_held_back = True
            continue
        usable.append(name)
    if usable:
        return usable
    if cleartext_held_back:
        raise CleartextRefusedError(
            "the only mechanisms available would send the credentials readable over an "
            "unencrypted connection; use TLS or allow cleartext explicitly (nothing was sent)"
        )
    wanted = pinned or ", ".join(order)
    raise NoMechanismError(
        f"the server offers no usable authentication mechanism (wanted {wanted}; nothing was sent)",
        offered_names,
    )


def create_mechanism(
    name: str,
    *,
    username: str | None = None,
    password: str | None = None,
    token: str | None = None,
    authzid: str | None = None,
    channel_binding: ChannelBinding | None = None,
    offered: Iterable[str] | None = None,
    host: str | None = None,
    port: int | None = None,
    nonce_source: Callable[[], str] = default_nonce,
    min_iterations: int = MIN_ITERATIONS,
    max_iterations: int = MAX_ITERATIONS,
) -> Mechanism:
    """A fresh mechanism object for one attempt with ``name``.

    ``offered`` (the server's list) decides the SCRAM gs2 flag when ``channel_binding``
    is given for a mechanism without ``-PLUS``: ``y`` (client could bind, server did not
    offer it) unless the server listed the ``-PLUS`` variant, then ``n``. ``host`` and
    ``port`` go into OAUTHBEARER. Raises :class:`MailValidationError` when the
    credential the mechanism needs is missing.
    """
    name = name.upper()

    def need(value: str | None, field: str) -> str:
        if value is None:
            raise MailValidationError(f"{name} needs a {field}", field)
        return value

    if name in CHANNEL_BOUND or name in ("SCRAM-SHA-256", "SCRAM-SHA-1"):
        binding = channel_binding
        # "y" would tell a server that offers -PLUS that the client was downgraded.
        if (
            name not in CHANNEL_BOUND
            and offered is not None
            and f"{name}-PLUS" in {o.upper() for o in offered}
        ):
            binding = None
        return Scram(
            name,
            need(username, "username"),
            need(password, "password"),
            authzid=authzid,
            channel_binding=binding,
            nonce_source=nonce_source,
            min_iterations=min_iterations,
            max_iterations=max_iterations,
        )
    if name == "CRAM-MD5":
        return CramMD5(need(username, "username"), need(password, "password"))
    if name == "PLAIN":
        return Plain(need(username, "username"), need(password, "password"), authzid=authzid)
    if name == "LOGIN":
        return Login(need(username, "username"), need(password, "password"))
    if name == "OAUTHBEARER":
        return OAuthBearer(username, need(token, "token"), host=host, port=port)
    if name == "XOAUTH2":
        return XOAuth2(need(username, "username"), need(token, "token"))
    if name == "EXTERNAL":
        return External(authzid=authzid)
    raise MailValidationError(f"unknown SASL mechanism {safe_field(name)!r}", "mechanism")


class Refusal(enum.Enum):
    """Why the server refused an attempt, as the protocol layer reads its reply.

    (For SMTP, RFC 4954: 504 is unsupported, 534 too weak, 538 encryption required,
    535 credentials, 454 temporary.)
    """

    #: The server does not implement the mechanism (or no longer offers it).
    MECHANISM_UNSUPPORTED = "mechanism-unsupported"
    #: The server finds the mechanism too weak.
    MECHANISM_TOO_WEAK = "mechanism-too-weak"
    #: The server wants encryption for the mechanism.
    ENCRYPTION_REQUIRED = "encryption-required"
    #: The credentials were refused.
    CREDENTIALS = "credentials"
    #: A temporary failure; retrying later may succeed.
    TEMPORARY = "temporary"

    def allows_fallback(self) -> bool:
        """Whether trying the next mechanism is right. Only for an unsupported mechanism:
        the candidates go from strong to weak, so after "too weak" or "needs
        encryption" the next is no better, and after refused credentials another
        mechanism would only show the same password to more eyes."""
        return self is Refusal.MECHANISM_UNSUPPORTED
