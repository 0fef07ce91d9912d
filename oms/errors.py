"""Typed failures a caller can act on; `oms.api.errors` maps each kind to one HTTP status."""

from __future__ import annotations


class OmsError(Exception):
    """Base of every failure the service reports to a caller."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None, **extra: object) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.extra = extra


class InvalidInput(OmsError):
    status_code = 400
    code = "invalid"


class UnknownReference(OmsError):
    """A SKU or node the request names does not exist."""

    status_code = 422
    code = "unknown_reference"


class NotFound(OmsError):
    status_code = 404
    code = "not_found"


class IllegalTransition(OmsError):
    status_code = 409
    code = "illegal_transition"


class Conflict(OmsError):
    status_code = 409
    code = "conflict"


class Unauthorized(OmsError):
    status_code = 401
    code = "unauthorized"


class Forbidden(OmsError):
    status_code = 403
    code = "forbidden"


class TooManyRequests(OmsError):
    status_code = 429
    code = "too_many_requests"


class Unavailable(OmsError):
    """A dependency failed mid-way; nothing was kept, the caller should retry."""

    status_code = 503
    code = "unavailable"
    #: seconds a caller should wait before retrying (the Retry-After header)
    retry_after = 1


class WriteInDoubt(Unavailable):
    """The connection was lost during or after COMMIT: the write may have been kept.

    The reservations stay until PostgreSQL answers and says which; a retry finds the order if
    it was stored."""

    code = "in_doubt"


class StockFenced(Unavailable):
    """Redis lost its availability (flush, failover, empty restart) and is being rebuilt from
    PostgreSQL: nothing is reserved or set on an empty Redis; retry in a moment."""

    code = "rebuilding"
    retry_after = 2
