"""The spec's Flask routes as a runnable app: send mail over SMTP, sync a POP3 mailbox.

``create_app(config)`` builds the app. Server settings and passwords come from the
configuration, never from a request: a route that took ``hostname`` and
``password`` from its JSON body (as the spec's snippet does) would let any caller
make this server connect wherever they like, and would put passwords in request
bodies and access logs.

Configuration keys:

``MAIL_SMTP``
    ``hostname``, ``port``, ``username``, ``password``, ``encryption`` and
    ``from_address`` for the one SMTP server the app sends through.
``MAIL_SMTP_OPTIONS``
    keyword options for :class:`SMTPProtocolHandler` (``ssl_context``, ``timeout``,
    ``pool`` ...).
``MAIL_POP3_ACCOUNTS``
    ``lookup(account_id)`` returning ``hostname``, ``port``, ``username``,
    ``password`` and optionally ``encryption`` for an account, or ``None``.
``MAIL_POP3_OPTIONS``
    keyword options for :class:`POP3ProtocolHandler` (``ssl_context``, ``timeout`` ...).
``MAIL_SAVE_MESSAGE``
    ``save(account_id, message_dict)``; by default messages are kept in memory under
    ``app.extensions["mail_inbox"][account_id]``.

Routes:

``POST /api/send``
    JSON ``{"to", "subject", "text_body", "html_body", "cc", "bcc", "reply_to",
    "attachments"}``; answers ``DeliveryResult.to_dict()`` with 200 when the server
    took the message, 400 for invalid input, 503 (with ``Retry-After``) for a
    transient failure and 502 when the server refused it.
``POST /api/pop3/sync``
    JSON ``{"accountId": ...}``; hands every message not seen before to
    ``MAIL_SAVE_MESSAGE`` and answers ``{"synced", "skipped", "failed"}``. Unique IDs
    (UIDL) are remembered per account, so a second sync fetches only new mail.

A deployment calls ``create_app`` from its own factory with settings read from its
secret store; the tests run it against loopback test servers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, current_app, request

from src.handlers import (
    DeliveryResult,
    MailAuthenticationError,
    MailConnectionError,
    MailHandlerError,
    SMTPDeliveryStatus,
    SMTPProtocolHandler,
)
from src.handlers.errors import POP3MailboxBusyError
from src.handlers.pop3 import POP3ProtocolHandler
from src.handlers.pop3 import MemoryUIDStore

JSONResponse = tuple[dict[str, Any], int] | tuple[dict[str, Any], int, dict[str, str]]

RETRY_AFTER = {"Retry-After": "60"}

# HTTP status for each delivery status; transient failures also get Retry-After.
SEND_STATUS = {
    SMTPDeliveryStatus.SUCCESS: 200,
    SMTPDeliveryStatus.INVALID: 400,
    SMTPDeliveryStatus.RETRY: 503,
    SMTPDeliveryStatus.TEMP_FAILED: 503,
    SMTPDeliveryStatus.REJECTED: 502,
    SMTPDeliveryStatus.FAILED: 502,
}

# JSON field -> send_message argument.
SEND_FIELDS = {
    "to": "to_addresses",
    "subject": "subject",
    "text_body": "text_body",
    "html_body": "html_body",
    "cc": "cc_addresses",
    "bcc": "bcc_addresses",
    "reply_to": "reply_to",
    "attachments": "attachments",
}
TEXT_FIELDS = ("subject", "text_body", "html_body", "reply_to")
ADDRESS_FIELDS = ("to", "cc", "bcc")


class BadRequest(ValueError):
    """The request body cannot be used; the message says why."""


def create_app(config: Mapping[str, Any]) -> Flask:
    """Build the app from ``config`` (see the module docstring for the keys)."""
    app = Flask(__name__)
    app.config.from_mapping(config)
    smtp = dict(app.config["MAIL_SMTP"])
    app.extensions["mail_smtp"] = SMTPProtocolHandler(
        smtp["hostname"],
        smtp["port"],
        smtp.get("username"),
        smtp.get("password"),
        smtp.get("encryption", "tls"),
        smtp.get("from_address"),
        **app.config.get("MAIL_SMTP_OPTIONS", {}),
    )
    app.extensions["mail_inbox"] = {}
    app.extensions["mail_seen_uids"] = {}
    app.add_url_rule("/api/send", view_func=send_email, methods=["POST"])
    app.add_url_rule("/api/pop3/sync", view_func=sync_pop3, methods=["POST"])
    return app


# -- sending --------------------------------------------------------------------------


def send_email() -> JSONResponse:
    """Send the message described by the JSON body through the configured server."""
    try:
        message = parse_send_request(request.get_json(silent=True))
    except BadRequest as error:
        return DeliveryResult(SMTPDeliveryStatus.INVALID, smtp_error=str(error)).to_dict(), 400
    handler: SMTPProtocolHandler = current_app.extensions["mail_smtp"]
    # Retrying here would hold the request for the whole back-off; the client may retry.
    result = handler.send_message(**message, retry=False)
    status = SEND_STATUS[result.status]
    if status == 503:
        return result.to_dict(), status, RETRY_AFTER
    return result.to_dict(), status


def parse_send_request(body: object) -> dict[str, Any]:
    """The ``send_message`` arguments for a request body; :class:`BadRequest` if unusable."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(body) - set(SEND_FIELDS))
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
    for name in ("to", "subject"):
        if name not in body:
            raise BadRequest(f"'{name}' is required")
    for name in TEXT_FIELDS:
        if body.get(name) is not None and not isinstance(body[name], str):
            raise BadRequest(f"'{name}' must be a string")
    for name in ADDRESS_FIELDS:
        if body.get(name) is not None and not _is_address_list(body[name]):
            raise BadRequest(f"'{name}' must be an address or a list of addresses")
    attachments = body.get("attachments")
    if attachments is not None and not (
        isinstance(attachments, list) and all(isinstance(a, dict) for a in attachments)
    ):
        raise BadRequest("'attachments' must be a list of objects")
    return {SEND_FIELDS[name]: value for name, value in body.items()}


def _is_address_list(value: object) -> bool:
    if isinstance(value, str):
        return True
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


# -- POP3 sync ------------------------------------------------------------------------


def sync_pop3() -> JSONResponse:
    """Fetch the account's new messages and hand each to ``MAIL_SAVE_MESSAGE``."""
    body = request.get_json(silent=True)
    account_id = body.get("accountId") if isinstance(body, dict) else None
    if not isinstance(account_id, str | int) or isinstance(account_id, bool):
        return {"error": "'accountId' (a string or an integer) is required"}, 400
    credentials = current_app.config["MAIL_POP3_ACCOUNTS"](account_id)
    if credentials is None:
        return {"error": "no such account"}, 404
    seen = current_app.extensions["mail_seen_uids"].setdefault(account_id, MemoryUIDStore())
    save = _saver(account_id)
    handler = POP3ProtocolHandler(
        credentials["hostname"],
        credentials["port"],
        credentials["username"],
        credentials["password"],
        credentials.get("encryption", "ssl"),
        **current_app.config.get("MAIL_POP3_OPTIONS", {}),
    )
    try:
        result = handler.sync(seen, save)
    except MailHandlerError as error:
        return _pop3_failure(error)
    return {"synced": result.fetched, "skipped": result.skipped, "failed": result.failed}, 200


def _saver(account_id: str | int) -> Callable[[dict[str, Any]], object]:
    configured = current_app.config.get("MAIL_SAVE_MESSAGE")
    if configured is not None:
        return lambda message: configured(account_id, message)
    inbox: list[dict[str, Any]] = current_app.extensions["mail_inbox"].setdefault(account_id, [])
    return inbox.append


def _pop3_failure(error: MailHandlerError) -> JSONResponse:
    """503 with Retry-After when trying again later may work, 502 when it will not."""
    body = {"error": str(error), "type": type(error).__name__}
    if isinstance(error, POP3MailboxBusyError | MailConnectionError):
        return body, 503, RETRY_AFTER
    if isinstance(error, MailAuthenticationError):
        body["error"] = "the mail server refused the account's credentials"
    return body, 502
