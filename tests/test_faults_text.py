"""Bad text is bad input: U+0000 or a lone surrogate in any text field of any endpoint or webhook
is a 400 naming that field (never a 503 a channel would retry forever, never a 500), and
nothing is stored."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from oms.infra.text import find_bad_text

LAT, LNG = 30.2741, 120.1551  # Hangzhou: away from the other tests' Shanghai stores
NUL = "a\u0000b"
SURROGATE = "a\ud800b"


def leaves(value: Any, path: str = "") -> list[str]:
    """Paths of every string in a JSON document, also inside JSON held in a string field."""
    if isinstance(value, str):
        if value[:1] in "{[":
            try:
                return leaves(json.loads(value), path)
            except ValueError:
                pass
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in leaves(v, f"{path}.{k}" if path else k)]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in leaves(v, f"{path}[{i}]")]
    return []


def replaced(value: Any, path: str, new: str, here: str = "") -> Any:
    """`value` with the string at `path` replaced by `new` (JSON in strings re-encoded)."""
    if isinstance(value, str):
        if here == path:
            return new
        if value[:1] in "{[":
            try:
                return json.dumps(replaced(json.loads(value), path, new, here))
            except ValueError:
                pass
        return value
    if isinstance(value, dict):
        return {k: replaced(v, path, new, f"{here}.{k}" if here else k) for k, v in value.items()}
    if isinstance(value, list):
        return [replaced(v, path, new, f"{here}[{i}]") for i, v in enumerate(value)]
    return value


@pytest.fixture
async def shop(world, client):
    """A store with stock, an allocated order there, and the store's token."""
    node = await world.node("txt", LAT, LNG)
    sku = await world.sku("txt-sku")
    await world.stock(node, sku, 5)
    order = (await world.post_order(world.order("txt-1", [(sku, 1)], lat=LAT, lng=LNG))).json()
    token = (await client.post(f"/nodes/{node}/tokens", json={"label": "till"})).json()["token"]
    return node, sku, order, token


def json_requests(node: str, sku: str, order: dict, uid: str) -> list[tuple[str, str, dict | list, bool]]:
    """(method, url, a valid body, needs the store token) for every endpoint that takes a body."""
    normalized = {"channel": "manual", "external_id": f"txt-new-{uid}", "delivery_mode": "pickup",
                  "destination": {"lat": LAT, "lng": LNG, "address": "上海市黄浦区****"}, "pickup_node_id": node,
                  "buyer": {"name": "张*", "phone": "138****0000"},
                  "lines": [{"sku": sku, "quantity": 1, "unit_price": 1000, "platform_line_id": "l1",
                             "platform_sku_id": "p1"}]}
    douyin = [{"tag": "101", "msg_id": "m-1", "data": json.dumps({"p_id": 47, "shop_id": 77, "order_status": "2"})}]
    tmall = {"id": "8000", "topic": "taobao_trade_TradeBuyerPay", "user_nick": "shop-a",
             "content": json.dumps({"tid": "2231", "status": "WAIT_SELLER_SEND_GOODS", "payment": "25.80"})}
    mini = {"event": "order.paid", "order": {"order_no": "mp-1", "openid": "o-x", "address": "徐汇区"}}
    return [
        ("POST", "/orders", normalized, False),
        ("PUT", f"/nodes/{node}", {"kind": "store", "name": "门店", "lat": LAT, "lng": LNG, "city": "上海",
                                   "capabilities": ["delivery"], "delivery_radius_m": 3000,
                                   "capacity_per_hour": 30}, False),
        ("PUT", f"/skus/{sku}", {"name": "T-shirt", "unit_price": 100}, False),
        ("PUT", f"/sku-map/douyin/{uid}", {"sku": sku}, False),
        ("POST", f"/orders/{order['id']}/cancel", {"reason": "buyer asked"}, False),
        ("POST", f"/nodes/{node}/tokens", {"label": "till 2"}, False),
        ("POST", f"/stores/{node}/orders/{order['id']}/reject", {"reason": "damaged",
                                                                 "lines": [{"sku": sku, "quantity": 1}]}, True),
        ("POST", "/webhooks/douyin", douyin, False),
        ("POST", "/webhooks/tmall", tmall, False),
        ("POST", "/webhooks/miniprogram", mini, False),
    ]


@pytest.mark.parametrize("bad", [NUL, SURROGATE], ids=["nul", "lone-surrogate"])
async def test_bad_text_in_each_field_of_each_endpoint_is_a_400_naming_it(client, world, services, shop, uid, bad):
    node, sku, order, token = shop
    checked = 0
    for method, url, body, store in json_requests(node, sku, order, uid):
        headers = {"content-type": "application/json"}
        if store:
            headers["Authorization"] = f"Bearer {token}"
        for path in leaves(body):
            content = json.dumps(replaced(body, path, bad)).encode()  # ensure_ascii: \u0000, \ud800
            r = await client.request(method, url, content=content, headers=headers)
            assert r.status_code == 400, (method, url, path, r.status_code, r.text)
            assert r.json()["field"] == path, (url, r.json())
            checked += 1
    assert checked >= 30
    # nothing was stored by any of them
    assert await services.pool.fetchval("select count(*) from orders where external_id = $1",
                                        f"txt-new-{uid}") == 0
    assert (await client.get(f"/orders/{order['id']}")).json()["status"] == "allocated"


async def test_bad_text_in_a_jd_form_relay_names_the_field_inside_its_json(client):
    form = {"app_key": "jd-app", "method": "jingdong.pop.order.notify", "v": "2.0",
            "360buy_param_json": json.dumps({"orderId": NUL, "orderState": "WAIT_SELLER_STOCK_OUT"})}
    r = await client.post("/webhooks/jd", content=urlencode(form).encode(),
                          headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and r.json()["field"] == "360buy_param_json.orderId", r.text
    form = {"app_key": NUL, "v": "2.0"}
    r = await client.post("/webhooks/jd", content=urlencode(form).encode(),
                          headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and r.json()["field"] == "app_key", r.text


async def test_bad_text_in_path_and_query_parameters_is_a_400_naming_them(client, shop):
    node, sku, order, token = shop
    doc = (await client.get("/schema/openapi.json")).json()
    checked = 0
    for path, ops in doc["paths"].items():
        names = re.findall(r"\{([^}]+)\}", path)
        for method in ops:
            if method not in ("get", "post", "put", "delete"):
                continue
            for name in names:
                url = path
                store = path.startswith("/stores")
                for other in names:
                    fill = node if store and other.startswith("node_id") else "x"
                    url = url.replace("{%s}" % other, quote(NUL if other == name else fill, safe=""))
                headers = {"Authorization": f"Bearer {token}"} if store else {}
                r = await client.request(method.upper(), url, headers=headers,
                                         content=b"{}" if method in ("post", "put") else None)
                if store and name.startswith("node_id"):  # the token is for another store: refused first
                    assert r.status_code == 403, (method, url, r.status_code, r.text)
                    continue
                assert r.status_code == 400, (method, url, r.status_code, r.text)
                assert r.json()["field"] == name.split(":")[0], (url, r.json())
                checked += 1
    assert checked >= 15
    r = await client.get("/orders", params={"channel": NUL})
    assert r.status_code == 400 and r.json()["field"] == "channel", r.text
    r = await client.get(f"/inventory/{sku}", params={"lat": "31.2\u0000"})
    assert r.status_code == 400 and r.json()["field"] == "lat", r.text


def test_the_edge_check_finds_the_first_bad_string_with_its_path():
    doc = {"a": [{"b": "ok"}, {"c": "x\u0000"}], "d": "fine"}
    assert find_bad_text(doc) == ("a[1].c", "U+0000 (NUL) is not allowed in text")
    assert find_bad_text({"data": json.dumps({"p": ["x", "\ud800"]})})[0] == "data.p[1]"
    assert find_bad_text(json.loads('{"ok": "emoji \U0001f600", "pair": "\\ud83d\\ude00"}')) is None
