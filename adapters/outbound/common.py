"""Shared values for the outbound side: the signed request, the typed outcome, typed inputs.

Nothing here does I/O. A parser never raises on what a platform (or a proxy) sends back:
anything it cannot read is RETRYABLE, because a lost or garbled reply says nothing about
whether the call took effect, and every call here is safe to repeat (stock is a full value;
shipments are deduplicated by the platform or checked with a state query first).
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

import msgspec

from adapters.common import HttpRequest
from adapters.timeutil import BEIJING


class Platform(enum.StrEnum):
    TMALL = "tmall"
    JD = "jd"
    DOUYIN = "douyin"
    WECHAT = "wechat"


class OutboundInputError(ValueError):
    """The typed input cannot be sent as asked (a bug in the caller, not a platform answer)."""


class PlatformRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the HTTP sender needs for one signed call: send it as is, never re-sign."""

    call: str  # the platform's method name, for logs and metrics
    method: str = "POST"
    base_url: str
    path: str
    params: dict[str, str] = {}  # query string
    form: dict[str, str] = {}  # application/x-www-form-urlencoded body (TOP, JOS)
    body: bytes = b""  # raw body (Douyin param_json, WeChat JSON)
    headers: dict[str, str] = {}

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + self.path

    def http_request(self) -> HttpRequest:
        """The same call in the inbound side's shape (oms/channels/fetch.py sends those)."""
        return HttpRequest(
            method=self.method, url=self.url, params=self.params, form=self.form, body=self.body, headers=self.headers
        )


class OutcomeKind(enum.StrEnum):
    """What the dispatcher does next."""

    ACCEPTED = "accepted"  # done
    ALREADY_SHIPPED = "already_shipped"  # the platform already has this shipment: count as done
    INTERCEPTED = "intercepted"  # refund pending / cancelled / refunded: do not ship, start the intercept flow
    CHECK_STATE = "check_state"  # refused for the order's state without saying which: run the state query
    PARTIAL = "partial"  # some items taken, `failed` names the others
    RATE_LIMITED = "rate_limited"  # wait `retry_after` seconds (or back off), then the same call again
    RETRYABLE = "retryable"  # timeout, 5xx, garbled or unknown reply: retry with backoff
    AUTH_FAILED = "auth_failed"  # token/session expired or revoked: refresh credentials, then retry
    REJECTED = "rejected"  # permanent business error: dead-letter with the platform's code and message


DONE_KINDS = frozenset({OutcomeKind.ACCEPTED, OutcomeKind.ALREADY_SHIPPED})


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """A platform's answer to one call, classified."""

    kind: OutcomeKind
    http_status: int = 0
    code: str = ""  # the platform's own (sub) code, kept for the dead-letter record
    message: str = ""  # the platform's message, clipped; never our secrets
    retry_after: float | None = None  # seconds, when the platform says how long
    refs: tuple[str, ...] = ()  # ids the platform returned (e.g. Douyin pack_id)
    failed: tuple[str, ...] = ()  # item keys the platform refused (PARTIAL / REJECTED per item)

    @property
    def done(self) -> bool:
        return self.kind in DONE_KINDS


class ShipState(enum.StrEnum):
    """An order's shipping state as a state query reports it."""

    OPEN = "open"  # paid, waiting for shipment: sending again is right
    PARTLY_SHIPPED = "partly_shipped"
    SHIPPED = "shipped"
    CLOSED = "closed"  # cancelled or refunded: never ship
    REFUND_PENDING = "refund_pending"
    UNKNOWN = "unknown"


class StateCheck(msgspec.Struct, frozen=True, kw_only=True):
    """The answer of an order-state query (run after CHECK_STATE, or before a re-send)."""

    outcome: Outcome  # ACCEPTED when the query itself worked; otherwise why it did not
    state: ShipState = ShipState.UNKNOWN
    platform_status: str = ""
    shipped_lines: frozenset[str] = frozenset()  # sub-order ids the platform shows as shipped
    refund_lines: frozenset[str] = frozenset()  # sub-order ids with a refund in progress


def outcome_after_check(check: StateCheck, line_ids: Collection[str] = ()) -> Outcome:
    """Turn a state query into the outcome of the shipment it was checking.

    `line_ids` names the sub-orders that shipment covered (a split parcel); empty = whole order.
    """
    if check.outcome.kind is not OutcomeKind.ACCEPTED:
        return check.outcome
    base = {"http_status": check.outcome.http_status, "code": check.platform_status}
    wanted = set(line_ids)
    if wanted and wanted & check.refund_lines:
        return Outcome(kind=OutcomeKind.INTERCEPTED, message="refund pending on a shipped line", **base)
    if check.state is ShipState.SHIPPED or (wanted and wanted <= check.shipped_lines):
        return Outcome(kind=OutcomeKind.ALREADY_SHIPPED, message="platform shows it shipped", **base)
    if check.state in (ShipState.CLOSED, ShipState.REFUND_PENDING):
        return Outcome(kind=OutcomeKind.INTERCEPTED, message=f"order is {check.state.value}", **base)
    if check.state in (ShipState.OPEN, ShipState.PARTLY_SHIPPED):
        return Outcome(kind=OutcomeKind.RETRYABLE, message="still open on the platform: send again", **base)
    return Outcome(kind=OutcomeKind.REJECTED, message="order state unknown: reconcile by hand", **base)


# ---------------------------------------------------------------- typed inputs


class StockLevel(msgspec.Struct, frozen=True, kw_only=True):
    """Sellable units to publish for one platform SKU (a full value, never a delta)."""

    platform_sku_id: str
    quantity: int

    def __post_init__(self) -> None:
        if isinstance(self.quantity, bool) or not isinstance(self.quantity, int) or self.quantity < 0:
            raise OutboundInputError(f"stock for {self.platform_sku_id}: quantity must be an integer >= 0")
        if not self.platform_sku_id:
            raise OutboundInputError("stock: platform_sku_id is empty")


class ParcelLine(msgspec.Struct, frozen=True, kw_only=True):
    """One platform sub-order (line) in a parcel."""

    platform_line_id: str
    quantity: int
    part: bool = False  # only part of that line's quantity is in this parcel


class Parcel(msgspec.Struct, frozen=True, kw_only=True):
    """A parcel of a split shipment: carrier (our name or a platform code), tracking, lines."""

    carrier: str
    tracking_no: str
    lines: tuple[ParcelLine, ...] = ()


class RetailStore(msgspec.Struct, frozen=True, kw_only=True):
    """The store or warehouse that fulfilled an omnichannel order (Tmall `feature`)."""

    store_id: str
    kind: str = "STORE"  # STORE | WAREHOUSE

    def __post_init__(self) -> None:
        if self.kind not in ("STORE", "WAREHOUSE"):
            raise OutboundInputError("retail store kind must be STORE or WAREHOUSE")
        if not self.store_id or any(c in self.store_id for c in ";="):
            raise OutboundInputError("retail store id is empty or contains ';' or '='")


# ---------------------------------------------------------------- helpers for parsers


def http_outcome(status: int) -> Outcome | None:
    """Outcomes decided by the HTTP status alone (None: read the body)."""
    if status == 429:
        return Outcome(kind=OutcomeKind.RATE_LIMITED, http_status=status, message="HTTP 429")
    if status == 0 or status >= 500 or status in (408, 425):
        return Outcome(kind=OutcomeKind.RETRYABLE, http_status=status, message=f"HTTP {status}")
    if status in (401, 403):
        return Outcome(kind=OutcomeKind.AUTH_FAILED, http_status=status, message=f"HTTP {status}")
    return None


def json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None for anything else (never raises)."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError, UnicodeDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def dig(value: Any, *path: str) -> Any:
    """value[path[0]][path[1]]..., or None where a step is missing or not an object."""
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def text(value: Any, limit: int = 300) -> str:
    """A code or message as short text ('' for None/objects), for logs and dead letters."""
    if value is None or isinstance(value, (dict, list)):
        return ""
    return str(value)[:limit]


def unreadable(status: int, why: str = "reply not understood") -> Outcome:
    """A reply we cannot classify: retry (the call may or may not have taken effect)."""
    return Outcome(kind=OutcomeKind.RETRYABLE, http_status=status, message=why)


def truthy(value: Any) -> bool:
    """A platform boolean: true, "true", 1, "1"."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value == 1
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1")
    return False


_BAN = re.compile(r"ban will last for\s+(\d{1,9})\s+more seconds", re.IGNORECASE)


def ban_seconds(message: str) -> float | None:
    """Seconds from Taobao's "This ban will last for N more seconds" (None when absent)."""
    match = _BAN.search(message or "")
    return float(match.group(1)) if match else None


def compact_json(value: Any) -> str:
    """Key-sorted, compact, unescaped JSON: the exact text that is signed is the text sent."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def id_number(value: str, field: str) -> int | str:
    """A numeric platform id as an int when the platform types it as a long (digits only)."""
    text_value = str(value).strip()
    if not text_value:
        raise OutboundInputError(f"{field} is empty")
    return int(text_value) if text_value.isascii() and text_value.isdigit() else text_value


def beijing(moment: datetime) -> datetime:
    """An aware datetime in Beijing time (a naive one is refused: it would be guessed)."""
    if moment.tzinfo is None:
        raise OutboundInputError("timestamps must be timezone-aware")
    return moment.astimezone(BEIJING)
