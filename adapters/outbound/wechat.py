"""WeChat mini-program outbound: shipping information (发货信息管理), order state.

The mini-program is our own channel: its backend reads availability from our API, so there is
no stock push to WeChat. What WeChat needs is the hand-over: funds stay frozen until shipping
information is uploaded (docs platforms/outbound.md §4).

- `POST /wxa/sec/order/upload_shipping_info?access_token=…` — order_key (type 1 mchid +
  out_trade_no, type 2 transaction_id), logistics_type (1 express, 2 同城配送, 3 virtual,
  4 用户自提), delivery_mode (1 unified, 2 split: express only, ≤15 parcels, is_all_delivered
  required), shipping_list[{tracking_no, express_company, item_desc ≤120, contact}],
  upload_time (RFC 3339 with ms, orders updates), payer.openid. No signature: the
  access_token in the query authenticates.
- A payment order may be updated only once: a second upload is the one "re-ship" chance, so
  the dispatcher must treat ALREADY_SHIPPED as terminal and never re-send blindly.
- 10060001 支付单不存在 is common right after payment ("等待1分钟后再试", WeChat staff on the
  developer forum): RETRYABLE with retry_after=60.
- `POST /wxa/sec/order/get_order` — order.order_state 1 待发货, 2 已发货, 3 确认收货,
  4 交易完成, 5 已退款 (the state query).

UNCONFIRMED (not in outbound.md; from the WeChat error table as we recall it): 10060002
"支付单已完成发货，无法继续发货" and 10060003 "支付单已使用重新发货机会" (-> ALREADY_SHIPPED),
10060012/10060019 busy (-> RETRYABLE); global codes 40001/42001 token (-> AUTH_FAILED),
45009 daily / 45011 per-minute quota (-> RATE_LIMITED); get_order's body field names.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from adapters.outbound.carriers import Carrier, require_code
from adapters.outbound.common import (
    Outcome,
    OutcomeKind,
    OutboundInputError,
    Platform,
    PlatformRequest,
    ShipState,
    StateCheck,
    beijing,
    compact_json,
    dig,
    http_outcome,
    json_object,
    text,
    unreadable,
)

DEFAULT_BASE_URL = "https://api.weixin.qq.com"
UPLOAD_PATH = "/wxa/sec/order/upload_shipping_info"
GET_ORDER_PATH = "/wxa/sec/order/get_order"
UPLOAD_SHIPPING_INFO = "upload_shipping_info"
GET_ORDER = "get_order"

MAX_PARCELS = 15
MAX_ITEM_DESC = 120
PAYMENT_NOT_FOUND = 10060001
PAYMENT_NOT_FOUND_WAIT_SECONDS = 60.0
ALREADY_SHIPPED_CODES = frozenset({10060002, 10060003})  # UNCONFIRMED
STATE_CODES = frozenset({10060004})  # 支付单处于不可发货的状态: shipped? refunded? ask get_order
RETRY_CODES = frozenset({-1, 10060012, 10060019})  # -1 系统繁忙; the others UNCONFIRMED
AUTH_CODES = frozenset({40001, 40014, 42001})
RATE_WAITS: dict[int, float | None] = {45011: 60.0, 45009: None}  # per-minute / daily quota

ORDER_STATES: dict[int, ShipState] = {
    1: ShipState.OPEN,
    2: ShipState.SHIPPED,
    3: ShipState.SHIPPED,
    4: ShipState.SHIPPED,
    5: ShipState.CLOSED,
}


class LogisticsType(enum.IntEnum):
    EXPRESS = 1  # 实体物流 (快递)
    SAME_CITY = 2  # 同城配送: our 1-hour store delivery
    VIRTUAL = 3
    PICKUP = 4  # 用户自提: BOPIS


class DeliveryMode(enum.IntEnum):
    UNIFIED = 1
    SPLIT = 2


class WechatOrderKey(msgspec.Struct, frozen=True, kw_only=True):
    """Which payment order: WeChat Pay transaction_id, or mchid + out_trade_no."""

    transaction_id: str | None = None
    mchid: str | None = None
    out_trade_no: str | None = None

    def as_json(self) -> dict[str, Any]:
        if self.transaction_id:
            return {"order_number_type": 2, "transaction_id": self.transaction_id}
        if self.mchid and self.out_trade_no:
            return {"order_number_type": 1, "mchid": self.mchid, "out_trade_no": self.out_trade_no}
        raise OutboundInputError("order key needs transaction_id, or mchid and out_trade_no")


class WechatShipment(msgspec.Struct, frozen=True, kw_only=True):
    """One shipping_list entry; carrier and tracking only for express."""

    item_desc: str
    carrier: str | None = None  # our carrier name or a WeChat delivery id
    tracking_no: str | None = None
    consignor_contact: str | None = None  # masked, last 4 digits clear
    receiver_contact: str | None = None


def format_upload_time(moment: datetime) -> str:
    """RFC 3339 with milliseconds and offset: 2022-12-15T13:29:35.120+08:00."""
    local = beijing(moment)
    return local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{local.microsecond // 1000:03d}+08:00"


def _shipping_entry(entry: WechatShipment, logistics_type: LogisticsType) -> dict[str, Any]:
    desc = entry.item_desc.strip()
    if not desc:
        raise OutboundInputError("item_desc is empty")
    if len(desc) > MAX_ITEM_DESC:
        raise OutboundInputError(f"item_desc is longer than {MAX_ITEM_DESC} characters")
    out: dict[str, Any] = {"item_desc": desc}
    if logistics_type is LogisticsType.EXPRESS:
        if not entry.carrier or not (entry.tracking_no or "").strip():
            raise OutboundInputError("express shipping needs a carrier and a tracking number")
        out["tracking_no"] = entry.tracking_no.strip()  # type: ignore[union-attr]
        out["express_company"] = require_code(entry.carrier, Platform.WECHAT)
        contact = {
            k: v
            for k, v in (("consignor_contact", entry.consignor_contact), ("receiver_contact", entry.receiver_contact))
            if v
        }
        if out["express_company"] == require_code(Carrier.SF, Platform.WECHAT) and not contact:
            raise OutboundInputError("SF express needs a (masked) consignor or receiver contact")
        if contact:
            out["contact"] = contact
    return out


def build_upload_shipping_info(
    access_token: str,
    *,
    order_key: WechatOrderKey,
    logistics_type: LogisticsType,
    shipping: Sequence[WechatShipment],
    payer_openid: str,
    upload_time: datetime,
    is_all_delivered: bool | None = None,
    base_url: str = DEFAULT_BASE_URL,
) -> PlatformRequest:
    """upload_shipping_info; several entries = split delivery (express only)."""
    if not access_token:
        raise OutboundInputError("access_token is empty")
    if not payer_openid:
        raise OutboundInputError("payer openid is empty")
    if not 1 <= len(shipping) <= MAX_PARCELS:
        raise OutboundInputError(f"shipping list must have 1..{MAX_PARCELS} entries")
    mode = DeliveryMode.SPLIT if len(shipping) > 1 else DeliveryMode.UNIFIED
    if mode is DeliveryMode.SPLIT and logistics_type is not LogisticsType.EXPRESS:
        raise OutboundInputError("split delivery is for express only")
    if mode is DeliveryMode.SPLIT and is_all_delivered is None:
        raise OutboundInputError("split delivery needs is_all_delivered")
    body: dict[str, Any] = {
        "order_key": order_key.as_json(),
        "logistics_type": int(logistics_type),
        "delivery_mode": int(mode),
        "shipping_list": [_shipping_entry(entry, logistics_type) for entry in shipping],
        "upload_time": format_upload_time(upload_time),
        "payer": {"openid": payer_openid},
    }
    if mode is DeliveryMode.SPLIT:
        body["is_all_delivered"] = bool(is_all_delivered)
    return PlatformRequest(
        call=UPLOAD_SHIPPING_INFO,
        base_url=base_url,
        path=UPLOAD_PATH,
        params={"access_token": access_token},
        body=compact_json(body).encode("utf-8"),
        headers={"Content-Type": "application/json"},
    )


def build_get_order(
    access_token: str, *, order_key: WechatOrderKey, base_url: str = DEFAULT_BASE_URL
) -> PlatformRequest:
    """get_order: the payment order's shipping state (the state query)."""
    if not access_token:
        raise OutboundInputError("access_token is empty")
    if order_key.transaction_id:
        body: dict[str, Any] = {"transaction_id": order_key.transaction_id}
    elif order_key.mchid and order_key.out_trade_no:
        body = {"merchant_id": order_key.mchid, "merchant_trade_no": order_key.out_trade_no}
    else:
        raise OutboundInputError("order key needs transaction_id, or mchid and out_trade_no")
    return PlatformRequest(
        call=GET_ORDER,
        base_url=base_url,
        path=GET_ORDER_PATH,
        params={"access_token": access_token},
        body=compact_json(body).encode("utf-8"),
        headers={"Content-Type": "application/json"},
    )


# ---------------------------------------------------------------- parsing


def _errcode(doc: dict[str, Any]) -> int | None:
    value = doc.get("errcode")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.lstrip("-").isdigit() and len(value) < 12:  # "²".isdigit()
        return int(value)
    return None


def _error(status: int, errcode: int, message: str) -> Outcome:
    code = str(errcode)
    if errcode == PAYMENT_NOT_FOUND:
        return Outcome(kind=OutcomeKind.RETRYABLE, http_status=status, code=code, message=message,
                       retry_after=PAYMENT_NOT_FOUND_WAIT_SECONDS)
    if errcode in ALREADY_SHIPPED_CODES:
        return Outcome(kind=OutcomeKind.ALREADY_SHIPPED, http_status=status, code=code, message=message)
    if errcode in STATE_CODES:
        return Outcome(kind=OutcomeKind.CHECK_STATE, http_status=status, code=code, message=message)
    if errcode in RATE_WAITS:
        return Outcome(kind=OutcomeKind.RATE_LIMITED, http_status=status, code=code, message=message,
                       retry_after=RATE_WAITS[errcode])
    if errcode in AUTH_CODES:
        return Outcome(kind=OutcomeKind.AUTH_FAILED, http_status=status, code=code, message=message)
    if errcode in RETRY_CODES:
        return Outcome(kind=OutcomeKind.RETRYABLE, http_status=status, code=code, message=message)
    return Outcome(kind=OutcomeKind.REJECTED, http_status=status, code=code, message=message)


def _read(status: int, body: bytes) -> tuple[Outcome | None, dict[str, Any] | None]:
    doc = json_object(body)
    if doc is None:
        return http_outcome(status) or unreadable(status), None
    errcode = _errcode(doc)
    if errcode is None:
        return http_outcome(status) or unreadable(status, "no errcode"), None
    if errcode != 0:
        return _error(status, errcode, text(doc.get("errmsg"))), None
    decided = http_outcome(status)
    return (decided, None) if decided is not None else (None, doc)


def parse_upload_shipping_info(status: int, body: bytes) -> Outcome:
    """errcode 0 = accepted; 10060001 = retry in a minute; see the module docstring."""
    decided, _ = _read(status, body)
    return decided or Outcome(kind=OutcomeKind.ACCEPTED, http_status=status)


def parse_get_order(status: int, body: bytes) -> StateCheck:
    """order.order_state -> StateCheck."""
    decided, doc = _read(status, body)
    if decided is not None:
        return StateCheck(outcome=decided)
    state = dig(doc, "order", "order_state")
    if isinstance(state, bool) or not isinstance(state, int):
        return StateCheck(outcome=unreadable(status, "no order.order_state"))
    return StateCheck(
        outcome=Outcome(kind=OutcomeKind.ACCEPTED, http_status=status),
        state=ORDER_STATES.get(state, ShipState.UNKNOWN),
        platform_status=str(state),
    )
