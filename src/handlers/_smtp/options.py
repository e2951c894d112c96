"""What one send asks of the server beyond the message: DSN (RFC 3461) and REQUIRETLS.

:class:`DSNOptions` is checked when it is made, so a bad value is a
:class:`ConfigurationError` before anything is sent; :func:`xtext` encodes the values
RFC 3461 carries in ``ENVID=`` and ``ORCPT=``. :class:`SendOptions` is what the
connection's transaction reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ConfigurationError

_NOTIFY = ("SUCCESS", "FAILURE", "DELAY")
_RET = ("FULL", "HDRS")
MAX_ENVID_LENGTH = 100
"""RFC 3461 section 4.4: an ENVID of at most 100 characters (before encoding)."""


def xtext(value: str) -> str:
    """RFC 3461 xtext: ``+``, ``=``, and anything outside printable ASCII as ``+XX``."""
    out: list[str] = []
    for byte in value.encode("utf-8"):
        if 33 <= byte <= 126 and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


@dataclass(frozen=True, slots=True)
class DSNOptions:
    """Ask for delivery status notifications (RFC 3461) when the server offers DSN.

    ``notify``: any of ``"SUCCESS"``, ``"FAILURE"``, ``"DELAY"``, or ``("NEVER",)``;
    sent as ``NOTIFY=`` on every RCPT. ``ret``: ``"HDRS"`` (only the headers come back)
    or ``"FULL"``; ``None`` leaves it to the server. ``envid``: an ID of yours (printable
    ASCII, at most 100 characters) that every report quotes as Original-Envelope-Id.
    ``orcpt``: send each recipient as ``ORCPT=rfc822;...`` so reports name the address
    you gave (ASCII addresses only). ``required``: refuse to send (FAILED, nothing sent)
    when the server does not offer DSN; otherwise the options are left out with a
    WARNING and the message goes out without them.
    """

    notify: Sequence[str] = ("FAILURE",)
    ret: str | None = None
    envid: str | None = None
    orcpt: bool = True
    required: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.notify, str):
            object.__setattr__(self, "notify", (self.notify,))
        notify = tuple(str(item).upper() for item in self.notify)
        if notify == ("NEVER",):
            pass
        elif not notify or any(item not in _NOTIFY for item in notify):
            raise ConfigurationError(
                "notify must be ('NEVER',) or some of SUCCESS, FAILURE, DELAY",
                "dsn",
                _NOTIFY,
            )
        object.__setattr__(self, "notify", tuple(dict.fromkeys(notify)))
        if self.ret is not None:
            ret = str(self.ret).upper()
            if ret not in _RET:
                raise ConfigurationError("ret must be 'HDRS', 'FULL' or None", "dsn", _RET)
            object.__setattr__(self, "ret", ret)
        if self.envid is not None:
            envid = self.envid
            if (
                not isinstance(envid, str)
                or not envid
                or len(envid) > MAX_ENVID_LENGTH
                or not all(" " <= char <= "~" for char in envid)
            ):
                raise ConfigurationError(
                    f"envid must be 1 to {MAX_ENVID_LENGTH} printable ASCII characters", "dsn"
                )

    def mail_parameters(self) -> list[str]:
        """The DSN parameters of MAIL FROM."""
        parameters = [f"RET={self.ret}"] if self.ret else []
        if self.envid:
            parameters.append(f"ENVID={xtext(self.envid)}")
        return parameters

    def rcpt_parameters(self, recipient: str) -> list[str]:
        """The DSN parameters of one RCPT TO."""
        parameters = [f"NOTIFY={','.join(self.notify)}"]
        if self.orcpt and recipient.isascii():
            parameters.append(f"ORCPT=rfc822;{xtext(recipient)}")
        return parameters


@dataclass(frozen=True, slots=True)
class SendOptions:
    """The per-send choices a transaction needs besides the message."""

    dsn: DSNOptions | None = None
    require_tls: bool = False
    """RFC 8689 REQUIRETLS: send only over TLS to a server that offers it, and ask it
    to relay the message only over verified TLS."""


NO_OPTIONS = SendOptions()


def check_dsn(value: object) -> DSNOptions | None:
    """``value`` if it is None or a :class:`DSNOptions`; else a ConfigurationError."""
    if value is None or isinstance(value, DSNOptions):
        return value
    raise ConfigurationError("dsn must be a DSNOptions (or None)", "dsn")
