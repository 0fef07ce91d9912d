"""Fake Tmall, JD, Douyin and WeChat API servers for outbound tests.

Each fake is a real HTTP/1.1 server (asyncio streams) on 127.0.0.1 at a free port, so the code
under test sends genuine requests with httpx. Each one:
- VERIFIES every request the way the platform does (signature, common parameters, the fields
  each call requires); a request that fails is answered with the platform's error shape and
  noted in `problems` (a test should end with `fake.problems == []`);
- keeps its own state: stock per SKU (and store), shipments per order, and `accepted[order]`,
  the number of shipments it took per order (a double shipment shows as 2);
- can be scripted to misbehave for the next N calls (optionally of one call name):
  `fail_next` (HTTP 500, nothing applied), `rate_limit_next` (the platform's rate-limit reply,
  Taobao's says "This ban will last for N more seconds"), `business_error_next` (a platform
  error code + message), `delay_next` (sleep, then answer normally), `lose_reply_next` (apply
  the call, then answer 500: the "platform did it but we never heard" case);
- records every request in `requests`.

Usage (pytest-asyncio, same event loop as the client):

    async with FakeTmall() as fake, httpx.AsyncClient() as client:
        fake.add_trade("4000000000000000001", oids=["11", "12"])
        req = tmall.build_offline_send(fake.creds, tid=..., ..., base_url=fake.url, now=now)
        status, body = await send(client, req)
        outcome = tmall.parse_offline_send(status, body)

Nothing here is used by production code.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from adapters.douyin import DouyinCredentials
from adapters.jd import JdCredentials
from adapters.outbound.common import PlatformRequest
from adapters.tmall import TmallCredentials


async def send(client: httpx.AsyncClient, request: PlatformRequest) -> tuple[int, bytes]:
    """Send a built request as the dispatcher would; a timeout or a dropped connection is (0, b"")."""
    try:
        response = await client.request(
            request.method,
            request.url,
            params=request.params or None,
            data=request.form or None,
            content=request.body or None,
            headers=request.headers,
        )
    except httpx.HTTPError:
        return 0, b""
    return response.status_code, response.content


# ---------------------------------------------------------------- the HTTP server


@dataclass
class Recorded:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    call: str = ""

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode("utf-8", "replace"), keep_blank_values=True))


Handler = Callable[[Recorded], Awaitable[tuple[int, bytes]]]


class HttpServer:
    """Minimal HTTP/1.1 server (keep-alive, Content-Length bodies) on 127.0.0.1:<free port>."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    raw = await reader.readline()
                    if raw in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = raw.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                parts = urlsplit(target)
                request = Recorded(method, parts.path, dict(parse_qsl(parts.query, keep_blank_values=True)), headers, body)
                status, payload = await self.handler(request)
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json;charset=utf-8\r\n"
                    f"Content-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError, ValueError):
            return
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()


# ---------------------------------------------------------------- scripting and the base fake


@dataclass
class Fault:
    kind: str  # status | rate_limit | business | delay | lose_reply
    remaining: int
    call: str | None = None
    status: int = 500
    seconds: float = 0.0
    code: str = ""
    message: str = ""


class Rejected(Exception):
    """A request the fake refuses (bad signature, missing field): answered with the platform's error."""

    def __init__(self, problem: str, status: int = 200, body: bytes = b"") -> None:
        super().__init__(problem)
        self.problem = problem
        self.status = status
        self.body = body


class FakePlatform:
    """Server, request log, scripted faults. Subclasses verify, route and keep state."""

    name = "platform"

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.problems: list[str] = []
        self.faults: list[Fault] = []
        self.accepted: dict[str, int] = {}  # shipments taken per order
        self._server = HttpServer(self._handle)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    async def __aenter__(self):
        await self._server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._server.stop()

    # -- scripting

    def fail_next(self, n: int = 1, *, status: int = 500, call: str | None = None) -> None:
        self.faults.append(Fault("status", n, call, status=status))

    def rate_limit_next(self, n: int = 1, *, seconds: int = 2, call: str | None = None) -> None:
        self.faults.append(Fault("rate_limit", n, call, seconds=seconds))

    def business_error_next(self, n: int = 1, *, code: str, message: str, call: str | None = None) -> None:
        self.faults.append(Fault("business", n, call, code=code, message=message))

    def delay_next(self, seconds: float, n: int = 1, *, call: str | None = None) -> None:
        self.faults.append(Fault("delay", n, call, seconds=seconds))

    def lose_reply_next(self, n: int = 1, *, call: str | None = None) -> None:
        self.faults.append(Fault("lose_reply", n, call))

    def calls(self, call: str | None = None) -> list[Recorded]:
        return [r for r in self.requests if call is None or r.call == call]

    # -- handling

    def _take_fault(self, call: str) -> Fault | None:
        for fault in self.faults:
            if fault.remaining > 0 and (fault.call is None or fault.call == call):
                fault.remaining -= 1
                return fault
        return None

    async def _handle(self, request: Recorded) -> tuple[int, bytes]:
        self.requests.append(request)
        try:
            request.call = self.call_name(request)
            self.verify(request)
        except Rejected as exc:
            self.problems.append(f"{request.call or request.path}: {exc.problem}")
            return exc.status, exc.body or self.error_body("auth", exc.problem)
        fault = self._take_fault(request.call)
        if fault is not None:
            if fault.kind == "delay":
                await asyncio.sleep(fault.seconds)
            elif fault.kind == "status":
                return fault.status, b'{"error":"scripted failure"}'
            elif fault.kind == "rate_limit":
                return self.rate_limit_reply(int(fault.seconds))
            elif fault.kind == "business":
                return 200, self.error_body(fault.code, fault.message)
        try:
            status, body = self.dispatch(request)
        except Rejected as exc:
            self.problems.append(f"{request.call}: {exc.problem}")
            return exc.status, exc.body or self.error_body("invalid", exc.problem)
        if fault is not None and fault.kind == "lose_reply":
            return 500, b""
        return status, body

    def count(self, order_id: str) -> None:
        self.accepted[order_id] = self.accepted.get(order_id, 0) + 1

    # -- per platform

    def call_name(self, request: Recorded) -> str:
        raise NotImplementedError

    def verify(self, request: Recorded) -> None:
        raise NotImplementedError

    def dispatch(self, request: Recorded) -> tuple[int, bytes]:
        raise NotImplementedError

    def rate_limit_reply(self, seconds: int) -> tuple[int, bytes]:
        raise NotImplementedError

    def error_body(self, code: str, message: str) -> bytes:
        raise NotImplementedError


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def _need(mapping: dict[str, Any], *names: str) -> None:
    for name in names:
        value = mapping.get(name)
        if value is None or value == "":
            raise Rejected(f"missing required field {name}")


def _json_field(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise Rejected(f"{name} is not JSON") from None


# ---------------------------------------------------------------- Tmall / Taobao TOP


@dataclass
class FakeTrade:
    status: str
    lines: dict[str, str]  # oid -> sub-order status
    refunds: set[str] = field(default_factory=set)  # oids with a refund in progress
    shipments: list[dict[str, str]] = field(default_factory=list)


TOP_COMMON = ("method", "app_key", "session", "timestamp", "v", "sign_method", "sign")
TOP_OPEN = ("WAIT_SELLER_SEND_GOODS", "SELLER_CONSIGNED_PART")
TOP_SHIPPED = "WAIT_BUYER_CONFIRM_GOODS"


class FakeTmall(FakePlatform):
    """TOP gateway at /router/rest: stock, offline/ascp/dummy send, trade.fullinfo.get."""

    name = "tmall"

    def __init__(self, app_key: str = "12345678", app_secret: str = "helloworld", session: str = "sess-1",
                 *, omnichannel: bool = False) -> None:
        super().__init__()
        self.creds = TmallCredentials(app_key=app_key, app_secret=app_secret, session=session)
        self.omnichannel = omnichannel  # require retailStoreId/retailStoreType in `feature`
        self.listings: dict[tuple[str, str | None], int] = {}  # (num_iid, sku_id) -> quantity
        self.trades: dict[str, FakeTrade] = {}

    def add_trade(self, tid: str, oids: list[str] | tuple[str, ...] = ("1",),
                  status: str = "WAIT_SELLER_SEND_GOODS") -> None:
        self.trades[tid] = FakeTrade(status=status, lines={oid: status for oid in oids})

    def close_trade(self, tid: str) -> None:
        trade = self.trades[tid]
        trade.status = "TRADE_CLOSED"
        trade.lines = {oid: "TRADE_CLOSED" for oid in trade.lines}

    def call_name(self, request: Recorded) -> str:
        return request.form().get("method", "")

    def verify(self, request: Recorded) -> None:
        if request.method != "POST" or request.path != "/router/rest":
            raise Rejected(f"unexpected {request.method} {request.path}")
        form = request.form()
        _need(form, *TOP_COMMON)
        if form["app_key"] != self.creds.app_key or form["session"] != self.creds.session:
            raise Rejected("app_key/session not ours", body=self.error_body("27", "Invalid session"))
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", form["timestamp"]) or form["v"] != "2.0":
            raise Rejected("bad timestamp or v")
        concat = "".join(k + v for k, v in sorted(form.items()) if k != "sign" and v != "")
        secret = self.creds.app_secret
        if form["sign_method"] == "md5":
            expected = hashlib.md5((secret + concat + secret).encode()).hexdigest().upper()
        elif form["sign_method"] == "hmac":
            expected = hmac.new(secret.encode(), concat.encode(), hashlib.md5).hexdigest().upper()
        else:
            raise Rejected("unsupported sign_method")
        if form["sign"] != expected:
            raise Rejected("signature mismatch", body=self.error_body("25", "Invalid signature"))

    def rate_limit_reply(self, seconds: int) -> tuple[int, bytes]:
        return 200, _dumps({"error_response": {
            "code": 7, "msg": "App Call Limited", "sub_code": "accesscontrol.limited-by-app-api-access-count",
            "sub_msg": f"This ban will last for {seconds} more seconds"}})

    def error_body(self, code: str, message: str) -> bytes:
        if code.isdigit():
            return _dumps({"error_response": {"code": int(code), "msg": message}})
        return _dumps({"error_response": {"code": 15, "msg": "Remote service error", "sub_code": code,
                                          "sub_msg": message}})

    def _feature(self, form: dict[str, str]) -> None:
        feature = form.get("feature", "")
        if not self.omnichannel:
            return
        pairs = dict(part.split("=", 1) for part in feature.split(";") if "=" in part)
        if not pairs.get("retailStoreId") or pairs.get("retailStoreType") not in ("STORE", "WAREHOUSE"):
            raise Rejected("omnichannel shipment without retailStoreId/retailStoreType",
                           body=self.error_body("isv.invalid-parameter:feature", "retailStoreId必填"))

    def _trade(self, tid: str) -> FakeTrade:
        trade = self.trades.get(tid)
        if trade is None:
            raise Rejected("unknown trade", body=self.error_body("isv.logistics-offline-service-error:B01", "订单不存在"))
        return trade

    @staticmethod
    def _b04(call: str) -> bytes:
        service = "dummy" if "dummy" in call else "offline"
        return _dumps({"error_response": {"code": 15, "msg": "Remote service error",
                                          "sub_code": f"isv.logistics-{service}-service-error:B04",
                                          "sub_msg": "订单状态不对该物流订单已经发货或者已关闭，不能重复发货"}})

    def _settle(self, trade: FakeTrade) -> None:
        statuses = set(trade.lines.values())
        trade.status = TOP_SHIPPED if statuses == {TOP_SHIPPED} else (
            "SELLER_CONSIGNED_PART" if TOP_SHIPPED in statuses else trade.status)

    def dispatch(self, request: Recorded) -> tuple[int, bytes]:
        form = request.form()
        call = request.call
        if call == "taobao.item.quantity.update":
            _need(form, "num_iid", "quantity")
            if form.get("type", "1") != "1" or not form["quantity"].isdigit():
                raise Rejected("only full (type=1) non-negative quantities expected")
            self.listings[(form["num_iid"], form.get("sku_id") or None)] = int(form["quantity"])
            return 200, _dumps({"item_quantity_update_response": {"item": {
                "num_iid": int(form["num_iid"]), "num": int(form["quantity"]), "modified": form["timestamp"]}}})
        if call == "taobao.skus.quantity.update":
            _need(form, "num_iid", "skuid_quantities")
            pairs = [p.split(":", 1) for p in form["skuid_quantities"].split(";")]
            if len(pairs) > 20 or any(len(p) != 2 or not p[1].isdigit() for p in pairs):
                raise Rejected("skuid_quantities malformed or more than 20 SKUs")
            if form.get("type", "1") != "1":
                raise Rejected("only full (type=1) quantities expected")
            for sku_id, quantity in pairs:
                self.listings[(form["num_iid"], sku_id)] = int(quantity)
            return 200, _dumps({"skus_quantity_update_response": {"item": {
                "num_iid": int(form["num_iid"]), "modified": form["timestamp"]}}})
        if call == "taobao.logistics.offline.send":
            _need(form, "tid", "out_sid", "company_code")
            self._feature(form)
            trade = self._trade(form["tid"])
            if trade.status not in TOP_OPEN:
                return 200, self._b04(call)
            oids = form["sub_tid"].split(",") if form.get("is_split") == "1" else list(trade.lines)
            if any(trade.lines.get(oid) not in TOP_OPEN for oid in oids):
                return 200, self._b04(call)
            for oid in oids:
                trade.lines[oid] = TOP_SHIPPED
            self._settle(trade)
            trade.shipments.append({"company_code": form["company_code"], "out_sid": form["out_sid"],
                                    "feature": form.get("feature", "")})
            self.count(form["tid"])
            return 200, _dumps({"logistics_offline_send_response": {"shipping": {"is_success": True}}})
        if call == "alibaba.ascp.logistics.offline.send":
            _need(form, "tid", "consign_pkgs")
            self._feature(form)
            trade = self._trade(form["tid"])
            pkgs = _json_field(form["consign_pkgs"], "consign_pkgs")
            status = _json_field(form.get("consign_status") or "[]", "consign_status")
            part = {s.get("sub_tid") for s in status if isinstance(s, dict) and s.get("is_part_consign")}
            if not isinstance(pkgs, list) or not pkgs:
                raise Rejected("consign_pkgs must be a non-empty list")
            oids = []
            for pkg in pkgs:
                _need(pkg, "company_code", "out_sid")
                goods = pkg.get("goods") or []
                if not goods:
                    raise Rejected("a package names no goods")
                oids += [str(g.get("sub_tid")) for g in goods]
            if trade.status not in TOP_OPEN or any(trade.lines.get(oid) not in TOP_OPEN for oid in oids):
                return 200, self._b04(call)
            for oid in oids:
                if oid not in part:
                    trade.lines[oid] = TOP_SHIPPED
            self._settle(trade)
            trade.shipments += [{"company_code": p["company_code"], "out_sid": p["out_sid"]} for p in pkgs]
            self.count(form["tid"])
            return 200, _dumps({"alibaba_ascp_logistics_offline_send_response": {
                "result": {"success": True}, "request_id": "fake"}})
        if call == "taobao.logistics.dummy.send":
            _need(form, "tid")
            self._feature(form)
            trade = self._trade(form["tid"])
            if trade.status not in TOP_OPEN:
                return 200, self._b04(call)
            trade.lines = {oid: TOP_SHIPPED for oid in trade.lines}
            trade.status = TOP_SHIPPED
            trade.shipments.append({"dummy": "1", "feature": form.get("feature", "")})
            self.count(form["tid"])
            return 200, _dumps({"logistics_dummy_send_response": {"shipping": {"is_success": True}}})
        if call == "taobao.trade.fullinfo.get":
            _need(form, "tid", "fields")
            trade = self._trade(form["tid"])
            orders = [{"oid": int(oid) if oid.isdigit() else oid, "status": status,
                       **({"refund_status": "WAIT_SELLER_AGREE"} if oid in trade.refunds else {})}
                      for oid, status in trade.lines.items()]
            return 200, _dumps({"trade_fullinfo_get_response": {"trade": {
                "tid": int(form["tid"]), "status": trade.status, "orders": {"order": orders}}}})
        raise Rejected(f"unknown method {call}")


# ---------------------------------------------------------------- JD JOS


@dataclass
class FakeJdOrder:
    state: str = "WAIT_SELLER_STOCK_OUT"
    shipments: list[dict[str, str]] = field(default_factory=list)


JOS_COMMON = ("360buy_param_json", "access_token", "app_key", "method", "timestamp", "v", "sign")
JOS_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{3})?([+-]\d{4})?")


class FakeJd(FakePlatform):
    """JOS routerjson at /routerjson: ware.stock.sku.set, pop.order.shipment, pop.order.get."""

    name = "jd"

    def __init__(self, app_key: str = "jd-app", app_secret: str = "jd-secret", access_token: str = "jd-token") -> None:
        super().__init__()
        self.creds = JdCredentials(app_key=app_key, app_secret=app_secret, access_token=access_token)
        self.stock: dict[tuple[int, int | None], int] = {}  # (skuId, storeId) -> stockNum
        self.unknown_skus: set[int] = set()  # per-SKU failures
        self.orders: dict[str, FakeJdOrder] = {}
        self.stock_refs: list[str] = []

    def add_order(self, order_id: str, state: str = "WAIT_SELLER_STOCK_OUT") -> None:
        self.orders[order_id] = FakeJdOrder(state=state)

    def call_name(self, request: Recorded) -> str:
        return request.form().get("method", "")

    def verify(self, request: Recorded) -> None:
        if request.method != "POST" or request.path != "/routerjson":
            raise Rejected(f"unexpected {request.method} {request.path}")
        form = request.form()
        _need(form, *JOS_COMMON)
        if form["app_key"] != self.creds.app_key or form["access_token"] != self.creds.access_token:
            raise Rejected("app_key/access_token not ours", body=self.error_body("19", "Invalid access_token"))
        if not JOS_TIMESTAMP.fullmatch(form["timestamp"]) or form["v"] != "2.0":
            raise Rejected("bad timestamp or v", body=self.error_body("8", "Invalid Timestamp"))
        concat = "".join(k + v for k, v in sorted(form.items()) if k != "sign")
        secret = self.creds.app_secret
        if form["sign"] != hashlib.md5((secret + concat + secret).encode()).hexdigest().upper():
            raise Rejected("signature mismatch", body=self.error_body("15", "Invalid signature"))
        _json_field(form["360buy_param_json"], "360buy_param_json")

    def rate_limit_reply(self, seconds: int) -> tuple[int, bytes]:
        return 200, self.error_body("2", "App Call Limited")

    def error_body(self, code: str, message: str) -> bytes:
        return _dumps({"error_response": {"code": code, "zh_desc": message, "en_desc": message}})

    @staticmethod
    def _ship_result(success: bool, code: str = "", message: str = "") -> bytes:
        result: dict[str, Any] = {"success": success}
        if not success:
            result |= {"errorCode": code, "chineseErrCode": message, "englishErrCode": message}
        return _dumps({"jingdong_pop_order_shipment_responce": {"code": "0", "sopjosshipment_result": result}})

    def dispatch(self, request: Recorded) -> tuple[int, bytes]:
        form = request.form()
        business = json.loads(form["360buy_param_json"])
        call = request.call
        if call == "jingdong.ware.stock.sku.set":
            req = business.get("req")
            if not isinstance(req, dict):
                raise Rejected("req missing")
            _need(req, "stockRfId", "skuStocks")
            results = []
            for entry in req["skuStocks"]:
                sku, num = entry.get("skuId"), entry.get("stockNum")
                if not isinstance(sku, int) or not isinstance(num, int) or num < 0:
                    raise Rejected("skuId/stockNum must be integers, stockNum >= 0")
                if "incrStockNum" in entry:
                    raise Rejected("incremental stock not expected")
                if sku in self.unknown_skus:
                    results.append({"data": str(sku), "success": False, "storeId": entry.get("storeId", 0),
                                    "message": "sku not found"})
                    continue
                self.stock[(sku, entry.get("storeId"))] = num
                results.append({"data": str(sku), "success": True, "storeId": entry.get("storeId", 0)})
            self.stock_refs.append(req["stockRfId"])
            ok = any(r["success"] for r in results)
            return 200, _dumps({"jingdong_ware_stock_sku_set_responce": {"code": "0", "returnType": {
                "success": ok, "obj": {"updateStockResult": results}}}})
        if call == "jingdong.pop.order.shipment":
            _need(business, "orderId", "logiCoprId")
            corps = str(business["logiCoprId"]).split("|")
            numbers = str(business.get("logiNo", "")).split("|") if business.get("logiNo") else []
            if not all(c.isdigit() for c in corps):
                raise Rejected("logiCoprId must be numeric ids joined by |")
            if corps != ["1274"] and len(numbers) != len(corps):
                raise Rejected("logiNo needs one group per carrier (only 1274 may go without)")
            order = self.orders.get(str(business["orderId"]))
            if order is None:
                return 200, self._ship_result(False, "10100", "订单不存在")
            if order.state != "WAIT_SELLER_STOCK_OUT":
                # UNCONFIRMED wording: what JD answers for a shipped / locked order
                word = "订单已出库" if order.state == "WAIT_GOODS_RECEIVE_CONFIRM" else "订单状态不正确"
                return 200, self._ship_result(False, "10400", word)
            order.state = "WAIT_GOODS_RECEIVE_CONFIRM"
            order.shipments.append({"logiCoprId": business["logiCoprId"], "logiNo": business.get("logiNo", "")})
            self.count(str(business["orderId"]))
            return 200, self._ship_result(True)
        if call == "jingdong.pop.order.get":
            _need(business, "order_id")
            order = self.orders.get(str(business["order_id"]))
            if order is None:
                return 200, self.error_body("100", "order not found")
            return 200, _dumps({"jingdong_pop_order_get_responce": {"code": "0", "orderDetailInfo": {
                "orderInfo": {"orderId": str(business["order_id"]), "orderState": order.state}}}})
        raise Rejected(f"unknown method {call}")


# ---------------------------------------------------------------- Douyin


@dataclass
class FakeDouyinOrder:
    lines: dict[str, int]  # sub-order id -> quantity ordered
    shipped: dict[str, int] = field(default_factory=dict)
    status: int = 2  # 2 备货中, 101 部分发货, 3 已发货, 4 已取消
    refund_pending: bool = False
    store_id: int | None = None
    packs: list[dict[str, Any]] = field(default_factory=list)


DOUYIN_QUERY = ("app_key", "method", "v", "sign", "timestamp", "access_token", "sign_method")


class FakeDouyin(FakePlatform):
    """Doudian gateway: /sku/syncStock, /sku/syncStockBatch, /order/logisticsAdd, /order/logisticsAddMultiPack."""

    name = "douyin"

    def __init__(self, app_key: str = "7000000000000000001", app_secret: str = "test-secret-0001",
                 access_token: str = "dy-token") -> None:
        super().__init__()
        self.creds = DouyinCredentials(app_key=app_key, app_secret=app_secret, access_token=access_token)
        self.stock: dict[tuple[int, int | None], int] = {}  # (sku_id, store_id) -> stock_num
        self.orders: dict[str, FakeDouyinOrder] = {}
        self.request_ids: dict[str, bytes] = {}  # multipack idempotency: request_id -> first success
        self.idempotent_ids: set[str] = set()
        self._pack_seq = 0

    def add_order(self, order_id: str, lines: dict[str, int], *, store_id: int | None = None) -> None:
        self.orders[order_id] = FakeDouyinOrder(lines=dict(lines), store_id=store_id)

    def set_refund_pending(self, order_id: str, pending: bool = True) -> None:
        self.orders[order_id].refund_pending = pending

    def call_name(self, request: Recorded) -> str:
        return request.query.get("method", "")

    def verify(self, request: Recorded) -> None:
        q = request.query
        if request.method != "POST":
            raise Rejected("POST expected")
        _need(q, *DOUYIN_QUERY)
        if request.path != "/" + q["method"].replace(".", "/"):
            raise Rejected("path does not match method")
        if q["app_key"] != self.creds.app_key or q["access_token"] != self.creds.access_token:
            raise Rejected("app_key/access_token not ours",
                           body=self.error_body("isv.access-token-invalid", "access_token不存在"))
        if q["v"] != "2" or q["sign_method"] != "hmac-sha256" or not q["timestamp"].isdigit():
            raise Rejected("bad v / sign_method / timestamp")
        secret = self.creds.app_secret
        param_json = request.body.decode("utf-8")
        pattern = (f"{secret}app_key{q['app_key']}method{q['method']}param_json{param_json}"
                   f"timestamp{q['timestamp']}v2{secret}")
        if q["sign"] != hmac.new(secret.encode(), pattern.encode(), hashlib.sha256).hexdigest():
            raise Rejected("signature mismatch", body=self.error_body("isv.parameter-invalid:sign", "签名校验失败"))
        if not isinstance(_json_field(param_json, "param_json"), dict):
            raise Rejected("param_json is not an object")

    def rate_limit_reply(self, seconds: int) -> tuple[int, bytes]:
        # no documented Douyin rate-limit reply (outbound.md §3): an HTTP 429 stands in
        return 429, _dumps({"code": 50002, "msg": "业务处理失败", "sub_code": "isv.business-failed:limit",
                            "sub_msg": "请求过于频繁"})

    def error_body(self, code: str, message: str) -> bytes:
        top = 20000 if code.startswith("isp.") else 40004 if "parameter" in code else 50002
        return _dumps({"code": top, "msg": "业务处理失败", "sub_code": code, "sub_msg": message,
                       "log_id": "fake", "data": {}})

    @staticmethod
    def _ok(data: Any = None) -> bytes:
        return _dumps({"code": 10000, "msg": "success", "sub_code": "", "sub_msg": "", "log_id": "fake",
                       "data": data if data is not None else {}})

    def _order(self, business: dict[str, Any]) -> FakeDouyinOrder | bytes:
        order = self.orders.get(str(business["order_id"]))
        if order is None:
            return self.error_body("isv.business-failed:60033", "订单不存在，请仔细检查后重试。")
        if order.store_id is not None and business.get("store_id") != order.store_id:
            return self.error_body("isv.business-failed:700003", "700003:store_id为空/错误，超市小时达订单发货需传入订单对应的门店ID")
        if order.status == 4:
            return self.error_body("isv.business-failed:60021", "订单已取消，禁止发货。")
        if order.refund_pending:
            return self.error_body("isv.business-failed:60040", "发货订单中有退款申请需要处理，请先处理。")
        return order

    def dispatch(self, request: Recorded) -> tuple[int, bytes]:
        business = json.loads(request.body)
        call = request.call
        if call == "sku.syncStock":
            _need(business, "sku_id", "stock_num")
            if business.get("incremental"):
                _need(business, "idempotent_id")
                if business["idempotent_id"] in self.idempotent_ids:
                    return 200, self.error_body("isv.parameter-invalid:40010", "[idempotent_id]重复，操作已执行")
                self.idempotent_ids.add(business["idempotent_id"])
                key = (business["sku_id"], business.get("store_id"))
                self.stock[key] = self.stock.get(key, 0) + int(business["stock_num"])
                return 200, self._ok()
            if not isinstance(business["stock_num"], int) or business["stock_num"] < 0:
                raise Rejected("full stock_num must be an integer >= 0")
            self.stock[(business["sku_id"], business.get("store_id"))] = business["stock_num"]
            return 200, self._ok()
        if call == "sku.syncStockBatch":
            _need(business, "product_id", "sku_sync_list")
            if "incremental" not in business:
                raise Rejected("incremental is required")
            for item in business["sku_sync_list"]:
                _need(item, "sku_id")
                if item.get("sku_type") is None or not isinstance(item.get("stock_num"), int) or item["stock_num"] < 0:
                    raise Rejected("each SKU needs sku_type and stock_num >= 0")
            for item in business["sku_sync_list"]:
                self.stock[(item["sku_id"], business.get("store_id"))] = item["stock_num"]
            return 200, self._ok()
        if call == "order.logisticsAdd":
            _need(business, "order_id", "company_code", "logistics_code")
            order = self._order(business)
            if isinstance(order, bytes):
                return 200, order
            if order.status == 3:
                return 200, self.error_body("isv.business-failed:60110", "订单已发货，不允许再次执行发货。")
            if order.status == 101:
                return 200, self.error_body("isv.business-failed:70023", "70023:没有能发货的订单，请修改后重试")
            order.shipped = dict(order.lines)
            order.status = 3
            order.packs.append({"company_code": business["company_code"], "logistics_code": business["logistics_code"]})
            self.count(str(business["order_id"]))
            return 200, self._ok()
        if call == "order.logisticsAddMultiPack":
            _need(business, "order_id", "pack_list", "request_id")
            if business["request_id"] in self.request_ids:  # "直接返回第一次请求成功的结果"
                return 200, self.request_ids[business["request_id"]]
            order = self._order(business)
            if isinstance(order, bytes):
                return 200, order
            wanted: dict[str, int] = {}
            for pack in business["pack_list"]:
                _need(pack, "shipped_order_info", "logistics_code", "company_code")
                for info in pack["shipped_order_info"]:
                    _need(info, "shipped_order_id")
                    sub = str(info["shipped_order_id"])
                    wanted[sub] = wanted.get(sub, 0) + int(info.get("shipped_num") or order.lines.get(sub, 0))
            for sub, num in wanted.items():
                if sub not in order.lines:
                    return 200, self.error_body("isv.business-failed:60102", "60102:商品单不存在，请仔细检查后重试")
                if order.shipped.get(sub, 0) + num > order.lines[sub]:
                    return 200, self.error_body("isv.business-failed:70023", "70023:已发货，请检查订单状态")
            for sub, num in wanted.items():
                order.shipped[sub] = order.shipped.get(sub, 0) + num
            order.status = 3 if order.shipped == order.lines else 101
            packs = []
            for pack in business["pack_list"]:
                self._pack_seq += 1
                packs.append({"pack_id": f"PK{self._pack_seq}", "logistics_code": pack["logistics_code"],
                              "shipped_order_info": pack["shipped_order_info"]})
                order.packs.append(pack)
            self.count(str(business["order_id"]))
            body = self._ok({"pack_list": packs})
            self.request_ids[business["request_id"]] = body
            return 200, body
        raise Rejected(f"unknown method {call}")


# ---------------------------------------------------------------- WeChat mini-program


@dataclass
class FakePayment:
    openid: str
    state: int = 1  # 1 待发货, 2 已发货, 5 已退款
    not_found_lookups: int = 0  # answer 10060001 this many times first ("wait a minute")
    reship_used: bool = False
    uploads: list[dict[str, Any]] = field(default_factory=list)


RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})")


class FakeWechat(FakePlatform):
    """api.weixin.qq.com: /wxa/sec/order/upload_shipping_info and /wxa/sec/order/get_order."""

    name = "wechat"

    def __init__(self, access_token: str = "wx-token") -> None:
        super().__init__()
        self.access_token = access_token
        self.payments: dict[str, FakePayment] = {}  # transaction_id or "mchid/out_trade_no"

    def add_payment(self, key: str, *, openid: str = "o-payer", not_found_lookups: int = 0) -> None:
        """`key`: a transaction_id, or "mchid/out_trade_no"."""
        self.payments[key] = FakePayment(openid=openid, not_found_lookups=not_found_lookups)

    def call_name(self, request: Recorded) -> str:
        return request.path.rsplit("/", 1)[-1]

    def verify(self, request: Recorded) -> None:
        if request.method != "POST" or request.path not in ("/wxa/sec/order/upload_shipping_info",
                                                            "/wxa/sec/order/get_order"):
            raise Rejected(f"unexpected {request.method} {request.path}")
        if request.query.get("access_token") != self.access_token:
            raise Rejected("access_token wrong", body=self.error_body("40001", "invalid credential"))
        if not isinstance(_json_field(request.body.decode("utf-8", "replace"), "body"), dict):
            raise Rejected("body is not a JSON object")

    def rate_limit_reply(self, seconds: int) -> tuple[int, bytes]:
        return 200, self.error_body("45011", "api minute-quota reach limit  mustslower  retry next minute")

    def error_body(self, code: str, message: str) -> bytes:
        number = int(code) if code.lstrip("-").isdigit() else 10060014
        return _dumps({"errcode": number, "errmsg": f"{message} rid: fake"})

    def _key(self, order_key: dict[str, Any]) -> str:
        kind = order_key.get("order_number_type")
        if kind == 2:
            _need(order_key, "transaction_id")
            return str(order_key["transaction_id"])
        if kind == 1:
            _need(order_key, "mchid", "out_trade_no")
            return f"{order_key['mchid']}/{order_key['out_trade_no']}"
        raise Rejected("order_number_type must be 1 or 2")

    def dispatch(self, request: Recorded) -> tuple[int, bytes]:
        body = json.loads(request.body)
        if request.call == "get_order":
            key = body.get("transaction_id") or f"{body.get('merchant_id')}/{body.get('merchant_trade_no')}"
            payment = self.payments.get(str(key))
            if payment is None:
                return 200, self.error_body("10060001", "支付单不存在")
            return 200, _dumps({"errcode": 0, "errmsg": "ok", "order": {"order_state": payment.state}})
        _need(body, "order_key", "logistics_type", "delivery_mode", "shipping_list", "upload_time", "payer")
        key = self._key(body["order_key"])
        kind, mode, shipping = body["logistics_type"], body["delivery_mode"], body["shipping_list"]
        if kind not in (1, 2, 3, 4) or mode not in (1, 2):
            raise Rejected("logistics_type 1..4 and delivery_mode 1..2")
        if not isinstance(shipping, list) or not 1 <= len(shipping) <= 15:
            raise Rejected("shipping_list must have 1..15 entries")
        if mode == 1 and len(shipping) != 1:
            raise Rejected("unified delivery has exactly one entry")
        if mode == 2 and (kind != 1 or "is_all_delivered" not in body):
            raise Rejected("split delivery: express only, is_all_delivered required")
        for entry in shipping:
            _need(entry, "item_desc")
            if len(entry["item_desc"]) > 120:
                raise Rejected("item_desc longer than 120")
            if kind == 1:
                _need(entry, "tracking_no", "express_company")
        if not RFC3339.fullmatch(str(body["upload_time"])):
            raise Rejected("upload_time is not RFC 3339")
        _need(body["payer"], "openid")
        payment = self.payments.get(key)
        if payment is None:
            return 200, self.error_body("10060001", "支付单不存在")
        if payment.not_found_lookups > 0:
            payment.not_found_lookups -= 1
            return 200, self.error_body("10060001", "支付单不存在")
        if body["payer"]["openid"] != payment.openid:
            return 200, self.error_body("10060014", "参数错误: payer")
        if payment.state == 5:
            return 200, self.error_body("10060004", "支付单处于不可发货的状态")
        if payment.state != 1:
            if payment.reship_used:  # UNCONFIRMED code, see adapters/outbound/wechat.py
                return 200, self.error_body("10060003", "支付单已使用重新发货机会")
            payment.reship_used = True
        payment.state = 2
        payment.uploads.append(body)
        self.count(key)
        return 200, _dumps({"errcode": 0, "errmsg": "ok"})


def parse_time(text: str) -> datetime:
    """RFC 3339 text as the fake reads it (tests compare upload times)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
