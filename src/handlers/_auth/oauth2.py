"""OAuth 2.0 logins for SMTP and POP3: where access tokens come from.

The mechanisms that carry a token (OAUTHBEARER and XOAUTH2) live in the SASL layer
(``_sasl/oauth.py``); this module holds the token itself. The library does not run an
OAuth flow. The caller hands a handler either an access
token (a string, used as is) or a *token provider*: a callable with no arguments that
returns a current access token, typically by asking the caller's own OAuth library
(google-auth, MSAL, ...) for a cached token and refreshing it when it has expired.

When the server refuses a token that came from a provider, the provider is called
once more and, if it returns a different token, the login is tried once more on the
same connection. A provider that caches tokens may define ``invalidate(token)``: it is
called with the refused token first, so the cache can drop it and the next call
refresh. A fixed token string is never retried.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from .._net.logs import get_logger
from .._net.secret import keyed_digest
from ..errors import MailAuthenticationError, MailHandlerError, MailValidationError

log = get_logger("oauth2")

#: Returns a current OAuth 2.0 access token; called whenever a connection logs in.
TokenProvider = Callable[[], str]


def token_source_for(
    token: str | TokenProvider | TokenSource | None,
    username: str | None,
    password: str | None,
) -> TokenSource | None:
    """A handler's token source, or None for a password login.

    Raises :class:`MailValidationError` (a ``ValueError``) when both a password and a
    token are given, or when the username or token cannot be used with XOAUTH2.
    """
    if token is None:
        return None
    if password is not None:
        raise MailValidationError("give either password or oauth2_token, not both", "password")
    try:
        check_username(username)
    except ValueError as error:
        raise MailValidationError(str(error), "username") from None
    try:
        return TokenSource.of(token)
    except ValueError as error:
        raise MailValidationError(str(error), "oauth2_token") from None


def check_username(username: str | None) -> str:
    """Return ``username`` if XOAUTH2 can carry it; raise ``ValueError`` otherwise.

    The response is ASCII on the wire and uses ``\\x01`` as its separator, so the user
    name must be non-empty ASCII without control characters.
    """
    if not isinstance(username, str) or not username:
        raise ValueError("username is required with oauth2_token (XOAUTH2 sends it)")
    if not (username.isascii() and username.isprintable()):
        raise ValueError("username must be printable ASCII to be sent with XOAUTH2")
    return username


def _usable_token(token: object) -> bool:
    return (
        isinstance(token, str)
        and bool(token)
        and token.isascii()
        and token.isprintable()
        and " " not in token
    )


# -- where tokens come from ----------------------------------------------------------


class _TokenUnavailable(Exception):
    """The provider failed or returned something unusable; the message says which."""


class _ProviderKey:
    """Tells providers apart inside a pool key.

    Equal providers share connections: the same function, or bound methods of the
    same object (``creds.get_token`` fetched twice). Holding the provider keeps its
    ``id`` from being reused by another object while a key that names it exists.
    """

    __slots__ = ("_hashable", "_provider")

    def __init__(self, provider: TokenProvider) -> None:
        self._provider = provider
        self._hashable = isinstance(provider, Hashable)
        if self._hashable:
            try:
                hash(provider)
            except TypeError:
                self._hashable = False

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _ProviderKey):
            return NotImplemented
        if self._hashable and other._hashable:
            return bool(self._provider == other._provider)
        return self._provider is other._provider

    def __hash__(self) -> int:
        return hash(self._provider) if self._hashable else id(self._provider)

    def __repr__(self) -> str:
        return "<token provider>"


class TokenSource:
    """An access token or a token provider, never shown in a repr, log or pickle.

    ``token`` is a fixed access token (never refreshed) or a :data:`TokenProvider`.
    A provider is called every time a connection logs in, possibly from several
    threads at once, so it should hand back a cached token and refresh it only when
    needed, under a lock of its own. If it also has an ``invalidate(token)`` method,
    that is called with a token the server refused, before the provider is asked for
    another.
    """

    __slots__ = ("_provider", "_static")

    def __init__(self, token: str | TokenProvider) -> None:
        if isinstance(token, str):
            if not _usable_token(token):
                raise ValueError(
                    "oauth2_token must be a non-empty printable ASCII string without spaces"
                )
            self._static: str | None = token
            self._provider: TokenProvider | None = None
        elif callable(token):
            self._static = None
            self._provider = token
        else:
            raise ValueError("oauth2_token must be an access token string or a callable")

    @classmethod
    def of(cls, token: str | TokenProvider | TokenSource) -> TokenSource:
        """``token`` itself if it is already a :class:`TokenSource`, else a new one."""
        return token if isinstance(token, TokenSource) else cls(token)

    @property
    def refreshable(self) -> bool:
        """True for a provider, which may give a new token after a refusal."""
        return self._provider is not None

    def pool_identity(self) -> Hashable:
        """What a connection pool key holds to tell credentials apart.

        A fixed token is represented by its keyed digest, so connections opened with
        another token are not shared. A provider is represented by itself (compared
        as explained in :class:`_ProviderKey`), not by the token it returned last: a
        token refreshed by the same provider does not make warm connections, which
        stay logged in, unusable.
        """
        if self._static is not None:
            return ("oauth2-token", keyed_digest("oauth2-token", self._static))
        assert self._provider is not None
        return _ProviderKey(self._provider)

    def invalidate(self, token: str) -> None:
        """Tell a provider that has an ``invalidate(token)`` method that ``token`` was
        refused. Raises :class:`_TokenUnavailable` if that method fails."""
        hook = getattr(self._provider, "invalidate", None)
        if not callable(hook):
            return
        try:
            hook(token)
        except Exception as error:
            raise _TokenUnavailable(
                f"the OAuth2 token provider's invalidate() raised {type(error).__name__}"
            ) from error

    def current(self) -> str:
        """The token to log in with: the fixed one, or a fresh call to the provider.

        Raises :class:`_TokenUnavailable` when the provider fails or returns
        something that cannot be sent; a :class:`MailHandlerError` the provider raises
        (as the built-in Google and Microsoft providers do) passes through unchanged.
        """
        if self._static is not None:
            return self._static
        assert self._provider is not None
        try:
            token = self._provider()
        except MailHandlerError:
            # The library's own providers raise typed errors that hold no secret and
            # say whether a retry may help (an unreachable token endpoint may).
            raise
        except Exception as error:
            raise _TokenUnavailable(
                f"the OAuth2 token provider raised {type(error).__name__}"
            ) from error
        if not _usable_token(token):
            raise _TokenUnavailable(
                "the OAuth2 token provider returned no usable token (it must return a "
                "non-empty printable ASCII string without spaces)"
            )
        return token

    def __repr__(self) -> str:
        kind = "provider" if self._provider is not None else "fixed token"
        return f"<TokenSource {kind}>"

    def __reduce__(self) -> str:
        raise TypeError("a TokenSource cannot be pickled")


# -- logging in with one refresh -----------------------------------------------------

#: Makes the protocol's authentication error from a readable reason.
Refusal = Callable[[str], MailAuthenticationError]


def login_with_refresh(
    source: TokenSource,
    attempt: Callable[[str], None],
    refused: Refusal,
    *,
    where: str,
) -> None:
    """Log in by calling ``attempt(token)``; after a refusal, refresh once and retry.

    ``attempt`` raises :class:`MailAuthenticationError` when the server refuses the
    token. The retry happens only for a provider, only for a refusal of the
    credentials (no reply code, or a 5xx one; a 4xx is a temporary failure for the
    retry policy), and only if the provider returns a different token; the provider's
    ``invalidate(token)``, if it has one, hears of the refusal first. ``refused``
    builds the error raised when the provider fails; ``where`` names the server in
    the log. A :class:`MailHandlerError` raised by the provider propagates as it is.
    """
    token = _token(source, refused)
    failure = _attempt(attempt, token)
    if failure is None:
        return
    if not (source.refreshable and _is_refusal(failure)):
        raise failure
    try:
        source.invalidate(token)
    except _TokenUnavailable as error:
        raise refused(str(error)) from error.__cause__
    fresh = _token(source, refused)
    if fresh == token:
        log.debug("OAuth2 token refused by %s and the provider has no other; giving up", where)
        raise failure
    log.debug("OAuth2 token refused by %s (%s); retrying once with a new one", where, failure)
    attempt(fresh)


def _token(source: TokenSource, refused: Refusal) -> str:
    try:
        return source.current()
    except _TokenUnavailable as error:
        raise refused(str(error)) from error.__cause__


def _attempt(attempt: Callable[[str], None], token: str) -> MailAuthenticationError | None:
    try:
        attempt(token)
    except MailAuthenticationError as error:
        return error
    return None


def _is_refusal(error: MailAuthenticationError) -> bool:
    return error.code is None or error.code >= 500
