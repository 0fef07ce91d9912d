"""The one place failures become HTTP responses: `{"error", "message", "field"}`, never a stack trace."""

from __future__ import annotations

import logging
import re

import asyncpg
from litestar import Request, Response
from redis.exceptions import RedisError
from litestar.exceptions import HTTPException, ValidationException

from oms.errors import OmsError, Unavailable

log = logging.getLogger("oms.api")
_LEADING_FIELD = re.compile(r"^([a-z_][a-z0-9_]*): (.*)$", re.S)


def _body(code: str, message: str, field: str | None = None, **extra: object) -> dict:
    body: dict = {"error": code, "message": message}
    if field:
        body["field"] = field
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def oms_error(_: Request, exc: OmsError) -> Response:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Unavailable) else None
    return Response(_body(exc.code, exc.message, exc.field, **exc.extra), status_code=exc.status_code,
                    headers=headers)


def validation_error(_: Request, exc: ValidationException) -> Response:
    """Litestar/msgspec decoding errors: name the field and the rule."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    first = extra[0] if extra and isinstance(extra[0], dict) else {}
    key = first.get("key")
    rule = str(first.get("message") or exc.detail)
    if key in (None, "data"):  # a whole-body rule (__post_init__) names its field first
        named = _LEADING_FIELD.match(rule)
        key = named.group(1) if named else None
        rule = named.group(2) if named else rule
    if key:
        message = f"{key}: {rule}"
    elif "malformed" in str(rule).lower() or "json" in str(rule).lower():
        message = f"body is not valid JSON: {rule}"
    else:
        message = str(rule)
    return Response(_body("invalid", message, key), status_code=400)


def http_error(_: Request, exc: HTTPException) -> Response:
    if exc.status_code == 400:  # litestar's own: the body could not be decoded at all
        return Response(_body("invalid", f"body is not valid JSON: {exc.detail}"), status_code=400)
    code = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return Response(_body(code, str(exc.detail)), status_code=exc.status_code)


def dependency_error(request: Request, exc: Exception) -> Response:
    """PostgreSQL or Redis failed under us (refused, socket file gone, connection cut, pool
    timed out): the request changed nothing durable; retry."""
    log.error("dependency failure on %s %s: %r", request.method, request.url.path, exc)
    return Response(_body("unavailable", "a database is unavailable; nothing was kept, retry in a moment"),
                    status_code=503, headers={"Retry-After": "1"})


def bad_text_error(request: Request, exc: Exception) -> Response:
    """Text PostgreSQL cannot store reached it (the edge check in oms.api.text missed it)."""
    log.warning("bad text reached the database on %s %s: %r", request.method, request.url.path, exc)
    return Response(_body("invalid", "text holds U+0000 or a lone surrogate, which cannot be stored"),
                    status_code=400)


def internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return Response(_body("internal", "internal error; nothing was changed by this request"), status_code=500)


EXCEPTION_HANDLERS = {
    OmsError: oms_error,
    ValidationException: validation_error,
    HTTPException: http_error,
    RedisError: dependency_error,
    asyncpg.PostgresError: dependency_error,
    asyncpg.InterfaceError: dependency_error,
    asyncpg.exceptions.InternalClientError: dependency_error,
    # the socket file gone (FileNotFoundError), refused, reset, timed out: all OSError
    OSError: dependency_error,
    asyncpg.exceptions.CharacterNotInRepertoireError: bad_text_error,
    asyncpg.exceptions.UntranslatableCharacterError: bad_text_error,
    UnicodeError: bad_text_error,
    Exception: internal_error,
}
