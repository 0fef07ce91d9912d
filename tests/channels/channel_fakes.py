"""Test doubles for the channel tests: a tiny HTTP server on 127.0.0.1 and a recording Intake.

The HTTP server is real (asyncio streams, HTTP/1.1 with keep-alive), so the fetch code under
test makes genuine network calls with httpx to a configurable base URL.
The RecordingIntake stands in for the core's inbox + order store with the same idempotency
rules (inbox unique per channel message id, order unique per channel order id, no status
regression) — it is not a stand-in for PostgreSQL/Redis, only for the Protocol's contract.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from adapters.miniprogram import check_paid_amount
from adapters.errors import AdapterError
from adapters.normalized import ChannelEvent, ChannelEventKind, ChannelStatus, NormalizedOrder
from oms.channels.ports import IntakeError


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode("utf-8"), keep_blank_values=True))


Handler = Callable[[Request], Awaitable[tuple[int, bytes]]]


class FakeHttpServer:
    """Serve `handler` on 127.0.0.1:<free port>; records every request."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeHttpServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                parts = urlsplit(target)
                request = Request(method, parts.path, dict(parse_qsl(parts.query, keep_blank_values=True)), headers, body)
                self.requests.append(request)
                status, payload = await self.handler(request)
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()


@dataclass
class StoredOrder:
    order: NormalizedOrder | None
    status: ChannelStatus | None
    refunded_lines: set[str] = field(default_factory=set)
    paid_amount: int | None = None


class RecordingIntake:
    """Idempotent like the core: one inbox row per (channel, message id), one order per
    (channel, external id), statuses never move back."""

    def __init__(self, fail_on: Callable[[ChannelEvent], bool] | None = None) -> None:
        self.inbox: dict[tuple[str, str], ChannelEvent] = {}
        self.orders: dict[tuple[str, str], StoredOrder] = {}
        self.calls: list[ChannelEvent] = []
        self.created: list[tuple[str, str]] = []  # one entry per order creation
        self.fail_on = fail_on

    async def handle(self, event: ChannelEvent) -> None:
        self.calls.append(event)
        if self.fail_on is not None and self.fail_on(event):
            raise RuntimeError("simulated core failure")
        key = (event.channel.value, event.message_id)
        if key in self.inbox:
            return  # duplicate delivery: nothing happens twice
        order_key = (event.channel.value, event.external_id)
        stored = self.orders.get(order_key)
        if event.kind is ChannelEventKind.STATUS and event.amount_fen is not None and event.status is ChannelStatus.PAID:
            if stored is None or stored.order is None:
                raise IntakeError(404, "payment for an unknown order")
            try:
                check_paid_amount(event, stored.order)
            except AdapterError as exc:
                raise IntakeError(400, exc.message, field=exc.field) from None
            stored.paid_amount = event.amount_fen
        self.inbox[key] = event
        if event.kind is ChannelEventKind.IGNORE:
            return
        if stored is None:
            stored = StoredOrder(order=event.order, status=None)
            self.orders[order_key] = stored
            self.created.append(order_key)
        if event.order is not None and (stored.order is None or _newer(event.order, stored.order)):
            stored.order = event.order
        new_status = event.status or (event.order.status if event.order else None)
        if event.kind is ChannelEventKind.CANCEL:
            new_status = ChannelStatus.CANCELLED
        if event.kind is ChannelEventKind.REFUND_LINES:
            stored.refunded_lines.update(event.refunded_line_ids)
        if new_status is not None and (stored.status is None or new_status.rank > stored.status.rank):
            stored.status = new_status

    def status(self, channel: str, external_id: str) -> ChannelStatus | None:
        stored = self.orders.get((channel, external_id))
        return stored.status if stored else None


def _newer(candidate: NormalizedOrder, current: NormalizedOrder) -> bool:
    if candidate.updated_at and current.updated_at:
        return candidate.updated_at >= current.updated_at
    return True
