"""The client state machine every SASL mechanism follows.

A mechanism object does no I/O and knows no protocol. The protocol layer drives it:

1. ``initial_response()`` once, before the first challenge. ``None`` means the server
   speaks first; bytes must be sent, inline with the command (empty bytes as ``=``)
   or, if the command line cannot hold them, in answer to the server's empty first
   challenge. A caller that never calls it answers the first empty challenge with
   ``respond(b"")``, which returns the same bytes.
2. ``respond(challenge)`` for each server challenge (already base64-decoded); the
   answer is sent base64-encoded.
3. ``verify_final(data)`` when the server reports success, with the additional data
   of that success reply if the protocol carries any. SCRAM raises here if the server
   never proved that it knows the password.

An exception from any of them leaves the mechanism :attr:`State.FAILED`: the exchange
must be cancelled (``*``) and the error raised. When the server refuses,
:meth:`Mechanism.refusal` builds the error from its reply, masked.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, TypeVar

from .._net.masking import mask_secrets
from .errors import SASLAuthenticationError, SASLFailure, SASLProtocolError, SASLStateError

_T = TypeVar("_T")


class Hidden:
    """A secret string whose every textual form is a fixed mask, so it stays out of
    reprs, ``vars()`` dumps and debugger views. Pickling is refused."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the computation that sends it."""
        return self._value

    def __repr__(self) -> str:
        return "Hidden('***')"

    __str__ = __repr__

    def __reduce__(self) -> str:
        raise TypeError("a secret cannot be pickled")


class _Vault:
    """The secrets an exchange produced, kept out of reprs and pickles like :class:`Hidden`."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: list[str | bytes] = []

    def add(self, item: str | bytes) -> None:
        if item and item not in self._items:
            self._items.append(item)

    def items(self) -> tuple[str | bytes, ...]:
        return tuple(self._items)

    def __repr__(self) -> str:
        return f"<{len(self._items)} secrets>"

    def __reduce__(self) -> str:
        raise TypeError("secrets cannot be pickled")


class State(enum.Enum):
    """Where a mechanism's exchange stands."""

    #: Nothing sent yet.
    START = "start"
    #: Responses are being exchanged.
    RUNNING = "running"
    #: ``verify_final`` accepted the server's success; the login is complete.
    COMPLETE = "complete"
    #: A step raised; the exchange must be cancelled and cannot go on.
    FAILED = "failed"


class Mechanism(ABC):
    """The client side of one SASL exchange; one object per attempt.

    Subclasses implement :meth:`_first` (the initial response, or ``None``) and
    :meth:`_step` (the answer to one challenge), and may override :meth:`_finish`.
    """

    #: The registered SASL name, e.g. ``"SCRAM-SHA-256"``.
    name: str
    #: True when the exchange carries a reusable secret readable by anyone who sees it
    #: (PLAIN, LOGIN, bearer tokens): such a mechanism needs TLS or an explicit opt-in.
    cleartext: ClassVar[bool] = False
    #: Server challenges answered after the initial response; one more is a protocol
    #: error, so a looping server cannot keep the client busy.
    max_challenges: ClassVar[int] = 1

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = State.START
        #: Why the server refused, when it said so inside the mechanism.
        self.failure: SASLFailure | None = None
        self._challenges = 0
        self._secrets = _Vault()

    # -- driving the exchange --------------------------------------------------------

    def initial_response(self) -> bytes | None:
        """The client's first message, or ``None`` when the server must speak first."""
        if self.state is not State.START:
            raise SASLStateError(f"{self.name}: initial_response() must come first, once")
        self.state = State.RUNNING
        return self._guarded(self._first)

    def respond(self, challenge: bytes) -> bytes:
        """The answer to one server challenge (the decoded bytes, possibly empty)."""
        self._check_open()
        return self._guarded(lambda: self._respond(challenge))

    def verify_final(self, data: bytes | None = None) -> None:
        """Accept the server's success report; ``data`` is the additional data it
        carried, if any. Raises when the success cannot be trusted."""
        self._check_open()
        self._guarded(lambda: self._finish(data))
        self.state = State.COMPLETE

    @property
    def complete(self) -> bool:
        """True once :meth:`verify_final` has accepted the server's success."""
        return self.state is State.COMPLETE

    # -- secrets -----------------------------------------------------------------------

    def sensitive(self) -> tuple[str | bytes, ...]:
        """Every secret this exchange holds or produced: the password or token, and each
        response sent that contains one (SCRAM adds its client proof). Pass them to
        :func:`mask_secrets`, or use :meth:`mask`."""
        return self._secrets.items()

    def mask(self, text: str) -> str:
        """``text`` (a server reply, an error, a trace line) with every form of this
        exchange's secrets masked."""
        return mask_secrets(text, self._secrets.items())

    def refusal(
        self, code: int | None, text: str, enhanced_code: str | None = None
    ) -> SASLAuthenticationError:
        """The error for the server's final refusal: its reply ``text`` masked, with the
        reason the server gave inside the mechanism added (see :attr:`failure`)."""
        masked = self.mask(text)
        if self.failure is not None:
            masked = f"{masked} ({self.failure.describe()})"
        return SASLAuthenticationError(code, masked, self.failure, enhanced_code)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.state.value}>"

    # -- internals -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.state is State.COMPLETE:
            raise SASLStateError(f"{self.name}: the exchange is already complete")
        if self.state is State.FAILED:
            raise SASLStateError(f"{self.name}: the exchange already failed")

    def _guarded(self, action: Callable[[], _T]) -> _T:
        try:
            return action()
        except BaseException:
            self.state = State.FAILED
            raise

    def _respond(self, challenge: bytes) -> bytes:
        if self.state is State.START:
            self.state = State.RUNNING
            first = self._first()
            if first is not None:
                if challenge:
                    raise SASLProtocolError(
                        f"{self.name}: the server sent a challenge where the client speaks first"
                    )
                return first
        self._challenges += 1
        if self._challenges > self.max_challenges:
            raise SASLProtocolError(
                f"{self.name}: the server sent more than {self.max_challenges} "
                "challenge(s); giving up"
            )
        return self._step(challenge)

    # -- for subclasses ----------------------------------------------------------------

    def _remember(self, *secrets: str | bytes) -> None:
        for secret in secrets:
            self._secrets.add(secret)

    @abstractmethod
    def _first(self) -> bytes | None:
        """The initial response, or ``None`` when the mechanism waits for a challenge."""

    @abstractmethod
    def _step(self, challenge: bytes) -> bytes:
        """The answer to the next challenge."""

    def _finish(self, data: bytes | None) -> None:
        if data:
            raise SASLProtocolError(
                f"{self.name}: the server's success carried data this mechanism does not expect"
            )
