"""Small DNS helpers shared by :mod:`.deliverability` and :mod:`.discovery`.

Private to the package: the public modules decide what a DNS failure means for
their callers; this module only normalises names, builds resolvers lazily and runs
queries against one overall deadline.
"""

from __future__ import annotations

import time

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from ..errors import MailValidationError

#: RFC 1035 limit on a domain name in its usual dotted text form.
MAX_DOMAIN_LENGTH = 253

_FORBIDDEN = frozenset('@[]()<>,;:\\"/ \t')


def to_ascii_domain(domain: str) -> str:
    """Return ``domain`` as lower-case ASCII (IDNA A-labels), without a trailing dot.

    International names go through Python's ``idna`` codec, so ``bücher.example``
    becomes ``xn--bcher-kva.example``. Anything that cannot be a host name (empty,
    address literals, control characters, empty or over-long labels) raises
    :class:`MailValidationError` with ``field="domain"``.
    """
    if not isinstance(domain, str):
        raise MailValidationError("domain must be a string", field="domain")
    name = domain.strip()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise MailValidationError("domain is empty", field="domain")
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F or ch in _FORBIDDEN for ch in name):
        raise MailValidationError(
            f"domain {domain!r} contains characters not allowed in a host name", field="domain"
        )
    try:
        ascii_name = name.encode("idna").decode("ascii").lower()
    except UnicodeError as error:
        raise MailValidationError(
            f"domain {domain!r} is not a valid host name ({error})", field="domain"
        ) from None
    labels = ascii_name.split(".")
    if any(not label or len(label) > 63 for label in labels):
        raise MailValidationError(f"domain {domain!r} has an empty or long label", field="domain")
    if len(ascii_name) > MAX_DOMAIN_LENGTH:
        raise MailValidationError(f"domain {domain!r} is too long", field="domain")
    return ascii_name


def host_text(name: dns.name.Name) -> str:
    """A DNS name as lower-case text without the trailing dot (``""`` for the root)."""
    return name.to_text(omit_final_dot=True).lower() if name != dns.name.root else ""


def new_resolver() -> dns.resolver.Resolver:
    """A resolver configured from the system (reads the resolver configuration file)."""
    return dns.resolver.Resolver()


class Deadline:
    """A point in time after which no new DNS query should start.

    Each query gets the time left as its resolver lifetime, so several queries in a
    row never take longer than the single budget given to the operation.
    """

    def __init__(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError("timeout must be > 0")
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left; raises ``dns.exception.Timeout`` when none are."""
        left = self._end - time.monotonic()
        if left <= 0:
            raise dns.exception.Timeout
        return left


def resolve(
    resolver: dns.resolver.Resolver,
    qname: str,
    rdtype: dns.rdatatype.RdataType,
    deadline: Deadline,
) -> dns.resolver.Answer | None:
    """Query ``qname`` (an ASCII domain, made absolute) for ``rdtype``.

    Returns the answer, or ``None`` when the name exists but holds no record of
    that type. ``dns.resolver.NXDOMAIN``, ``dns.exception.Timeout`` and the other
    dnspython errors propagate for the caller to interpret.
    """
    answer = resolver.resolve(
        qname + ".",
        rdtype,
        raise_on_no_answer=False,
        lifetime=deadline.remaining(),
        search=False,
    )
    return answer if answer.rrset is not None else None
