"""Authentication for the HTTP app's private pages (dashboard, reports): one token.

The token comes from ``MARTECH_DASHBOARD_TOKEN`` (a secret, like every credential) and is
accepted as HTTP Basic password (any user name: browsers ask for it themselves), as
``Authorization: Bearer <token>``, or once as ``?token=`` which sets an HttpOnly cookie.
Every comparison is constant-time (``hmac.compare_digest``) on the SHA-256 of both sides,
so neither the content nor the length of the token leaks through timing. Without a token
configured, the private pages answer 404: they are off, never open.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from pydantic import SecretStr

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
COOKIE = "martech_session"
REALM = 'Basic realm="martech", charset="UTF-8"'


def _same(given: str, token: str) -> bool:
    a = hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest()
    b = hashlib.sha256(token.encode("utf-8")).digest()
    return hmac.compare_digest(a, b)


def _cookie_value(token: str) -> str:
    # The cookie holds a MAC of the token, not the token: a leaked cookie is not the password.
    return hmac.new(token.encode(), b"martech dashboard session", hashlib.sha256).hexdigest()


def presented(request: web.Request) -> list[str]:
    """Every credential the request carries (password, bearer, query token)."""
    out = []
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            out.append(decoded.partition(":")[2])
        except (binascii.Error, UnicodeDecodeError):
            pass
    elif scheme.lower() == "bearer" and value:
        out.append(value.strip())
    if "token" in request.query:
        out.append(request.query["token"])
    return out


def authorised(request: web.Request, token: str) -> bool:
    cookie = request.cookies.get(COOKIE)
    if cookie is not None and hmac.compare_digest(cookie.encode(), _cookie_value(token).encode()):
        return True
    return any(_same(given, token) for given in presented(request))


def require_token(secret: SecretStr | None, handler: Handler) -> Handler:
    """Wrap ``handler``: 401 without the token, 404 when no token is configured."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        token = secret.get_secret_value() if secret is not None else ""
        if not token:
            raise web.HTTPNotFound(text="The dashboard is off: set MARTECH_DASHBOARD_TOKEN.\n")
        if not authorised(request, token):
            return web.Response(status=401, text="Authentication required.\n",
                                headers={"WWW-Authenticate": REALM,
                                         "Cache-Control": "no-store"})
        response = await handler(request)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        if "token" in request.query:
            response.set_cookie(COOKIE, _cookie_value(token), httponly=True, samesite="Strict",
                                secure=request.secure)
        return response

    return guarded
