"""A loopback SMTP server that throttles, as a busy provider does.

:class:`ThrottlingSMTPServer` accepts mail like :func:`~src.testing.smtp_scripts.smtp_accept_all`
but keeps its own limits and answers the way real servers do when a client goes too fast:

* more than ``per_second`` messages a second (a token bucket of ``burst``): ``MAIL`` gets
  ``reply``, by default ``451 4.7.0`` (with a code of 421 the server also hangs up);
* more than ``max_connections`` at once: the greeting is ``421 4.7.0`` and the
  connection is closed;
* more than ``messages_per_connection`` on one connection: ``MAIL`` gets ``421 4.7.0``
  and the connection is closed.

It counts the ``MAIL`` commands it ``accepted`` and the refusals it gave (``throttled``,
connections turned away included), so a test can check that a client
slowed down rather than kept hammering::

    with ThrottlingSMTPServer(per_second=5, burst=2) as server:
        ...  # send with the client under test
        assert server.throttled == 0
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from src.testing.scripted_server import Conversation, ScriptedServer
from src.testing.smtp_scripts import Response, SMTPDialogue, _Stop

__all__ = ["ThrottlingSMTPServer"]

TOO_FAST = (451, "4.7.0 Too many messages, slow down")
TOO_MANY_CONNECTIONS = (421, "4.7.0 Too many connections, try again later")
TOO_MANY_MESSAGES = (421, "4.7.0 Too many messages on one connection, reconnect")


@dataclass
class _ThrottlingDialogue(SMTPDialogue):
    owner: ThrottlingSMTPServer | None = field(default=None, repr=False)

    def __call__(self, conv: Conversation) -> None:
        assert self.owner is not None
        if not self.owner._open():
            with contextlib.suppress(_Stop, OSError):
                self._respond(conv, TOO_MANY_CONNECTIONS)
            self.owner._count_throttled()
            return
        try:
            super().__call__(conv)
        finally:
            self.owner._close()

    def _override(self, verb: str, occurrence: int) -> Response | None:
        assert self.owner is not None
        if verb == "MAIL":
            return self.owner._admit(occurrence)
        return super()._override(verb, occurrence)

    def _respond(self, conv: Conversation, response: Response | None) -> None:
        super()._respond(conv, response)
        if isinstance(response, tuple) and response[0] == 421:
            raise _Stop  # 421 means the server closes the connection


class ThrottlingSMTPServer:
    """A loopback SMTP server with its own rate, connection and per-connection limits.

    Args:
        per_second: Messages a second accepted (a token bucket); None for no rate.
        burst: The bucket size: messages accepted at once after a quiet spell.
        max_connections: Connections served at once; None for no cap.
        messages_per_connection: Messages accepted on one connection; None for no cap.
        reply: The ``MAIL`` reply when the rate is exceeded.
        clock: Monotonic seconds; tests may pass a fake to decide when it throttles.
    """

    def __init__(
        self,
        *,
        per_second: float | None = None,
        burst: float = 1.0,
        max_connections: int | None = None,
        messages_per_connection: int | None = None,
        reply: tuple[int, str] = TOO_FAST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_second = per_second
        self.burst = burst
        self.max_connections = max_connections
        self.messages_per_connection = messages_per_connection
        self.reply = reply
        self.accepted = 0
        self.throttled = 0
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = burst
        self._at: float | None = None
        self._active = 0
        self._server = ScriptedServer(_ThrottlingDialogue(owner=self))

    def __repr__(self) -> str:
        return (
            f"<ThrottlingSMTPServer {self.host}:{self.port} accepted={self.accepted} "
            f"throttled={self.throttled}>"
        )

    @property
    def host(self) -> str:
        """The loopback address it listens on."""
        return self._server.host

    @property
    def port(self) -> int:
        """The port, known once started."""
        return self._server.port

    @property
    def errors(self) -> list[BaseException]:
        """Exceptions raised while serving (a test should find none)."""
        return self._server.errors

    def start(self) -> None:
        """Listen on a free loopback port."""
        self._server.start()

    def stop(self) -> None:
        """Close every connection and the listener; safe to call twice."""
        self._server.stop()

    def __enter__(self) -> ThrottlingSMTPServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- decisions, made under the lock ------------------------------------------

    def _open(self) -> bool:
        with self._lock:
            if self.max_connections is not None and self._active >= self.max_connections:
                return False
            self._active += 1
            return True

    def _close(self) -> None:
        with self._lock:
            self._active -= 1

    def _count_throttled(self) -> None:
        with self._lock:
            self.throttled += 1

    def _admit(self, occurrence: int) -> Response | None:
        with self._lock:
            if (
                self.messages_per_connection is not None
                and occurrence > self.messages_per_connection
            ):
                self.throttled += 1
                return TOO_MANY_MESSAGES
            if self.per_second is not None:
                now = self._clock()
                if self._at is not None:
                    elapsed = max(0.0, now - self._at)
                    self._tokens = min(self.burst, self._tokens + elapsed * self.per_second)
                self._at = now
                if self._tokens < 1:
                    self.throttled += 1
                    return self.reply
                self._tokens -= 1
            self.accepted += 1
            return None
