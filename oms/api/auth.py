"""Bearer-token guards: the admin token for the admin API."""

from __future__ import annotations

import hmac

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.types import ASGIApp, Receive, Scope, Send

from oms.errors import Unauthorized


def bearer(connection: ASGIConnection) -> str | None:
    # straight from the ASGI scope (names are lower-case bytes there): Litestar's Headers object
    # would be built for this one look-up on every admin request
    header = ""
    for name, value in connection.scope["headers"]:
        if name == b"authorization":
            header = value.decode("latin-1")
            break
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def check_admin(connection: ASGIConnection) -> None:
    """The admin token check, the one every admin route runs (as a guard or as admin_only)."""
    token = bearer(connection)
    if token is None:
        raise Unauthorized("missing admin token: send 'Authorization: Bearer <token>'", field="authorization")
    expected = connection.app.state.services.settings.admin_token
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise Unauthorized("wrong admin token", field="authorization")


async def admin_guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Admin token check; async so Litestar does not hand it to a thread per request."""
    check_admin(connection)


def admin_only(app: ASGIApp) -> ASGIApp:
    """The admin check as route middleware, for the intake route: Litestar calls every guard
    with a shallow copy of the route handler, a cost per request the middleware does not have."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        check_admin(ASGIConnection(scope))
        await app(scope, receive, send)

    return middleware
