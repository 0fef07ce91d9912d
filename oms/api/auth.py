"""Bearer-token guards: the admin token for the admin API."""

from __future__ import annotations

import hmac

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from oms.errors import Unauthorized


def bearer(connection: ASGIConnection) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def admin_guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Admin token check; async so Litestar does not hand it to a thread per request."""
    token = bearer(connection)
    if token is None:
        raise Unauthorized("missing admin token: send 'Authorization: Bearer <token>'", field="authorization")
    expected = connection.app.state.services.settings.admin_token
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise Unauthorized("wrong admin token", field="authorization")
