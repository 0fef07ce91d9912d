"""End to end against the fake platform servers: build -> send with httpx over a real socket ->
the fake verifies and applies -> parse. Also checks the fakes themselves refuse bad requests."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from outbound_helpers import NOW  # noqa: E402

from adapters.outbound import douyin, jd, tmall, wechat  # noqa: E402
from adapters.outbound.carriers import Carrier  # noqa: E402
from adapters.outbound.common import (  # noqa: E402
    OutcomeKind,
    Parcel,
    ParcelLine,
    RetailStore,
    StockLevel,
    outcome_after_check,
)
from adapters.tmall import TmallCredentials  # noqa: E402
from tests.fakes.platforms import FakeDouyin, FakeJd, FakeTmall, FakeWechat, send  # noqa: E402

TID = "4000000000000000001"
STORE = RetailStore(store_id="S-0042", kind="STORE")


@pytest.fixture
async def client():
    async with httpx.AsyncClient(timeout=2.0) as c:
        yield c


# ---------------------------------------------------------------- Tmall


async def test_tmall_stock_full_values(client):
    async with FakeTmall() as fake:
        item = tmall.build_item_quantity_update(fake.creds, num_iid="600", sku_id="5001", quantity=9, now=NOW,
                                                base_url=fake.url)
        assert tmall.parse_item_quantity_update(*await send(client, item)).kind is OutcomeKind.ACCEPTED
        levels = [StockLevel(platform_sku_id=str(7000 + i), quantity=i) for i in range(45)]
        for req in tmall.build_skus_quantity_update(fake.creds, num_iid="601", levels=levels, now=NOW, base_url=fake.url):
            assert tmall.parse_skus_quantity_update(*await send(client, req)).kind is OutcomeKind.ACCEPTED
        assert fake.listings[("600", "5001")] == 9
        assert all(fake.listings[("601", str(7000 + i))] == i for i in range(45))
        assert len(fake.calls("taobao.skus.quantity.update")) == 3 and fake.problems == []


async def test_tmall_omnichannel_shipment_names_the_store(client):
    async with FakeTmall(omnichannel=True) as fake:
        fake.add_trade(TID, oids=["11"])
        req = tmall.build_offline_send(fake.creds, tid=TID, carrier=Carrier.SF, out_sid="SF1", store=STORE, now=NOW,
                                       base_url=fake.url)
        assert tmall.parse_offline_send(*await send(client, req)).kind is OutcomeKind.ACCEPTED
        assert fake.accepted == {TID: 1}
        assert fake.trades[TID].shipments[0]["feature"] == "retailStoreId=S-0042;retailStoreType=STORE"
        assert fake.problems == []
        # the fake enforces the store fields for omnichannel shops
        fake.add_trade("4000000000000000002")
        bare = tmall.build_offline_send(fake.creds, tid="4000000000000000002", carrier=Carrier.SF, out_sid="SF2",
                                        now=NOW, base_url=fake.url)
        assert tmall.parse_offline_send(*await send(client, bare)).kind is OutcomeKind.REJECTED
        assert fake.problems and "retailStoreId" in fake.problems[0]


async def test_tmall_lost_reply_then_b04_then_state_says_shipped(client):
    async with FakeTmall() as fake:
        fake.add_trade(TID, oids=["11", "12"])
        fake.lose_reply_next(call="taobao.logistics.offline.send")
        req = tmall.build_offline_send(fake.creds, tid=TID, carrier=Carrier.ZTO, out_sid="ZT1", now=NOW, base_url=fake.url)
        assert tmall.parse_offline_send(*await send(client, req)).kind is OutcomeKind.RETRYABLE
        again = tmall.parse_offline_send(*await send(client, req))
        assert again.kind is OutcomeKind.CHECK_STATE and again.code.endswith(":B04")
        check = tmall.parse_trade_state(*await send(client, tmall.build_trade_state(fake.creds, tid=TID, now=NOW,
                                                                                    base_url=fake.url)))
        assert outcome_after_check(check).kind is OutcomeKind.ALREADY_SHIPPED
        assert fake.accepted == {TID: 1} and fake.problems == []


async def test_tmall_closed_trade_is_intercepted(client):
    async with FakeTmall() as fake:
        fake.add_trade(TID)
        fake.close_trade(TID)
        out = tmall.parse_offline_send(*await send(client, tmall.build_offline_send(
            fake.creds, tid=TID, carrier=Carrier.SF, out_sid="SF1", now=NOW, base_url=fake.url)))
        assert out.kind is OutcomeKind.CHECK_STATE
        check = tmall.parse_trade_state(*await send(client, tmall.build_trade_state(fake.creds, tid=TID, now=NOW,
                                                                                    base_url=fake.url)))
        assert outcome_after_check(check).kind is OutcomeKind.INTERCEPTED and fake.accepted == {}


async def test_tmall_rate_limit_failures_and_business_error(client):
    async with FakeTmall() as fake:
        fake.add_trade(TID)
        req = tmall.build_dummy_send(fake.creds, tid=TID, store=STORE, now=NOW, base_url=fake.url)
        fake.rate_limit_next(seconds=2)
        fake.fail_next(2, status=503)
        fake.business_error_next(code="isv.logistics-dummy-service-error:B98", message="发货类型不匹配")
        limited = tmall.parse_dummy_send(*await send(client, req))
        assert limited.kind is OutcomeKind.RATE_LIMITED and limited.retry_after == 2
        assert [tmall.parse_dummy_send(*await send(client, req)).kind for _ in range(2)] == [OutcomeKind.RETRYABLE] * 2
        rejected = tmall.parse_dummy_send(*await send(client, req))
        assert rejected.kind is OutcomeKind.REJECTED and rejected.message == "发货类型不匹配"
        assert tmall.parse_dummy_send(*await send(client, req)).kind is OutcomeKind.ACCEPTED
        assert fake.accepted == {TID: 1} and len(fake.requests) == 5


async def test_tmall_split_parcels_from_two_nodes(client):
    async with FakeTmall(omnichannel=True) as fake:
        fake.add_trade(TID, oids=["11", "12"])
        first = tmall.build_ascp_offline_send(fake.creds, tid=TID, store=STORE, now=NOW, base_url=fake.url, parcels=[
            Parcel(carrier=Carrier.SF, tracking_no="SF1", lines=(ParcelLine(platform_line_id="11", quantity=1),))])
        assert tmall.parse_ascp_offline_send(*await send(client, first)).kind is OutcomeKind.ACCEPTED
        assert fake.trades[TID].status == "SELLER_CONSIGNED_PART"
        check = tmall.parse_trade_state(*await send(client, tmall.build_trade_state(fake.creds, tid=TID, now=NOW,
                                                                                    base_url=fake.url)))
        assert outcome_after_check(check, ["11"]).kind is OutcomeKind.ALREADY_SHIPPED
        assert outcome_after_check(check, ["12"]).kind is OutcomeKind.RETRYABLE
        second = tmall.build_ascp_offline_send(
            fake.creds, tid=TID, store=RetailStore(store_id="W-1", kind="WAREHOUSE"), now=NOW, base_url=fake.url,
            parcels=[Parcel(carrier=Carrier.ZTO, tracking_no="ZT2", lines=(ParcelLine(platform_line_id="12", quantity=2),))])
        assert tmall.parse_ascp_offline_send(*await send(client, second)).kind is OutcomeKind.ACCEPTED
        assert fake.trades[TID].status == "WAIT_BUYER_CONFIRM_GOODS" and fake.problems == []


async def test_tmall_slow_reply_times_out_but_the_call_took_effect(client):
    async with FakeTmall() as fake, httpx.AsyncClient(timeout=0.2) as impatient:
        fake.add_trade(TID)
        fake.delay_next(0.5)
        req = tmall.build_offline_send(fake.creds, tid=TID, carrier=Carrier.SF, out_sid="SF1", now=NOW, base_url=fake.url)
        status, body = await send(impatient, req)
        assert status == 0 and tmall.parse_offline_send(status, body).kind is OutcomeKind.RETRYABLE
        import asyncio

        await asyncio.sleep(0.5)
        assert fake.accepted == {TID: 1}  # the platform did it; a retry must then read the state


async def test_tmall_fake_checks_the_signature(client):
    async with FakeTmall() as fake:
        wrong = TmallCredentials(app_key=fake.creds.app_key, app_secret="not-the-secret", session=fake.creds.session)
        req = tmall.build_item_quantity_update(wrong, num_iid="1", quantity=1, now=NOW, base_url=fake.url)
        out = tmall.parse_item_quantity_update(*await send(client, req))
        assert out.kind is OutcomeKind.REJECTED and out.code == "25"
        assert fake.problems == ["taobao.item.quantity.update: signature mismatch"] and fake.listings == {}


# ---------------------------------------------------------------- JD


async def test_jd_stock_per_sku_and_rate_limit(client):
    async with FakeJd() as fake:
        fake.unknown_skus = {100002}
        levels = [StockLevel(platform_sku_id="100001", quantity=4), StockLevel(platform_sku_id="100002", quantity=1)]
        req = jd.build_stock_set(fake.creds, levels=levels, stock_ref="oms-1", store_id="88", now=NOW, base_url=fake.url)
        fake.rate_limit_next()
        assert jd.parse_stock_set(*await send(client, req)).kind is OutcomeKind.RATE_LIMITED
        out = jd.parse_stock_set(*await send(client, req))
        assert out.kind is OutcomeKind.PARTIAL and out.failed == ("100002",)
        assert fake.stock == {(100001, 88): 4} and fake.stock_refs == ["oms-1"] and fake.problems == []


async def test_jd_reshipment_is_checked_not_doubled(client):
    async with FakeJd() as fake:
        fake.add_order("230000000001")
        req = jd.build_shipment(fake.creds, order_id="230000000001", now=NOW, base_url=fake.url,
                                waybills=[jd.Waybill(carrier=Carrier.SF, tracking_no="SF1")])
        fake.lose_reply_next()
        assert jd.parse_shipment(*await send(client, req)).kind is OutcomeKind.RETRYABLE
        assert jd.parse_shipment(*await send(client, req)).kind is OutcomeKind.CHECK_STATE
        check = jd.parse_order_state(*await send(client, jd.build_order_state(
            fake.creds, order_id="230000000001", now=NOW, base_url=fake.url)))
        assert outcome_after_check(check).kind is OutcomeKind.ALREADY_SHIPPED
        assert fake.accepted == {"230000000001": 1} and fake.problems == []


async def test_jd_self_delivery(client):
    async with FakeJd() as fake:
        fake.add_order("230000000002")
        req = jd.build_self_delivery(fake.creds, order_id="230000000002", now=NOW, base_url=fake.url)
        assert jd.parse_shipment(*await send(client, req)).kind is OutcomeKind.ACCEPTED
        assert fake.orders["230000000002"].shipments == [{"logiCoprId": "1274", "logiNo": ""}]


# ---------------------------------------------------------------- Douyin

ORDER = "6920000000000000001"


async def test_douyin_store_stock(client):
    async with FakeDouyin() as fake:
        one = douyin.build_sync_stock(fake.creds, sku_id="1737398770243598", quantity=6, idempotent_id="a1",
                                      store_id="9001", now=NOW, base_url=fake.url)
        assert douyin.parse_sync_stock(*await send(client, one)).kind is OutcomeKind.ACCEPTED
        batch = douyin.build_sync_stock_batch(fake.creds, product_id="3539925204033339668", idempotent_id="b1",
                                              levels=[StockLevel(platform_sku_id="11", quantity=2)], now=NOW,
                                              base_url=fake.url)
        assert douyin.parse_sync_stock_batch(*await send(client, batch)).kind is OutcomeKind.ACCEPTED
        assert fake.stock == {(1737398770243598, 9001): 6, (11, None): 2} and fake.problems == []


async def test_douyin_refund_pending_is_intercepted(client):
    async with FakeDouyin() as fake:
        fake.add_order(ORDER, {"6920000000000000002": 1})
        fake.set_refund_pending(ORDER)
        req = douyin.build_logistics_add(fake.creds, order_id=ORDER, carrier=Carrier.SF, tracking_no="SF1", now=NOW,
                                         base_url=fake.url)
        out = douyin.parse_logistics_add(*await send(client, req))
        assert out.kind is OutcomeKind.INTERCEPTED and out.code == "isv.business-failed:60040"
        assert fake.accepted == {} and fake.problems == []


async def test_douyin_lost_reply_then_already_shipped(client):
    async with FakeDouyin() as fake:
        fake.add_order(ORDER, {"6920000000000000002": 1}, store_id=9001)
        req = douyin.build_logistics_add(fake.creds, order_id=ORDER, carrier=Carrier.SF, tracking_no="SF1",
                                         store_id="9001", now=NOW, base_url=fake.url)
        fake.lose_reply_next()
        assert douyin.parse_logistics_add(*await send(client, req)).kind is OutcomeKind.RETRYABLE
        again = douyin.parse_logistics_add(*await send(client, req))
        assert again.kind is OutcomeKind.ALREADY_SHIPPED and again.done
        assert fake.accepted == {ORDER: 1}
        # an hourly-delivery order shipped without its store is refused
        fake.add_order("6920000000000000009", {"1": 1}, store_id=9001)
        bare = douyin.build_logistics_add(fake.creds, order_id="6920000000000000009", carrier=Carrier.SF,
                                          tracking_no="SF2", now=NOW, base_url=fake.url)
        assert douyin.parse_logistics_add(*await send(client, bare)).kind is OutcomeKind.REJECTED


async def test_douyin_multi_pack_request_id_dedupes(client):
    async with FakeDouyin() as fake:
        fake.add_order(ORDER, {"21": 1, "22": 2})
        parcels = [Parcel(carrier=Carrier.SF, tracking_no="SF1", lines=(ParcelLine(platform_line_id="21", quantity=1),)),
                   Parcel(carrier=Carrier.ZTO, tracking_no="ZT2", lines=(ParcelLine(platform_line_id="22", quantity=2),))]
        req = douyin.build_logistics_add_multi_pack(fake.creds, order_id=ORDER, parcels=parcels, request_id="oms-ship-9",
                                                    now=NOW, base_url=fake.url)
        fake.lose_reply_next()
        assert douyin.parse_logistics_add_multi_pack(*await send(client, req)).kind is OutcomeKind.RETRYABLE
        out = douyin.parse_logistics_add_multi_pack(*await send(client, req))
        assert out.kind is OutcomeKind.ACCEPTED and out.refs == ("PK1", "PK2")
        assert fake.accepted == {ORDER: 1} and fake.orders[ORDER].status == 3
        fake.rate_limit_next()
        assert douyin.parse_logistics_add_multi_pack(*await send(client, req)).kind is OutcomeKind.RATE_LIMITED
        assert fake.problems == []


# ---------------------------------------------------------------- WeChat

TX = "4200002990202601226107283773"


async def test_wechat_payment_not_yet_visible_then_accepted(client):
    async with FakeWechat() as fake:
        fake.add_payment(TX, openid="o-payer", not_found_lookups=1)
        req = wechat.build_upload_shipping_info(
            "wx-token", order_key=wechat.WechatOrderKey(transaction_id=TX), logistics_type=wechat.LogisticsType.SAME_CITY,
            shipping=[wechat.WechatShipment(item_desc="鲜牛奶*2")], payer_openid="o-payer", upload_time=NOW,
            base_url=fake.url)
        first = wechat.parse_upload_shipping_info(*await send(client, req))
        assert first.kind is OutcomeKind.RETRYABLE and first.retry_after == 60
        assert wechat.parse_upload_shipping_info(*await send(client, req)).kind is OutcomeKind.ACCEPTED
        check = wechat.parse_get_order(*await send(client, wechat.build_get_order(
            "wx-token", order_key=wechat.WechatOrderKey(transaction_id=TX), base_url=fake.url)))
        assert outcome_after_check(check).kind is OutcomeKind.ALREADY_SHIPPED
        assert fake.accepted == {TX: 1} and fake.problems == []


async def test_wechat_express_split_rate_limit_and_bad_token(client):
    async with FakeWechat() as fake:
        fake.add_payment("1620153222/A1")
        key = wechat.WechatOrderKey(mchid="1620153222", out_trade_no="A1")
        req = wechat.build_upload_shipping_info(
            "wx-token", order_key=key, logistics_type=wechat.LogisticsType.EXPRESS, payer_openid="o-payer",
            upload_time=NOW, is_all_delivered=True, base_url=fake.url,
            shipping=[wechat.WechatShipment(item_desc="A", carrier=Carrier.ZTO, tracking_no="Z1"),
                      wechat.WechatShipment(item_desc="B", carrier=Carrier.YTO, tracking_no="Y2")])
        fake.rate_limit_next()
        assert wechat.parse_upload_shipping_info(*await send(client, req)).kind is OutcomeKind.RATE_LIMITED
        assert wechat.parse_upload_shipping_info(*await send(client, req)).kind is OutcomeKind.ACCEPTED
        assert fake.payments["1620153222/A1"].uploads[0]["delivery_mode"] == 2
        bad = wechat.build_upload_shipping_info(
            "stale-token", order_key=key, logistics_type=wechat.LogisticsType.PICKUP, payer_openid="o-payer",
            upload_time=NOW, shipping=[wechat.WechatShipment(item_desc="A")], base_url=fake.url)
        assert wechat.parse_upload_shipping_info(*await send(client, bad)).kind is OutcomeKind.AUTH_FAILED
        assert fake.problems == ["upload_shipping_info: access_token wrong"] and fake.accepted == {"1620153222/A1": 1}
