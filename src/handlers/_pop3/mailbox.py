"""Mailbox operations of :class:`~src.handlers.pop3.POP3ProtocolHandler`: :class:`POP3Mailbox`.

Listing, fetching (one by one, or ``RETR`` pipelined in batches), header summaries,
unique IDs, deletion and ``RSET``, capabilities and the health check, each run on the
session :class:`~src.handlers._pop3.session.POP3Session` provides. Refused, missing and
too large messages are logged and skipped where several are asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .._mime.parser import ParseLimits, parse_header_summary, parse_message
from .._net.logs import get_logger
from ..errors import (
    MailHandlerError,
    POP3MessageTooLargeError,
    POP3ResponseError,
    POP3UnsupportedError,
)
from . import commands
from .checks import check_message_id
from .listing import ScanListing, UIDListing
from .session import Client, POP3Session
from .wire import error_for_reply

# The logger this code used before it moved here from pop3.py: the handler's records all
# keep coming from one logger.
log = get_logger("pop3")


class POP3Mailbox(POP3Session):
    """The mailbox operations of :class:`~src.handlers.pop3.POP3ProtocolHandler`; the
    handler's ``__init__`` sets the options declared here."""

    _max_message_size: int | None
    _include_raw: bool
    _include_attachment_content: bool
    _parse_limits: ParseLimits | None

    # -- mailbox operations ------------------------------------------------------

    def list_messages(self) -> tuple[list[int], int]:
        """Return the message numbers in the mailbox and their total size in bytes."""
        with self._session() as client:
            listing = commands.scan(self._caller(client), client)
        return listing.numbers.tolist(), listing.total_size

    def get_mailbox_stat(self) -> tuple[int, int]:
        """Return ``(message_count, total_size_bytes)`` from ``STAT``."""
        with self._session() as client:
            return commands.stat(self._caller(client))

    def get_message_size(self, message_id: int) -> int:
        """Return the size of one message in bytes, or -1 if it cannot be had."""
        check_message_id(message_id)
        try:
            with self._session() as client:
                size = commands.size_of(self._caller(client), message_id)
        except MailHandlerError as error:
            log.warning("size of POP3 message %d unavailable: %s", message_id, error)
            return -1
        return -1 if size is None else size

    def fetch_message(self, message_id: int) -> dict[str, Any] | None:
        """Download and parse one message.

        Returns None (and logs a warning) when the server refuses it, for instance
        because there is no such message. Raises :class:`POP3MessageTooLargeError` for
        a message over ``max_message_size``, without downloading it when the server
        reports its size.
        """
        check_message_id(message_id)
        with self._session() as client:
            return self._fetch(client, message_id, None)

    def fetch_messages(self, message_ids: list[int] | None = None) -> list[dict[str, Any]]:
        """Download and parse several messages (all when ``message_ids`` is None).

        A message that is refused, missing or too large is logged and skipped. A
        broken connection still raises, since no later message could be fetched.
        """
        messages = []

        def parse(number: int, raw: bytes, size: int) -> None:
            messages.append(
                parse_message(
                    raw,
                    number,
                    size=size,
                    include_raw=self._include_raw,
                    include_attachment_content=self._include_attachment_content,
                    limits=self._parse_limits,
                )
            )

        self._retrieve_each(message_ids, parse)
        return messages

    def fetch_raw_messages(self, message_ids: list[int] | None = None) -> dict[int, bytes]:
        """Download several messages (all when None) without parsing them.

        Returns message number to the message as the server sent it, dot-unstuffed.
        Refused, missing and too large messages are logged and skipped, as in
        :meth:`fetch_messages`; both send the ``RETR`` commands in batches when the
        server offers PIPELINING, so a slow network costs a few round trips, not one
        per message.
        """
        raws: dict[int, bytes] = {}

        def keep(number: int, raw: bytes, size: int) -> None:
            raws[number] = raw

        self._retrieve_each(message_ids, keep)
        return raws

    def _retrieve_each(
        self, message_ids: list[int] | None, handle: Callable[[int, bytes, int], None]
    ) -> None:
        """RETR the wanted messages in one session and hand each to ``handle``."""
        with self._session() as client:
            call = self._caller(client)
            listing = commands.scan(call, client)
            wanted = []
            for number in self._targets(message_ids, listing):
                try:
                    commands.check_size(number, listing.size_of(number), self._max_message_size)
                except POP3MessageTooLargeError as error:
                    log.warning("skipping POP3 message %d: %s", number, error)
                    continue
                wanted.append(number)
            if len(wanted) > 1 and commands.can_pipeline(call, client):

                def deliver(number: int, raw: bytes | None, status: bytes) -> None:
                    if raw is None:
                        refusal = error_for_reply(status, secrets=self._secrets())
                        log.warning("POP3 server refused message %d: %s", number, refusal)
                        return
                    handle(number, raw, listing.size_of(number))

                try:
                    commands.retrieve_many(call, client, wanted, self._max_message_size, deliver)
                except POP3MessageTooLargeError as error:
                    # Larger than LIST said: skipped, as below, but the session went
                    # with it (the rest of the reply was never read).
                    log.warning("skipping POP3 message %s: %s", error.message_number, error)
                    self._live_client()  # raises: no later message can be fetched
                    raise
                return
            for number in wanted:
                try:
                    raw = self._retrieve_one(self._live_client(), number)
                except POP3MessageTooLargeError as error:
                    log.warning("skipping POP3 message %d: %s", number, error)
                    continue
                if raw is not None:
                    handle(number, raw, listing.size_of(number))

    def delete_message(self, message_id: int) -> bool:
        """Mark one message for deletion; False if the server refuses.

        In a session the deletion takes effect at ``disconnect()`` and ``reset()``
        can undo it; without a session it is committed before this returns.
        """
        check_message_id(message_id)
        with self._session() as client:
            return self._delete(client, message_id)

    def delete_messages(self, message_ids: list[int]) -> tuple[int, int]:
        """Mark several messages for deletion; return ``(deleted, failed)`` counts."""
        for message_id in message_ids:
            check_message_id(message_id)
        with self._session() as client:
            outcomes = [self._delete(client, number) for number in message_ids]
        deleted = sum(outcomes)
        return deleted, len(outcomes) - deleted

    def reset(self) -> bool:
        """Cancel every deletion marked in the open session (``RSET``).

        Messages are then kept when the session ends. With no logged-in session there
        is nothing to cancel and True is returned without contacting the server.
        False if the server refuses.
        """
        if self._client is None or not self._authenticated:
            log.debug("POP3 reset: no logged-in session, nothing to undo")
            return True
        try:
            self._call(self._client, "rset")
        except POP3ResponseError as error:
            log.warning("POP3 server refused RSET: %s", error)
            return False
        self._pending_deletions = 0
        return True

    def get_capabilities(self) -> list[str]:
        """Return the server's ``CAPA`` list, e.g. ``['TOP', 'UIDL', 'SASL PLAIN']``.

        Does not log in. A server without ``CAPA`` gives an empty list.
        """
        with self._session(login=False) as client:
            capabilities = commands.capabilities(self._caller(client))
        return [" ".join([name, *arguments]) for name, arguments in capabilities.items()]

    def test_connection(self) -> bool:
        """True if the server can be reached, accepts the login and answers ``NOOP``.

        Never raises; the reason for a False is logged.
        """
        try:
            with self._session() as client:
                self._call(client, "noop")
        except MailHandlerError as error:
            log.warning("POP3 health check of %s:%d failed: %s", self.hostname, self.port, error)
            return False
        return True

    # -- unique IDs and headers --------------------------------------------------

    def list_uids(self) -> dict[int, str]:
        """Map each message number to its unique ID (``UIDL``).

        A message whose ID breaks RFC 1939 (not 1 to 70 characters from ``!`` to ``~``)
        is left out, with a warning. Raises :class:`POP3UnsupportedError` if the server
        refuses ``UIDL``.
        """
        listing = self.uid_listing()
        uids = {number: uid for number, uid in listing if uid is not None}
        if len(uids) != len(listing):
            log.warning("POP3 server sent invalid unique IDs for messages %s", listing.invalid)
        if len(set(uids.values())) != len(uids):
            log.warning("POP3 server returned duplicate unique IDs")
        return uids

    def uid_listing(self) -> UIDListing:
        """The ``UIDL`` listing as it came: every message number with its unique ID, or
        None where the server sent an invalid one. What :meth:`sync` works from."""
        with self._session() as client:
            return commands.unique_ids(self._caller(client), client)

    def list_headers(self, message_ids: list[int] | None = None) -> list[dict[str, Any]]:
        """Header summaries (``TOP n 0``) of several messages, all when None.

        Refused messages are logged and skipped; a server that does not offer
        ``TOP`` raises :class:`POP3UnsupportedError`.
        """
        with self._session() as client:
            listing = commands.scan(self._caller(client), client)
            summaries = []
            for number in self._targets(message_ids, listing):
                headers = self._headers(self._live_client(), number)
                if headers is not None:
                    size = listing.size_of(number)
                    summaries.append(parse_header_summary(headers, number, size=size))
        return summaries

    # -- fetching and deleting, one message at a time -----------------------------

    def _targets(self, requested: Iterable[int] | None, listing: ScanListing) -> Iterable[int]:
        if requested is None:
            return listing.numbers
        targets = []
        for number in requested:
            check_message_id(number)
            if number in listing:
                targets.append(number)
            else:
                log.warning("POP3 message %d is not in the mailbox; skipped", number)
        return targets

    def _retrieve_one(self, client: Client, number: int) -> bytes | None:
        """RETR one message whose size was checked; None if the server refuses it."""
        try:
            return commands.retrieve(self._caller(client), client, number, self._max_message_size)
        except POP3ResponseError as error:
            log.warning("POP3 server refused message %d: %s", number, error)
            return None

    def _fetch(self, client: Client, number: int, size: int | None) -> dict[str, Any] | None:
        call = self._caller(client)
        try:
            if size is None:
                size = commands.size_of(call, number)
            commands.check_size(number, size, self._max_message_size)
            raw = commands.retrieve(call, client, number, self._max_message_size)
        except POP3ResponseError as error:
            log.warning("POP3 server refused message %d: %s", number, error)
            return None
        return parse_message(
            raw,
            number,
            size=size if size is not None else len(raw),
            include_raw=self._include_raw,
            include_attachment_content=self._include_attachment_content,
            limits=self._parse_limits,
        )

    def _headers(self, client: Client, number: int) -> bytes | None:
        try:
            return commands.headers(self._caller(client), client, number, self._max_message_size)
        except POP3UnsupportedError:
            raise
        except POP3ResponseError as error:
            log.warning("POP3 server refused the headers of message %d: %s", number, error)
            return None

    def _delete(self, client: Client, number: int) -> bool:
        try:
            self._call(client, "dele", number)
        except POP3ResponseError as error:
            log.warning("POP3 server refused to delete message %d: %s", number, error)
            return False
        self._pending_deletions += 1
        return True
