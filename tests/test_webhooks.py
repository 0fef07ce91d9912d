"""Channel webhooks end to end through HTTP: signed pushes into the app, real order fetches from a
fake platform API on 127.0.0.1, the real ServiceIntake on PostgreSQL + Redis, and the exact
acknowledgements the platforms expect."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

sys.path.insert(0, str(Path(__file__).parent / "channels"))
sys.path.insert(0, str(Path(__file__).parent / "adapters"))

import test_adapter_douyin as dy  # noqa: E402
import test_adapter_jd as jdt  # noqa: E402
import test_adapter_tmall as tmt  # noqa: E402
from channel_fakes import FakeHttpServer, Request  # noqa: E402

from oms.api import webhooks as webhooks_api  # noqa: E402
from oms.channels.inbox import PgSkuMapSource  # noqa: E402
from oms.channels.config import ChannelsConfig, DouyinConfig, JdConfig, TmallConfig  # noqa: E402

LAT, LNG = 31.2304, 121.4737  # 人民广场 (GCJ-02)
DOUYIN_OK = b'{"code":0,"msg":"success"}'


# ------------------------------------------------------------------ a fake Doudian order API


class DouyinApi:
    """order.orderDetail on 127.0.0.1: checks the request signature independently, answers the
    next prepared detail of the asked order (the last one again once the list is used up)."""

    def __init__(self) -> None:
        self.details: dict[str, list[dict]] = {}
        self.asked: list[str] = []

    def put(self, order_id: str, *responses: dict) -> None:
        self.details[order_id] = list(responses)

    async def handler(self, request: Request) -> tuple[int, bytes]:
        q = request.query
        pattern = (f"{dy.APP_SECRET}app_key{q['app_key']}method{q['method']}param_json{request.body.decode()}"
                   f"timestamp{q['timestamp']}v{q['v']}{dy.APP_SECRET}")
        if q.get("sign") != hmac.new(dy.APP_SECRET.encode(), pattern.encode(), hashlib.sha256).hexdigest():
            return 200, json.dumps({"code": 40003, "msg": "sign error", "sub_code": "isv.sign-invalid"}).encode()
        order_id = json.loads(request.body)["shop_order_id"]
        self.asked.append(order_id)
        queue = self.details.get(order_id)
        if not queue:
            return 200, json.dumps({"code": 40004, "msg": "no order", "sub_code": "isv.order-not-exist"}).encode()
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        return 200, json.dumps(answer, ensure_ascii=False).encode()


def order_id() -> str:
    return "47" + str(secrets.randbelow(10**17)).zfill(17)  # 19 digits, as Douyin's


def detail(oid: str, lines: list[dict], *, status: int = 105, updated: int | None = None) -> dict:
    """An order.orderDetail answer for a one-hour delivery next to 人民广场."""
    now = int(time.time())
    items = []
    for i, line in enumerate(lines):
        items.append({"order_id": line.get("line_id", f"{oid[:-1]}{i + 1}"), "parent_order_id": oid,
                      "sku_id": line.get("sku_id", 1730000000000000 + i), "out_sku_id": line.get("sku", ""),
                      "code": "", "item_num": line.get("qty", 1), "origin_amount": line.get("price", 1000),
                      "sum_amount": line.get("price", 1000) * line.get("qty", 1), "receive_type": 1})
    total = sum(i["sum_amount"] for i in items)
    return dy.detail_response(
        order_id=oid, order_status=status, main_status=status, sku_order_list=items,
        order_amount=total, pay_amount=total, post_amount=0, promotion_amount=0,
        create_time=now - 120, pay_time=None if status == 1 else now - 60, update_time=updated or now,
        user_coordinate={"user_coordinate_longitude": str(LNG + 0.002), "user_coordinate_latitude": str(LAT + 0.001)},
        early_arrival=True, target_arrival_time=now + 3600,
    )


def push(messages: list[dict]) -> tuple[bytes, dict[str, str]]:
    body = dy.encode(messages)
    return body, dy.push_headers(body)


def msg(tag: int, message_id: str, oid: str, **data) -> dict:
    return dy.message(tag, message_id, {"p_id": int(oid), "s_ids": [], "shop_id": 77, **data})


@pytest.fixture
async def douyin(app):
    """The Douyin channel configured on the app, its order API served on 127.0.0.1."""
    api = DouyinApi()
    async with FakeHttpServer(api.handler) as server:
        rt = webhooks_api.configure(app, ChannelsConfig(douyin=DouyinConfig(credentials=dy.CREDS, api_url=server.url)))
        rt.sku_maps = PgSkuMapSource(rt.services.pool, max_age_s=0)  # see mapping changes at once
        yield api
        await webhooks_api.aclose(app)  # its keep-alive connections, before the server goes
    webhooks_api.configure(app, ChannelsConfig())


@pytest.fixture
async def platform(app):
    """An HTTP client without the admin token: platforms have none, they sign."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://oms.test", timeout=60) as c:
        yield c


async def post_douyin(platform, messages: list[dict]):
    body, headers = push(messages)
    return await platform.post("/webhooks/douyin", content=body, headers=headers)


# ------------------------------------------------------------------ reading state back


async def order_of(client, channel: str, external_id: str) -> dict | None:
    r = await client.get("/orders", params={"channel": channel, "external_id": external_id})
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert len(items) <= 1
    if not items:
        return None
    full = await client.get(f"/orders/{items[0]['id']}")
    return full.json()


async def available(services, node: str, sku: str) -> int:
    return (await services.inventory.available([node], [sku]))[node][sku]


async def reserved_pg(services, sku: str) -> int:
    return await services.pool.fetchval(
        "select coalesce(sum(quantity), 0) from reservations where sku = $1 and state = 'reserved'", sku)


async def inbox(services, channel: str, message_id: str):
    return await services.pool.fetchrow(
        "select status, kind, error, note, external_id from inbox where channel = $1 and message_id = $2",
        channel, message_id)


async def store_with(world, *skus_units: tuple[str, int]) -> tuple[str, list[str]]:
    node = await world.node("store", LAT, LNG, capabilities=("delivery", "pickup", "ship"), radius=5000)
    skus = []
    for name, units in skus_units:
        sku = await world.sku(name)
        await world.stock(node, sku, units)
        skus.append(sku)
    return node, skus


# ------------------------------------------------------------------ Douyin


async def test_douyin_batch_of_three_is_acknowledged_and_leaves_the_right_states(client, platform, services, world, douyin):
    from prometheus_client import REGISTRY

    def webhook_count() -> float:
        return REGISTRY.get_sample_value("oms_webhook_latency_seconds_count", {"channel": "douyin"}) or 0.0

    timed_before = webhook_count()
    node, (tea, cup) = await store_with(world, ("tea", 10), ("cup", 10))
    a, b = order_id(), order_id()
    # B was paid earlier: allocated at the store
    douyin.put(b, detail(b, [{"sku": cup, "qty": 2}]))
    r = await post_douyin(platform, [msg(101, f"m-{b}-paid", b)])
    assert (r.status_code, r.content) == (200, DOUYIN_OK)
    assert (await order_of(client, "douyin", b))["status"] == "allocated"
    assert await available(services, node, cup) == 8

    # the batch: A created (the API says unpaid), A paid (now paid), B cancelled
    now = int(time.time())
    douyin.put(a, detail(a, [{"sku": tea, "qty": 3}], status=1, updated=now - 30),
               detail(a, [{"sku": tea, "qty": 3}], status=105, updated=now))
    batch = [msg(100, f"m-{a}-created", a), msg(101, f"m-{a}-paid", a), msg(106, f"m-{b}-cancel", b)]
    r = await post_douyin(platform, batch)
    assert (r.status_code, r.content) == (200, DOUYIN_OK)

    order_a = await order_of(client, "douyin", a)
    assert order_a["status"] == "allocated" and order_a["channel_status"] == "paid"
    assert [h["to_status"] for h in order_a["history"]] == ["created", "allocated"]
    assert [(f["node_id"], f["lines"]) for f in order_a["fulfillments"]] == [(node, [{"sku": tea, "quantity": 3}])]
    assert order_a["paid_at"] is not None and order_a["promised_by"] is not None
    assert await available(services, node, tea) == 7 and await reserved_pg(services, tea) == 3

    order_b = await order_of(client, "douyin", b)
    assert order_b["status"] == "cancelled" and order_b["fulfillments"][0]["status"] == "cancelled"
    assert await available(services, node, cup) == 10 and await reserved_pg(services, cup) == 0

    for m in batch:
        row = await inbox(services, "douyin", m["msg_id"])
        assert row["status"] == "processed" and row["error"] is None
    assert (await inbox(services, "douyin", f"m-{b}-cancel"))["kind"] == "cancel"
    assert webhook_count() - timed_before == 2  # both pushes timed for the latency histogram


async def test_douyin_redelivery_and_a_second_message_id_give_one_order(client, platform, services, world, douyin):
    node, (tea,) = await store_with(world, ("tea", 10))
    a = order_id()
    douyin.put(a, detail(a, [{"sku": tea, "qty": 2}]))
    batch = [msg(100, f"m-{a}-1", a), msg(101, f"m-{a}-2", a)]
    assert (await post_douyin(platform, batch)).content == DOUYIN_OK
    first = await order_of(client, "douyin", a)
    seen = await services.pool.fetch("select message_id, processed_at from inbox where channel = 'douyin' "
                                     "and external_id = $1 order by message_id", a)

    # the very same push again (a platform retry), then the same order under a new message id
    assert (await post_douyin(platform, batch)).content == DOUYIN_OK
    assert (await post_douyin(platform, [msg(101, f"m-{a}-3", a)])).content == DOUYIN_OK

    again = await order_of(client, "douyin", a)
    assert again["id"] == first["id"] and again["status"] == "allocated"
    assert len(again["history"]) == len(first["history"])  # nothing re-applied
    assert await services.pool.fetchval(
        "select count(*) from orders where channel = 'douyin' and external_id = $1", a) == 1
    assert await reserved_pg(services, tea) == 2 and await available(services, node, tea) == 8
    assert await services.pool.fetchval(
        "select count(*) from inbox where channel = 'douyin' and external_id = $1", a) == 3
    # the redelivered messages were acknowledged without being applied again
    for message_id, processed_at in seen:
        assert (await services.pool.fetchval("select processed_at from inbox where channel = 'douyin' "
                                             "and message_id = $1", message_id)) == processed_at


async def test_wrong_signature_or_tampered_body_is_401_with_nothing_stored(client, platform, services, world, douyin, caplog):
    _, (tea,) = await store_with(world, ("tea", 10))
    a = order_id()
    douyin.put(a, detail(a, [{"sku": tea, "qty": 1}]))
    body, headers = push([msg(101, f"m-{a}-bad", a)])
    caplog.set_level(logging.INFO)

    wrong = await platform.post("/webhooks/douyin", content=body, headers=headers | {"event-sign": "0" * 32})
    tampered_body = body.replace(f"m-{a}-bad".encode(), f"m-{a}-bae".encode())
    tampered = await platform.post("/webhooks/douyin", content=tampered_body, headers=headers)
    unsigned = await platform.post("/webhooks/douyin", content=body, headers={"app-id": dy.APP_KEY})

    for r in (wrong, tampered, unsigned):
        assert r.status_code == 401, r.text
        assert r.json()["code"] == 40100
    assert await services.pool.fetchval(
        "select count(*) from inbox where channel = 'douyin' and external_id = $1", a) == 0
    assert await inbox(services, "douyin", f"m-{a}-bad") is None
    assert await order_of(client, "douyin", a) is None
    assert douyin.asked == []  # nothing was even fetched

    rejected = [r for r in caplog.records if r.name == "oms.channels.rejected"]
    assert len(rejected) >= 3 and all("douyin" in r.getMessage() for r in rejected)
    assert any("event-sign" in r.getMessage() for r in rejected)


async def test_a_bad_message_in_a_batch_is_reported_and_logged_without_buyer_data(client, platform, services, world, douyin,
                                                                                   caplog):
    node, (tea,) = await store_with(world, ("tea", 10))
    a = order_id()
    douyin.put(a, detail(a, [{"sku": tea, "qty": 1}]))
    caplog.set_level(logging.INFO)
    bad = {"tag": "101", "msg_id": f"m-{a}-broken", "data": "{not json 138****0000"}
    r = await post_douyin(platform, [msg(101, f"m-{a}-good", a), bad])

    assert r.status_code == 400
    assert [e.get("message_id") for e in r.json()["errors"]] == [f"m-{a}-broken"]
    assert (await order_of(client, "douyin", a))["status"] == "allocated"  # the good one went in
    assert await inbox(services, "douyin", f"m-{a}-broken") is None
    lines = [r.getMessage() for r in caplog.records if r.name == "oms.channels.rejected"]
    assert any("douyin" in line and f"m-{a}-broken" in line for line in lines)
    everything = "\n".join(r.getMessage() for r in caplog.records)
    for buyer_data in ("138****0000", "张**", "莲前西路", "##qIOpbLPevlQwA6f"):
        assert buyer_data not in everything


async def test_unknown_merchant_sku_backorders_that_line_not_the_push(client, platform, services, world, douyin):
    node, (tea, cup) = await store_with(world, ("tea", 10), ("cup", 10))
    a = order_id()
    platform_sku = 9_100_000_000_000_000 + secrets.randbelow(10**12)
    douyin.put(a, detail(a, [{"sku": tea, "qty": 1}, {"sku": "", "sku_id": platform_sku, "qty": 2}]))
    r = await post_douyin(platform, [msg(101, f"m-{a}", a)])
    assert (r.status_code, r.content) == (200, DOUYIN_OK)

    order = await order_of(client, "douyin", a)
    assert order["status"] == "partially_allocated" and "backordered" in order["reason"]
    first, second = order["lines"]
    assert (first["sku"], first["status"]) == (tea, "open")
    assert second["sku"] == f"douyin:{platform_sku}" and second["status"] == "backordered"
    assert "unknown SKU" in second["reason"]
    assert await available(services, node, tea) == 9

    # once the mapping table knows that platform SKU, the next order maps it
    assert (await client.put(f"/sku-map/douyin/{platform_sku}", json={"sku": cup})).status_code == 200
    b = order_id()
    douyin.put(b, detail(b, [{"sku": "", "sku_id": platform_sku, "qty": 2}]))
    assert (await post_douyin(platform, [msg(101, f"m-{b}", b)])).content == DOUYIN_OK
    mapped = await order_of(client, "douyin", b)
    assert mapped["status"] == "allocated" and mapped["lines"][0]["sku"] == cup
    assert await available(services, node, cup) == 8


async def test_refunds_and_cancels_release_stock_also_from_a_store_pick_list(client, platform, services, world, douyin):
    node, (tea, cup) = await store_with(world, ("tea", 10), ("cup", 10))
    token = (await client.post(f"/nodes/{node}/tokens", json={"label": "test"})).json()["token"]
    store = {"Authorization": f"Bearer {token}"}

    async def pick_list() -> set[str]:
        r = await client.get(f"/stores/{node}/picklist", headers=store)
        assert r.status_code == 200, r.text
        body = r.json()
        return {e["order_id"] for e in body["items"] + body["awaiting_handover"]}

    # an order with two lines, on the store's pick list
    a = order_id()
    line_tea, line_cup = f"{a[:-2]}91", f"{a[:-2]}92"
    douyin.put(a, detail(a, [{"sku": tea, "qty": 2, "line_id": line_tea}, {"sku": cup, "qty": 1, "line_id": line_cup}]))
    assert (await post_douyin(platform, [msg(101, f"m-{a}", a)])).content == DOUYIN_OK
    order = await order_of(client, "douyin", a)
    assert order["id"] in await pick_list()
    assert await available(services, node, tea) == 8 and await available(services, node, cup) == 9

    # one line refunded: its units come back, the rest stays on the pick list
    refund = dy.message(206, f"m-{a}-r1", {"p_id": int(a), "s_id": int(line_tea), "aftersale_id": 1,
                                            "aftersale_status": 12, "aftersale_type": 2, "refund_amount": 2000})
    assert (await post_douyin(platform, [refund])).content == DOUYIN_OK
    order = await order_of(client, "douyin", a)
    assert order["status"] == "allocated" and [l["status"] for l in order["lines"]] == ["cancelled", "open"]
    held = await services.pool.fetch("select sku, quantity, state from reservations where order_id = $1 order by sku",
                                     order["id"])
    assert [tuple(r) for r in held] == sorted([(cup, 1, "reserved"), (tea, 2, "released")])
    assert order["fulfillments"][0]["status"] == "allocated"
    assert await available(services, node, tea) == 10 and await available(services, node, cup) == 9
    assert order["id"] in await pick_list()
    # the same refund again changes nothing
    assert (await post_douyin(platform, [refund])).content == DOUYIN_OK
    assert await available(services, node, tea) == 10

    # the last line refunded: the whole order is cancelled and leaves the pick list
    refund2 = dy.message(206, f"m-{a}-r2", {"p_id": int(a), "s_id": int(line_cup), "aftersale_id": 2,
                                             "aftersale_status": 12, "aftersale_type": 2, "refund_amount": 1000})
    assert (await post_douyin(platform, [refund2])).content == DOUYIN_OK
    order = await order_of(client, "douyin", a)
    assert order["status"] == "cancelled" and order["fulfillments"][0]["status"] == "cancelled"
    assert await available(services, node, cup) == 10 and await reserved_pg(services, cup) == 0
    assert order["id"] not in await pick_list()

    # an order the store has already picked (waiting for the courier), then cancelled
    b = order_id()
    douyin.put(b, detail(b, [{"sku": tea, "qty": 4}]))
    assert (await post_douyin(platform, [msg(101, f"m-{b}", b)])).content == DOUYIN_OK
    ob = await order_of(client, "douyin", b)
    picked = await client.post(f"/stores/{node}/orders/{ob['id']}/picked", headers=store)
    assert picked.status_code == 200, picked.text
    assert await available(services, node, tea) == 6
    assert (await post_douyin(platform, [msg(106, f"m-{b}-cancel", b)])).content == DOUYIN_OK
    ob = await order_of(client, "douyin", b)
    assert ob["status"] == "cancelled" and ob["fulfillments"][0]["status"] == "cancelled"
    assert await available(services, node, tea) == 10 and await reserved_pg(services, tea) == 0
    assert ob["id"] not in await pick_list()


async def test_a_cancel_before_its_create_is_recorded_and_the_create_arrives_cancelled(client, platform, services, world,
                                                                                       douyin):
    node, (tea,) = await store_with(world, ("tea", 10))
    a = order_id()
    assert (await post_douyin(platform, [msg(106, f"m-{a}-cancel", a)])).content == DOUYIN_OK
    assert await order_of(client, "douyin", a) is None
    row = await inbox(services, "douyin", f"m-{a}-cancel")
    assert (row["status"], row["kind"]) == ("processed", "cancel") and "recorded" in row["note"]

    # the platform's API still shows it paid (its index lags): the order is stored cancelled
    douyin.put(a, detail(a, [{"sku": tea, "qty": 1}]))
    assert (await post_douyin(platform, [msg(101, f"m-{a}-paid", a)])).content == DOUYIN_OK
    order = await order_of(client, "douyin", a)
    assert order["status"] == "cancelled" and order["fulfillments"] == []
    assert await available(services, node, tea) == 10


# ------------------------------------------------------------------ WeChat mini-program + WeChat Pay

PUSH_SECRET = "mp-push-secret-" + secrets.token_hex(4)
APIV3_KEY = secrets.token_hex(16)  # 32 characters, as WeChat Pay's APIv3 keys
PRIVATE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = PRIVATE_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture
def miniprogram(app, monkeypatch):
    """The mini-program channel configured from the environment, as in production."""
    monkeypatch.setenv("OMS_MINIPROGRAM_PUSH_SECRET", PUSH_SECRET)
    monkeypatch.setenv("OMS_MINIPROGRAM_APIV3_KEY", APIV3_KEY)
    monkeypatch.setenv("OMS_MINIPROGRAM_PLATFORM_PUBLIC_KEY", PUBLIC_PEM)
    rt = webhooks_api.configure(app)  # reads the OMS_* environment
    assert rt.config.miniprogram is not None and rt.config.douyin is None
    yield rt
    webhooks_api.configure(app, ChannelsConfig())


def mp_push(order_no: str, sku: str, event_id: str, *, event: str = "order.created", status: str = "unpaid"):
    body = json.dumps({"event_id": event_id, "event": event, "order": {
        "order_no": order_no, "status": status, "delivery_mode": "delivery",
        "receiver": {"name_masked": "赵*", "phone_masked": "139****8888", "province": "上海市", "city": "上海市",
                     "district": "黄浦区", "address_masked": "南京东路***", "lat": LAT + 0.001, "lng": LNG + 0.001,
                     "coord_system": "gcj02"},
        "items": [{"line_id": "1", "sku_code": sku, "quantity": 2, "unit_price_fen": 1290}],
        "freight_fen": 0, "discount_fen": 0, "total_fen": 2580,
    }}, ensure_ascii=False).encode()
    stamp = str(int(time.time()))
    mac = hmac.new(PUSH_SECRET.encode(), stamp.encode() + b"\n" + body, hashlib.sha256).hexdigest()
    return body, {"X-OMS-Timestamp": stamp, "X-OMS-Signature": mac, "Content-Type": "application/json"}


def wechat_pay(note_id: str, out_trade_no: str, total: int, *, event_type: str = "TRANSACTION.SUCCESS"):
    """A WeChat Pay v3 notification, encrypted and signed here without the adapter."""
    resource = {"mchid": "1900000109", "appid": "wxd678efh567hg6787", "out_trade_no": out_trade_no,
                "transaction_id": "42000000002024" + secrets.token_hex(7), "trade_type": "JSAPI",
                "trade_state": "SUCCESS", "success_time": "2024-06-18T10:00:01+08:00",
                "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
                "amount": {"total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY"}}
    nonce, aad = secrets.token_hex(6), "transaction"
    ciphertext = AESGCM(APIV3_KEY.encode()).encrypt(nonce.encode(), json.dumps(resource).encode(), aad.encode())
    body = json.dumps({"id": note_id, "create_time": "2024-06-18T10:00:02+08:00", "resource_type": "encrypt-resource",
                       "event_type": event_type, "summary": "支付成功",
                       "resource": {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM",
                                    "ciphertext": base64.b64encode(ciphertext).decode(), "associated_data": aad,
                                    "nonce": nonce}}, ensure_ascii=False).encode()
    stamp, sig_nonce = str(int(time.time())), secrets.token_hex(16)
    signature = PRIVATE_KEY.sign(f"{stamp}\n{sig_nonce}\n".encode() + body + b"\n", padding.PKCS1v15(), hashes.SHA256())
    return body, {"Wechatpay-Timestamp": stamp, "Wechatpay-Nonce": sig_nonce,
                  "Wechatpay-Signature": base64.b64encode(signature).decode(),
                  "Wechatpay-Serial": "PUB_KEY_ID_0112345678", "Content-Type": "application/json"}


async def test_wechat_pay_notification_marks_a_miniprogram_order_paid_and_allocates_it(client, platform, services, world,
                                                                                       miniprogram):
    node, (tea,) = await store_with(world, ("tea", 10))
    order_no = f"MP{world.uid}{secrets.token_hex(3)}"

    # the payment is notified before the order push arrived: retry later (WeChat does)
    body, headers = wechat_pay(f"EV-{order_no}-early", order_no, 2580)
    early = await platform.post("/webhooks/miniprogram", content=body, headers=headers)
    assert early.status_code == 503 and early.json()["code"] == "FAIL"

    body, headers = mp_push(order_no, tea, f"evt-{order_no}-1")
    r = await platform.post("/webhooks/miniprogram", content=body, headers=headers)
    assert (r.status_code, r.content) == (200, b'{"ok":true}')
    order = await order_of(client, "miniprogram", order_no)
    assert order["status"] == "created" and order["fulfillments"] == [] and order["total_fen"] == 2580
    assert await available(services, node, tea) == 10

    # a payment of another amount is refused, and changes nothing
    body, headers = wechat_pay(f"EV-{order_no}-wrong", order_no, 2500)
    wrong = await platform.post("/webhooks/miniprogram", content=body, headers=headers)
    assert wrong.status_code == 400 and wrong.json()["code"] == "FAIL"
    assert (await order_of(client, "miniprogram", order_no))["status"] == "created"
    assert (await inbox(services, "miniprogram", f"EV-{order_no}-wrong"))["status"] == "failed"
    assert await available(services, node, tea) == 10

    # a tampered notification: 401, nothing stored
    body, headers = wechat_pay(f"EV-{order_no}-ok", order_no, 2580)
    tampered = await platform.post("/webhooks/miniprogram", content=body.replace(b'"summary"', b'"summarY"'),
                                 headers=headers)
    assert tampered.status_code == 401
    assert await inbox(services, "miniprogram", f"EV-{order_no}-ok") is None

    # the right amount: 204 without a body, the order paid and allocated
    paid = await platform.post("/webhooks/miniprogram", content=body, headers=headers)
    assert (paid.status_code, paid.content) == (204, b"")
    order = await order_of(client, "miniprogram", order_no)
    assert order["status"] == "allocated" and order["channel_status"] == "paid"
    assert order["paid_at"] is not None and order["promised_by"] is not None
    assert [(f["node_id"], f["lines"]) for f in order["fulfillments"]] == [(node, [{"sku": tea, "quantity": 2}])]
    assert await available(services, node, tea) == 8

    # WeChat delivers it again: acknowledged, nothing reserved twice
    again = await platform.post("/webhooks/miniprogram", content=body, headers=headers)
    assert again.status_code == 204
    assert await available(services, node, tea) == 8 and await reserved_pg(services, tea) == 2

    # the mini-program cancels it: stock back
    body, headers = mp_push(order_no, tea, f"evt-{order_no}-2", event="order.cancelled", status="cancelled")
    assert (await platform.post("/webhooks/miniprogram", content=body, headers=headers)).status_code == 200
    assert (await order_of(client, "miniprogram", order_no))["status"] == "cancelled"
    assert await available(services, node, tea) == 10


async def test_a_payment_retried_after_a_half_done_attempt_still_allocates(client, platform, services, world,
                                                                            miniprogram):
    node, (tea,) = await store_with(world, ("tea", 10))
    order_no = f"MP{world.uid}{secrets.token_hex(3)}"
    body, headers = mp_push(order_no, tea, f"evt-{order_no}-1")
    assert (await platform.post("/webhooks/miniprogram", content=body, headers=headers)).status_code == 200
    # an earlier attempt recorded the paid status, then died before allocating
    await services.pool.execute("update orders set channel_status = 'paid' where channel = 'miniprogram' "
                                "and external_id = $1", order_no)
    body, headers = wechat_pay(f"EV-{order_no}-retry", order_no, 2580)
    assert (await platform.post("/webhooks/miniprogram", content=body, headers=headers)).status_code == 204
    got = await order_of(client, "miniprogram", order_no)
    assert got["status"] == "allocated", (got["reason"], got["history"], got["lines"])
    assert await available(services, node, tea) == 8


async def test_unconfigured_channel_answers_503_and_stores_nothing(client, platform, app, services):
    webhooks_api.configure(app, ChannelsConfig())
    body, headers = push([msg(101, "m-unconfigured", order_id())])
    r = await platform.post("/webhooks/douyin", content=body, headers=headers)
    assert r.status_code == 503
    assert await inbox(services, "douyin", "m-unconfigured") is None
    for path in ("/webhooks/tmall", "/webhooks/jd", "/webhooks/miniprogram"):
        assert (await platform.post(path, content=b"{}")).status_code == 503


# ------------------------------------------------------------------ Tmall and JD push relays


def beijing_now(offset_s: int = 0) -> str:
    return (datetime.now(timezone(timedelta(hours=8))) + timedelta(seconds=offset_s)).strftime("%Y-%m-%d %H:%M:%S")


async def test_tmall_and_jd_relays_through_http(client, platform, app, services, world):
    wh = await world.node("wh", LAT, LNG, kind="warehouse", capabilities=("ship",), radius=0)
    tea = await world.sku("tea")
    await world.stock(wh, tea, 10)
    tid = str(2231958349000000000 + secrets.randbelow(10**15))
    jd_id = f"30{secrets.randbelow(10**10)}"
    jd_state = {"orderState": "WAIT_SELLER_STOCK_OUT", "modified": beijing_now(-60)}

    async def top(request: Request) -> tuple[int, bytes]:  # taobao.trade.fullinfo.get
        form = request.form()
        assert form["sign"] == tmt.independent_top_md5(form, tmt.APP_SECRET)
        trade = tmt.trade_json(tid=int(form["tid"]), tid_str=form["tid"], payment="25.80", total_fee="25.80",
                               post_fee="0.00", discount_fee="0.00",
                               orders=[{"oid": int(tid) + 1, "sku_id": "4500000001", "outer_sku_id": tea, "num": 2,
                                        "price": "12.90", "payment": "25.80"}])
        return 200, json.dumps(trade, ensure_ascii=False).encode()

    async def jos(request: Request) -> tuple[int, bytes]:  # jingdong.pop.order.get
        form = request.form()
        concat = "".join(k + form[k] for k in sorted(form) if k != "sign")
        assert form["sign"] == hashlib.md5(f"jd-secret{concat}jd-secret".encode()).hexdigest().upper()
        order = jdt.order_json(orderId=jd_id, itemInfoList=[{"skuId": "100012345678", "outerSkuId": tea,
                                                             "jdPrice": "12.90", "itemTotal": "3"}],
                               orderTotalPrice="38.70", orderSellerPrice="38.70", orderPayment="38.70",
                               freightPrice="0.00", sellerDiscount="0.00", **jd_state)
        return 200, json.dumps({"jingdong_pop_order_get_responce": {"code": "0", "orderDetailInfo": {
            "orderInfo": order}}}, ensure_ascii=False).encode()

    async with FakeHttpServer(top) as top_api, FakeHttpServer(jos) as jos_api:
        webhooks_api.configure(app, ChannelsConfig(
            tmall=TmallConfig(credentials=tmt.CREDS, top_url=top_api.url),
            jd=JdConfig(credentials=jdt.CREDS, api_url=jos_api.url + "/routerjson")))
        try:
            # Tmall: a TMC message relayed, TOP-signed over the query and the body
            body = json.dumps({"id": 8000000000000 + secrets.randbelow(10**9), "topic": "taobao_trade_TradeBuyerPay",
                               "pub_time": beijing_now(), "user_nick": "shop-a",
                               "content": json.dumps({"tid": int(tid), "status": "WAIT_SELLER_SEND_GOODS",
                                                      "payment": "25.80"})}).encode()
            query = {"app_key": tmt.APP_KEY, "timestamp": beijing_now(), "sign_method": "md5"}
            query["sign"] = tmt.independent_top_md5(query, tmt.APP_SECRET, body)
            for _ in range(2):  # relayed twice: one order
                r = await platform.post("/webhooks/tmall", params=query, content=body)
                assert (r.status_code, r.content) == (200, b'{"success":true}')
            wrong = await platform.post("/webhooks/tmall", params=query | {"sign": "0" * 32}, content=body)
            assert wrong.status_code == 401
            order = await order_of(client, "tmall", tid)
            assert order["status"] == "allocated" and order["delivery_mode"] == "ship"
            assert order["fulfillments"][0]["lines"] == [{"sku": tea, "quantity": 2}]

            # JD: an order message relayed, JOS-signed (message id = order id @ modified time); the
            # order itself is fetched
            def relayed(state: dict) -> bytes:
                form = {"app_key": "jd-app", "method": "jingdong.pop.order.notify", "timestamp": beijing_now(),
                        "v": "2.0", "360buy_param_json": json.dumps({"orderId": jd_id, **state})}
                concat = "".join(k + form[k] for k in sorted(form))
                form["sign"] = hashlib.md5(f"jd-secret{concat}jd-secret".encode()).hexdigest().upper()
                return urlencode(form).encode()

            form_headers = {"Content-Type": "application/x-www-form-urlencoded"}
            for _ in range(2):
                r = await platform.post("/webhooks/jd", content=relayed(jd_state), headers=form_headers)
                assert (r.status_code, r.content) == (200, b'{"success":true}')
            assert (await order_of(client, "jd", jd_id))["status"] == "allocated"
            assert await available(services, wh, tea) == 10 - 2 - 3

            jd_state.update(orderState="TRADE_CANCELED", modified=beijing_now())
            r = await platform.post("/webhooks/jd", content=relayed(jd_state), headers=form_headers)
            assert r.status_code == 200
            assert (await order_of(client, "jd", jd_id))["status"] == "cancelled"
            assert await available(services, wh, tea) == 8
        finally:
            await webhooks_api.aclose(app)
            webhooks_api.configure(app, ChannelsConfig())
