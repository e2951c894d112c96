"""A local OAuth 2.0 token endpoint over TLS, standing in for Google's and Microsoft's.

It implements the two grants the library's token providers use, the way the real
endpoints answer them: ``refresh_token`` and ``client_credentials``, form-encoded
POSTs answered with JSON (``access_token``, ``token_type``, ``expires_in``, and a new
``refresh_token`` when ``rotate_refresh_tokens`` is on), or with an OAuth error
(``invalid_grant``, ``invalid_client``, ...) and status 400/401::

    endpoint = TokenEndpointServer(ssl_context=certs.server_context())
    endpoint.add_client("app-id", "app-secret")
    endpoint.add_refresh_token("refresh-1", client_id="app-id")
    endpoint.start()
    tokens = google_tokens("app-id", "app-secret", "refresh-1",
                           token_url=endpoint.url, ssl_context=certs.client_context())

``on_issue(token, grant)`` is called with every access token issued, where a test
hands it to a mail test server (``smtp_server.oauth2.tokens[user] = token``).
A test can revoke a refresh token, queue failures (:meth:`fail_next`) and slow
answers down (``delay``). Every request is recorded in :attr:`requests` (the form
as sent, secrets included: this is a test double).
"""

from __future__ import annotations

import itertools
import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

__all__ = ["TokenEndpointServer", "TokenRequest"]


@dataclass(frozen=True)
class TokenRequest:
    """One request as the endpoint received it: path, body, parsed form, headers."""

    path: str
    body: bytes
    form: dict[str, str]
    content_type: str | None

    def __repr__(self) -> str:
        return f"<TokenRequest {self.path} grant_type={self.form.get('grant_type')!r}>"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read `requests`

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, 1 << 16))
        owner = self.server.owner
        status, reply = owner._answer(self.path, body, self.headers.get("Content-Type"))
        data = reply if isinstance(reply, bytes) else json.dumps(reply).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: TokenEndpointServer


class TokenEndpointServer:
    """A threaded HTTPS token endpoint on 127.0.0.1; ``start()`` / ``stop()``.

    ``path`` is where it answers (any other path gets 404). Access tokens it issues
    are ``"<prefix><n>"``, valid for ``expires_in`` seconds (the endpoint does not
    check them: the mail test servers do).
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        path: str = "/token",
        expires_in: int | str = 3599,
        token_prefix: str = "ya29.local-",
        on_issue: Callable[[str, str], object] | None = None,
    ) -> None:
        self.ssl_context = ssl_context
        self.path = path
        self.expires_in = expires_in
        self.token_prefix = token_prefix
        self.on_issue = on_issue
        self.rotate_refresh_tokens = False
        self.delay = 0.0
        self.clients: dict[str, str | None] = {}
        self.refresh_tokens: dict[str, str] = {}
        self.issued: list[str] = []
        self.requests: list[TokenRequest] = []
        self._failures: list[tuple[int, dict[str, Any] | bytes]] = []
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.host = "127.0.0.1"
        self.port = 0

    def __repr__(self) -> str:
        return f"<TokenEndpointServer {self.url} requests={len(self.requests)}>"

    @property
    def url(self) -> str:
        """The endpoint's URL, ``https://127.0.0.1:<port><path>``."""
        return f"https://{self.host}:{self.port}{self.path}"

    # -- set-up -------------------------------------------------------------------

    def add_client(self, client_id: str, client_secret: str | None = None) -> None:
        """Register an OAuth client; ``client_secret`` None makes it a public client."""
        self.clients[client_id] = client_secret

    def add_refresh_token(self, refresh_token: str, *, client_id: str) -> None:
        """Accept ``refresh_token`` from ``client_id``."""
        self.refresh_tokens[refresh_token] = client_id

    def revoke(self, refresh_token: str) -> None:
        """Refuse ``refresh_token`` from now on (``invalid_grant``), as after a password
        change or when the user withdraws consent."""
        with self._lock:
            self.refresh_tokens.pop(refresh_token, None)

    def fail_next(self, status: int, reply: dict[str, Any] | bytes | None = None) -> None:
        """Answer the next request with ``status`` and ``reply`` (JSON, or raw bytes)."""
        with self._lock:
            self._failures.append((status, reply if reply is not None else {}))

    def start(self) -> TokenEndpointServer:
        """Listen on a free loopback port and serve in a background thread."""
        server = _Server((self.host, 0), _Handler)
        server.owner = self
        server.socket = self.ssl_context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(2)

    def __enter__(self) -> TokenEndpointServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- answering ------------------------------------------------------------------

    def _answer(
        self, path: str, body: bytes, content_type: str | None
    ) -> tuple[int, dict[str, Any] | bytes]:
        form = dict(parse_qsl(body.decode("ascii", "replace"), keep_blank_values=True))
        with self._lock:
            self.requests.append(TokenRequest(path, body, form, content_type))
            failure = self._failures.pop(0) if self._failures else None
        if self.delay:
            time.sleep(self.delay)
        if failure is not None:
            return failure
        if path != self.path:
            return 404, {"error": "not_found"}
        if content_type != "application/x-www-form-urlencoded":
            return 400, {"error": "invalid_request", "error_description": "not a form"}
        client_id = form.get("client_id", "")
        if client_id not in self.clients:
            return 401, {"error": "invalid_client", "error_description": "unknown client"}
        expected = self.clients[client_id]
        if expected is not None and form.get("client_secret") != expected:
            return 401, {"error": "invalid_client", "error_description": "bad client secret"}
        grant = form.get("grant_type")
        reply: dict[str, Any] = {}
        if grant == "refresh_token":
            with self._lock:
                owner = self.refresh_tokens.get(form.get("refresh_token", ""))
            if owner != client_id:
                return 400, {
                    "error": "invalid_grant",
                    "error_description": "the refresh token is invalid, expired or revoked",
                }
            if self.rotate_refresh_tokens:
                fresh = f"refresh-{next(self._counter)}"
                with self._lock:
                    del self.refresh_tokens[form["refresh_token"]]
                    self.refresh_tokens[fresh] = client_id
                reply["refresh_token"] = fresh
        elif grant == "client_credentials":
            if expected is None:
                return 401, {"error": "invalid_client", "error_description": "public client"}
        else:
            return 400, {"error": "unsupported_grant_type"}
        token = f"{self.token_prefix}{next(self._counter)}"
        with self._lock:
            self.issued.append(token)
        if self.on_issue is not None:
            self.on_issue(token, grant)
        reply.update({"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in})
        if "scope" in form:
            reply["scope"] = form["scope"]
        return 200, reply
