"""`oms simulate-sale` (`make sale`): the first minutes of Double 11 against the running demo.

Buyers order on four channels at a rate that climbs to `--rate` orders a second: Douyin pushes
in batches, Tmall and JD messages through their relays, the mini-program's order push followed
by WeChat Pay's payment notification — each signed with the demo shop's credentials (see
oms/demo/channels.py) and sent to the real webhooks. The pushed orders are fetched back by the
OMS from the platform APIs this command serves on 127.0.0.1 (oms/demo/platforms.py). A hot SKU
is in many baskets; one-hour delivery, store pickup and parcels are mixed; some buyers cancel
and some get refunds. Store staff work their pick lists through the store API with store tokens
issued for the run (and revoked after): pick, now and then reject, hand over to the courier,
and hand pickups to buyers who give their code.

Platforms sell only what the OMS says is there: before offering a SKU the simulator looks at
GET /inventory (standing in for the stock sync a platform receives), and it offers one-hour
delivery only where a store in reach holds the item, as same-city platforms show per-store
stock. Every request goes to the local server; the command ends after `--seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import secrets
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from adapters.timeutil import BEIJING
from oms.demo import channels as demo_channels
from oms.demo.city import HOT_SKU, SALE_SKUS
from oms.demo.platforms import Line, Place, PlatformApi, Push, SaleOrder, Signer

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
CHANNEL_MIX = (("douyin", 0.35), ("tmall", 0.25), ("jd", 0.15), ("miniprogram", 0.25))
#: one-hour delivery and pickup exist on Douyin and the mini-program; Tmall and JD sell parcels
MODE_MIX = {"douyin": (("delivery", 0.45), ("pickup", 0.15), ("ship", 0.40)),
            "miniprogram": (("delivery", 0.40), ("pickup", 0.30), ("ship", 0.30))}
HOT_SHARE = 0.15
CANCEL_SHARE = 0.04
REFUND_SHARE = 0.03
REJECT_SHARE = 0.03
PARCEL_REGIONS = (
    ("上海市", "上海市", "浦东新区"), ("上海市", "上海市", "闵行区"), ("上海市", "上海市", "宝山区"),
    ("上海市", "上海市", "松江区"), ("江苏省", "苏州市", "姑苏区"), ("浙江省", "杭州市", "西湖区"),
    ("北京市", "北京市", "朝阳区"), ("广东省", "深圳市", "南山区"), ("四川省", "成都市", "武侯区"),
    ("江苏省", "南京市", "鼓楼区"),
)


class SaleError(Exception):
    """The sale cannot start (no server, no demo data, a port taken): said in one line."""


@dataclass
class Node:
    id: str
    name: str
    kind: str
    lat: float
    lng: float
    capabilities: list[str]
    radius: int
    capacity: int
    city: str | None


def _distance_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    k = math.cos(math.radians((lat1 + lat2) / 2))
    return math.hypot((lat2 - lat1) * 111_320, (lng2 - lng1) * 111_320 * k)


class Sale:
    def __init__(self, base_url: str, admin_token: str, demo: demo_channels.DemoChannels, *,
                 seconds: float, rate: float, seed: int | None, out=sys.stdout) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = admin_token
        self.demo = demo
        self.seconds = seconds
        self.rate = rate
        self.rng = random.Random(seed)
        self.out = out
        self.signer = Signer(demo.env, demo.wechatpay_private_key_pem)
        self.api = PlatformApi(demo.env)
        self.counts: Counter[str] = Counter()
        self.by_channel: Counter[str] = Counter()
        self.status_classes: Counter[str] = Counter()
        self.server_errors: list[str] = []
        self.conflicts: list[str] = []
        self.nodes: dict[str, Node] = {}
        self.store_tokens: dict[str, tuple[str, str]] = {}
        self.stock: dict[str, tuple[float, dict[str, int]]] = {}
        self._stock_wait: dict[str, asyncio.Future] = {}
        self._douyin_queue: list[dict] = []
        self._tasks: set[asyncio.Task] = set()
        self._selling = True
        self._started = 0.0
        self.http: httpx.AsyncClient

    # ---- HTTP to the OMS --------------------------------------------------------------------

    async def call(self, method: str, path: str, *, token: str | None = None, what: str = "",
                   **kw) -> httpx.Response | None:
        headers = dict(kw.pop("headers", {}) or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            r = await self.http.request(method, path, headers=headers, **kw)
        except httpx.HTTPError as exc:
            self.status_classes["failed"] += 1
            self.server_errors.append(f"{method} {path}: {type(exc).__name__}")
            return None
        self.status_classes[f"{r.status_code // 100}xx"] += 1
        if 400 <= r.status_code < 500 and len(self.conflicts) < 20:
            self.conflicts.append(f"{method} {path} -> {r.status_code} {r.text[:160]}")
        if r.status_code >= 500:
            self.server_errors.append(f"{method} {path} -> {r.status_code} {r.text[:200]}")
        return r

    async def send(self, push: Push, channel: str) -> bool:
        r = await self.call("POST", push.path, content=push.body, headers=push.headers, params=push.params or None)
        ok = r is not None and r.status_code in (200, 204)
        self.counts["pushes"] += 1
        if not ok:
            self.counts["pushes refused"] += 1
            if r is not None and r.status_code < 500 and len(self.server_errors) < 50:
                self.server_errors.append(f"{channel} push answered {r.status_code}: {r.text[:200]}")
        return ok

    # ---- what the platforms show as sellable -------------------------------------------------

    async def availability(self, sku: str) -> dict[str, int]:
        cached = self.stock.get(sku)
        if cached and time.monotonic() - cached[0] < 1.5:
            return cached[1]
        if sku in self._stock_wait:
            return await asyncio.shield(self._stock_wait[sku])
        fut = asyncio.get_running_loop().create_future()
        self._stock_wait[sku] = fut
        try:
            r = await self.call("GET", f"/inventory/{sku}", token=self.token)
            per_node = {n["node_id"]: n["available"] for n in r.json()["nodes"]} if r is not None and r.status_code == 200 else {}
            self.stock[sku] = (time.monotonic(), per_node)
            fut.set_result(per_node)
            return per_node
        finally:
            del self._stock_wait[sku]

    def _taken(self, sku: str, node_ids: list[str], quantity: int) -> None:
        """What this simulator just sold comes off its view until the next read."""
        cached = self.stock.get(sku)
        if cached:
            for n in node_ids[:1]:
                cached[1][n] = cached[1].get(n, 0) - quantity

    async def sellable(self, lines: list[tuple[str, int]], mode: str, place: Place) -> str | None:
        """The mode the platform offers for this basket (one-hour only where a store in reach has
        it), or None when it shows the item sold out."""
        views = {sku: await self.availability(sku) for sku, _ in lines}
        # a parcel shop sells what nodes that ship hold; pickup can transfer from any node
        counted = self.ship_node_ids if mode == "ship" else None
        for sku, q in lines:
            have = sum(max(a, 0) for n, a in views[sku].items() if counted is None or n in counted)
            if have < q + 1:  # the platform's safety margin
                return None
        if mode == "delivery":
            for sku, q in lines:
                near = [n for n in self.delivery_nodes
                        if _distance_m(place.lat, place.lng, n.lat, n.lng) <= n.radius and views[sku].get(n.id, 0) >= q]
                if not near:
                    return await self.sellable(lines, "ship", place)
            for sku, q in lines:
                self._taken(sku, [n.id for n in self.delivery_nodes
                                  if _distance_m(place.lat, place.lng, n.lat, n.lng) <= n.radius
                                  and views[sku].get(n.id, 0) >= q][:1], q)
        return mode

    # ---- buyers ------------------------------------------------------------------------------

    def _pick(self, mix) -> str:
        x, acc = self.rng.random(), 0.0
        for name, share in mix:
            acc += share
            if x < acc:
                return name
        return mix[-1][0]

    def _basket(self) -> list[tuple[str, int]]:
        skus = list(SALE_SKUS)
        first = HOT_SKU if self.rng.random() < HOT_SHARE else self.rng.choice(skus)
        lines = [(first, 1)]
        if self.rng.random() < 0.25:
            other = self.rng.choice([s for s in skus if s != first])
            lines.append((other, self.rng.choice((1, 1, 2))))
        return lines

    def _place(self, mode: str) -> tuple[Place, str | None]:
        if mode == "delivery":
            store = self.rng.choices(self.delivery_nodes, weights=[n.capacity for n in self.delivery_nodes])[0]
            r = store.radius * 0.6 * math.sqrt(self.rng.random())
            a = self.rng.random() * 2 * math.pi
            lat = store.lat + r * math.cos(a) / 111_320
            lng = store.lng + r * math.sin(a) / (111_320 * math.cos(math.radians(store.lat)))
            return Place("上海市", "上海市", "黄浦区", round(lat, 6), round(lng, 6)), None
        if mode == "pickup":
            store = self.rng.choices(self.pickup_nodes, weights=[n.capacity for n in self.pickup_nodes])[0]
            return Place("上海市", "上海市", "黄浦区", store.lat, store.lng), store.id
        return Place(*self.rng.choice(PARCEL_REGIONS)), None

    def _new_id(self, channel: str) -> str:
        if channel == "douyin":
            return "69" + str(secrets.randbelow(10**17)).zfill(17)
        if channel == "tmall":
            return "3" + str(secrets.randbelow(10**17)).zfill(17)
        if channel == "jd":
            return "30" + str(secrets.randbelow(10**10)).zfill(10)
        return "MP" + datetime.now(BEIJING).strftime("%Y%m%d") + secrets.token_hex(5).upper()

    async def buyer(self) -> None:
        channel = self._pick(CHANNEL_MIX)
        mode = self._pick(MODE_MIX[channel]) if channel in MODE_MIX else "ship"
        basket = self._basket()
        place, pickup = self._place(mode)
        offered = await self.sellable(basket, mode, place)
        if offered is None:
            self.counts["not offered: sold out"] += 1
            return
        if offered != mode:
            self.counts["one-hour not offered: parcel instead"] += 1
            mode = offered
            place = Place(place.province, place.city, place.district)
        numeric = channel != "miniprogram"
        ext = self._new_id(channel)
        lines = []
        for i, (sku, q) in enumerate(basket):
            line_id = (str(int(ext[-12:]) * 10 + i + 1) if numeric else str(i + 1))
            lines.append(Line(line_id, sku, q, self.prices.get(sku, 9900)))
        now = datetime.now(BEIJING)
        order = SaleOrder(channel, ext, mode, lines, place, pickup_node=pickup, status="paid", created=now,
                          paid=now, updated=now)
        if await self.place(order):
            self.by_channel[channel] += 1
            self.counts["orders"] += 1
            if self.rng.random() < CANCEL_SHARE:
                self.later(self.rng.uniform(1, 5), self.cancel(order))
            elif self.rng.random() < REFUND_SHARE / (1 - CANCEL_SHARE):
                self.later(self.rng.uniform(2, 6), self.refund(order))

    async def place(self, o: SaleOrder) -> bool:
        if o.channel == "douyin":
            self.api.put(o)
            self._douyin_queue.append(self.signer.douyin_message(101, o, order_status=2, pay_time=int(time.time())))
            return True  # sent with the next batch
        if o.channel == "tmall":
            self.api.put(o)
            return await self.send(self.signer.tmall_relay("taobao_trade_TradeBuyerPay", o), "tmall")
        if o.channel == "jd":
            self.api.put(o)
            return await self.send(self.signer.jd_relay(o), "jd")
        # the mini-program's backend pushes the order unpaid, then WeChat Pay says it was paid
        o.status, o.paid = "unpaid", None
        if not await self.send(self.signer.miniprogram_push("order.created", o), "miniprogram"):
            return False
        await asyncio.sleep(self.rng.uniform(0.2, 1.0))
        o.status, o.paid = "paid", datetime.now(BEIJING)
        return await self.send(self.signer.wechatpay_paid(o), "wechatpay")

    async def cancel(self, o: SaleOrder) -> None:
        o.status = "cancelled"
        o.touch()
        if o.channel == "douyin":
            self._douyin_queue.append(self.signer.douyin_message(106, o, order_status=4, cancel_time=int(time.time()),
                                                                 cancel_reason="不想要了"))
            ok = True
        elif o.channel == "tmall":
            ok = await self.send(self.signer.tmall_relay("taobao_trade_TradeClose", o), "tmall")
        elif o.channel == "jd":
            ok = await self.send(self.signer.jd_relay(o), "jd")
        else:
            ok = await self.send(self.signer.miniprogram_push("order.cancelled", o), "miniprogram")
        if ok:
            self.counts["cancelled by buyers"] += 1

    async def refund(self, o: SaleOrder) -> None:
        line = o.lines[-1]
        if o.channel == "douyin":
            self._douyin_queue.append(self.signer.douyin_message(
                206, o, s_id=int(line.line_id), aftersale_id=secrets.randbits(40), aftersale_status=12,
                aftersale_type=2, refund_amount=line.unit_price * line.quantity, success_time=int(time.time())))
            ok = True
        elif o.channel == "tmall":
            ok = await self.send(self.signer.tmall_relay(
                "taobao_refund_RefundSuccess", o, oid=int(line.line_id), refund_id=secrets.randbits(40),
                refund_fee=f"{line.unit_price * line.quantity / 100:.2f}"), "tmall")
        elif o.channel == "miniprogram":
            ok = await self.send(self.signer.wechatpay_refunded(o), "wechatpay")  # the whole amount: cancelled
        else:
            return await self.cancel(o)  # JD: a refund before shipping is a cancel
        if ok:
            o.refunded.add(line.line_id)
            self.counts["refunded"] += 1

    async def douyin_batches(self) -> None:
        """Douyin pushes what happened in the last moments as one array."""
        while True:
            await asyncio.sleep(0.3)
            while self._douyin_queue:
                batch, self._douyin_queue = self._douyin_queue[:20], self._douyin_queue[20:]
                await self.send(self.signer.douyin_batch(batch), "douyin")

    def later(self, delay: float, coro) -> None:
        async def run() -> None:
            await asyncio.sleep(delay)
            await coro
        self.spawn(run())

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- store staff -------------------------------------------------------------------------

    async def staff(self, queue: asyncio.Queue) -> None:
        etags: dict[str, str] = {}
        while True:
            node_id = await queue.get()
            try:
                await self.work(node_id, etags)
            finally:
                queue.put_nowait(node_id)
                await asyncio.sleep(0.05)

    async def work(self, node_id: str, etags: dict[str, str]) -> None:
        token = self.store_tokens[node_id][0]
        headers = {"If-None-Match": etags[node_id]} if node_id in etags else {}
        r = await self.call("GET", f"/stores/{node_id}/picklist", token=token, headers=headers)
        if r is None or r.status_code != 200:
            return
        etags[node_id] = r.headers.get("etag", "")
        pl = r.json()
        now = datetime.now(timezone.utc)
        limit = 30 if self.nodes[node_id].kind == "warehouse" else 4
        base = f"/stores/{node_id}/orders"
        for e in pl["items"][:limit]:
            if now - datetime.fromisoformat(e["allocated_at"]) < timedelta(seconds=1.5):
                continue
            etags.pop(node_id, None)
            # the first turn-down comes early (a short sale shows one), then now and then
            if e["role"] == "serve" and (not self.counts.get("rejected by stores") or self.rng.random() < REJECT_SHARE):
                reason = "out_of_stock" if self.rng.random() < 0.3 else "damaged"
                lines = [{"sku": e["lines"][0]["sku"], "quantity": e["lines"][0]["quantity"]}] if e["lines"] else None
                rr = await self.call("POST", f"{base}/{e['order_id']}/reject", token=token,
                                     json={"reason": reason, "lines": lines})
                self.counts["rejected by stores" if rr is not None and rr.status_code == 200 else "store conflicts"] += 1
                continue
            rr = await self.call("POST", f"{base}/{e['order_id']}/picked", token=token)
            self.counts["picked" if rr is not None and rr.status_code == 200 else "store conflicts"] += 1
        for e in pl["awaiting_handover"][:limit]:
            since = e.get("picked_at")
            if since and now - datetime.fromisoformat(since) < timedelta(seconds=2):
                continue
            etags.pop(node_id, None)
            if e["status"] == "ready_for_pickup":
                if self.rng.random() < 0.6:
                    await self.collect(node_id, token, e["order_id"])
                continue
            rr = await self.call("POST", f"{base}/{e['order_id']}/shipped", token=token)
            self.counts["handed to couriers" if rr is not None and rr.status_code == 200 else "store conflicts"] += 1

    async def collect(self, node_id: str, token: str, order_id: str) -> None:
        """The buyer shows the code the OMS sent them (read here through the admin view)."""
        r = await self.call("GET", f"/orders/{order_id}", token=self.token)
        if r is None or r.status_code != 200:
            return
        code = next((f.get("pickup_code") for f in r.json()["fulfillments"]
                     if f["node_id"] == node_id and f.get("pickup_code")), None)
        if code is None:
            return
        rr = await self.call("POST", f"/stores/{node_id}/pickups/{code}", token=token)
        self.counts["collected by buyers" if rr is not None and rr.status_code == 200 else "store conflicts"] += 1

    # ---- the run -----------------------------------------------------------------------------

    async def prepare(self) -> None:
        r = await self.call("GET", "/healthz")
        if r is None or r.status_code != 200:
            raise SaleError(f"no OMS answers at {self.base_url} (start it with `make run`)")
        r = await self.call("GET", "/nodes", token=self.token)
        if r is None or r.status_code == 401:
            raise SaleError("the admin token was refused: run with the same OMS_DATA_DIR / OMS_ADMIN_TOKEN as the server")
        for n in r.json():
            if n["active"]:
                self.nodes[n["id"]] = Node(n["id"], n["name"], n["kind"], n["lat"], n["lng"], n["capabilities"],
                                           n["delivery_radius_m"], n["capacity_per_hour"], n.get("city"))
        shanghai = [n for n in self.nodes.values() if n.kind == "store" and (n.city or "") != "杭州"]
        self.delivery_nodes = [n for n in shanghai if "delivery" in n.capabilities] or []
        self.pickup_nodes = [n for n in self.nodes.values() if n.kind == "store" and "pickup" in n.capabilities]
        self.ship_node_ids = {n.id for n in self.nodes.values() if "ship" in n.capabilities}
        self.prices: dict[str, int] = {}
        r = await self.call("GET", "/skus", token=self.token, params={"prefix": "SKU-", "limit": 500})
        if r is not None and r.status_code == 200:
            self.prices = {s["sku"]: s["unit_price"] for s in r.json()["items"]}
        if not self.delivery_nodes or HOT_SKU not in self.prices:
            raise SaleError("the demo city is not loaded: run `oms seed-demo` (make run does)")
        for node_id in self.nodes:
            r = await self.call("POST", f"/nodes/{node_id}/tokens", token=self.token, json={"label": "simulate-sale"})
            if r is not None and r.status_code == 201:
                self.store_tokens[node_id] = (r.json()["token"], r.json()["id"])
        try:
            await self.api.start(self.demo.platform_port)
        except OSError as exc:
            raise SaleError(f"cannot serve the demo platform API on 127.0.0.1:{self.demo.platform_port} "
                            f"({exc.strerror}): is another simulate-sale running?") from None

    async def revoke_tokens(self) -> None:
        for node_id, (_, token_id) in self.store_tokens.items():
            await self.call("DELETE", f"/nodes/{node_id}/tokens/{token_id}", token=self.token)

    def progress(self, final: bool = False) -> str:
        t = time.monotonic() - self._started
        c, ch = self.counts, self.by_channel
        line = (f"[{t:4.0f}s/{self.seconds:.0f}s] orders {c['orders']} (douyin {ch['douyin']} · tmall {ch['tmall']} · "
                f"jd {ch['jd']} · mini-program {ch['miniprogram']}) {c['orders'] / max(t, 1e-9):.1f}/s · picked {c['picked']}"
                f" · handed over {c['handed to couriers']} · collected {c['collected by buyers']} · rejected "
                f"{c['rejected by stores']} · cancelled {c['cancelled by buyers']} · refunded {c['refunded']}"
                f" · 5xx {self.status_classes['5xx']}")
        return line

    async def reporter(self) -> None:
        tty = self.out.isatty()
        while True:
            await asyncio.sleep(1.0 if tty else 5.0)
            self.out.write(("\r" + self.progress() + "\033[K") if tty else self.progress() + "\n")
            self.out.flush()

    async def sell(self) -> None:
        """Buyers arrive as a Poisson stream whose rate climbs to `rate` over the first 10 s."""
        gate = asyncio.Semaphore(64)

        async def one() -> None:
            async with gate:
                await self.buyer()

        while self._selling:
            t = time.monotonic() - self._started
            rate = self.rate * (0.4 + 0.6 * min(1.0, t / 10.0))
            await asyncio.sleep(self.rng.expovariate(rate))
            if self._selling:
                self.spawn(one())

    async def run(self) -> dict:
        since = datetime.now(timezone.utc) - timedelta(seconds=1)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30,
                                     limits=httpx.Limits(max_connections=48)) as self.http:
            await self.prepare()
            self._started = time.monotonic()
            queue: asyncio.Queue = asyncio.Queue()
            for node_id in sorted(self.store_tokens):
                queue.put_nowait(node_id)
            background = [asyncio.create_task(c) for c in
                          (self.douyin_batches(), self.reporter(), *(self.staff(queue) for _ in range(4)))]
            seller = asyncio.create_task(self.sell())
            try:
                await asyncio.sleep(self.seconds)
                self._selling = False
                await seller
                deadline = time.monotonic() + 15
                while self._tasks and time.monotonic() < deadline:  # the last buyers finish
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.6)  # the last Douyin batch
            finally:
                self._selling = False
                for task in [*background, seller, *self._tasks]:
                    task.cancel()
                await asyncio.gather(*background, seller, *self._tasks, return_exceptions=True)
                await self.revoke_tokens()
                await self.api.close()
            return await self.report(since)

    async def report(self, since: datetime) -> dict:
        r = await self.call("GET", "/ops/summary", token=self.token, params={"since": since.isoformat(), "fresh": "true"})
        summary = r.json() if r is not None and r.status_code == 200 else {}
        totals = summary.get("totals", {})
        orders = totals.get("orders", 0)
        result = {
            "seconds": self.seconds, "counts": dict(self.counts), "orders_by_channel": dict(self.by_channel),
            "http": dict(self.status_classes), "server_errors": self.server_errors[:20],
            "refusals": self.conflicts,
            "platform_api_calls": self.api.calls, "platform_api_refused": self.api.refused,
            "oms_totals": totals,
            "backordered_share": (totals.get("backordered", 0) / orders) if orders else 0.0,
            "backorder_reasons": summary.get("backorders", {}).get("reasons", []),
            "out_of_stock": summary.get("out_of_stock", []),
            "oversell_ok": summary.get("oversell", {}).get("ok"),
        }
        w = self.out.write
        w(("\r" if self.out.isatty() else "") + self.progress() + "\n")
        w(f"OMS since the sale began: {orders} orders, {totals.get('accepted', 0)} accepted, "
          f"{totals.get('backordered', 0)} backordered ({100 * result['backordered_share']:.1f} %), "
          f"{totals.get('cancelled', 0)} cancelled; oversell check: "
          f"{'0 oversold ✓' if result['oversell_ok'] else 'OVERSOLD ✗'}\n")
        for reason in result["backorder_reasons"]:
            w(f"  backordered {reason['orders']:>4}: {reason['example'] or reason['reason']}\n")
        skipped = {k: v for k, v in self.counts.items() if k.startswith(("not offered", "one-hour not"))}
        if skipped:
            w("  platforms: " + ", ".join(f"{k} {v}" for k, v in skipped.items()) + "\n")
        w(f"HTTP answers: {dict(sorted(self.status_classes.items()))}\n")
        for err in self.server_errors[:10]:
            w(f"  ! {err}\n")
        return result


def _local_url(url: str) -> str:
    host = urlsplit(url).hostname or ""
    if host not in LOCAL_HOSTS:
        raise SaleError(f"simulate-sale only talks to a server on this machine, not {host!r}")
    return url


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help="the OMS (default http://127.0.0.1:$OMS_PORT, port 8000)")
    p.add_argument("--seconds", type=float, default=60.0, help="how long the sale runs (default 60)")
    p.add_argument("--rate", type=float, default=12.0, help="orders per second at the peak (default 12)")
    p.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable basket mix")
    p.add_argument("--report", default=None, help="also write the final figures as JSON to this file")


def main(args: argparse.Namespace) -> int:
    from oms.config import Settings

    settings = Settings.from_env()
    try:
        url = _local_url(args.url or f"http://127.0.0.1:{os.environ.get('OMS_PORT', '8000')}")
        demo = demo_channels.load(settings.data_dir)
        if demo is None:
            raise SaleError(f"no demo channel credentials in {settings.data_dir}: start the server with "
                            "`make run` (oms serve --demo-channels) first")
        sale = Sale(url, settings.admin_token, demo, seconds=args.seconds, rate=args.rate, seed=args.seed)
        result = asyncio.run(sale.run())
    except SaleError as exc:
        print(f"oms simulate-sale: {exc}", file=sys.stderr)
        return 2
    if args.report:
        Path(args.report).write_text(json.dumps(result, ensure_ascii=False, indent=2))
    return 0 if result["http"].get("5xx", 0) == 0 and result["oversell_ok"] else 1
