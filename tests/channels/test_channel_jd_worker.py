"""The JD poller against a fake JOS server on 127.0.0.1, with a watermark that survives restarts.

The fake JOS checks the signature, filters its orders by modified time within the requested
window (dateType 0), sorts them and pages them, answering in jingdong.pop.order.search's shape.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "adapters"))

import test_adapter_jd as jdt  # noqa: E402
from channel_fakes import FakeHttpServer, RecordingIntake, Request  # noqa: E402

from adapters.normalized import ChannelStatus  # noqa: E402
from oms.channels.backoff import Backoff  # noqa: E402
from oms.channels.config import JdConfig  # noqa: E402
from oms.channels.jd_worker import WATERMARK_KEY, InMemoryWatermarkStore, JdPoller  # noqa: E402

BJ = timezone(timedelta(hours=8))


def at(hh: int, mm: int, ss: int = 0) -> datetime:
    return datetime(2024, 6, 18, hh, mm, ss, tzinfo=BJ)


class FakeJos:
    def __init__(self) -> None:
        self.orders: dict[str, dict] = {}
        self.searches: list[dict] = []
        self.after_first_page = None  # hook to change data between pages

    def put(self, order_id: str, modified: datetime, **fields) -> None:
        self.orders[order_id] = jdt.order_json(orderId=order_id, modified=modified.strftime("%Y-%m-%d %H:%M:%S"),
                                               **fields)

    async def handler(self, request: Request) -> tuple[int, bytes]:
        form = request.form()
        concat = "".join(k + form[k] for k in sorted(form) if k != "sign")
        if form.get("sign") != hashlib.md5(f"jd-secret{concat}jd-secret".encode()).hexdigest().upper():
            return 200, json.dumps({"error_response": {"code": "19", "en_desc": "sign error"}}).encode()
        query = json.loads(form["360buy_param_json"])
        self.searches.append(query)
        assert query["dateType"] == "0"
        page, size = int(query["page"]), int(query["page_size"])
        hits = sorted(
            (o for o in self.orders.values() if query["start_date"] <= o["modified"] <= query["end_date"]),
            key=lambda o: (o["modified"], o["orderId"]),
        )
        chunk = hits[(page - 1) * size: page * size]
        if page == 1 and self.after_first_page is not None:
            hook, self.after_first_page = self.after_first_page, None
            hook(self)
        return 200, jdt.search_body(chunk, total=len(hits))


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def poller(api: FakeHttpServer, intake, store, clock: Clock, client: httpx.AsyncClient, page_size: int = 2) -> JdPoller:
    config = JdConfig(credentials=jdt.CREDS, api_url=api.url + "/routerjson", poll_interval_s=0.05,
                      poll_overlap_s=300)
    return JdPoller(config, intake, store, client=client, page_size=page_size, clock=clock,
                    initial_lookback=timedelta(hours=1), backoff=Backoff(initial=0.01, maximum=0.02))


async def test_restart_neither_misses_nor_repeats_orders():
    jos = FakeJos()
    for order_id, minute in (("A", 30), ("B", 45), ("C", 50)):
        jos.put(order_id, at(9, minute))
    store = InMemoryWatermarkStore()
    clock = Clock(at(10, 0))
    healthy = RecordingIntake()
    crashing = RecordingIntake(fail_on=lambda e: e.external_id == "C")
    async with FakeHttpServer(jos.handler) as api, httpx.AsyncClient() as client:
        # first process: the core fails on C mid-window -> the poll fails, the watermark stays
        with pytest.raises(RuntimeError):
            await poller(api, crashing, store, clock, client).poll_once()
        assert await store.get(WATERMARK_KEY) is None
        assert {e.external_id for e in crashing.calls} == {"A", "B", "C"}

        # restart: the same window is read again; C is handed over, A/B again (same message ids)
        healthy.inbox.update(crashing.inbox)  # the core's inbox persisted what it had accepted
        healthy.orders.update(crashing.orders)
        healthy.created.extend(crashing.created)
        report = await poller(api, healthy, store, clock, client).poll_once()
        assert report.handled == 3 and report.pages == 2
        assert await store.get(WATERMARK_KEY) == at(10, 0)

        # ten minutes later: a new order D, an order E that JD indexed late (modified just before
        # the watermark), and A cancelled
        clock.now = at(10, 10)
        jos.put("D", at(10, 5))
        jos.put("E", at(9, 58))
        jos.put("A", at(10, 8), orderState="TRADE_CANCELED")
        report = await poller(api, healthy, store, clock, client).poll_once()  # another restart
        assert report.start == at(9, 55) and report.end == at(10, 10)
        assert await store.get(WATERMARK_KEY) == at(10, 10)

    assert sorted(healthy.created) == [("jd", x) for x in "ABCDE"]  # no miss, one order each
    assert len(set(healthy.created)) == len(healthy.created)  # no repeat
    assert healthy.status("jd", "A") is ChannelStatus.CANCELLED
    assert healthy.status("jd", "E") is ChannelStatus.PAID
    assert ("jd", "A@2024-06-18 10:08:00") in healthy.inbox and ("jd", "A@2024-06-18 09:30:00") in healthy.inbox
    # every search asked for the right window by modified time
    assert jos.searches[0]["start_date"] == "2024-06-18 08:55:00"
    assert jos.searches[-1]["end_date"] == "2024-06-18 10:10:00"


async def test_malformed_order_is_skipped_without_blocking_the_watermark():
    jos = FakeJos()
    jos.put("good", at(9, 30))
    jos.put("bad", at(9, 31), orderPayment="4,170.00")
    store = InMemoryWatermarkStore()
    intake = RecordingIntake()
    async with FakeHttpServer(jos.handler) as api, httpx.AsyncClient() as client:
        report = await poller(api, intake, store, Clock(at(10, 0)), client).poll_once()
    assert report.handled == 1 and report.refused == 1
    assert [k[1] for k in intake.created] == ["good"]
    assert await store.get(WATERMARK_KEY) == at(10, 0)


async def test_window_is_read_again_when_results_shift_while_paging():
    jos = FakeJos()
    for i in range(5):
        jos.put(f"O{i}", at(9, 30 + i))

    def move_first_out(fake: FakeJos) -> None:
        fake.put("O0", at(11, 0))  # modified again: leaves the window, pages shift by one

    jos.after_first_page = move_first_out
    intake = RecordingIntake()
    async with FakeHttpServer(jos.handler) as api, httpx.AsyncClient() as client:
        await poller(api, intake, InMemoryWatermarkStore(), Clock(at(10, 0)), client).poll_once()
    # O2 slid from page 2 onto page 1 after page 1 was read; the second pass still finds it
    assert {k[1] for k in intake.created} == {f"O{i}" for i in range(5)}


async def test_run_polls_until_stopped_and_survives_a_jos_outage():
    jos = FakeJos()
    jos.put("A", at(9, 30))
    down = {"until": 2}

    async def flaky(request: Request) -> tuple[int, bytes]:
        if down["until"] > 0:
            down["until"] -= 1
            return 503, b"busy"
        return await jos.handler(request)

    intake = RecordingIntake()
    store = InMemoryWatermarkStore()
    async with FakeHttpServer(flaky) as api, httpx.AsyncClient() as client:
        worker = poller(api, intake, store, Clock(at(10, 0)), client)
        task = asyncio.create_task(worker.run())

        async def wait() -> None:
            while await store.get(WATERMARK_KEY) is None:
                await asyncio.sleep(0.01)
        await asyncio.wait_for(wait(), 5)
        worker.stop()
        await asyncio.wait_for(task, 5)
    assert intake.status("jd", "A") is ChannelStatus.PAID
    assert down["until"] == 0


async def test_bad_credentials_are_an_upstream_error_and_keep_the_watermark():
    jos = FakeJos()
    jos.put("A", at(9, 30))
    store = InMemoryWatermarkStore()
    async with FakeHttpServer(jos.handler) as api, httpx.AsyncClient() as client:
        config = JdConfig(credentials=jdt.CREDS.__class__(app_key="jd-app", app_secret="wrong"),
                          api_url=api.url + "/routerjson")
        from adapters.errors import UpstreamError

        with pytest.raises(UpstreamError):
            await JdPoller(config, RecordingIntake(), store, client=client, clock=Clock(at(10, 0))).poll_once()
    assert await store.get(WATERMARK_KEY) is None
