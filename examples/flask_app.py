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
``MAIL_DATABASE``
    the SQLite database (a file path) that holds the POP3 accounts, with their
    passwords encrypted, the fetched messages and the handled UIDs; by default a
    private in-memory database that lives as long as the app.
``MAIL_CREDENTIAL_KEYS``
    the keys that encrypt stored passwords, newest first (see
    :mod:`src.integrations.credentials`; put a new key first to rotate, then call
    ``rotate_credentials(app)``). Without it a key is made for this process only,
    and stored passwords do not survive a restart.
``MAIL_POP3_ACCOUNTS``
    optional ``lookup(account_id)`` returning ``hostname``, ``port``, ``username``,
    ``password`` and optionally ``encryption``, or ``None``: for accounts kept in a
    secret store instead of the database. Accounts added with :func:`add_account`
    are found without it.
``MAIL_POP3_OPTIONS``
    keyword options for :class:`POP3ProtocolHandler` (``ssl_context``, ``timeout`` ...).
``MAIL_SAVE_MESSAGE``
    ``save(account_id, message_dict)``, run inside the transaction that records the
    message's UID; by default messages are stored in the database's ``messages``
    table, readable as ``app.extensions["mail_inbox"][account_id]``.

Routes:

``POST /api/send``
    JSON ``{"to", "subject", "text_body", "html_body", "cc", "bcc", "reply_to",
    "attachments"}``; answers ``DeliveryResult.to_dict()`` with 200 when the server
    took the message, 400 for invalid input, 503 (with ``Retry-After``) for a
    transient failure and 502 when the server refused it.
``POST /api/pop3/sync``
    JSON ``{"accountId": ...}``; stores every message not seen before and answers
    ``{"synced", "skipped", "failed"}``. Each message and the record of its unique ID
    (UIDL) commit in one SQLite transaction (:class:`DBUIDStore`), so a second sync
    fetches only new mail and a crash never stores a message twice; a sync already
    running for the account gets 503.

A deployment calls ``create_app`` from its own factory with settings read from its
secret store; the tests run it against loopback test servers.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from flask import Flask, current_app, request

from src.handlers import (
    AccountBusyError,
    DBUIDStore,
    DeliveryResult,
    MailAuthenticationError,
    MailConnectionError,
    MailHandlerError,
    SMTPDeliveryStatus,
    SMTPProtocolHandler,
)
from src.handlers.errors import POP3MailboxBusyError
from src.handlers.pop3 import POP3ProtocolHandler
from src.integrations.credentials import CredentialCipher, generate_key

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
    database = app.config.get("MAIL_DATABASE") or (
        f"file:mailhandlers-{secrets.token_hex(8)}?mode=memory&cache=shared"
    )
    app.extensions["mail_database"] = database
    # An in-memory database lives while a connection to it is open: this one.
    app.extensions["mail_database_keeper"] = _connect(database)
    _create_tables(app.extensions["mail_database_keeper"])
    app.extensions["mail_cipher"] = CredentialCipher(
        list(app.config.get("MAIL_CREDENTIAL_KEYS") or [generate_key()])
    )
    app.extensions["mail_inbox"] = Inbox(database)
    app.add_url_rule("/api/send", view_func=send_email, methods=["POST"])
    app.add_url_rule("/api/pop3/sync", view_func=sync_pop3, methods=["POST"])
    return app


# -- the database ---------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY, hostname TEXT NOT NULL, port INTEGER NOT NULL,
    username TEXT NOT NULL, password_encrypted TEXT, encryption TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    account_id TEXT NOT NULL, uid TEXT NOT NULL, message TEXT NOT NULL,
    PRIMARY KEY (account_id, uid));
"""


def _connect(database: str) -> sqlite3.Connection:
    return sqlite3.connect(database, uri=database.startswith("file:"), timeout=30)


def _create_tables(connection: sqlite3.Connection) -> None:
    connection.executescript(SCHEMA)


def add_account(
    app: Flask,
    account_id: str | int,
    *,
    hostname: str,
    port: int,
    username: str,
    password: str | None,
    encryption: str = "ssl",
) -> None:
    """Store (or replace) a POP3 account; the password is encrypted before it is written."""
    cipher: CredentialCipher = app.extensions["mail_cipher"]
    sealed = None if password is None else cipher.encrypt(password, account=account_id)
    with _connect(app.extensions["mail_database"]) as connection:
        connection.execute(
            "INSERT OR REPLACE INTO accounts VALUES (?, ?, ?, ?, ?, ?)",
            (str(account_id), hostname, port, username, sealed, encryption),
        )


def rotate_credentials(app: Flask) -> int:
    """Re-encrypt every stored password with the newest key; return how many."""
    cipher: CredentialCipher = app.extensions["mail_cipher"]
    with _connect(app.extensions["mail_database"]) as connection:
        rows = connection.execute(
            "SELECT id, password_encrypted FROM accounts WHERE password_encrypted IS NOT NULL"
        ).fetchall()
        rotated = list(cipher.rotate_all(rows))
        connection.executemany(
            "UPDATE accounts SET password_encrypted = ? WHERE id = ?",
            [(token, account) for account, token in rotated],
        )
    return len(rotated)


def _stored_account(account_id: str | int) -> dict[str, Any] | None:
    with _connect(current_app.extensions["mail_database"]) as connection:
        row = connection.execute(
            "SELECT hostname, port, username, password_encrypted, encryption"
            " FROM accounts WHERE id = ?",
            (str(account_id),),
        ).fetchone()
    if row is None:
        return None
    hostname, port, username, sealed, encryption = row
    cipher: CredentialCipher = current_app.extensions["mail_cipher"]
    password = None if sealed is None else cipher.decrypt(sealed, account=account_id)
    return {
        "hostname": hostname,
        "port": port,
        "username": username,
        "password": password,
        "encryption": encryption,
    }


class Inbox(Mapping[Any, list[dict[str, Any]]]):
    """The stored messages by account id, read from the database on each access."""

    def __init__(self, database: str) -> None:
        self._database = database

    def __getitem__(self, account_id: Any) -> list[dict[str, Any]]:
        with _connect(self._database) as connection:
            rows = connection.execute(
                "SELECT message FROM messages WHERE account_id = ? ORDER BY rowid",
                (str(account_id),),
            ).fetchall()
        if not rows:
            raise KeyError(account_id)
        return [json.loads(text) for (text,) in rows]

    def __iter__(self) -> Iterator[Any]:
        with _connect(self._database) as connection:
            rows = connection.execute("SELECT DISTINCT account_id FROM messages").fetchall()
        return iter([account for (account,) in rows])

    def __len__(self) -> int:
        return len(list(iter(self)))


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
    lookup = current_app.config.get("MAIL_POP3_ACCOUNTS")
    credentials = lookup(account_id) if lookup is not None else None
    if credentials is None:
        try:
            credentials = _stored_account(account_id)
        except MailHandlerError as error:  # a stored password that does not decrypt
            return _pop3_failure(error)
    if credentials is None:
        return {"error": "no such account"}, 404
    save = _saver(account_id)
    handler = POP3ProtocolHandler(
        credentials["hostname"],
        credentials["port"],
        credentials["username"],
        credentials["password"],
        credentials.get("encryption", "ssl"),
        **current_app.config.get("MAIL_POP3_OPTIONS", {}),
    )
    connection = _connect(current_app.extensions["mail_database"])
    try:
        store = DBUIDStore(connection, account=str(account_id))
        result = handler.sync(store, save)
    except MailHandlerError as error:
        return _pop3_failure(error)
    finally:
        connection.close()
    return {"synced": result.fetched, "skipped": result.skipped, "failed": result.failed}, 200


def _saver(account_id: str | int) -> Callable[[dict[str, Any], Any], object]:
    """Saves one message through the cursor of the transaction that records its UID."""
    configured = current_app.config.get("MAIL_SAVE_MESSAGE")
    if configured is not None:
        return lambda message, cursor: configured(account_id, message)

    def store(message: dict[str, Any], cursor: Any) -> None:
        cursor.execute(
            "INSERT INTO messages (account_id, uid, message) VALUES (?, ?, ?)",
            (str(account_id), message["uid"], json.dumps(message, default=str)),
        )

    return store


def _pop3_failure(error: MailHandlerError) -> JSONResponse:
    """503 with Retry-After when trying again later may work, 502 when it will not."""
    body = {"error": str(error), "type": type(error).__name__}
    if isinstance(error, POP3MailboxBusyError | MailConnectionError | AccountBusyError):
        return body, 503, RETRY_AFTER
    if isinstance(error, MailAuthenticationError):
        body["error"] = "the mail server refused the account's credentials"
    return body, 502
