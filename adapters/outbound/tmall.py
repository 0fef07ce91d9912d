"""Tmall / Taobao (TOP) outbound: stock levels, ship confirmations, trade state.

Calls (docs platforms/outbound.md §1; field names from bububa/opentaobao and mzzya/tbsdk):
- `taobao.item.quantity.update` (type 1 = full value; we never send deltas: TOP has no
  idempotency key, so a retried delta could apply twice);
- `taobao.skus.quantity.update` (at most 20 SKUs per call: longer lists are split);
- `taobao.logistics.offline.send` (whole order or `is_split` + `sub_tid`), with the store in
  `feature` ("retailStoreId=…;retailStoreType=STORE|WAREHOUSE", required for omnichannel);
- `alibaba.ascp.logistics.offline.send` (consign_type 1: per-parcel, per-sub-order shipment);
- `taobao.logistics.dummy.send` (no logistics: pickup, own rider);
- `taobao.trade.fullinfo.get` with fields tid,status,orders as the state query.

TOP cannot deduplicate a shipment: a re-send after a lost reply fails with
`isv.logistics-offline-service-error:B04` ("订单状态不对该物流订单已经发货或者已关闭，不能重复发货",
third-party error table) which means shipped OR closed -> CHECK_STATE, then the state query
decides (ALREADY_SHIPPED or INTERCEPTED).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from adapters.outbound.carriers import Carrier, require_code
from adapters.outbound.common import (
    Outcome,
    OutcomeKind,
    OutboundInputError,
    Parcel,
    Platform,
    PlatformRequest,
    RetailStore,
    ShipState,
    StateCheck,
    StockLevel,
    ban_seconds,
    beijing,
    compact_json,
    dig,
    http_outcome,
    json_object,
    text,
    truthy,
    unreadable,
)
from adapters.timeutil import format_top_timestamp
from adapters.tmall import TmallCredentials, top_sign

DEFAULT_BASE_URL = "https://eco.taobao.com"
PATH = "/router/rest"
MAX_SKUS_PER_CALL = 20  # taobao.skus.quantity.update limit (mzzya/tbsdk TaobaoSkusQuantityUpdate.go)
STATE_FIELDS = "tid,status,orders"

ITEM_QUANTITY_UPDATE = "taobao.item.quantity.update"
SKUS_QUANTITY_UPDATE = "taobao.skus.quantity.update"
OFFLINE_SEND = "taobao.logistics.offline.send"
ASCP_OFFLINE_SEND = "alibaba.ascp.logistics.offline.send"
DUMMY_SEND = "taobao.logistics.dummy.send"
TRADE_STATE = "taobao.trade.fullinfo.get"

#: sub_codes where Taobao's own side failed: retry (third-party error tables; B150 "发货异常，请稍等后重试")
RETRY_SUB_CODES = frozenset(
    {
        "isv.logistics-offline-service-error:B150",
        "isv.logistics-offline-service-error:S01",
        "isp.logistics-online-service-error:S01",
        "isp.top-remote-connection-timeout",
        "isp.remote-service-timeout",
        "isp.remote-connection-error",
        "isv.trade-service-rejection",  # "超时请求过多…3分钟后再查询"
    }
)
#: "order state wrong: already shipped or closed" on the three send calls (-> CHECK_STATE)
STATE_SUB_CODE_SUFFIXES = (":B04", ":B02", ":B55")
#: TOP top-level codes: 7 App Call Limited; 26/27 missing/invalid session; 53 session expired (TOP docs)
RATE_CODES = frozenset({"7"})
AUTH_CODES = frozenset({"26", "27", "53"})

#: trade status -> shipping state (status enum: channels.md §2.4)
TRADE_STATES: dict[str, ShipState] = {
    "WAIT_SELLER_SEND_GOODS": ShipState.OPEN,
    "PAID_FORBID_CONSIGN": ShipState.OPEN,
    "SELLER_CONSIGNED_PART": ShipState.PARTLY_SHIPPED,
    "WAIT_BUYER_CONFIRM_GOODS": ShipState.SHIPPED,
    "TRADE_BUYER_SIGNED": ShipState.SHIPPED,
    "TRADE_FINISHED": ShipState.SHIPPED,
    "TRADE_CLOSED": ShipState.CLOSED,
    "TRADE_CLOSED_BY_TAOBAO": ShipState.CLOSED,
}
SHIPPED_LINE_STATUSES = frozenset({"WAIT_BUYER_CONFIRM_GOODS", "TRADE_BUYER_SIGNED", "TRADE_FINISHED"})
#: sub-order refund_status values meaning a refund is in progress (channels.md §2.4)
REFUND_PENDING = frozenset({"WAIT_SELLER_AGREE", "WAIT_BUYER_RETURN_GOODS", "WAIT_SELLER_CONFIRM_GOODS"})


# ---------------------------------------------------------------- building


def _request(
    call: str,
    business: Mapping[str, str],
    creds: TmallCredentials,
    now: datetime,
    base_url: str,
    sign_method: str,
) -> PlatformRequest:
    params = {
        "method": call,
        "app_key": creds.app_key,
        "session": creds.session,
        "timestamp": format_top_timestamp(beijing(now)),
        "format": "json",
        "v": "2.0",
        "sign_method": sign_method,
        "simplify": "false",  # keep the <call>_response wrapper: the parsers read it
        **{k: v for k, v in business.items() if v not in (None, "")},
    }
    params["sign"] = top_sign(params, creds.app_secret, sign_method)
    return PlatformRequest(
        call=call,
        base_url=base_url,
        path=PATH,
        form=params,
        headers={"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"},
    )


def store_feature(store: RetailStore | None) -> str:
    """The `feature` text naming the fulfilling store: retailStoreId=…;retailStoreType=…."""
    return f"retailStoreId={store.store_id};retailStoreType={store.kind}" if store else ""


def build_item_quantity_update(
    creds: TmallCredentials,
    *,
    num_iid: str,
    quantity: int,
    sku_id: str | None = None,
    now: datetime,
    base_url: str = DEFAULT_BASE_URL,
    sign_method: str = "md5",
) -> PlatformRequest:
    """taobao.item.quantity.update with type=1: the full sellable value of an item or one SKU."""
    level = StockLevel(platform_sku_id=sku_id or num_iid, quantity=quantity)
    business = {"num_iid": num_iid, "quantity": str(level.quantity), "type": "1"}
    if sku_id:
        business["sku_id"] = sku_id
    return _request(ITEM_QUANTITY_UPDATE, business, creds, now, base_url, sign_method)


def build_skus_quantity_update(
    creds: TmallCredentials,
    *,
    num_iid: str,
    levels: Sequence[StockLevel],
    now: datetime,
    base_url: str = DEFAULT_BASE_URL,
    sign_method: str = "md5",
) -> list[PlatformRequest]:
    """taobao.skus.quantity.update, type=1, split into calls of at most 20 SKUs each."""
    if not levels:
        raise OutboundInputError("skus quantity update: no SKUs")
    seen: set[str] = set()
    for level in levels:
        if level.platform_sku_id in seen:
            raise OutboundInputError(f"skus quantity update: SKU {level.platform_sku_id} given twice")
        if any(c in level.platform_sku_id for c in ":;"):
            raise OutboundInputError("skus quantity update: SKU id contains ':' or ';'")
        seen.add(level.platform_sku_id)
    calls = []
    for start in range(0, len(levels), MAX_SKUS_PER_CALL):
        chunk = levels[start : start + MAX_SKUS_PER_CALL]
        business = {
            "num_iid": num_iid,
            "skuid_quantities": ";".join(f"{lv.platform_sku_id}:{lv.quantity}" for lv in chunk),
            "type": "1",
        }
        calls.append(_request(SKUS_QUANTITY_UPDATE, business, creds, now, base_url, sign_method))
    return calls


def build_offline_send(
    creds: TmallCredentials,
    *,
    tid: str,
    carrier: Carrier | str,
    out_sid: str,
    store: RetailStore | None = None,
    sub_tids: Sequence[str] = (),
    now: datetime,
    base_url: str = DEFAULT_BASE_URL,
    sign_method: str = "md5",
) -> PlatformRequest:
    """taobao.logistics.offline.send: the whole trade (or `sub_tids` with is_split=1) shipped."""
    if not out_sid.strip():
        raise OutboundInputError("offline send: tracking number (out_sid) is empty")
    business = {
        "tid": tid,
        "out_sid": out_sid.strip(),
        "company_code": require_code(carrier, Platform.TMALL),
        "feature": store_feature(store),
    }
    if sub_tids:  # split shipping: PHP ERP usage (outbound.md §1.1) [3P]
        business["is_split"] = "1"
        business["sub_tid"] = ",".join(sub_tids)
    return _request(OFFLINE_SEND, business, creds, now, base_url, sign_method)


def build_ascp_offline_send(
    creds: TmallCredentials,
    *,
    tid: str,
    parcels: Sequence[Parcel],
    store: RetailStore | None = None,
    now: datetime,
    base_url: str = DEFAULT_BASE_URL,
    sign_method: str = "md5",
) -> PlatformRequest:
    """alibaba.ascp.logistics.offline.send, consign_type 1: parcels with their sub-orders."""
    if not parcels:
        raise OutboundInputError("ascp offline send: no parcels")
    pkgs: list[dict[str, Any]] = []
    status: list[dict[str, Any]] = []
    for parcel in parcels:
        if not parcel.lines:
            raise OutboundInputError("ascp offline send: a parcel names no sub-orders")
        goods = []
        for line in parcel.lines:
            if line.quantity < 1:
                raise OutboundInputError("ascp offline send: line quantity must be >= 1")
            # item_type 0 = ordinary item (TopConsignGoodsRequest)
            goods.append({"sub_tid": line.platform_line_id, "num": line.quantity, "item_type": 0})
            status.append({"sub_tid": line.platform_line_id, "is_part_consign": line.part})
        pkgs.append(
            {
                "company_code": require_code(parcel.carrier, Platform.TMALL),
                "out_sid": parcel.tracking_no,
                "goods": goods,
            }
        )
    business = {
        "tid": tid,
        "consign_type": "1",  # new path: sub-order partial shipment
        "consign_pkgs": compact_json(pkgs),
        # UNCONFIRMED shape: one SDK version types consign_status as a single object; a list
        # (one entry per sub-order) is what per-line partial shipping needs
        "consign_status": compact_json(status),
        "feature": store_feature(store),
    }
    return _request(ASCP_OFFLINE_SEND, business, creds, now, base_url, sign_method)


def build_dummy_send(
    creds: TmallCredentials,
    *,
    tid: str,
    store: RetailStore | None = None,
    now: datetime,
    base_url: str = DEFAULT_BASE_URL,
    sign_method: str = "md5",
) -> PlatformRequest:
    """taobao.logistics.dummy.send: shipped without logistics (pickup, own rider)."""
    business = {"tid": tid, "feature": store_feature(store)}
    return _request(DUMMY_SEND, business, creds, now, base_url, sign_method)


def build_trade_state(
    creds: TmallCredentials,
    *,
    tid: str,
    now: datetime,
    base_url: str = DEFAULT_BASE_URL,
    sign_method: str = "md5",
) -> PlatformRequest:
    """taobao.trade.fullinfo.get for status and sub-order states only (the state query)."""
    return _request(TRADE_STATE, {"tid": tid, "fields": STATE_FIELDS}, creds, now, base_url, sign_method)


# ---------------------------------------------------------------- parsing


def _error(status: int, err: Mapping[str, Any], *, shipment: bool) -> Outcome:
    code, sub_code = text(err.get("code")), text(err.get("sub_code"))
    msg, sub_msg = text(err.get("msg")), text(err.get("sub_msg"))
    message = sub_msg or msg
    shown = sub_code or code
    wait = ban_seconds(sub_msg) or ban_seconds(msg)
    if code in RATE_CODES or wait is not None or sub_code.startswith("accesscontrol.") or "call limited" in msg.lower():
        return Outcome(kind=OutcomeKind.RATE_LIMITED, http_status=status, code=shown, message=message, retry_after=wait)
    # offline P03 reads "会话已过期" in the third-party error table (online P03 means something else)
    if code in AUTH_CODES or "session" in sub_code or sub_code == "isv.logistics-offline-service-error:P03":
        return Outcome(kind=OutcomeKind.AUTH_FAILED, http_status=status, code=shown, message=message)
    if sub_code in RETRY_SUB_CODES or sub_code.startswith("isp.") or (code in ("520", "15") and not sub_code):
        return Outcome(kind=OutcomeKind.RETRYABLE, http_status=status, code=shown, message=message)
    if shipment and sub_code.endswith(STATE_SUB_CODE_SUFFIXES):
        return Outcome(kind=OutcomeKind.CHECK_STATE, http_status=status, code=shown, message=message)
    return Outcome(kind=OutcomeKind.REJECTED, http_status=status, code=shown, message=message)


def _envelope(status: int, body: bytes, key: str, *, shipment: bool) -> tuple[Outcome | None, Any]:
    """(decided outcome, None) or (None, the <call>_response object)."""
    doc = json_object(body)
    if doc is None:
        return http_outcome(status) or unreadable(status), None
    err = doc.get("error_response")
    if isinstance(err, Mapping):
        return _error(status, err, shipment=shipment), None
    decided = http_outcome(status)
    if decided is not None:
        return decided, None
    payload = doc.get(key)
    if not isinstance(payload, Mapping):
        return unreadable(status, f"no {key}"), None
    return None, payload


def _quantity(status: int, body: bytes, key: str) -> Outcome:
    decided, payload = _envelope(status, body, key, shipment=False)
    if decided is not None:
        return decided
    if isinstance(payload.get("item"), Mapping):
        return Outcome(kind=OutcomeKind.ACCEPTED, http_status=status)
    return unreadable(status, f"{key} carries no item")


def parse_item_quantity_update(status: int, body: bytes) -> Outcome:
    """item_quantity_update_response.item{num_iid, num, modified} = accepted."""
    return _quantity(status, body, "item_quantity_update_response")


def parse_skus_quantity_update(status: int, body: bytes) -> Outcome:
    """skus_quantity_update_response.item{...} = accepted."""
    return _quantity(status, body, "skus_quantity_update_response")


def _shipping(status: int, body: bytes, key: str) -> Outcome:
    decided, payload = _envelope(status, body, key, shipment=True)
    if decided is not None:
        return decided
    flag = dig(payload, "shipping", "is_success")
    if flag is None:
        flag = dig(payload, "result", "success")  # ascp: result{success}
    if flag is None:
        return unreadable(status, f"{key} carries no success flag")
    if truthy(flag):
        return Outcome(kind=OutcomeKind.ACCEPTED, http_status=status)
    # success=false without an error_response: the platform says no but not why -> ask the state
    return Outcome(kind=OutcomeKind.CHECK_STATE, http_status=status, message="is_success=false")


def parse_offline_send(status: int, body: bytes) -> Outcome:
    """logistics_offline_send_response.shipping.is_success; B04 -> CHECK_STATE."""
    return _shipping(status, body, "logistics_offline_send_response")


def parse_ascp_offline_send(status: int, body: bytes) -> Outcome:
    """alibaba_ascp_logistics_offline_send_response.result.success."""
    return _shipping(status, body, "alibaba_ascp_logistics_offline_send_response")


def parse_dummy_send(status: int, body: bytes) -> Outcome:
    """logistics_dummy_send_response.shipping.is_success."""
    return _shipping(status, body, "logistics_dummy_send_response")


def parse_trade_state(status: int, body: bytes) -> StateCheck:
    """Read trade.status and orders[].status / refund_status into a StateCheck."""
    decided, payload = _envelope(status, body, "trade_fullinfo_get_response", shipment=False)
    if decided is not None:
        return StateCheck(outcome=decided)
    trade = payload.get("trade")
    trade_status = text(dig(trade, "status"))
    if not trade_status:
        return StateCheck(outcome=unreadable(status, "trade carries no status"))
    orders = dig(trade, "orders")
    if isinstance(orders, Mapping):  # non-simplified JSON wraps the list: {"order": [...]}
        orders = orders.get("order")
    shipped: set[str] = set()
    refunding: set[str] = set()
    for sub in orders if isinstance(orders, list) else []:
        oid = text(dig(sub, "oid"))
        if not oid:
            continue
        if text(dig(sub, "status")) in SHIPPED_LINE_STATUSES:
            shipped.add(oid)
        if text(dig(sub, "refund_status")) in REFUND_PENDING:
            refunding.add(oid)
    state = TRADE_STATES.get(trade_status, ShipState.UNKNOWN)
    if state is ShipState.OPEN and refunding:
        state = ShipState.REFUND_PENDING
    return StateCheck(
        outcome=Outcome(kind=OutcomeKind.ACCEPTED, http_status=status),
        state=state,
        platform_status=trade_status,
        shipped_lines=frozenset(shipped),
        refund_lines=frozenset(refunding),
    )
