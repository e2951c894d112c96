"""Celery tasks that send mail through :class:`~src.handlers.smtp.SMTPProtocolHandler`.

Needs the ``celery`` extra. Importing this module registers two shared tasks with
every Celery app of the process; make the worker import it too (``include=`` or
``imports=``):

* ``send_email_async`` (task name ``mailhandlers.send_email_async``) takes the
  server settings and the password as arguments, as in the spec's example.
  Celery writes task arguments into the broker (and into it again for every retry),
  so the password sits in the queue in clear text.
* ``send_email_for_account`` (``mailhandlers.send_email_for_account``) takes an
  account id instead and asks the function given to :func:`configure` for the
  settings, so no secret ever enters the broker. Prefer it.

Importing it also registers ``sync_pop3_account`` (``mailhandlers.sync_pop3_account``,
from :mod:`src.integrations.pop3_tasks`), configured with :func:`configure_sync`.

Both send tasks return ``DeliveryResult.to_dict()``, which the JSON serializer carries as is.
The handler does not retry inside the worker (that would hold the worker for the
whole back-off); a transient failure (``is_retryable``) is handed to Celery's own
retry instead, ``retry_delays[n]`` seconds later for the n-th retry, at most
``max_retries`` times. Both are task attributes, adjustable through Celery's
``task_annotations``. The dict returned after the last attempt says in
``retry_count`` how many retries Celery made, and ``temp_failed`` as its status if
the failure persisted through them. A failure that must not be retried (a refused
recipient, an unknown outcome after DATA, bad input) is returned at once.

Both tasks are idempotent. Every attempt of one task (a Celery retry, or a redelivery
after a worker died) sends with the same Message-ID, derived from the task id
(:func:`task_message_id`), unless ``custom_headers`` sets one. With an attempt store
(``configure(attempt_store=...)``, see :mod:`src.integrations.idempotency`) a task
whose earlier attempt was cut off mid-send returns ``failed`` with
``outcome_unknown`` instead of sending a second copy, and a task that already finished
returns its stored result. The tasks are declared with ``acks_late=True`` and
``reject_on_worker_lost=True``, so a task whose worker is killed is delivered again;
see docs/many-workers.md for the broker settings that go with them.

Each worker process keeps one handler per connection settings (server, port,
login, encryption, sender and a salted digest of the password), so warm pooled
connections are reused between tasks. A forked child never uses its parent's
handlers or connections: it builds its own.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from celery import shared_task  # type: ignore[import-untyped,unused-ignore]
from celery.exceptions import Retry  # type: ignore[import-untyped,unused-ignore]

from ..handlers.retry import MAX_RETRIES, RETRY_DELAYS
from ..handlers.smtp import DeliveryResult, SMTPDeliveryStatus, SMTPProtocolHandler
from .idempotency import DONE, RETRY, SENDING, AttemptStore
from .pop3_tasks import SYNC_TASK, POP3Account, configure_sync, sync_pop3_account

__all__ = [
    "ACCOUNT_SEND_TASK",
    "SEND_TASK",
    "SYNC_TASK",
    "TASK_OPTIONS",
    "CredentialsProvider",
    "POP3Account",
    "SMTPAccount",
    "cached_handler_count",
    "configure",
    "configure_sync",
    "reset_handlers",
    "send_email_async",
    "send_email_for_account",
    "sync_pop3_account",
    "task_message_id",
]

log = logging.getLogger(__name__)

SEND_TASK = "mailhandlers.send_email_async"
ACCOUNT_SEND_TASK = "mailhandlers.send_email_for_account"

#: ``send_message`` arguments a task passes through besides recipients, subject and text.
MESSAGE_OPTIONS = frozenset(
    {
        "html_body",
        "cc_addresses",
        "bcc_addresses",
        "reply_to",
        "attachments",
        "custom_headers",
        "from_address",
    }
)


@dataclass(frozen=True)
class SMTPAccount:
    """Where and as whom to send. The password never shows in ``repr``."""

    hostname: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    encryption: str = "tls"
    from_address: str | None = None


#: Returns the account for an account id; runs in the worker, once per task attempt.
CredentialsProvider = Callable[[Any], SMTPAccount]


@dataclass
class _Configuration:
    credentials_provider: CredentialsProvider | None = None
    handler_options: Mapping[str, Any] = field(default_factory=dict)
    attempt_store: AttemptStore | None = None


class _HandlerCache:
    """One :class:`SMTPProtocolHandler` per connection settings, for this process only."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handlers: dict[tuple[object, ...], SMTPProtocolHandler] = {}
        self._pid = os.getpid()
        self._salt = secrets.token_bytes(16)

    def _key(self, account: SMTPAccount) -> tuple[object, ...]:
        digest = None
        if account.password is not None:
            secret = account.password.encode("utf-8", "surrogatepass")
            digest = hmac.new(self._salt, secret, hashlib.sha256).hexdigest()
        return (
            account.hostname,
            account.port,
            account.username,
            account.encryption.lower(),
            account.from_address,
            digest,
        )

    def get(self, account: SMTPAccount, options: Mapping[str, Any]) -> SMTPProtocolHandler:
        """The cached handler for ``account``, made with ``options`` on first use."""
        key = self._key(account)
        with self._lock:
            if self._pid != os.getpid():
                self._forget()
            handler = self._handlers.get(key)
            if handler is None:
                handler = SMTPProtocolHandler(
                    account.hostname,
                    account.port,
                    account.username,
                    account.password,
                    account.encryption,
                    account.from_address,
                    **options,
                )
                self._handlers[key] = handler
            return handler

    def __len__(self) -> int:
        with self._lock:
            return len(self._handlers) if self._pid == os.getpid() else 0

    def close_all(self) -> None:
        """Close and forget every handler this process made."""
        with self._lock:
            handlers = list(self._handlers.values()) if self._pid == os.getpid() else []
            self._forget()
        for handler in handlers:
            handler.close()

    def _forget(self) -> None:
        # Inherited handlers belong to the parent: drop them without closing anything.
        self._handlers = {}
        self._pid = os.getpid()

    def after_fork_in_child(self) -> None:
        """Start afresh in a forked child; the parent's lock may have been held."""
        self._lock = threading.Lock()
        self._forget()


_configuration = _Configuration()
_handlers = _HandlerCache()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_handlers.after_fork_in_child)


def configure(
    *,
    credentials_provider: CredentialsProvider | None = None,
    handler_options: Mapping[str, Any] | None = None,
    attempt_store: AttemptStore | None = None,
) -> None:
    """Set how the tasks of this process find accounts and build handlers.

    ``credentials_provider(account_id)`` returns the :class:`SMTPAccount` that
    :func:`send_email_for_account` sends through. ``handler_options`` are keyword
    options for every :class:`SMTPProtocolHandler` made from now on (``timeout``,
    ``ssl_context``, ``pool`` ...). ``attempt_store`` records every attempt so a
    redelivered task never sends blind (:mod:`src.integrations.idempotency`). Call it
    where the worker imports its Celery app. It replaces the whole configuration and
    closes the handlers made so far.
    """
    global _configuration
    _configuration = _Configuration(
        credentials_provider, dict(handler_options or {}), attempt_store
    )
    reset_handlers()


def reset_handlers() -> None:
    """Close the handlers this process keeps; the next task makes new ones."""
    _handlers.close_all()


def cached_handler_count() -> int:
    """How many handlers this process keeps (one per distinct connection settings)."""
    return len(_handlers)


def _retry_delay(delays: Sequence[float], retries_done: int) -> float:
    if not delays:
        return 0.0
    return float(delays[min(retries_done, len(delays) - 1)])


def _invalid(reason: str) -> dict[str, Any]:
    return DeliveryResult(status=SMTPDeliveryStatus.INVALID, smtp_error=reason).to_dict()


def task_message_id(task_id: str, sender: str | None, fallback_domain: str) -> str:
    """The Message-ID every attempt of task ``task_id`` sends with.

    A digest of the task id at the sender's domain (``fallback_domain`` when the
    sender is unknown): the same on every retry and redelivery, and it does not
    reveal the task id.
    """
    digest = hashlib.sha256(f"mailhandlers-task:{task_id}".encode()).hexdigest()[:32]
    domain = sender.rpartition("@")[2] if sender and "@" in sender else fallback_domain
    return f"<{digest}@{domain}>"


def _with_message_id(task: Any, account: SMTPAccount, message: Mapping[str, Any]) -> dict[str, Any]:
    options = dict(message)
    headers = dict(options.get("custom_headers") or {})
    task_id = getattr(task.request, "id", None)
    if task_id and not any(name.lower() == "message-id" for name in headers):
        sender = options.get("from_address") or account.from_address or account.username
        headers["Message-ID"] = task_message_id(str(task_id), sender, account.hostname)
        options["custom_headers"] = headers
    return options


def _unknown_outcome(message_id: str | None, retries_done: int) -> dict[str, Any]:
    return DeliveryResult(
        status=SMTPDeliveryStatus.FAILED,
        message_id=message_id,
        smtp_error="an earlier attempt of this task was cut off while sending; "
        "the message may have been delivered, so it was not sent again",
        outcome_unknown=True,
        retry_count=retries_done,
    ).to_dict()


def _send(
    task: Any,
    account: SMTPAccount,
    to_addresses: Sequence[str] | str,
    subject: str,
    text_body: str | None,
    message: Mapping[str, Any],
) -> dict[str, Any]:
    """Send once; hand a transient failure to Celery's retry, return anything else."""
    unknown = sorted(set(message) - MESSAGE_OPTIONS)
    if unknown:
        return _invalid(f"unknown message option(s): {', '.join(unknown)}")
    try:
        handler = _handlers.get(account, _configuration.handler_options)
    except ValueError as error:
        return _invalid(str(error))
    options = _with_message_id(task, account, message)
    retries_done: int = task.request.retries
    store = _configuration.attempt_store
    key = getattr(task.request, "id", None)
    if store is None or not key:
        return _attempt(task, handler, account, to_addresses, subject, text_body, options)
    previous, stored = store.begin(str(key))
    if previous == DONE and stored is not None:
        return stored
    if previous == SENDING:
        message_id = options.get("custom_headers", {}).get("Message-ID")
        outcome = _unknown_outcome(message_id, retries_done)
        log.warning("send task %s: an earlier attempt was cut off; outcome unknown", key)
        store.finish(str(key), DONE, outcome)
        return outcome
    try:
        outcome = _attempt(task, handler, account, to_addresses, subject, text_body, options)
    except Retry:
        store.finish(str(key), RETRY)
        raise
    store.finish(str(key), DONE, outcome)
    return outcome


def _attempt(
    task: Any,
    handler: SMTPProtocolHandler,
    account: SMTPAccount,
    to_addresses: Sequence[str] | str,
    subject: str,
    text_body: str | None,
    message: Mapping[str, Any],
) -> dict[str, Any]:
    result = handler.send_message(to_addresses, subject, text_body, retry=False, **message)
    retries_done: int = task.request.retries
    limit: int | None = task.max_retries
    if result.is_retryable and (limit is None or retries_done < limit):
        delay = _retry_delay(task.retry_delays, retries_done)
        log.info(
            "sending through %s:%d failed for now (%s); Celery retry %d in %.1f s",
            account.hostname,
            account.port,
            result.smtp_error,
            retries_done + 1,
            delay,
        )
        raise task.retry(countdown=delay, max_retries=limit)
    if result.status is SMTPDeliveryStatus.RETRY and retries_done:
        # Celery did retry, and the failure persisted through every attempt.
        result = replace(result, status=SMTPDeliveryStatus.TEMP_FAILED)
    return replace(result, retry_count=retries_done).to_dict()


_Task = Callable[..., dict[str, Any]]

#: Every task here is acknowledged after it ran and delivered again if its worker died.
TASK_OPTIONS: Mapping[str, Any] = {"acks_late": True, "reject_on_worker_lost": True}


def _task(name: str) -> Callable[[_Task], Any]:
    decorator: Callable[[_Task], Any] = shared_task(
        bind=True,
        name=name,
        max_retries=MAX_RETRIES,
        retry_delays=tuple(RETRY_DELAYS),
        **TASK_OPTIONS,
    )
    return decorator


@_task(SEND_TASK)
def send_email_async(
    self: Any,
    hostname: str,
    port: int,
    username: str | None,
    password: str | None,
    encryption: str,
    to_addresses: Sequence[str] | str,
    subject: str,
    text_body: str | None = None,
    **message: Any,
) -> dict[str, Any]:
    """Send one message with the given server settings; return the result as a dict.

    ``message`` may hold the other ``send_message`` arguments (``html_body``,
    ``cc_addresses``, ``bcc_addresses``, ``reply_to``, ``attachments``,
    ``custom_headers``, ``from_address``). The password travels through the broker;
    see :func:`send_email_for_account` for the way that keeps it out.
    """
    account = SMTPAccount(hostname, port, username, password, encryption)
    return _send(self, account, to_addresses, subject, text_body, message)


@_task(ACCOUNT_SEND_TASK)
def send_email_for_account(
    self: Any,
    account_id: Any,
    to_addresses: Sequence[str] | str,
    subject: str,
    text_body: str | None = None,
    **message: Any,
) -> dict[str, Any]:
    """Send one message through the account the configured provider returns for ``account_id``.

    The account is looked up in the worker for every attempt, so only the id is
    queued and a changed password applies to the next retry. Raises
    :class:`RuntimeError` if :func:`configure` was given no ``credentials_provider``.
    """
    provider = _configuration.credentials_provider
    if provider is None:
        raise RuntimeError("no credentials provider: call configure(credentials_provider=...)")
    account = provider(account_id)
    return _send(self, account, to_addresses, subject, text_body, message)
