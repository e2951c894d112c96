"""A mailbox that offers only what a sync asks of one. Not a test module itself."""

from __future__ import annotations

from typing import Any

from src.handlers.pop3 import POP3ProtocolHandler


class ProtocolOnly:
    """A mailbox offering only what :class:`~src.handlers._sync.sync.SyncMailbox` asks
    for (no ``fetch_each``, no ``delete_messages``), as an application's own wrapper
    or double would, around a real handler."""

    def __init__(self, handler: POP3ProtocolHandler) -> None:
        self._handler = handler

    def session(self) -> Any:
        return self._handler.session()

    def uid_listing(self) -> Any:
        return self._handler.uid_listing()

    def fetch_message(self, message_id: int) -> dict[str, Any] | None:
        return self._handler.fetch_message(message_id)

    def delete_message(self, message_id: int) -> bool:
        return self._handler.delete_message(message_id)
