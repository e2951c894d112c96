"""OAuth 2.0 access tokens from Google and Microsoft, ready for ``oauth2_token=``.

An :class:`OAuth2TokenProvider` is a token provider (see :mod:`.oauth2`): a callable
returning a current access token. It asks the provider's token endpoint for one with
a long-lived grant, caches it, and asks again shortly before it expires or after a
mail server refused it (``invalidate(token)``). Three grants are built in:

* :func:`google_tokens`: Google's refresh-token grant (an installed or web app the
  user consented to once, scope ``https://mail.google.com/``);
* :func:`microsoft_tokens`: Microsoft identity platform's refresh-token grant
  (delegated: one user's mailbox);
* :func:`microsoft_app_tokens`: Microsoft's client-credentials grant (a service
  principal with access to mailboxes, scope ``https://outlook.office365.com/.default``).

Requests go out with the standard library's ``http.client`` over verified TLS (the
shared default context, or the one given), with no redirects and no proxy from the
environment: the body holds the client secret and the refresh token.

One provider object stands for one account: create it once and share it between
threads, handlers and pools. Only one refresh runs at a time; other threads wait
for it, for at most ``wait_timeout`` seconds. When the endpoint cannot be reached
during the ``refresh_skew`` window, the current token is used until it expires. In
a child made by ``os.fork()`` the cached token and the lock are forgotten, so the
child refreshes on its own.

Failures: a refusal by the endpoint (``invalid_grant`` for a revoked or expired
refresh token, ``invalid_client`` for a wrong secret, ...) raises
:class:`OAuth2TokenError`, which is not retryable; an endpoint that cannot be reached,
times out, or answers 5xx or 429 raises :class:`OAuth2EndpointError`, a
:class:`MailConnectionError`, so it is retried. No error, log record or ``repr``
holds the client secret, the refresh token or an access token.
"""

from __future__ import annotations

import copy
import hmac
import http.client
import json
import math
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

from .._net.config import check_seconds
from .._net.forksafe import forget_in_child
from .._net.logs import get_logger
from .._net.secret import Secret
from .._net.tls import resolve_context, tls_error
from ..errors import (
    ConfigurationError,
    MailHandlerError,
    MailProtocolError,
    OAuth2EndpointError,
    OAuth2TokenError,
)

__all__ = [
    "GOOGLE_SCOPE",
    "GOOGLE_TOKEN_URL",
    "MICROSOFT_APP_SCOPE",
    "MICROSOFT_POP_SCOPE",
    "MICROSOFT_SMTP_SCOPE",
    "MICROSOFT_TOKEN_URL",
    "OAuth2TokenProvider",
    "google_tokens",
    "microsoft_app_tokens",
    "microsoft_tokens",
]

log = get_logger("oauth2")

#: Google's token endpoint.
GOOGLE_TOKEN_URL: Final = "https://oauth2.googleapis.com/token"
#: Microsoft identity platform's token endpoint; ``{tenant}`` is filled in.
MICROSOFT_TOKEN_URL: Final = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"
#: Gmail's scope for IMAP, POP3 and SMTP.
GOOGLE_SCOPE: Final = "https://mail.google.com/"
#: Microsoft 365's delegated scope for SMTP AUTH.
MICROSOFT_SMTP_SCOPE: Final = "https://outlook.office.com/SMTP.Send"
#: Microsoft 365's delegated scope for POP3.
MICROSOFT_POP_SCOPE: Final = "https://outlook.office.com/POP.AccessAsUser.All"
#: Microsoft 365's scope for the client-credentials grant (application permissions).
MICROSOFT_APP_SCOPE: Final = "https://outlook.office365.com/.default"

_OFFLINE_ACCESS: Final = "offline_access"
_MAX_RESPONSE: Final = 1 << 20
_DEFAULT_LIFETIME: Final = 3600.0
#: Error codes that mean "try again later" rather than "this grant is no good".
_TRANSIENT_ERRORS: Final = frozenset({"temporarily_unavailable", "server_error", "slow_down"})

Clock = Callable[[], float]


class OAuth2TokenProvider:
    """A cached access token for one account, refreshed from a token endpoint.

    Usually built by :func:`google_tokens`, :func:`microsoft_tokens` or
    :func:`microsoft_app_tokens`. ``provider`` names the provider in messages;
    ``account`` (the mailbox, say) names the account in logs and the ``repr``;
    ``form`` is the request body, with secrets as :class:`Secret` values.

    ``refresh_skew`` is how long before expiry a token is replaced (at most half of
    the token's lifetime); ``timeout`` bounds each request; ``wait_timeout`` bounds
    how long a thread waits for another thread's refresh; ``clock`` returns seconds
    (monotonic). ``on_refresh_token`` is called with the new refresh token when the
    endpoint replaces it (Microsoft does on most refreshes), so the application can
    store it; the provider uses the new one from then on either way.
    """

    def __init__(
        self,
        *,
        provider: str,
        token_url: str,
        form: dict[str, str | Secret],
        account: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
        refresh_skew: float = 60.0,
        wait_timeout: float | None = None,
        clock: Clock = time.monotonic,
        on_refresh_token: Callable[[Secret], object] | None = None,
    ) -> None:
        parts = urlsplit(token_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ConfigurationError(
                "the token endpoint must be an https:// URL (the request carries secrets)",
                "token_url",
            )
        if parts.username is not None or parts.password is not None or parts.fragment:
            raise ConfigurationError(
                "the token endpoint URL must not hold credentials or a fragment", "token_url"
            )
        seconds = check_seconds(timeout, "timeout")
        assert seconds is not None
        if not (isinstance(refresh_skew, int | float) and math.isfinite(refresh_skew)):
            raise ConfigurationError("refresh_skew must be a number of seconds", "refresh_skew")
        if refresh_skew < 0:
            raise ConfigurationError("refresh_skew must not be negative", "refresh_skew")
        waiting = check_seconds(wait_timeout, "wait_timeout", optional=True)
        self.provider = provider
        self.account = account
        self._host = parts.hostname
        self._port = parts.port or 443
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.endpoint = f"https://{parts.netloc}{parts.path or '/'}"
        self._form = dict(form)
        self._ssl_context = ssl_context
        self._timeout = seconds
        self._skew = float(refresh_skew)
        self._wait_timeout = waiting if waiting is not None else seconds + 5.0
        self._clock = clock
        self._on_refresh_token = on_refresh_token
        self._reset_state()
        forget_in_child(self)

    def _reset_state(self) -> None:
        self._lock = threading.Condition(threading.Lock())
        self._token: Secret | None = None
        self._refresh_at = 0.0
        self._expires_at = 0.0
        self._refreshing = False
        self._round = 0
        self._failure: MailHandlerError | None = None
        self.refreshes = 0

    def _after_fork_in_child(self) -> None:
        # The parent's lock may have been held by a thread that does not exist here,
        # and the cached token is the parent's to use.
        self._reset_state()

    # -- the provider interface ---------------------------------------------------

    def __call__(self) -> str:
        """A current access token: the cached one, or a fresh one from the endpoint."""
        with self._lock:
            started = self._clock()
            while True:
                if self._token is not None and self._clock() < self._refresh_at:
                    return self._token.reveal()
                if not self._refreshing:
                    self._refreshing = True
                    break
                seen = self._round
                remaining = self._wait_timeout - (self._clock() - started)
                if remaining <= 0 or not self._lock.wait(remaining):
                    raise OAuth2EndpointError(
                        f"gave up waiting {self._wait_timeout:g}s for another thread's "
                        f"{self.provider} token refresh",
                        self.endpoint,
                    )
                if self._round != seen and self._failure is not None:
                    fallback = self._still_valid(self._failure)
                    if fallback is not None:
                        return fallback
                    raise copy.copy(self._failure)
        requested_at = self._clock()
        try:
            token, lifetime, refresh_token = self._request()
        except MailHandlerError as error:
            with self._lock:
                self._failure = error
                self._round += 1
                self._refreshing = False
                self._lock.notify_all()
                fallback = self._still_valid(error)
            if fallback is None:
                raise
            log.warning(
                "%s token endpoint failed (%s); using the current access token for %s "
                "until it expires",
                self.provider,
                type(error).__name__,
                self.account or "the account",
            )
            return fallback
        except BaseException:
            with self._lock:
                self._refreshing = False
                self._round += 1
                self._lock.notify_all()
            raise
        with self._lock:
            # Counted from the request, not the answer: the token's life began before.
            self._token = Secret(token)
            self._expires_at = requested_at + lifetime
            self._refresh_at = requested_at + lifetime - min(self._skew, lifetime / 2)
            self._failure = None
            self._round += 1
            self._refreshing = False
            self.refreshes += 1
            self._lock.notify_all()
            if refresh_token is not None:
                self._form["refresh_token"] = refresh_token
        if refresh_token is not None and self._on_refresh_token is not None:
            try:
                self._on_refresh_token(refresh_token)
            except Exception as error:
                # The new token is already in use here; only storing it failed.
                log.warning(
                    "on_refresh_token for %s raised %s; the new refresh token is used "
                    "but was not stored",
                    self.account or "the account",
                    type(error).__name__,
                )
        log.debug(
            "%s access token for %s refreshed; valid for %ds",
            self.provider,
            self.account or "the account",
            int(lifetime),
        )
        return token

    def _still_valid(self, failure: MailHandlerError) -> str | None:
        """The cached token if a refresh failed only for now (the endpoint could not be
        reached) while the token has not expired yet; called under the lock."""
        if not isinstance(failure, OAuth2EndpointError) or self._token is None:
            return None
        return self._token.reveal() if self._clock() < self._expires_at else None

    def invalidate(self, token: str) -> None:
        """Drop ``token`` if it is the cached one (a server refused it): the next call
        fetches a new one. A token already replaced is ignored."""
        with self._lock:
            if self._token is not None and hmac.compare_digest(
                self._token.reveal().encode("utf-8"), token.encode("utf-8")
            ):
                self._token = None
                log.debug(
                    "%s access token for %s refused by a server; will refresh",
                    self.provider,
                    self.account or "the account",
                )

    @property
    def expires_in(self) -> float | None:
        """Seconds until the cached token expires (``None`` when there is none)."""
        with self._lock:
            if self._token is None:
                return None
            return self._expires_at - self._clock()

    def __repr__(self) -> str:
        grant = self._form.get("grant_type", "?")
        account = f" account={self.account!r}" if self.account else ""
        cached = "cached" if self._token is not None else "none"
        return f"<OAuth2TokenProvider {self.provider} {grant}{account} token={cached}>"

    def __reduce__(self) -> str:
        raise TypeError("an OAuth2TokenProvider holds secrets and cannot be pickled")

    # -- the request --------------------------------------------------------------

    def _secrets(self) -> list[str]:
        return [value.reveal() for value in self._form.values() if isinstance(value, Secret)]

    def _request(self) -> tuple[str, float, Secret | None]:
        body = urlencode(
            [
                (name, value.reveal() if isinstance(value, Secret) else value)
                for name, value in self._form.items()
            ]
        ).encode("ascii")
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        context = resolve_context(self._ssl_context)
        connection = http.client.HTTPSConnection(
            self._host, self._port, timeout=self._timeout, context=context
        )
        log.debug("asking %s for a %s access token", self.endpoint, self.provider)
        try:
            connection.request("POST", self._path, body=body, headers=headers)
            response = connection.getresponse()
            status = response.status
            data = response.read(_MAX_RESPONSE + 1)
        except ssl.SSLCertVerificationError as error:
            raise tls_error(error, self._host) from None
        except (OSError, http.client.HTTPException) as error:
            reason = "timed out" if isinstance(error, TimeoutError) else _reason(error)
            raise OAuth2EndpointError(
                f"could not get a token from the {self.provider} token endpoint "
                f"{self.endpoint}: {reason}",
                self.endpoint,
            ) from None
        finally:
            connection.close()
        return self._read(status, data)

    def _read(self, status: int, data: bytes) -> tuple[str, float, Secret | None]:
        reply = _json_object(data) if len(data) <= _MAX_RESPONSE else None
        if status == 200:
            return self._read_token(reply)
        error = reply.get("error") if reply is not None else None
        description = reply.get("error_description") if reply is not None else None
        code = error if isinstance(error, str) and error else None
        text = self._mask(description) if isinstance(description, str) else None
        if status == 429 or status >= 500 or code in _TRANSIENT_ERRORS:
            raise OAuth2EndpointError(
                f"the {self.provider} token endpoint {self.endpoint} answered {status}"
                + (f" ({code})" if code else ""),
                self.endpoint,
                status,
            )
        raise OAuth2TokenError(self.provider, code or f"HTTP {status}", text, status)

    def _read_token(self, reply: dict[str, Any] | None) -> tuple[str, float, Secret | None]:
        token = reply.get("access_token") if reply is not None else None
        if reply is None or not isinstance(token, str) or not _usable(token):
            raise MailProtocolError(
                f"the {self.provider} token endpoint {self.endpoint} answered 200 without "
                "a usable access token"
            )
        kind = reply.get("token_type", "Bearer")
        if not isinstance(kind, str) or kind.lower() != "bearer":
            raise MailProtocolError(
                f"the {self.provider} token endpoint {self.endpoint} issued a token of "
                f"type {str(kind)[:40]!r}, not Bearer"
            )
        lifetime = _seconds(reply.get("expires_in"))
        fresh = reply.get("refresh_token")
        current = self._form.get("refresh_token")
        renewed = None
        if (
            isinstance(fresh, str)
            and fresh
            and isinstance(current, Secret)
            and fresh != current.reveal()
        ):
            renewed = Secret(fresh)
        return token, lifetime, renewed

    def _mask(self, text: str) -> str:
        for secret in self._secrets():
            if secret:
                text = text.replace(secret, "***")
        return text[:300]


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _seconds(value: object) -> float:
    """``expires_in`` as seconds; Microsoft's older endpoints send it as a string."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return _DEFAULT_LIFETIME
    return seconds if math.isfinite(seconds) and seconds > 0 else _DEFAULT_LIFETIME


def _usable(token: str) -> bool:
    return bool(token) and token.isascii() and token.isprintable() and " " not in token


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)[:200] or type(error).__name__


def _secret(value: Secret | str, field: str) -> Secret:
    if isinstance(value, Secret):
        if not value.reveal():
            raise ConfigurationError(f"{field} must not be empty", field)
        return value
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{field} must be a non-empty string or Secret", field)
    return Secret(value)


def _text(value: object, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{field} must be a non-empty string", field)
    return value.strip()


# -- the providers -------------------------------------------------------------------


def google_tokens(
    client_id: str,
    client_secret: Secret | str,
    refresh_token: Secret | str,
    *,
    account: str | None = None,
    token_url: str = GOOGLE_TOKEN_URL,
    scopes: Sequence[str] = (),
    **options: Any,
) -> OAuth2TokenProvider:
    """Access tokens for a Gmail account from Google's refresh-token grant.

    ``client_id`` and ``client_secret`` are the OAuth client's (from the Google Cloud
    console), ``refresh_token`` the one Google issued when the user consented to the
    ``https://mail.google.com/`` scope. ``scopes`` may narrow the token (Google's
    default is the scopes consented to). Further keyword arguments go to
    :class:`OAuth2TokenProvider` (``ssl_context``, ``timeout``, ``refresh_skew``,
    ``clock``, ``on_refresh_token``, ...).
    """
    form: dict[str, str | Secret] = {
        "grant_type": "refresh_token",
        "client_id": _text(client_id, "client_id"),
        "client_secret": _secret(client_secret, "client_secret"),
        "refresh_token": _secret(refresh_token, "refresh_token"),
    }
    if scopes:
        form["scope"] = " ".join(scopes)
    return OAuth2TokenProvider(
        provider="Google", token_url=token_url, form=form, account=account, **options
    )


def _microsoft_url(token_url: str | None, tenant: str) -> str:
    tenant = _text(tenant, "tenant")
    if "/" in tenant or "?" in tenant or "#" in tenant:
        raise ConfigurationError("tenant must be a tenant id or domain name", "tenant")
    return token_url if token_url is not None else MICROSOFT_TOKEN_URL.format(tenant=tenant)


def microsoft_tokens(
    client_id: str,
    refresh_token: Secret | str,
    *,
    tenant: str = "common",
    client_secret: Secret | str | None = None,
    scopes: Sequence[str] = (MICROSOFT_SMTP_SCOPE,),
    account: str | None = None,
    token_url: str | None = None,
    **options: Any,
) -> OAuth2TokenProvider:
    """Access tokens for one Microsoft 365 mailbox from the refresh-token grant.

    ``client_id`` is the app registration's application id; ``client_secret`` is
    needed for a confidential (web) app and left out for a public one.
    ``refresh_token`` comes from the user's sign-in (authorization code or device
    code flow) with ``offline_access``. ``scopes`` defaults to SMTP sending; use
    :data:`MICROSOFT_POP_SCOPE` for POP3. ``offline_access`` is added when missing,
    so Microsoft keeps issuing refresh tokens, and each new one replaces the old.
    ``token_url`` defaults to the endpoint of ``tenant``. Further keyword arguments go
    to :class:`OAuth2TokenProvider`.
    """
    wanted = [_text(scope, "scopes") for scope in scopes]
    if not wanted:
        raise ConfigurationError("scopes must name at least one scope", "scopes")
    if _OFFLINE_ACCESS not in wanted:
        wanted.append(_OFFLINE_ACCESS)
    form: dict[str, str | Secret] = {
        "grant_type": "refresh_token",
        "client_id": _text(client_id, "client_id"),
    }
    if client_secret is not None:
        form["client_secret"] = _secret(client_secret, "client_secret")
    form["refresh_token"] = _secret(refresh_token, "refresh_token")
    form["scope"] = " ".join(wanted)
    return OAuth2TokenProvider(
        provider="Microsoft",
        token_url=_microsoft_url(token_url, tenant),
        form=form,
        account=account,
        **options,
    )


def microsoft_app_tokens(
    tenant: str,
    client_id: str,
    client_secret: Secret | str,
    *,
    scope: str = MICROSOFT_APP_SCOPE,
    account: str | None = None,
    token_url: str | None = None,
    **options: Any,
) -> OAuth2TokenProvider:
    """Access tokens for a Microsoft 365 service principal (client-credentials grant).

    No user signs in: the app registration in ``tenant`` (its id or domain, never
    ``common``) authenticates with its ``client_secret``, and Exchange Online decides
    which mailboxes it may use. The token's scope is
    ``https://outlook.office365.com/.default``. Further keyword arguments go to
    :class:`OAuth2TokenProvider`.
    """
    if _text(tenant, "tenant").lower() in ("common", "organizations", "consumers"):
        raise ConfigurationError(
            f"the client-credentials grant needs the tenant's id or domain, not {tenant!r}",
            "tenant",
        )
    form: dict[str, str | Secret] = {
        "grant_type": "client_credentials",
        "client_id": _text(client_id, "client_id"),
        "client_secret": _secret(client_secret, "client_secret"),
        "scope": _text(scope, "scope"),
    }
    return OAuth2TokenProvider(
        provider="Microsoft",
        token_url=_microsoft_url(token_url, tenant),
        form=form,
        account=account,
        **options,
    )
