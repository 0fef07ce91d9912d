"""JD (JOS routerjson) outbound: stock levels, ship confirmation, order state.

Calls (docs platforms/outbound.md §2):
- `jingdong.ware.stock.sku.set` — req{updateModel, stockRfId, skuStocks[{skuId, stockNum,
  storeId}]} (official Java SDK field names). UNCONFIRMED: the enum values of `updateModel` /
  `stockModel` (a third-party test sends updateModel "fullStockIn"); we send full values
  (`stockNum`, never `incrStockNum`) and `updateModel` only when the caller gives one. Reply
  per SKU: returnType{success, obj{updateStockResult[{data, success, storeId, message}]}}
  (third-party fixture) -> PARTIAL names the refused SKUs.
- `jingdong.pop.order.shipment` — orderId, logiCoprId (numeric; several carriers "2100|4700";
  1274 = 厂家自送, tracking may be empty), logiNo (carriers separated by "|", several numbers
  of one carrier by ","). Reply sopjosshipment_result{success, errorCode, chineseErrCode}.
- `jingdong.pop.order.get` (optional_fields orderId,orderState) as the state query.

JOS signing is adapters/jd.py `jos_sign`. Gateway errors: `error_response{code, zh_desc,
en_desc}`; "2 App Call Limited" (rate limit, no wait given), "8 Invalid Timestamp" (±6 min:
rebuild with a fresh timestamp). UNCONFIRMED: the error a re-shipment gets ("已出库"/"已发货"
wording is assumed) -> CHECK_STATE; errorCode 999999/99999999 = retry (third-party client).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import msgspec

from adapters.jd import JdCredentials, jos_sign
from adapters.outbound.carriers import Carrier, carrier_code
from adapters.outbound.common import (
    Outcome,
    OutcomeKind,
    OutboundInputError,
    Platform,
    PlatformRequest,
    ShipState,
    StateCheck,
    StockLevel,
    beijing,
    compact_json,
    dig,
    http_outcome,
    id_number,
    json_object,
    text,
    truthy,
    unreadable,
)
from adapters.timeutil import format_jos_timestamp

DEFAULT_BASE_URL = "https://api.jd.com"
PATH = "/routerjson"

STOCK_SET = "jingdong.ware.stock.sku.set"
SHIPMENT = "jingdong.pop.order.shipment"
ORDER_STATE = "jingdong.pop.order.get"

#: with no wait in JD's answer, the dispatcher backs off at least this long (our choice)
RATE_LIMIT_WAIT_SECONDS = 60.0
RATE_CODES = frozenset({"2"})
RETRY_CODES = frozenset({"8"})  # Invalid Timestamp: a fresh build fixes it
RETRY_ERROR_CODES = frozenset({"999999", "99999999"})
#: JOS gateway codes about the token (UNCONFIRMED numbers; the en_desc text is matched too)
AUTH_CODES = frozenset({"19", "18", "20"})
ALREADY_WORDS = ("已出库", "已发货", "状态不正确", "状态不允许")  # UNCONFIRMED wording

ORDER_STATES: dict[str, ShipState] = {
    "WAIT_SELLER_STOCK_OUT": ShipState.OPEN,
    "WAIT_SELLER_DELIVERY": ShipState.OPEN,
    "WAIT_GOODS_RECEIVE_CONFIRM": ShipState.SHIPPED,
    "FINISHED_L": ShipState.SHIPPED,
    "TRADE_CANCELED": ShipState.CLOSED,
    "LOCKED": ShipState.REFUND_PENDING,  # buyer's cancel request pending: do not ship
    "POP_ORDER_PAUSE": ShipState.REFUND_PENDING,
    "PAUSE": ShipState.REFUND_PENDING,
}


class Waybill(msgspec.Struct, frozen=True, kw_only=True):
    """One tracking number with its carrier (our name or a JD logiCoprId)."""

    carrier: str
    tracking_no: str = ""


def _request(call: str, business: Mapping[str, Any], creds: JdCredentials, now: datetime,
             base_url: str) -> PlatformRequest:
    params = {
        "360buy_param_json": compact_json(business),
        "access_token": creds.access_token,
        "app_key": creds.app_key,
        "method": call,
        "timestamp": format_jos_timestamp(beijing(now)),
        "v": "2.0",
    }
    params["sign"] = jos_sign(params, creds.app_secret)
    return PlatformRequest(
        call=call,
        base_url=base_url,
        path=PATH,
        form=params,
        headers={"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"},
    )


def build_stock_set(
    creds: JdCredentials,
    *,
    levels: Sequence[StockLevel],
    stock_ref: str,
    store_id: str | None = None,
    update_model: str | None = None,
    now: datetime,
    base_url: str = DEFAULT_BASE_URL,
) -> PlatformRequest:
    """jingdong.ware.stock.sku.set with full values; `stock_ref` goes in stockRfId."""
    if not levels:
        raise OutboundInputError("stock set: no SKUs")
    if not stock_ref:
        raise OutboundInputError("stock set: stock_ref (stockRfId) is empty")
    stocks = []
    for level in levels:
        entry: dict[str, Any] = {"skuId": id_number(level.platform_sku_id, "skuId"), "stockNum": level.quantity}
        if store_id:
            entry["storeId"] = id_number(store_id, "storeId")
        stocks.append(entry)
    req: dict[str, Any] = {"stockRfId": stock_ref, "skuStocks": stocks}
    if update_model:  # UNCONFIRMED enum: sent only when the shop's JD docs name it
        req["updateModel"] = update_model
    return _request(STOCK_SET, {"req": req}, creds, now, base_url)


def logistics_fields(waybills: Sequence[Waybill]) -> tuple[str, str]:
    """(logiCoprId, logiNo): carriers joined by "|", numbers of one carrier by ","."""
    if not waybills:
        raise OutboundInputError("shipment: no waybill")
    grouped: dict[str, list[str]] = {}
    for bill in waybills:
        code = carrier_code(bill.carrier, Platform.JD)
        if code is None:
            raise OutboundInputError(f"jd has no carrier id for {bill.carrier}")
        code_text = str(code)
        if not (code_text.isascii() and code_text.isdigit()):
            raise OutboundInputError("jd logiCoprId must be numeric")
        number = bill.tracking_no.strip()
        if any(c in number for c in "|,"):
            raise OutboundInputError("tracking number contains '|' or ','")
        if not number and int(code_text) != 1274:
            raise OutboundInputError("tracking number is required except for 1274 (厂家自送)")
        numbers = grouped.setdefault(code_text, [])
        if number:
            numbers.append(number)
    return "|".join(grouped), "|".join(",".join(numbers) for numbers in grouped.values())


def build_shipment(
    creds: JdCredentials,
    *,
    order_id: str,
    waybills: Sequence[Waybill],
    now: datetime,
    base_url: str = DEFAULT_BASE_URL,
) -> PlatformRequest:
    """jingdong.pop.order.shipment for the whole order (JD SOP ships per order)."""
    corp_ids, numbers = logistics_fields(waybills)
    business = {"orderId": order_id, "logiCoprId": corp_ids, "logiNo": numbers}
    return _request(SHIPMENT, business, creds, now, base_url)


def build_self_delivery(
    creds: JdCredentials, *, order_id: str, now: datetime, base_url: str = DEFAULT_BASE_URL
) -> PlatformRequest:
    """Shipment by the merchant's own rider: logiCoprId 1274, no tracking number."""
    return build_shipment(creds, order_id=order_id, waybills=[Waybill(carrier=Carrier.SELF)], now=now,
                          base_url=base_url)


def build_order_state(
    creds: JdCredentials, *, order_id: str, now: datetime, base_url: str = DEFAULT_BASE_URL
) -> PlatformRequest:
    """jingdong.pop.order.get asking only for the order state (the state query)."""
    business = {"order_id": order_id, "optional_fields": "orderId,orderState"}
    return _request(ORDER_STATE, business, creds, now, base_url)


# ---------------------------------------------------------------- parsing


def _gateway_error(status: int, err: Mapping[str, Any]) -> Outcome:
    code = text(err.get("code"))
    message = text(err.get("zh_desc")) or text(err.get("en_desc"))
    english = text(err.get("en_desc")).lower()
    if code in RATE_CODES or "call limited" in english:
        return Outcome(kind=OutcomeKind.RATE_LIMITED, http_status=status, code=code, message=message,
                       retry_after=RATE_LIMIT_WAIT_SECONDS)
    if code in RETRY_CODES or any(word in english for word in ("timestamp", "timeout", "system error", "busy")):
        return Outcome(kind=OutcomeKind.RETRYABLE, http_status=status, code=code, message=message)
    if code in AUTH_CODES or "token" in english:
        return Outcome(kind=OutcomeKind.AUTH_FAILED, http_status=status, code=code, message=message)
    return Outcome(kind=OutcomeKind.REJECTED, http_status=status, code=code, message=message)


def _envelope(status: int, body: bytes, key: str) -> tuple[Outcome | None, Any]:
    doc = json_object(body)
    if doc is None:
        return http_outcome(status) or unreadable(status), None
    err = doc.get("error_response")
    if isinstance(err, Mapping):
        return _gateway_error(status, err), None
    decided = http_outcome(status)
    if decided is not None:
        return decided, None
    payload = doc.get(key)
    if not isinstance(payload, Mapping):
        return unreadable(status, f"no {key}"), None
    return None, payload


def parse_stock_set(status: int, body: bytes) -> Outcome:
    """returnType.success and per-SKU updateStockResult -> ACCEPTED / PARTIAL / REJECTED."""
    decided, payload = _envelope(status, body, "jingdong_ware_stock_sku_set_responce")
    if decided is not None:
        return decided
    result = payload.get("returnType")
    if not isinstance(result, Mapping) or "success" not in result:
        return unreadable(status, "no returnType.success")
    items = dig(result, "obj", "updateStockResult")
    failed: list[str] = []
    ok = 0
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, Mapping):
            continue
        if truthy(item.get("success")):
            ok += 1
        else:
            failed.append(text(item.get("data")) or "?")
    message = text(result.get("message")) or text(result.get("resultMessage"))
    code = text(result.get("code")) or text(result.get("resultCode"))
    if not truthy(result.get("success")) and not ok:
        return Outcome(kind=OutcomeKind.REJECTED, http_status=status, code=code, message=message,
                       failed=tuple(failed))
    if failed:
        return Outcome(kind=OutcomeKind.PARTIAL, http_status=status, code=code, message=message,
                       failed=tuple(failed))
    return Outcome(kind=OutcomeKind.ACCEPTED, http_status=status)


def parse_shipment(status: int, body: bytes) -> Outcome:
    """sopjosshipment_result.success; a state refusal -> CHECK_STATE (then build_order_state)."""
    decided, payload = _envelope(status, body, "jingdong_pop_order_shipment_responce")
    if decided is not None:
        return decided
    result = payload.get("sopjosshipment_result")
    if not isinstance(result, Mapping) or "success" not in result:
        return unreadable(status, "no sopjosshipment_result.success")
    if truthy(result.get("success")):
        return Outcome(kind=OutcomeKind.ACCEPTED, http_status=status)
    code = text(result.get("errorCode"))
    message = text(result.get("chineseErrCode")) or text(result.get("englishErrCode"))
    if code in RETRY_ERROR_CODES:
        return Outcome(kind=OutcomeKind.RETRYABLE, http_status=status, code=code, message=message)
    if any(word in message for word in ALREADY_WORDS):
        return Outcome(kind=OutcomeKind.CHECK_STATE, http_status=status, code=code, message=message)
    return Outcome(kind=OutcomeKind.REJECTED, http_status=status, code=code, message=message)


def parse_order_state(status: int, body: bytes) -> StateCheck:
    """orderDetailInfo.orderInfo.orderState -> StateCheck (JD ships whole orders: no lines)."""
    decided, payload = _envelope(status, body, "jingdong_pop_order_get_responce")
    if decided is not None:
        return StateCheck(outcome=decided)
    order_state = text(dig(payload, "orderDetailInfo", "orderInfo", "orderState"))
    if not order_state:
        return StateCheck(outcome=unreadable(status, "no orderState"))
    return StateCheck(
        outcome=Outcome(kind=OutcomeKind.ACCEPTED, http_status=status),
        state=ORDER_STATES.get(order_state, ShipState.UNKNOWN),
        platform_status=order_state,
    )
