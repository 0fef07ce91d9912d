"""Small pieces every channel module shares: request/reply shapes, strict decoding, SKU lookup.

Nothing here does I/O. `HttpRequest` is a description of a call that `oms/channels/fetch.py`
performs; `WebhookReply` is the exact status and bytes a route answers with.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

from adapters.errors import PayloadError, SignatureError
from adapters.normalized import Channel, NormalizedOrder

T = TypeVar("T")

EMPTY_SKU_MAP: Mapping[str, str] = {}


class HttpRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A signed platform API call, built by an adapter and sent by oms/channels/fetch.py."""

    method: str
    url: str
    params: dict[str, str] = {}  # query string
    form: dict[str, str] = {}  # application/x-www-form-urlencoded body (TOP, JOS)
    body: bytes = b""  # raw body (Douyin sends param_json as the JSON body)
    headers: dict[str, str] = {}


class WebhookReply(msgspec.Struct, frozen=True, kw_only=True):
    """What a webhook route answers: the status and the exact bytes the platform expects."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"


# -- strict decoding: every msgspec failure becomes a PayloadError naming the field --

_AT_PATH = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)


_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]+)`")


def _payload_error(exc: msgspec.ValidationError, root: str) -> PayloadError:
    match = _AT_PATH.match(str(exc))
    message = match.group("message") if match else str(exc)
    path = (match.group("path") or "") if match else ""
    missing = _MISSING.match(message)
    if missing:  # name the missing field itself, not its parent object
        path = f"{path}.{missing.group('name')}"
    field = f"{root}{path}" if root else (path.lstrip(".") or "$")
    return PayloadError(field or "$", message)


def decode_json(raw: bytes | str, typ: type[T] | Any, *, root: str) -> T:
    """Decode JSON into a Struct; malformed text or a wrong field gives PayloadError(field)."""
    try:
        return msgspec.json.decode(raw, type=typ)
    except msgspec.ValidationError as exc:
        raise _payload_error(exc, root) from None
    except (msgspec.DecodeError, RecursionError):
        raise PayloadError(root or "$", "not valid JSON") from None


def convert(obj: Any, typ: type[T] | Any, *, root: str) -> T:
    """Convert already-decoded builtins (e.g. Douyin's `data` sent as an object) into a Struct."""
    try:
        return msgspec.convert(obj, type=typ)
    except msgspec.ValidationError as exc:
        raise _payload_error(exc, root) from None
    except RecursionError:
        raise PayloadError(root or "$", "nested too deeply") from None


def finish_order(**fields: Any) -> NormalizedOrder:
    """Build a NormalizedOrder and enforce its declared constraints.

    msgspec checks `Meta` constraints (lengths, ranges) only when decoding, not on direct
    construction, so the built order is round-tripped once: the core can then rely on every
    constraint in adapters/normalized.py without re-checking.
    """
    try:
        order = NormalizedOrder(**fields)
        msgspec.convert(msgspec.to_builtins(order), type=NormalizedOrder)
    except msgspec.ValidationError as exc:
        raise _payload_error(exc, "order") from None
    except (ValueError, TypeError) as exc:
        raise PayloadError("order", str(exc)) from None
    return order


# -- headers and signatures --


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup (HTTP header names are case-insensitive)."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, val in headers.items():
        if key.lower() == lowered:
            return val
    return None


def same_hex(expected: str, given: str | None) -> bool:
    """Constant-time comparison of hex digests, ignoring case (platforms differ on case)."""
    if not given:
        return False
    return hmac.compare_digest(expected.lower().encode("ascii"), given.strip().lower().encode("utf-8"))


def md5_hex(data: bytes) -> str:
    """Lower-case hex MD5 (the platforms' signatures are MD5 of secret-wrapped text)."""
    return hashlib.md5(data).hexdigest()  # noqa: S324 - mandated by the platform, not our choice


def require_signature(ok: bool, channel: Channel, what: str) -> None:
    """Raise SignatureError unless ok; the message says which check failed, never the secret."""
    if not ok:
        raise SignatureError(f"{channel.value}: {what} does not match", field="signature")


# -- ids and SKUs --


def id_text(value: object, field: str) -> str:
    """Platform ids as text: 19-digit Douyin ids overflow JavaScript and doubles, never a float."""
    if isinstance(value, bool):
        raise PayloadError(field, "id must be a string or an integer")
    if isinstance(value, int):
        if value < 0:
            raise PayloadError(field, "id must not be negative")
        return str(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise PayloadError(field, "id is empty")
        if len(text) > 64:
            raise PayloadError(field, "id is longer than 64 characters")
        return text
    raise PayloadError(field, "id must be a string or an integer")


def optional_id(value: object, field: str) -> str | None:
    """Like id_text, but None, "" and 0 mean 'absent'."""
    if value is None or value == "" or value == 0:
        return None
    return id_text(value, field)


def resolve_sku(
    merchant_codes: tuple[str | None, ...],
    platform_sku_id: str | None,
    sku_map: Mapping[str, str],
    *,
    channel: Channel,
    line_label: str,
) -> tuple[str, str | None]:
    """Return (sku, unmapped_reason) for one line.

    The merchant's own code on the platform line is our SKU. Without one, the mapping table
    (platform SKU id -> merchant SKU) is consulted. Still unknown: the line keeps a
    placeholder SKU "<channel>:<platform sku id>" and a reason, so the core can backorder that
    line with the reason instead of rejecting the whole push.
    """
    for code in merchant_codes:
        if code and code.strip() and len(code.strip()) <= 64:
            return code.strip(), None
    if platform_sku_id and platform_sku_id in sku_map:
        mapped = sku_map[platform_sku_id]
        if mapped and len(mapped) <= 64:
            return mapped, None
    reason = (
        f"{line_label}: platform SKU {platform_sku_id or '(none)'} has no merchant code "
        "and is not in the SKU mapping table"
    )
    placeholder = f"{channel.value}:{platform_sku_id or line_label}"[:64]
    return placeholder, reason


def quantity(value: object, field: str) -> int:
    """A line quantity: an integer (or integer text, as JD sends) of at least 1."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 6:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(field, "quantity must be an integer")
    if value < 1:
        raise PayloadError(field, "quantity must be at least 1")
    if value > 100_000:
        raise PayloadError(field, "quantity is implausibly large")
    return value


def text(value: object) -> str | None:
    """Optional text field: '' becomes None so absent and empty read the same."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None
