"""Webhook handlers end to end: signed pushes in, real HTTP fetches to fake platform APIs on
127.0.0.1, events into a recording Intake, and the exact answers the platforms expect."""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "adapters"))

import test_adapter_douyin as dy  # noqa: E402
import test_adapter_jd as jdt  # noqa: E402
import test_adapter_miniprogram as mpt  # noqa: E402
import test_adapter_tmall as tmt  # noqa: E402
from channel_fakes import FakeHttpServer, RecordingIntake, Request  # noqa: E402

from adapters.normalized import ChannelStatus  # noqa: E402
from oms.channels.config import DouyinConfig, JdConfig, MiniprogramConfig, TmallConfig  # noqa: E402
from oms.channels.ports import StaticSkuMap  # noqa: E402
from oms.channels.webhooks import (  # noqa: E402
    handle_douyin,
    handle_jd_relay,
    handle_miniprogram,
    handle_tmall_relay,
)

BJ = timezone(timedelta(hours=8))
ORDER_A = dy.ORDER_ID
ORDER_B = "4781320682406099999"


def douyin_api(orders: dict[str, dict]):
    """A fake Doudian gateway: checks the HMAC-SHA256 sign, answers order.orderDetail."""

    async def handler(request: Request) -> tuple[int, bytes]:
        if request.path != "/order/orderDetail":
            return 404, b"{}"
        q = request.query
        pattern = (f"{dy.APP_SECRET}app_key{q['app_key']}method{q['method']}param_json{request.body.decode()}"
                   f"timestamp{q['timestamp']}v{q['v']}{dy.APP_SECRET}")
        if q.get("sign") != hmac.new(dy.APP_SECRET.encode(), pattern.encode(), hashlib.sha256).hexdigest():
            return 200, json.dumps({"code": 40003, "msg": "sign error", "sub_code": "isv.sign-invalid",
                                    "data": {}}).encode()
        shop_order_id = json.loads(request.body)["shop_order_id"]
        if shop_order_id not in orders:
            return 200, json.dumps({"code": 40004, "msg": "no order", "sub_code": "isv.order-not-exist",
                                    "data": {}}).encode()
        return 200, json.dumps(orders[shop_order_id], ensure_ascii=False).encode()

    return handler


def detail_for(order_id: str, status: int) -> dict:
    response = dy.detail_response(order_status=status, main_status=status)
    detail = response["data"]["shop_order_detail"]
    detail["order_id"] = order_id
    for i, item in enumerate(detail["sku_order_list"]):
        item["order_id"] = f"{order_id[:-1]}{i}"
    return response


def push(messages: list[dict]) -> tuple[bytes, dict[str, str]]:
    body = dy.encode(messages)
    return body, dy.push_headers(body)


async def test_douyin_batch_of_three_is_acknowledged_and_applied():
    orders = {ORDER_A: detail_for(ORDER_A, 105), ORDER_B: detail_for(ORDER_B, 2)}
    intake = RecordingIntake()
    async with FakeHttpServer(douyin_api(orders)) as api, httpx.AsyncClient() as client:
        config = DouyinConfig(credentials=dy.CREDS, api_url=api.url)
        # order B exists already (paid earlier)
        body, headers = push([dy.message(101, "m-b-paid", {"p_id": int(ORDER_B), "s_ids": []})])
        reply = await handle_douyin(body, headers, config=config, intake=intake, client=client)
        assert reply.status == 200
        # the batch: A created, A paid, B cancelled
        batch = [
            dy.message(100, "m-a-created", {"p_id": int(ORDER_A), "s_ids": [], "create_time": 1718675940}),
            dy.message(101, "m-a-paid", {"p_id": int(ORDER_A), "s_ids": [], "pay_time": 1718676000}),
            dy.message(106, "m-b-cancel", {"p_id": int(ORDER_B), "s_ids": [], "cancel_time": 1718679600}),
        ]
        body, headers = push(batch)
        reply = await handle_douyin(body, headers, config=config, intake=intake, client=client,
                                    sku_maps=StaticSkuMap())
        assert (reply.status, reply.body) == (200, b'{"code":0,"msg":"success"}')
        assert intake.status("douyin", ORDER_A) is ChannelStatus.PAID
        assert intake.status("douyin", ORDER_B) is ChannelStatus.CANCELLED
        stored = intake.orders[("douyin", ORDER_A)].order
        assert stored is not None and stored.lines[0].sku == "SKU-TEA-500" and stored.total_fen == 3380
        # the fetch really went over HTTP, signed, to the configured base URL
        assert [r.path for r in api.requests] == ["/order/orderDetail"] * 3
        assert {json.loads(r.body)["shop_order_id"] for r in api.requests} == {ORDER_A, ORDER_B}

        # the same batch delivered again: acknowledged, nothing new
        created_before, inbox_before = list(intake.created), dict(intake.inbox)
        reply = await handle_douyin(body, headers, config=config, intake=intake, client=client)
        assert reply.status == 200
        assert intake.created == created_before and intake.inbox == inbox_before
        # the same order pushed under another message id: still one order
        body, headers = push([dy.message(101, "m-a-paid-again", {"p_id": int(ORDER_A), "s_ids": []})])
        assert (await handle_douyin(body, headers, config=config, intake=intake, client=client)).status == 200
        assert intake.created.count(("douyin", ORDER_A)) == 1


async def test_douyin_bad_message_is_reported_and_the_good_ones_kept():
    intake = RecordingIntake()
    async with FakeHttpServer(douyin_api({ORDER_A: detail_for(ORDER_A, 105)})) as api, httpx.AsyncClient() as client:
        config = DouyinConfig(credentials=dy.CREDS, api_url=api.url)
        body, headers = push([
            dy.message(101, "m-good", {"p_id": int(ORDER_A), "s_ids": []}),
            {"tag": "106", "msg_id": "m-bad", "data": "{not json"},
            dy.message(106, "m-good-2", {"p_id": int(ORDER_B), "s_ids": []}),
        ])
        reply = await handle_douyin(body, headers, config=config, intake=intake, client=client)
        assert reply.status == 400
        answer = json.loads(reply.body)
        assert answer["code"] == 40000
        assert answer["errors"] == [{"error": "PayloadError", "message": "not valid JSON", "field": "[1].data",
                                     "message_id": "m-bad"}]
        assert set(k[1] for k in intake.inbox) == {"m-good", "m-good-2"}
        assert intake.status("douyin", ORDER_A) is ChannelStatus.PAID


async def test_douyin_wrong_signature_stores_nothing():
    intake = RecordingIntake()
    async with httpx.AsyncClient() as client:
        body, headers = push([dy.PAID])
        headers["event-sign"] = "f" * 32
        reply = await handle_douyin(body, headers, config=DouyinConfig(credentials=dy.CREDS), intake=intake,
                                    client=client)
    assert reply.status == 401 and json.loads(reply.body)["code"] == 40100
    assert intake.calls == []


async def test_douyin_retry_when_the_fetch_or_the_core_fails():
    async def down(request: Request) -> tuple[int, bytes]:
        return 502, b"bad gateway"

    async with FakeHttpServer(down) as api, httpx.AsyncClient() as client:
        intake = RecordingIntake()
        body, headers = push([dy.PAID, dy.CANCELLED])
        reply = await handle_douyin(body, headers, config=DouyinConfig(credentials=dy.CREDS, api_url=api.url),
                                    intake=intake, client=client)
        assert reply.status == 503  # Douyin retries; the cancel was recorded already (idempotent)
        assert [e.message_id for e in intake.calls] == ["m-106"]

    failing = RecordingIntake(fail_on=lambda event: True)
    async with httpx.AsyncClient() as client:
        body, headers = push([dy.CANCELLED])
        reply = await handle_douyin(body, headers, config=DouyinConfig(credentials=dy.CREDS), intake=failing,
                                    client=client)
    assert reply.status == 503


async def test_unconfigured_channel_refuses_instead_of_accepting_unsigned_input():
    async with httpx.AsyncClient() as client:
        reply = await handle_douyin(b"[]", {}, config=None, intake=RecordingIntake(), client=client)
    assert reply.status == 503


# ------------------------------------------------------------------------------ mini-program + WeChat Pay

MP_CONFIG = MiniprogramConfig(push_secret=mpt.PUSH_SECRET, apiv3_key=mpt.APIV3_KEY,
                              platform_public_key_pem=mpt.PUBLIC_PEM)
MP_NOW = datetime.fromtimestamp(mpt.NOW, BJ)


async def test_wechat_pay_notification_marks_the_miniprogram_order_paid():
    intake = RecordingIntake()
    body = json.dumps(mpt.push_body()).encode()
    reply = await handle_miniprogram(body, mpt.signed(body), config=MP_CONFIG, intake=intake,
                                     sku_maps=StaticSkuMap(), now=MP_NOW)
    assert (reply.status, reply.body) == (200, b'{"ok":true}')
    assert intake.status("miniprogram", "MP20240618001") is ChannelStatus.UNPAID

    note = mpt.notification("TRANSACTION.SUCCESS", mpt.TRANSACTION)
    reply = await handle_miniprogram(note, mpt.wechat_headers(note), config=MP_CONFIG, intake=intake, now=MP_NOW)
    assert (reply.status, reply.body) == (204, b"")
    assert intake.status("miniprogram", "MP20240618001") is ChannelStatus.PAID
    assert intake.orders[("miniprogram", "MP20240618001")].paid_amount == 3080

    # WeChat retries the same notification: acknowledged again, nothing changes
    reply = await handle_miniprogram(note, mpt.wechat_headers(note), config=MP_CONFIG, intake=intake, now=MP_NOW)
    assert reply.status == 204 and len(intake.inbox) == 2


async def test_wechat_pay_refusals():
    intake = RecordingIntake()
    body = json.dumps(mpt.push_body()).encode()
    await handle_miniprogram(body, mpt.signed(body), config=MP_CONFIG, intake=intake, now=MP_NOW)

    wrong_amount = mpt.TRANSACTION | {"amount": {"total": 1, "payer_total": 1, "currency": "CNY"}}
    note = mpt.notification("TRANSACTION.SUCCESS", wrong_amount, note_id="EV-wrong-amount")
    reply = await handle_miniprogram(note, mpt.wechat_headers(note), config=MP_CONFIG, intake=intake, now=MP_NOW)
    assert reply.status == 400 and json.loads(reply.body)["code"] == "FAIL"
    assert intake.status("miniprogram", "MP20240618001") is ChannelStatus.UNPAID

    note = mpt.notification("TRANSACTION.SUCCESS", mpt.TRANSACTION, note_id="EV-forged")
    headers = mpt.wechat_headers(note)
    reply = await handle_miniprogram(note.replace(b"EV-forged", b"EV-forgeD"), headers, config=MP_CONFIG,
                                     intake=intake, now=MP_NOW)
    assert reply.status == 401 and json.loads(reply.body) == {"code": "FAIL", "message":
                                                              "wechatpay: signature does not match"}
    assert ("miniprogram", "EV-forgeD") not in intake.inbox

    stale = await handle_miniprogram(note, headers, config=MP_CONFIG, intake=intake,
                                     now=MP_NOW + timedelta(minutes=6))
    assert stale.status == 401

    unconfigured = await handle_miniprogram(note, headers, config=None, intake=intake, now=MP_NOW)
    assert unconfigured.status == 503 and json.loads(unconfigured.body)["code"] == "FAIL"


async def test_miniprogram_push_refusals_name_the_field():
    intake = RecordingIntake()
    body = json.dumps(mpt.push_body(total_fen="30.80")).encode()
    reply = await handle_miniprogram(body, mpt.signed(body), config=MP_CONFIG, intake=intake, now=MP_NOW)
    assert reply.status == 400 and json.loads(reply.body)["field"] == "body.order.total_fen"
    reply = await handle_miniprogram(body, {"X-OMS-Signature": "00", "X-OMS-Timestamp": "1"}, config=MP_CONFIG,
                                     intake=intake, now=MP_NOW)
    assert reply.status == 401
    assert intake.calls == []


# ------------------------------------------------------------------------------ relays


def top_api(trade: dict):
    async def handler(request: Request) -> tuple[int, bytes]:
        form = request.form()
        if form.get("sign") != tmt.independent_top_md5(form, tmt.APP_SECRET):
            return 200, json.dumps({"error_response": {"code": 25, "msg": "Invalid signature"}}).encode()
        return 200, json.dumps(trade, ensure_ascii=False).encode()
    return handler


async def test_tmall_relay_fetches_the_trade_and_records_it():
    intake = RecordingIntake()
    async with FakeHttpServer(top_api(tmt.trade_json())) as top, httpx.AsyncClient() as client:
        config = TmallConfig(credentials=tmt.CREDS, top_url=top.url + "/router/rest")
        reply = await handle_tmall_relay(tmt.RELAYED, tmt.relay(tmt.RELAYED), config=config, intake=intake,
                                         client=client, now=tmt.NOW)
        assert (reply.status, reply.body) == (200, b'{"success":true}')
        assert top.requests[0].path == "/router/rest"
        assert top.requests[0].form()["method"] == "taobao.trade.fullinfo.get"
        event = intake.calls[0]
        assert event.message_id == "8000000000777" and event.order.external_id == "2231958349123456789"
        assert intake.status("tmall", "2231958349123456789") is ChannelStatus.PAID

        bad = await handle_tmall_relay(tmt.RELAYED, tmt.relay(tmt.RELAYED, secret="x"), config=config,
                                       intake=intake, client=client, now=tmt.NOW)
        assert bad.status == 401 and len(intake.calls) == 1


async def test_jd_relay_fetches_the_order_and_keeps_the_relay_message_id():
    intake = RecordingIntake()

    async def jos(request: Request) -> tuple[int, bytes]:
        form = request.form()
        concat = "".join(k + form[k] for k in sorted(form) if k != "sign")
        assert form["sign"] == hashlib.md5(f"jd-secret{concat}jd-secret".encode()).hexdigest().upper()
        assert form["method"] == "jingdong.pop.order.get"
        order = jdt.order_json(orderId=json.loads(form["360buy_param_json"])["order_id"], orderState="TRADE_CANCELED")
        return 200, json.dumps({"jingdong_pop_order_get_responce": {"code": "0", "orderDetailInfo": {
            "orderInfo": order}}}, ensure_ascii=False).encode()

    async with FakeHttpServer(jos) as api, httpx.AsyncClient() as client:
        config = JdConfig(credentials=jdt.CREDS, api_url=api.url + "/routerjson")
        body = urlencode(jdt.relay_form({"orderId": "305512345678", "orderState": "TRADE_CANCELED",
                                         "msgId": "jd-msg-1"})).encode()
        reply = await handle_jd_relay(body, config=config, intake=intake, client=client, now=jdt.NOW)
        assert (reply.status, reply.body) == (200, b'{"success":true}')
        event = intake.calls[0]
        assert event.message_id == "jd-msg-1" and event.raw == body
        assert intake.status("jd", "305512345678") is ChannelStatus.CANCELLED
        stale = await handle_jd_relay(urlencode(jdt.relay_form({"orderId": "1"}, when=jdt.NOW - timedelta(hours=2)))
                                      .encode(), config=config, intake=intake, client=client, now=jdt.NOW)
        assert stale.status == 401


@pytest.mark.parametrize("handler", ["douyin", "tmall", "jd"])
async def test_rejections_are_logged_without_buyer_data(handler, caplog):
    caplog.set_level("WARNING", logger="oms.channels.rejected")
    async with httpx.AsyncClient() as client:
        if handler == "douyin":
            body, headers = push([{"tag": "101", "msg_id": "m-log", "data": json.dumps({"s_ids": [],
                                                                                         "phone": "13800001234"})}])
            await handle_douyin(body, headers, config=DouyinConfig(credentials=dy.CREDS), intake=RecordingIntake(),
                                client=client)
            expected_id = "m-log"
        elif handler == "tmall":
            await handle_tmall_relay(tmt.RELAYED, tmt.relay(tmt.RELAYED, secret="x"),
                                     config=TmallConfig(credentials=tmt.CREDS), intake=RecordingIntake(),
                                     client=client, now=tmt.NOW)
            expected_id = "-"
        else:
            await handle_jd_relay(b"app_key=jd-app&sign=00&timestamp=x", config=JdConfig(credentials=jdt.CREDS),
                                  intake=RecordingIntake(), client=client, now=jdt.NOW)
            expected_id = "-"
    (record,) = [r for r in caplog.records if r.name == "oms.channels.rejected"]
    assert f"rejected {handler} message {expected_id}" in record.getMessage()
    assert "13800001234" not in record.getMessage()


async def test_unavailable_sku_mapping_table_asks_for_a_retry_not_a_500():
    class Broken:
        async def sku_map(self, channel):
            raise ConnectionError("database down")

    intake = RecordingIntake()
    async with FakeHttpServer(douyin_api({ORDER_A: detail_for(ORDER_A, 105)})) as api, httpx.AsyncClient() as client:
        body, headers = push([dy.PAID])
        reply = await handle_douyin(body, headers, config=DouyinConfig(credentials=dy.CREDS, api_url=api.url),
                                    intake=intake, client=client, sku_maps=Broken())
    assert reply.status == 503 and intake.calls == []
    body = json.dumps(mpt.push_body()).encode()
    reply = await handle_miniprogram(body, mpt.signed(body), config=MP_CONFIG, intake=intake, sku_maps=Broken(),
                                     now=MP_NOW)
    assert reply.status == 503 and intake.calls == []
