"""The demo shop's platforms, for `oms simulate-sale`: what Douyin, Taobao, JD and WeChat Pay would
send the OMS, signed with the demo credentials, and their order APIs on 127.0.0.1.

Douyin, Tmall and JD pushes name an order; the OMS then fetches the full order from the
platform's API (order.orderDetail, taobao.trade.fullinfo.get, jingdong.pop.order.get).
`PlatformApi` answers those calls from the orders the simulator sold, after checking each
request's signature as the platform would. The mini-program push carries its order, and WeChat
Pay notifications are signed with the demo platform key and encrypted with the demo APIv3 key.
Everything here builds bytes: the adapters in adapters/ are the OMS side that reads them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qsl, urlencode, urlsplit

from adapters import douyin, jd, miniprogram, tmall
from adapters.timeutil import BEIJING, format_jos_timestamp, format_top_timestamp

DOUYIN_STATUS = {"unpaid": 1, "paid": 2, "cancelled": 4}
TMALL_STATUS = {"unpaid": "WAIT_BUYER_PAY", "paid": "WAIT_SELLER_SEND_GOODS", "cancelled": "TRADE_CLOSED"}
JD_STATUS = {"paid": "WAIT_SELLER_STOCK_OUT", "cancelled": "TRADE_CANCELED"}


@dataclass
class Line:
    line_id: str
    sku: str
    quantity: int
    unit_price: int  # fen


@dataclass
class Place:
    """Where the buyer is: a point (GCJ-02) for one-hour orders, always the region names."""

    province: str
    city: str
    district: str
    lat: float | None = None
    lng: float | None = None


@dataclass
class SaleOrder:
    channel: str  # douyin | tmall | jd | miniprogram
    external_id: str
    mode: str  # delivery | pickup | ship
    lines: list[Line]
    place: Place
    pickup_node: str | None = None
    status: str = "paid"  # unpaid | paid | cancelled
    created: datetime = field(default_factory=lambda: datetime.now(BEIJING))
    paid: datetime | None = None
    updated: datetime = field(default_factory=lambda: datetime.now(BEIJING))
    refunded: set[str] = field(default_factory=set)

    @property
    def total(self) -> int:
        return sum(l.quantity * l.unit_price for l in self.lines)

    def touch(self) -> None:
        self.updated = datetime.now(BEIJING)


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def _epoch(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment else None


# ---------------------------------------------------------------- the platforms' order documents


def douyin_detail(o: SaleOrder) -> dict:
    """order.orderDetail's shop_order_detail for one order."""
    receive = 2 if o.mode == "pickup" else 1
    items = [{"order_id": l.line_id, "parent_order_id": o.external_id, "sku_id": int(hashlib.md5(l.sku.encode()).hexdigest()[:12], 16),
              "out_sku_id": l.sku, "item_num": l.quantity, "origin_amount": l.unit_price,
              "sum_amount": l.unit_price * l.quantity, "receive_type": receive}
             for l in o.lines]
    region = {"province": {"name": o.place.province}, "city": {"name": o.place.city},
              "town": {"name": o.place.district}, "street": {"name": ""}, "detail": "****"}
    status = DOUYIN_STATUS[o.status]
    detail = {
        "order_id": o.external_id, "order_status": status, "main_status": status,
        "create_time": _epoch(o.created), "pay_time": _epoch(o.paid), "update_time": _epoch(o.updated),
        "order_amount": o.total, "pay_amount": o.total, "post_amount": 0, "promotion_amount": 0,
        "mask_post_receiver": "张*", "mask_post_tel": "138****0000", "mask_post_addr": region,
        "sku_order_list": items,
    }
    if o.mode == "delivery":
        detail.update(early_arrival=True, target_arrival_time=_epoch(o.created + timedelta(hours=1)),
                      user_coordinate={"user_coordinate_longitude": f"{o.place.lng:.6f}",
                                       "user_coordinate_latitude": f"{o.place.lat:.6f}"})
    elif o.mode == "pickup":
        detail["store_info"] = {"store_id": 9000, "out_store_id": o.pickup_node, "store_name": o.pickup_node}
    return {"code": 10000, "msg": "success", "data": {"shop_order_detail": detail}}


def tmall_trade(o: SaleOrder) -> dict:
    """taobao.trade.fullinfo.get (simplify=true) for one trade."""
    return {"trade": {
        "tid": int(o.external_id), "tid_str": o.external_id, "status": TMALL_STATUS[o.status],
        "payment": _yuan(o.total), "total_fee": _yuan(o.total), "post_fee": "0.00", "discount_fee": "0.00",
        "created": format_top_timestamp(o.created), "pay_time": format_top_timestamp(o.paid) if o.paid else None,
        "modified": format_top_timestamp(o.updated), "receiver_name": "李*", "receiver_mobile": "139****0000",
        "receiver_state": o.place.province, "receiver_city": o.place.city, "receiver_district": o.place.district,
        "receiver_address": "****",
        "orders": [{"oid": int(l.line_id), "num": l.quantity, "price": _yuan(l.unit_price),
                    "payment": _yuan(l.unit_price * l.quantity), "outer_sku_id": l.sku, "title": l.sku}
                   for l in o.lines],
    }}


def jd_order(o: SaleOrder) -> dict:
    """jingdong.pop.order.get for one order."""
    info = {
        "orderId": o.external_id, "orderState": JD_STATUS.get(o.status, "WAIT_SELLER_STOCK_OUT"),
        "orderPayment": _yuan(o.total), "freightPrice": "0.00", "sellerDiscount": "0.00",
        "orderStartTime": format_top_timestamp(o.created),
        "paymentConfirmTime": format_top_timestamp(o.paid) if o.paid else None,
        "modified": format_top_timestamp(o.updated),
        "consigneeInfo": {"fullname": "王*", "mobile": "137****0000", "province": o.place.province,
                          "city": o.place.city, "county": o.place.district,
                          "fullAddress": f"{o.place.province}{o.place.city}{o.place.district}****"},
        "itemInfoList": [{"skuId": l.line_id, "outerSkuId": l.sku, "jdPrice": _yuan(l.unit_price),
                          "itemTotal": str(l.quantity)} for l in o.lines],
    }
    return {"jingdong_pop_order_get_responce": {"code": "0", "orderDetailInfo": {"orderInfo": info}}}


# ---------------------------------------------------------------- the order APIs on 127.0.0.1


class PlatformApi:
    """order.orderDetail, taobao.trade.fullinfo.get and jingdong.pop.order.get on one port,
    each checking the caller's signature with the demo shop's secrets."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.orders: dict[tuple[str, str], SaleOrder] = {}
        self.calls = 0
        self.refused = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def put(self, order: SaleOrder) -> None:
        self.orders[(order.channel, order.external_id)] = order

    async def start(self, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port, reuse_address=True)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):  # keep-alive connections of the OMS's HTTP client
                writer.close()
            await self._server.wait_closed()

    def answer(self, path: str, query: dict[str, str], body: bytes) -> dict:
        self.calls += 1
        e = self.env
        if path.startswith("/douyin/"):
            pattern_ok = query.get("app_key") == e["OMS_DOUYIN_APP_KEY"] and query.get("sign") == douyin.api_sign(
                e["OMS_DOUYIN_APP_KEY"], e["OMS_DOUYIN_APP_SECRET"], query.get("method", ""), body.decode(),
                query.get("timestamp", ""), query.get("sign_method", "hmac-sha256"))
            if not pattern_ok:
                self.refused += 1
                return {"code": 40003, "msg": "sign error", "sub_code": "isv.sign-invalid"}
            order = self.orders.get(("douyin", str(json.loads(body)["shop_order_id"])))
            return douyin_detail(order) if order else {"code": 40004, "msg": "no order", "sub_code": "isv.order-not-exist"}
        form = dict(parse_qsl(body.decode(), keep_blank_values=True))
        if path.startswith("/tmall/"):
            if form.get("sign") != tmall.top_sign(form, e["OMS_TMALL_APP_SECRET"], form.get("sign_method", "md5")):
                self.refused += 1
                return {"error_response": {"code": 25, "msg": "Invalid signature", "sub_msg": "sign error"}}
            order = self.orders.get(("tmall", form.get("tid", "")))
            return tmall_trade(order) if order else {"error_response": {"code": 15, "msg": "Remote service error",
                                                                         "sub_code": "isv.trade-not-exist"}}
        if path.startswith("/jd/"):
            if form.get("sign") != jd.jos_sign(form, e["OMS_JD_APP_SECRET"]):
                self.refused += 1
                return {"error_response": {"code": "19", "zh_desc": "签名错误", "en_desc": "Invalid signature"}}
            order_id = str(json.loads(form.get("360buy_param_json", "{}")).get("order_id", ""))
            order = self.orders.get(("jd", order_id))
            return jd_order(order) if order else {"error_response": {"code": "100", "en_desc": "order not found"}}
        return {"error": "unknown path"}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                _method, target, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    raw = await reader.readline()
                    if raw in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = raw.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                parts = urlsplit(target)
                payload = json.dumps(self.answer(parts.path, dict(parse_qsl(parts.query)), body),
                                     ensure_ascii=False).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json;charset=utf-8\r\n"
                             b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


# ---------------------------------------------------------------- signed pushes


@dataclass
class Push:
    path: str
    body: bytes
    headers: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)


class Signer:
    """Builds each platform's push for the demo shop, signed as that platform signs it."""

    def __init__(self, env: dict[str, str], wechatpay_private_key_pem: str) -> None:
        from cryptography.hazmat.primitives import serialization

        self.env = env
        self._wechatpay_key = serialization.load_pem_private_key(wechatpay_private_key_pem.encode(), password=None)

    # Douyin: a JSON array of messages, event-sign = md5(app_key + body + app_secret)
    def douyin_message(self, tag: int, o: SaleOrder, **data: object) -> dict:
        payload = {"p_id": int(o.external_id), "s_ids": [int(l.line_id) for l in o.lines], "shop_id": 77, **data}
        return {"tag": str(tag), "msg_id": f"{o.external_id}-{tag}-{secrets.token_hex(3)}",
                "data": json.dumps(payload)}

    def douyin_batch(self, messages: list[dict]) -> Push:
        body = json.dumps(messages, ensure_ascii=False).encode()
        key, secret = self.env["OMS_DOUYIN_APP_KEY"], self.env["OMS_DOUYIN_APP_SECRET"]
        return Push("/webhooks/douyin", body, {"app-id": key, "event-sign": douyin.sign_push(key, secret, body),
                                               "Content-Type": "application/json"})

    # Tmall: a TMC message relayed as JSON, TOP-signed over the query parameters + the body
    def tmall_relay(self, topic: str, o: SaleOrder, **content: object) -> Push:
        message = {"id": str(secrets.randbits(60)), "topic": topic, "pub_app_key": self.env["OMS_TMALL_APP_KEY"],
                   "pub_time": format_top_timestamp(datetime.now(BEIJING)),
                   "content": json.dumps({"tid": int(o.external_id), "status": TMALL_STATUS.get(o.status),
                                          "payment": _yuan(o.total), "modified": format_top_timestamp(o.updated),
                                          **content})}
        body = json.dumps(message, ensure_ascii=False).encode()
        params = {"app_key": self.env["OMS_TMALL_APP_KEY"], "timestamp": format_top_timestamp(datetime.now(BEIJING)),
                  "sign_method": "md5"}
        params["sign"] = tmall.top_sign(params, self.env["OMS_TMALL_APP_SECRET"], "md5", body)
        return Push("/webhooks/tmall", body, {"Content-Type": "application/json"}, params)

    # JD: JOS-signed form parameters, the message in 360buy_param_json
    def jd_relay(self, o: SaleOrder) -> Push:
        message = {"orderId": o.external_id, "orderState": JD_STATUS.get(o.status, "WAIT_SELLER_STOCK_OUT"),
                   "modified": format_top_timestamp(o.updated), "msgId": f"jd-{o.external_id}-{secrets.token_hex(4)}"}
        form = {"360buy_param_json": json.dumps(message, separators=(",", ":")), "app_key": self.env["OMS_JD_APP_KEY"],
                "method": "jingdong.pop.order.relay", "timestamp": format_jos_timestamp(datetime.now(BEIJING)), "v": "2.0"}
        form["sign"] = jd.jos_sign(form, self.env["OMS_JD_APP_SECRET"])
        return Push("/webhooks/jd", urlencode(form).encode(), {"Content-Type": "application/x-www-form-urlencoded"})

    # the mini-program backend's own order push: HMAC-SHA256(secret, timestamp + "\n" + body)
    def miniprogram_push(self, event: str, o: SaleOrder, refunded_line_ids: list[str] | None = None) -> Push:
        receiver = {"name_masked": "赵*", "phone_masked": "136****0000", "province": o.place.province,
                    "city": o.place.city, "district": o.place.district, "address_masked": "****"}
        if o.place.lat is not None:
            receiver.update(lat=o.place.lat, lng=o.place.lng, coord_system="gcj02")
        order = {"order_no": o.external_id, "status": o.status, "delivery_mode": o.mode, "receiver": receiver,
                 "items": [{"line_id": l.line_id, "sku_code": l.sku, "quantity": l.quantity,
                            "unit_price_fen": l.unit_price} for l in o.lines],
                 "total_fen": o.total, "created_at": o.created.isoformat(), "updated_at": o.updated.isoformat()}
        if o.mode == "pickup":
            order["pickup_store_id"] = o.pickup_node
        if o.mode == "delivery":
            order["promised_by"] = (o.created + timedelta(hours=1)).isoformat()
        push = {"event_id": f"evt-{o.external_id}-{secrets.token_hex(4)}", "event": event, "order": order}
        if refunded_line_ids:
            push["refunded_line_ids"] = refunded_line_ids
        body = json.dumps(push, ensure_ascii=False).encode()
        stamp = str(int(time.time()))
        sign = miniprogram.sign_order_push(self.env["OMS_MINIPROGRAM_PUSH_SECRET"], stamp, body)
        return Push("/webhooks/miniprogram", body, {"Content-Type": "application/json", "X-OMS-Timestamp": stamp,
                                                    "X-OMS-Signature": sign})

    # WeChat Pay API v3: resource AES-256-GCM encrypted with the APIv3 key, RSA-SHA256 signed
    def wechatpay(self, event_type: str, resource: dict) -> Push:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce, associated = secrets.token_hex(6), "transaction" if event_type.startswith("TRANSACTION") else "refund"
        key = self.env["OMS_MINIPROGRAM_APIV3_KEY"].encode()
        cipher = AESGCM(key).encrypt(nonce.encode(), json.dumps(resource).encode(), associated.encode())
        now = datetime.now(timezone.utc).astimezone(BEIJING)
        note = {"id": secrets.token_hex(16), "create_time": now.isoformat(timespec="seconds"), "event_type": event_type,
                "resource_type": "encrypt-resource", "summary": event_type,
                "resource": {"algorithm": "AEAD_AES_256_GCM", "ciphertext": base64.b64encode(cipher).decode(),
                             "nonce": nonce, "associated_data": associated, "original_type": associated}}
        body = json.dumps(note).encode()
        stamp, sig_nonce = str(int(time.time())), secrets.token_hex(16)
        signature = self._wechatpay_key.sign(miniprogram.wechatpay_message(stamp, sig_nonce, body),
                                             padding.PKCS1v15(), hashes.SHA256())
        return Push("/webhooks/miniprogram", body, {
            "Content-Type": "application/json", "Wechatpay-Timestamp": stamp, "Wechatpay-Nonce": sig_nonce,
            "Wechatpay-Signature": base64.b64encode(signature).decode(),
            "Wechatpay-Serial": self.env["OMS_MINIPROGRAM_PLATFORM_SERIAL"]})

    def wechatpay_paid(self, o: SaleOrder) -> Push:
        return self.wechatpay("TRANSACTION.SUCCESS", {
            "out_trade_no": o.external_id, "transaction_id": "4200" + secrets.token_hex(8), "trade_state": "SUCCESS",
            "success_time": datetime.now(BEIJING).isoformat(timespec="seconds"),
            "amount": {"total": o.total, "payer_total": o.total, "currency": "CNY"}})

    def wechatpay_refunded(self, o: SaleOrder) -> Push:
        return self.wechatpay("REFUND.SUCCESS", {
            "out_trade_no": o.external_id, "out_refund_no": "R" + o.external_id, "refund_status": "SUCCESS",
            "success_time": datetime.now(BEIJING).isoformat(timespec="seconds"),
            "amount": {"total": o.total, "refund": o.total}})

