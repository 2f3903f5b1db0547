"""What makes the dashboard safe to expose: authentication (HTTP basic or a bearer token,
compared in constant time), security headers on every response, and the anti-CSRF
check of every state-changing request.

CSRF: a synchronizer token. The first page a browser gets sets a random session cookie
(``HttpOnly``, ``SameSite=Strict``, ``Secure`` over HTTPS); every form carries
HMAC-SHA256(app secret, that cookie) in a hidden field, and every POST must present both,
matching. A POST whose ``Origin`` (or, without one, ``Referer``) names another site is
refused as well.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from ._config import BasicAuth, BearerAuth

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "kyu_dashboard_session"
TOKEN_FIELD = "csrf_token"

# No inline script or style anywhere (the chart is SVG markup with presentation
# attributes, not style attributes): every script and sheet is a file of the app.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    # same-origin rather than no-referrer: with no-referrer, browsers send "Origin: null"
    # on our own form posts, and the origin check could not tell them from a forgery.
    # Other sites still get no Referer (which would carry job ids and filters).
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=()"),
]


class SecurityHeaders:
    """Adds `HEADERS` to every HTTP response, and ``Cache-Control: no-store`` to every
    one but the static files (pages show live data, and may be behind credentials)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = "/static/" in scope.get("path", "")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() not in {h for h, _ in HEADERS}
                ]
                headers.extend(HEADERS)
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


class Authentication:
    """Asks every request for the configured credentials: 401 (with
    ``WWW-Authenticate``) without them or with wrong ones."""

    def __init__(self, app: ASGIApp, auth: BasicAuth | BearerAuth) -> None:
        self.app = app
        self.auth = auth
        if isinstance(auth, BasicAuth):
            # Compared as digests: equal length, so compare_digest leaks nothing of it.
            self._expected = hashlib.sha256(f"{auth.user}:{auth.password}".encode()).digest()
        else:
            self._expected = hashlib.sha256(auth.token.encode()).digest()

    def _allowed(self, scope: Scope) -> bool:
        header = _header(scope, b"authorization") or ""
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if isinstance(self.auth, BasicAuth):
            if scheme.lower() != "basic":
                return False
            try:
                given = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return False
        else:
            if scheme.lower() != "bearer":
                return False
            given = value.encode()
        return hmac.compare_digest(hashlib.sha256(given).digest(), self._expected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        if isinstance(self.auth, BasicAuth):
            challenge = b'Basic realm="kyu-trio dashboard", charset="UTF-8"'
        else:
            challenge = b'Bearer realm="kyu-trio dashboard"'
        body = b"401 Unauthorized: this dashboard asks for credentials.\n"
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"www-authenticate", challenge),
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


# ---- CSRF ------------------------------------------------------------------------------


def new_session() -> str:
    return secrets.token_urlsafe(32)


def valid_session(value: str | None) -> bool:
    return value is not None and 20 <= len(value) <= 100 and value.isascii()


def token_for(secret: bytes, session: str) -> str:
    return hmac.new(secret, session.encode(), hashlib.sha256).hexdigest()


def origin_problem(scope: Scope, trusted: tuple[str, ...]) -> str | None:
    """Why a POST's ``Origin`` (else its ``Referer``) is not this site; None if it is,
    or if the browser sent neither (the token alone decides then)."""
    host = _header(scope, b"host")
    origin = _header(scope, b"origin")
    if origin is None:
        referer = _header(scope, b"referer")
        if referer is None:
            return None
        parts = urlsplit(referer)
        origin = f"{parts.scheme}://{parts.netloc}"
    origin = origin.strip().rstrip("/")
    if origin in trusted:
        return None
    # The host and port only: behind a proxy that ends TLS, the app sees http while the
    # browser says https.
    if origin != "null" and host is not None and urlsplit(origin).netloc == host:
        return None
    return "the request comes from another site"


def csrf_problem(
    scope: Scope,
    session: str | None,
    token: str | None,
    secret: bytes,
    trusted: tuple[str, ...],
) -> str | None:
    """Why a POST is refused as a possible cross-site request forgery; None if it may
    go on."""
    if not valid_session(session):
        return "the session cookie is missing (reload the page and try again)"
    assert session is not None
    if not token or not hmac.compare_digest(token.encode(), token_for(secret, session).encode()):
        return "the form's anti-forgery token is missing or wrong (reload the page)"
    return origin_problem(scope, trusted)
