"""Douyin (抖店) outbound: SKU stock, ship confirmation.

Calls (docs platforms/outbound.md §3; parameters and error tables from the official Doudian
SDKs and a C# SDK generated from the platform's docs, sevencat/ecommerce_sdk):
- `/sku/syncStock` — sku_id, stock_num, incremental=false (full value, the platform default),
  idempotent_id (required only for incremental; sent anyway so a retry is recognisable),
  store_id (即时零售 / 门店 stock), out_warehouse_id (区域库存);
- `/sku/syncStockBatch` — product_id, incremental, idempotent_id, sku_sync_list
  [{sku_id, sku_type 0, stock_num}], store_id; one product per call, all-or-nothing;
- `/order/logisticsAdd` — whole shop order: order_id, company_code, logistics_code, store_id;
- `/order/logisticsAddMultiPack` — split: order_id, pack_list[{shipped_order_info
  [{shipped_order_id, shipped_num}], logistics_code, company_code}], request_id (idempotent:
  "相同request_id多次请求…直接返回第一次请求成功的结果").

We never send is_reject_refund=true: with a refund pending the platform refuses to ship
(isv.business-failed:60040 "发货订单中有退款申请需要处理，请先处理"; 60120 "订单正在售后中") and the
order goes to our intercept flow (INTERCEPTED). 60110 "订单已发货，不允许再次执行发货" means a retry
after a lost reply: ALREADY_SHIPPED.

Signing (§3.1): sign = hex(HMAC-SHA256(secret, secret + "app_key".. "method".. "param_json"..
"timestamp".. "v2" + secret)) over the exact body text, adapters/douyin.py `api_sign`.
Rate limits: none documented (outbound.md §3); HTTP 429 or a message about 频繁/限流 is
treated as RATE_LIMITED (UNCONFIRMED wording).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from adapters.douyin import DouyinCredentials, api_sign
from adapters.outbound.carriers import Carrier, require_code
from adapters.outbound.common import (
    Outcome,
    OutcomeKind,
    OutboundInputError,
    Parcel,
    Platform,
    PlatformRequest,
    StockLevel,
    beijing,
    compact_json,
    dig,
    http_outcome,
    id_number,
    json_object,
    text,
    unreadable,
)

DEFAULT_BASE_URL = "https://openapi-fxg.jinritemai.com"
SANDBOX_BASE_URL = "https://openapi-sandbox.jinritemai.com"
SIGN_METHOD = "hmac-sha256"

SYNC_STOCK = "sku.syncStock"
SYNC_STOCK_BATCH = "sku.syncStockBatch"
LOGISTICS_ADD = "order.logisticsAdd"
LOGISTICS_ADD_MULTI_PACK = "order.logisticsAddMultiPack"

SUCCESS_CODE = 10000
#: sub_code numbers (after "isv.business-failed:" etc.), from the platform's error tables
REFUND_PENDING_CODES = frozenset({"60040", "60120"})
CLOSED_CODES = frozenset({"60021", "60068", "60113"})  # cancelled / refunded before shipping / finished
ALREADY_SHIPPED_CODES = frozenset({"60110"})
MULTI_PACK_ALREADY_SHIPPED = frozenset({"70023"})  # "已发货，请检查订单状态" (multipack table only)
DUPLICATE_STOCK_CODES = frozenset({"40010", "2010021"})  # idempotent_id already executed
#: "系统繁忙，请稍后重试" and friends under isv.business-failed / parameter-invalid
RETRY_CODES = frozenset(
    {"60114", "60118", "60121", "60125", "70009", "120018", "120032", "8888", "2010401", "40004", "2010002"}
)
RATE_WORDS = ("频繁", "限流", "too many", "rate limit")  # UNCONFIRMED: no documented rate-limit reply
AUTH_WORDS = ("access_token", "access-token", "token")


def _request(call: str, business: dict[str, Any], creds: DouyinCredentials, now: datetime,
             base_url: str) -> PlatformRequest:
    param_json = compact_json(business)
    timestamp = str(int(beijing(now).timestamp()))
    sign = api_sign(creds.app_key, creds.app_secret, call, param_json, timestamp, SIGN_METHOD)
    return PlatformRequest(
        call=call,
        base_url=base_url,
        path="/" + call.replace(".", "/"),
        params={
            "app_key": creds.app_key,
            "method": call,
            "v": "2",
            "sign": sign,
            "timestamp": timestamp,
            "access_token": creds.access_token,
            "sign_method": SIGN_METHOD,
        },
        body=param_json.encode("utf-8"),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )


def build_sync_stock(
    creds: DouyinCredentials,
    *,
    sku_id: str,
    quantity: int,
    idempotent_id: str,
    product_id: str | None = None,
    store_id: str | None = None,
    out_warehouse_id: str | None = None,
    now: datetime,
    base_url: str = DEFAULT_BASE_URL,
) -> PlatformRequest:
    """/sku/syncStock with a full value (incremental=false) for one SKU (or one store's SKU)."""
    level = StockLevel(platform_sku_id=sku_id, quantity=quantity)
    if not idempotent_id:
        raise OutboundInputError("sync stock: idempotent_id is empty")
    business: dict[str, Any] = {
        "sku_id": id_number(level.platform_sku_id, "sku_id"),
        "stock_num": level.quantity,
        "incremental": False,
        "idempotent_id": idempotent_id,
    }
    if product_id:
        business["product_id"] = id_number(product_id, "product_id")
    if store_id:
        business["store_id"] = id_number(store_id, "store_id")
    if out_warehouse_id:
        business["out_warehouse_id"] = out_warehouse_id
    return _request(SYNC_STOCK, business, creds, now, base_url)


def build_sync_stock_batch(
    creds: DouyinCredentials,
    *,
    product_id: str,
    levels: Sequence[StockLevel],
    idempotent_id: str,
    store_id: str | None = None,
    now: datetime,
    base_url: str = DEFAULT_BASE_URL,
) -> PlatformRequest:
    """/sku/syncStockBatch: full values for SKUs of ONE product (the platform's rule)."""
    if not levels:
        raise OutboundInputError("sync stock batch: no SKUs")
    if not idempotent_id:
        raise OutboundInputError("sync stock batch: idempotent_id is empty")
    business: dict[str, Any] = {
        "product_id": id_number(product_id, "product_id"),
        "incremental": False,
        "idempotent_id": idempotent_id,
        # sku_type 0 = 普通库存. UNCONFIRMED: 超市小时达 child products may need sku_type 1 with
        # stock_map[{out_warehouse_id: store id}] instead (SDK comment "超市小时达子品传区域库存")
        "sku_sync_list": [
            {"sku_id": id_number(lv.platform_sku_id, "sku_id"), "sku_type": 0, "stock_num": lv.quantity}
            for lv in levels
        ],
    }
    if store_id:
        business["store_id"] = id_number(store_id, "store_id")
    return _request(SYNC_STOCK_BATCH, business, creds, now, base_url)


def build_logistics_add(
    creds: DouyinCredentials,
    *,
    order_id: str,
    carrier: Carrier | str,
    tracking_no: str,
    store_id: str | None = None,
    now: datetime,
    base_url: str = DEFAULT_BASE_URL,
) -> PlatformRequest:
    """/order/logisticsAdd: the whole shop (parent) order shipped in one parcel."""
    if not tracking_no.strip():
        raise OutboundInputError("logistics add: tracking number is empty")
    business: dict[str, Any] = {
        "order_id": order_id,  # parent order id, a string in the SDK
        "company_code": require_code(carrier, Platform.DOUYIN),
        "logistics_code": tracking_no.strip(),
    }
    if store_id:  # 门店ID；抖超小时达店铺需要填写
        business["store_id"] = id_number(store_id, "store_id")
    return _request(LOGISTICS_ADD, business, creds, now, base_url)


def build_logistics_add_multi_pack(
    creds: DouyinCredentials,
    *,
    order_id: str,
    parcels: Sequence[Parcel],
    request_id: str,
    store_id: str | None = None,
    now: datetime,
    base_url: str = DEFAULT_BASE_URL,
) -> PlatformRequest:
    """/order/logisticsAddMultiPack: split parcels; `request_id` makes a retry return the first result."""
    if not parcels:
        raise OutboundInputError("multi pack: no parcels")
    if not request_id:
        raise OutboundInputError("multi pack: request_id is empty")
    packs = []
    for parcel in parcels:
        if not parcel.lines:
            raise OutboundInputError("multi pack: a parcel names no sub-orders")
        if not parcel.tracking_no.strip():
            raise OutboundInputError("multi pack: a parcel has no tracking number")
        packs.append(
            {
                "shipped_order_info": [
                    {"shipped_order_id": line.platform_line_id, "shipped_num": line.quantity}
                    for line in parcel.lines
                ],
                "logistics_code": parcel.tracking_no.strip(),
                "company_code": require_code(parcel.carrier, Platform.DOUYIN),
            }
        )
    business: dict[str, Any] = {"order_id": order_id, "pack_list": packs, "request_id": request_id}
    if store_id:
        business["store_id"] = id_number(store_id, "store_id")
    return _request(LOGISTICS_ADD_MULTI_PACK, business, creds, now, base_url)


# ---------------------------------------------------------------- parsing


def _number(sub_code: str) -> str:
    """"isv.business-failed:60040" -> "60040"."""
    return sub_code.rsplit(":", 1)[-1] if ":" in sub_code else ""


def _pack_ids(doc: dict[str, Any]) -> tuple[str, ...]:
    packs = dig(doc, "data", "pack_list")
    if not isinstance(packs, list):
        return ()
    return tuple(text(dig(pack, "pack_id")) for pack in packs if text(dig(pack, "pack_id")))


def _classify(status: int, body: bytes, *, shipment: bool, multi_pack: bool = False) -> Outcome:
    doc = json_object(body)
    if doc is None:
        return http_outcome(status) or unreadable(status)
    code = doc.get("code")
    err_no = doc.get("err_no")
    if code is None and err_no is None:
        return http_outcome(status) or unreadable(status, "no code / err_no")
    sub_code = text(doc.get("sub_code"))
    message = text(doc.get("sub_msg")) or text(doc.get("msg")) or text(doc.get("message"))
    shown = sub_code or text(code if code is not None else err_no)
    ok = text(code) == str(SUCCESS_CODE) if code is not None else text(err_no) == "0"
    decided = http_outcome(status)
    if ok and decided is None:
        return Outcome(kind=OutcomeKind.ACCEPTED, http_status=status, refs=_pack_ids(doc))
    if decided is not None and decided.kind is not OutcomeKind.AUTH_FAILED:
        return decided
    number = _number(sub_code)
    lowered = message.lower()
    if shipment and number in REFUND_PENDING_CODES | CLOSED_CODES:
        return Outcome(kind=OutcomeKind.INTERCEPTED, http_status=status, code=shown, message=message)
    if shipment and (number in ALREADY_SHIPPED_CODES or (multi_pack and number in MULTI_PACK_ALREADY_SHIPPED)):
        return Outcome(kind=OutcomeKind.ALREADY_SHIPPED, http_status=status, code=shown, message=message)
    if not shipment and number in DUPLICATE_STOCK_CODES:
        # "[idempotent_id]重复，操作已执行": this exact update already applied
        return Outcome(kind=OutcomeKind.ACCEPTED, http_status=status, code=shown, message=message)
    if any(word in lowered for word in RATE_WORDS) or status == 429:
        return Outcome(kind=OutcomeKind.RATE_LIMITED, http_status=status, code=shown, message=message)
    if number in RETRY_CODES or sub_code.startswith("isp.") or text(code) == "20000" or "稍后重试" in message:
        return Outcome(kind=OutcomeKind.RETRYABLE, http_status=status, code=shown, message=message)
    if decided is not None or any(word in lowered for word in AUTH_WORDS):
        return Outcome(kind=OutcomeKind.AUTH_FAILED, http_status=status, code=shown, message=message)
    if shipment and number == "70023":  # logisticsAdd: "没有能发货的订单": shipped or closed, ask
        return Outcome(kind=OutcomeKind.CHECK_STATE, http_status=status, code=shown, message=message)
    return Outcome(kind=OutcomeKind.REJECTED, http_status=status, code=shown, message=message)


def parse_sync_stock(status: int, body: bytes) -> Outcome:
    """code 10000 = accepted; a repeated idempotent_id counts as accepted."""
    return _classify(status, body, shipment=False)


def parse_sync_stock_batch(status: int, body: bytes) -> Outcome:
    """All-or-nothing per call: accepted or one outcome for the whole batch."""
    return _classify(status, body, shipment=False)


def parse_logistics_add(status: int, body: bytes) -> Outcome:
    """60040/60120 refund pending -> INTERCEPTED; 60110 already shipped -> ALREADY_SHIPPED."""
    return _classify(status, body, shipment=True)


def parse_logistics_add_multi_pack(status: int, body: bytes) -> Outcome:
    """As parse_logistics_add; the returned pack_ids are in `refs`."""
    return _classify(status, body, shipment=True, multi_pack=True)
