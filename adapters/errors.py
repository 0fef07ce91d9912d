"""Typed errors every adapter raises, each carrying the HTTP status the route should answer.

The routes and workers in `oms/` never inspect message strings: they read `status`, `field`
and `message_id`. Messages name the field and the rule that failed, never the buyer's data
(values are not echoed, so a phone number or address cannot leak into a log line).
"""

from __future__ import annotations

from typing import ClassVar


class AdapterError(Exception):
    """Base of every error an adapter raises on bad input; `status` is the HTTP answer."""

    status: ClassVar[int] = 400

    def __init__(self, message: str, *, field: str | None = None, message_id: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        #: the platform's message id when known, so rejections can be logged against it
        self.message_id = message_id

    def with_message_id(self, message_id: str | None) -> AdapterError:
        """Return self after recording the platform message id (for batch results and logs)."""
        if message_id and not self.message_id:
            self.message_id = message_id
        return self

    def describe(self) -> dict[str, str]:
        """A JSON-ready description: reason, field, message id (never buyer data)."""
        out = {"error": type(self).__name__, "message": self.message}
        if self.field:
            out["field"] = self.field
        if self.message_id:
            out["message_id"] = self.message_id
        return out

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class SignatureError(AdapterError):
    """Missing or wrong signature: answer 401 and store nothing."""

    status: ClassVar[int] = 401


class StaleTimestamp(AdapterError):
    """The signed timestamp is outside the accepted window (replay protection): 401."""

    status: ClassVar[int] = 401


class PayloadError(AdapterError):
    """Malformed body, missing field, zero quantity, a price that is not a number: 400."""

    status: ClassVar[int] = 400

    def __init__(self, field: str, message: str, *, message_id: str | None = None):
        super().__init__(message, field=field, message_id=message_id)


class UpstreamError(AdapterError):
    """The platform's own API answered with an error envelope (e.g. TOP error_response).

    502: our caller did nothing wrong; the push should be retried later by the platform.
    """

    status: ClassVar[int] = 502

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None):
        super().__init__(message, field=field)
        self.code = code
