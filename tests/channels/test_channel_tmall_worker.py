"""The TMC worker against a fake TMC WebSocket server and a fake TOP HTTP server on 127.0.0.1.

The fake TMC behaves like Taobao's: it checks the connect signature, answers CONNECTACK with a
token, pushes messages as binary frames, keeps every unconfirmed message and sends it again
(on the next pull request or connection) until it is confirmed by id.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from pathlib import Path

from websockets.asyncio.server import serve

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "adapters"))

import test_adapter_tmall as tmt  # noqa: E402
from channel_fakes import FakeHttpServer, RecordingIntake, Request  # noqa: E402

from adapters import tmc  # noqa: E402
from adapters.normalized import ChannelEventKind, ChannelStatus  # noqa: E402
from oms.channels.backoff import Backoff  # noqa: E402
from oms.channels.config import TmallConfig  # noqa: E402
from oms.channels.tmall_worker import TmallWorker  # noqa: E402

T1, T2 = "2231958349123456789", "2231958349000000002"


class FakeTmc:
    def __init__(self, messages: list[tuple[int, str, dict]], *, drop_after_confirms: int | None = None) -> None:
        self.pending: dict[int, bytes] = {}
        for message_id, topic, content in messages:
            self.pending[message_id] = tmc.encode_frame(tmc.Frame(message_type=tmc.MessageType.SEND, headers={
                "__kind": tmc.MessageKind.DATA, "id": message_id, "topic": topic, "content": json.dumps(content),
                "pub_time": tmc.Date(1718676005000), "pub_app_key": "12497914", "user_nick": "shop-a"}))
        self.log: list[tuple[str, str]] = []  # shared with the intake: ("confirmed", id) entries
        self.connects = 0
        self.refused = 0
        self.drop_after_confirms = drop_after_confirms
        self.port = 0

    async def handler(self, ws) -> None:  # noqa: ANN001
        connect = tmc.decode_frame(await ws.recv())
        h = connect.headers
        # the signature, computed here independently of the adapter
        expected = hashlib.md5(f"{tmt.APP_SECRET}app_key{h['app_key']}group_name{h['group_name']}"
                               f"timestamp{h['timestamp']}{tmt.APP_SECRET}".encode()).hexdigest().upper()
        if connect.message_type != tmc.MessageType.CONNECT or h.get("sign") != expected:
            self.refused += 1
            await ws.send(tmc.encode_frame(tmc.Frame(message_type=tmc.MessageType.CONNECTACK, status_code=1,
                                                     status_phrase="invalid sign")))
            await ws.close()
            return
        self.connects += 1
        token = f"token-{self.connects}"
        await ws.send(tmc.encode_frame(tmc.Frame(message_type=tmc.MessageType.CONNECTACK, flag=1, token=token)))
        for frame in list(self.pending.values()):
            await ws.send(frame)
        confirms_here = 0
        async for data in ws:
            frame = tmc.decode_frame(data)
            assert frame.token == token
            kind = frame.headers.get("__kind")
            if kind == tmc.MessageKind.CONFIRM:
                self.pending.pop(frame.headers["id"], None)
                self.log.append(("confirmed", str(frame.headers["id"])))
                confirms_here += 1
                if self.drop_after_confirms is not None and confirms_here >= self.drop_after_confirms \
                        and self.connects == 1:
                    await ws.close()
                    return
            elif kind == tmc.MessageKind.PULL_REQUEST:
                for frame_bytes in list(self.pending.values()):  # redeliver what is unconfirmed
                    await ws.send(frame_bytes)

    async def __aenter__(self) -> FakeTmc:
        self._server = await serve(self.handler, "127.0.0.1", 0).__aenter__()
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._server.__aexit__(None, None, None)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"


def top_server(requests_seen: list[str]):
    async def handler(request: Request) -> tuple[int, bytes]:
        form = request.form()
        assert form["sign"] == tmt.independent_top_md5(form, tmt.APP_SECRET)
        requests_seen.append(form["tid"])
        trade = tmt.trade_json(tid_str=form["tid"], tid=int(form["tid"]))
        return 200, json.dumps(trade, ensure_ascii=False).encode()
    return handler


async def wait_until(condition, timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), timeout)


MESSAGES = [
    (101, "taobao_trade_TradeBuyerPay", {"tid": int(T1), "oid": int(T1), "status": "WAIT_SELLER_SEND_GOODS",
                                         "payment": "45.70", "type": "fixed"}),
    (102, "taobao_trade_TradeClose", {"tid": int(T2), "oid": int(T2), "status": "TRADE_CLOSED_BY_TAOBAO"}),
    (103, "taobao_refund_RefundSuccess", {"tid": int(T1), "oid": "2231958349123456790", "refund_fee": "12.90",
                                          "refund_id": 555, "modified": "2024-06-18 12:00:00"}),
]


async def run_worker(fake: FakeTmc, intake: RecordingIntake, top_url: str, **kw) -> tuple[TmallWorker, asyncio.Task]:
    config = TmallConfig(credentials=kw.pop("creds", tmt.CREDS), top_url=top_url, tmc_url=fake.url)
    worker = TmallWorker(config, intake, backoff=Backoff(initial=0.02, maximum=0.05), pull_interval=0.1, **kw)
    return worker, asyncio.create_task(worker.run())


async def test_messages_are_handled_then_confirmed_and_failures_redelivered():
    attempts: dict[str, int] = {}

    def fail_first_refund(event) -> bool:
        attempts[event.message_id] = attempts.get(event.message_id, 0) + 1
        return event.message_id == "103" and attempts["103"] == 1

    intake = RecordingIntake(fail_on=fail_first_refund)
    fetched: list[str] = []
    async with FakeTmc(MESSAGES) as fake, FakeHttpServer(top_server(fetched)) as top:
        handled_log = fake.log

        original = intake.handle

        async def handle_and_log(event):
            # at the moment the core sees a message, TMC must not have its confirmation yet
            assert ("confirmed", event.message_id) not in handled_log
            await original(event)
            handled_log.append(("handled", event.message_id))

        intake.handle = handle_and_log  # type: ignore[method-assign]
        worker, task = await run_worker(fake, intake, top.url)
        await wait_until(lambda: not fake.pending)
        worker.stop()
        await asyncio.wait_for(task, 5)

    for message_id in ("101", "102", "103"):
        assert handled_log.index(("handled", message_id)) < handled_log.index(("confirmed", message_id))
    assert attempts["103"] == 2  # failed once, unconfirmed, redelivered, then handled
    assert handled_log.count(("confirmed", "103")) == 1
    assert fetched == [T1]  # only the pay message needed the full trade
    assert intake.status("tmall", T1) is ChannelStatus.PAID
    assert intake.orders[("tmall", T1)].order.lines[0].sku == "SKU-TEA-500"
    assert intake.orders[("tmall", T1)].refunded_lines == {"2231958349123456790"}
    assert intake.status("tmall", T2) is ChannelStatus.CANCELLED
    kinds = {e.message_id: e.kind for e in intake.calls}
    assert kinds == {"101": ChannelEventKind.UPSERT, "102": ChannelEventKind.CANCEL,
                     "103": ChannelEventKind.REFUND_LINES}
    assert worker.stats.confirmed == 3 and worker.stats.failed == 1


async def test_worker_reconnects_after_the_connection_drops():
    intake = RecordingIntake()
    async with FakeTmc(MESSAGES, drop_after_confirms=1) as fake, FakeHttpServer(top_server([])) as top:
        worker, task = await run_worker(fake, intake, top.url)
        await wait_until(lambda: not fake.pending)
        worker.stop()
        await asyncio.wait_for(task, 5)
    assert fake.connects >= 2 and worker.stats.connects >= 2
    assert {k[1] for k in intake.inbox} == {"101", "102", "103"}
    assert len(intake.created) == 2  # redelivered messages did not create second orders


async def test_bad_handshake_is_retried_and_stop_ends_the_worker():
    intake = RecordingIntake()
    async with FakeTmc(MESSAGES) as fake, FakeHttpServer(top_server([])) as top:
        bad = tmt.CREDS.__class__(app_key=tmt.APP_KEY, app_secret="wrong-secret", session="s")
        worker, task = await run_worker(fake, intake, top.url, creds=bad)
        await wait_until(lambda: fake.refused >= 2)  # it keeps trying, with backoff
        worker.stop()
        await asyncio.wait_for(task, 5)
    assert worker.stats.connects == 0 and intake.calls == [] and len(fake.pending) == 3


async def test_top_failure_leaves_the_message_unconfirmed():
    async def broken_top(request: Request) -> tuple[int, bytes]:
        return 200, json.dumps({"error_response": {"code": 7, "msg": "App Call Limited", "sub_code": "accesscontrol.limited"}}).encode()

    intake = RecordingIntake()
    async with FakeTmc(MESSAGES[:1]) as fake, FakeHttpServer(broken_top) as top:
        worker, task = await run_worker(fake, intake, top.url)
        await wait_until(lambda: worker.stats.failed >= 2)  # tried, not confirmed, redelivered, tried again
        worker.stop()
        await asyncio.wait_for(task, 5)
    assert 101 in fake.pending and intake.calls == [] and worker.stats.confirmed == 0


async def test_worker_uses_a_real_http_client_when_none_is_given():
    # run() owns and closes its client; nothing to fetch here, only the lifecycle
    intake = RecordingIntake()
    async with FakeTmc(MESSAGES[1:2]) as fake:
        worker, task = await run_worker(fake, intake, "http://127.0.0.1:9")
        await wait_until(lambda: not fake.pending)
        worker.stop()
        await asyncio.wait_for(task, 5)
    assert intake.status("tmall", T2) is ChannelStatus.CANCELLED
