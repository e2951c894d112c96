"""The operations on one mailbox: :class:`Mailbox`, working through a :class:`Session`.

Listing, fetching (one by one, or ``RETR`` pipelined in batches), header summaries,
unique IDs, deletion and ``RSET``, capabilities and the health check. Each operation
uses the session's open connection, or a session of its own for the call. Refused,
missing and too large messages are logged and skipped where several are asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .._mime.parser import ParseLimits, parse_header_summary, parse_message
from .._net.logs import get_logger
from ..errors import (
    MailHandlerError,
    POP3MessageTooLargeError,
    POP3ResponseError,
    POP3UnsupportedError,
)
from .adapter import ClientAdapter, check_size
from .checks import check_message_id
from .listing import ScanListing, UIDListing
from .session import Session, SessionState
from .wire import error_for_reply

log = get_logger("pop3")

#: A message's listed size, None where the server's reply gave none.
_SizeOf = Callable[[int], "int | None"]
#: Up to this many messages asked by number have their sizes asked one by one
#: (``LIST n``), which beats listing a mailbox of thousands to find a few.
_FEW = 32


@dataclass(frozen=True)
class MessageOptions:
    """How fetched messages are bounded and what their dicts carry."""

    max_message_size: int | None
    include_raw: bool = False
    include_attachment_content: bool = False
    parse_limits: ParseLimits | None = None

    def parse(self, raw: bytes, number: int, size: int) -> dict[str, Any]:
        """The message dict of ``raw``."""
        return parse_message(
            raw,
            number,
            size=size,
            include_raw=self.include_raw,
            include_attachment_content=self.include_attachment_content,
            limits=self.parse_limits,
        )


class Mailbox:
    """Mailbox operations on ``session`` with ``options``."""

    def __init__(self, session: Session, options: MessageOptions) -> None:
        self._session = session
        self._options = options

    # -- listing -----------------------------------------------------------------

    def list_messages(self) -> tuple[list[int], int]:
        """The message numbers in the mailbox and their total size in bytes."""
        with self._session.using() as session:
            listing = session.run("LIST", ClientAdapter.scan)
        return listing.numbers.tolist(), listing.total_size

    def stat(self) -> tuple[int, int]:
        """``(message_count, total_size_bytes)`` from ``STAT``."""
        with self._session.using() as session:
            return session.run("STAT", ClientAdapter.stat)

    def size_of(self, number: int) -> int:
        """The size of one message in bytes, or -1 if it cannot be had."""
        check_message_id(number)
        try:
            with self._session.using() as session:
                size = session.run("LIST", lambda adapter: adapter.size_of(number))
        except MailHandlerError as error:
            log.warning("size of POP3 message %d unavailable: %s", number, error)
            return -1
        return -1 if size is None else size

    def uid_listing(self) -> UIDListing:
        """``UIDL`` as it came; :class:`POP3UnsupportedError` if the server refuses it."""
        with self._session.using() as session:
            try:
                return session.run("UIDL", ClientAdapter.unique_ids)
            except POP3ResponseError as error:
                raise POP3UnsupportedError(
                    f"server refused UIDL ({error.text}); unique IDs are not available",
                    error.enhanced_code,
                ) from None

    def list_uids(self) -> dict[int, str]:
        """Message number to unique ID, leaving out (with a warning) invalid IDs."""
        listing = self.uid_listing()
        uids = {number: uid for number, uid in listing if uid is not None}
        if len(uids) != len(listing):
            log.warning("POP3 server sent invalid unique IDs for messages %s", listing.invalid)
        if len(set(uids.values())) != len(uids):
            log.warning("POP3 server returned duplicate unique IDs")
        return uids

    def capabilities(self) -> list[str]:
        """The server's ``CAPA`` list; no login needed."""
        with self._session.using(login=False) as session:
            listed = self._capabilities(session)
        return [" ".join([name, *arguments]) for name, arguments in listed.items()]

    # -- fetching ----------------------------------------------------------------

    def fetch(self, number: int) -> dict[str, Any] | None:
        """One parsed message; None (logged) when the server refuses it."""
        check_message_id(number)
        limit = self._options.max_message_size
        with self._session.using() as session:
            try:
                size = session.run("LIST", lambda adapter: adapter.size_of(number))
                check_size(number, size, limit)
                raw = self._retrieve(session, number)
            except POP3ResponseError as error:
                log.warning("POP3 server refused message %d: %s", number, error)
                return None
        return self._options.parse(raw, number, size if size is not None else len(raw))

    def fetch_many(self, numbers: list[int] | None) -> list[dict[str, Any]]:
        """Several parsed messages (all for None); refused ones are skipped."""
        messages = []

        def parse(number: int, raw: bytes, size: int) -> None:
            messages.append(self._options.parse(raw, number, size))

        self._retrieve_each(numbers, parse)
        return messages

    def fetch_raw(self, numbers: list[int] | None) -> dict[int, bytes]:
        """Several messages as sent, unparsed (all for None); refused ones are skipped."""
        raws: dict[int, bytes] = {}

        def keep(number: int, raw: bytes, size: int) -> None:
            raws[number] = raw

        self._retrieve_each(numbers, keep)
        return raws

    def fetch_each(
        self,
        numbers: list[int] | None,
        handle: Callable[[dict[str, Any]], object],
        batch_bytes: int,
    ) -> list[int]:
        """Hand each parsed message (all for None) to ``handle``, in order, as soon as
        its batch is downloaded; return the numbers not handed over (refused, missing
        or too large).

        Where the server offers PIPELINING, each batch is one pipelined download of at
        most ``batch_bytes`` by the listed sizes (a larger message is a batch of its
        own), so memory stays bounded however many are asked for; elsewhere each message
        is handed over as soon as it is downloaded. ``handle`` runs outside every time
        limit; if it raises, the rest are not fetched.
        """
        with self._session.using() as session:
            targets, wanted, size_of = self._wanted(session, numbers)
            handed: set[int] = set()
            downloaded: dict[int, tuple[bytes, int]] = {}

            def keep(number: int, raw: bytes, size: int) -> None:
                downloaded[number] = (raw, size)

            pipelined = _pipelines(session, len(wanted))
            if pipelined:
                batches: Iterable[list[int]] = _batches(wanted, size_of, batch_bytes)
            else:
                # One round trip per message either way: hand each over at once.
                batches = ([number] for number in wanted)
            for batch in batches:
                downloaded.clear()
                self._retrieve_all(session, batch, size_of, keep, pipelined)
                for number in batch:
                    if number in downloaded:
                        raw, size = downloaded.pop(number)
                        handle(self._options.parse(raw, number, size))
                        handed.add(number)
        asked = targets if numbers is None else numbers
        return [number for number in asked if number not in handed]

    def headers(self, numbers: list[int] | None) -> list[dict[str, Any]]:
        """Header summaries (``TOP n 0``) of several messages, all for None."""
        with self._session.using() as session:
            listing = session.run("LIST", ClientAdapter.scan)
            summaries = []
            for number in _targets(numbers, listing):
                headers = self._headers(session, number)
                if headers is not None:
                    size = listing.size_of(number)
                    summaries.append(parse_header_summary(headers, number, size=size))
        return summaries

    def _wanted(
        self, session: Session, numbers: list[int] | None
    ) -> tuple[list[int], list[int], _SizeOf]:
        """The messages of ``numbers`` (all for None) that are in the mailbox, those of
        them within the size limit, and how to look up a size."""
        if numbers is not None and len(numbers) <= _FEW:
            targets, size_of = self._sizes_of_few(session, numbers)
        else:
            listing = session.run("LIST", ClientAdapter.scan)
            targets, size_of = list(_targets(numbers, listing)), listing.size_of
        limit = self._options.max_message_size
        wanted = []
        for number in targets:
            try:
                check_size(number, size_of(number), limit)
            except POP3MessageTooLargeError as error:
                log.warning("skipping POP3 message %d: %s", number, error)
                continue
            wanted.append(number)
        return targets, wanted, size_of

    def _sizes_of_few(self, session: Session, numbers: list[int]) -> tuple[list[int], _SizeOf]:
        """``LIST n`` for each of a few messages (pipelined where the server offers it),
        cheaper than listing a large mailbox whole."""
        for number in numbers:
            check_message_id(number)
        found: dict[int, int | None] = {}
        if _pipelines(session, len(numbers)):
            asked = session.run("LIST", lambda adapter: adapter.sizes_of(numbers))
            found.update(
                (n, size) for n, size in zip(numbers, asked, strict=True) if size is not None
            )
        else:
            for number in numbers:
                try:
                    found[number] = session.run("LIST", _size_asker(number))
                except POP3ResponseError:
                    continue
        targets = []
        for number in numbers:
            if number in found:
                targets.append(number)
            else:
                log.warning("POP3 message %d is not in the mailbox; skipped", number)
        return targets, found.__getitem__

    def _retrieve_each(
        self, numbers: list[int] | None, handle: Callable[[int, bytes, int], None]
    ) -> None:
        """RETR the wanted messages of ``numbers`` (all for None) in one session and
        hand each to ``handle``."""
        with self._session.using() as session:
            _, wanted, size_of = self._wanted(session, numbers)
            self._retrieve_all(session, wanted, size_of, handle, _pipelines(session, len(wanted)))

    def _retrieve_all(
        self,
        session: Session,
        wanted: list[int],
        size_of: _SizeOf,
        handle: Callable[[int, bytes, int], None],
        pipelined: bool,
    ) -> None:
        """RETR ``wanted`` (pipelined if ``pipelined`` and more than one); hand each to
        ``handle``. Refused and too large messages are logged and skipped."""
        if not (pipelined and len(wanted) > 1):
            for number in wanted:
                try:
                    raw = self._retrieve(session, number)
                except POP3MessageTooLargeError as error:
                    log.warning("skipping POP3 message %d: %s", number, error)
                    continue
                except POP3ResponseError as error:
                    log.warning("POP3 server refused message %d: %s", number, error)
                    continue
                handle(number, raw, _size(size_of(number), raw))
            return
        limit = self._options.max_message_size

        def deliver(number: int, status: bytes, raw: bytes | None) -> None:
            # A batch is many replies: each gets the full time limit, so a large
            # mailbox on a slow link is not cut while replies keep coming.
            session.restart_limit()
            if raw is None:
                refusal = error_for_reply(status, secrets=session.secrets())
                log.warning("POP3 server refused message %d: %s", number, refusal)
                return
            handle(number, raw, _size(size_of(number), raw))

        try:
            session.run("RETR", lambda adapter: adapter.retrieve_many(wanted, limit, deliver))
        except POP3MessageTooLargeError as error:
            # Larger than LIST said: skipped, but the session went with it (the rest
            # of the reply was never read).
            log.warning("skipping POP3 message %s: %s", error.message_number, error)
            session.live()  # raises: no later message can be fetched
            raise

    def _retrieve(self, session: Session, number: int) -> bytes:
        limit = self._options.max_message_size
        return session.run("RETR", lambda adapter: adapter.retrieve(number, limit), message=number)

    def _headers(self, session: Session, number: int) -> bytes | None:
        limit = self._options.max_message_size
        try:
            return session.run(
                "TOP", lambda adapter: adapter.headers(number, limit), message=number
            )
        except POP3ResponseError as error:
            listed = self._capabilities(session)
            if listed and "TOP" not in listed:
                raise POP3UnsupportedError(
                    f"server refused TOP ({error.text}) and does not list it in CAPA",
                    error.enhanced_code,
                ) from None
            log.warning("POP3 server refused the headers of message %d: %s", number, error)
            return None

    @staticmethod
    def _capabilities(session: Session) -> dict[str, list[str]]:
        try:
            return session.run("CAPA", ClientAdapter.capabilities)
        except POP3ResponseError:
            return {}

    # -- deleting and the rest ---------------------------------------------------

    def delete(self, number: int) -> bool:
        """Mark one message for deletion; False if the server refuses."""
        check_message_id(number)
        with self._session.using() as session:
            return self._delete(session, number)

    def delete_many(self, numbers: list[int]) -> tuple[int, int]:
        """Mark several messages for deletion; ``(deleted, failed)`` counts.

        The ``DELE`` commands are pipelined when the server lists PIPELINING.
        """
        for number in numbers:
            check_message_id(number)
        with self._session.using() as session:
            if _pipelines(session, len(numbers)):
                outcomes = self._delete_pipelined(session, numbers)
            else:
                outcomes = [self._delete(session, number) for number in numbers]
        deleted = sum(outcomes)
        return deleted, len(outcomes) - deleted

    @staticmethod
    def _delete_pipelined(session: Session, numbers: list[int]) -> list[bool]:
        replies = session.run("DELE", lambda adapter: adapter.delete_many(numbers))
        outcomes = []
        for number, status in zip(numbers, replies, strict=True):
            if status.startswith(b"+"):
                session.deletion_marked()
                outcomes.append(True)
            else:
                refusal = error_for_reply(status, secrets=session.secrets())
                log.warning("POP3 server refused to delete message %d: %s", number, refusal)
                outcomes.append(False)
        return outcomes

    def reset(self) -> bool:
        """``RSET`` in a logged-in session; True with nothing to undo, False if refused."""
        session = self._session
        if session.state is not SessionState.AUTHENTICATED:
            log.debug("POP3 reset: no logged-in session, nothing to undo")
            return True
        try:
            session.run("RSET", ClientAdapter.reset)
        except POP3ResponseError as error:
            log.warning("POP3 server refused RSET: %s", error)
            return False
        session.deletions_undone()
        return True

    def noop(self) -> bool:
        """True if the server can be reached, accepts the login and answers ``NOOP``."""
        try:
            with self._session.using() as session:
                session.run("NOOP", ClientAdapter.noop)
        except MailHandlerError as error:
            where = self._session.connector.where
            log.warning("POP3 health check of %s failed: %s", where, error)
            return False
        return True

    @staticmethod
    def _delete(session: Session, number: int) -> bool:
        try:
            session.run("DELE", lambda adapter: adapter.delete(number))
        except POP3ResponseError as error:
            log.warning("POP3 server refused to delete message %d: %s", number, error)
            return False
        session.deletion_marked()
        return True


def _targets(requested: Iterable[int] | None, listing: ScanListing) -> Iterable[int]:
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


def _pipelines(session: Session, count: int) -> bool:
    """Whether ``count`` commands go out pipelined: more than one, and the server lists
    PIPELINING (asked at most once per connection; one command is not worth a CAPA)."""
    return count > 1 and session.run("CAPA", ClientAdapter.can_pipeline)


def _size_asker(number: int) -> Callable[[ClientAdapter], int | None]:
    return lambda adapter: adapter.size_of(number)


def _size(listed: int | None, raw: bytes) -> int:
    return listed if listed is not None else len(raw)


def _batches(numbers: list[int], size_of: _SizeOf, budget: int) -> Iterator[list[int]]:
    """``numbers`` in order, cut into runs whose listed sizes add up to at most
    ``budget`` (a message larger than that alone)."""
    batch: list[int] = []
    total = 0
    for number in numbers:
        size = size_of(number) or 0
        if batch and total + size > budget:
            yield batch
            batch, total = [], 0
        batch.append(number)
        total += size
    if batch:
        yield batch
