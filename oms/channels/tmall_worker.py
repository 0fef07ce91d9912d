"""Taobao TMC consumer (`oms channels tmall`): the OMS opens the WebSocket, Taobao pushes.

    connect -> CONNECT frame signed with the app secret -> CONNECTACK carries a token
    each pushed message -> route by topic -> fetch the full trade (TOP) when needed
                        -> Intake.handle(event) -> confirm the message by id
A message is confirmed only after the core accepted it; anything that fails stays unconfirmed
and Taobao redelivers it (the core's inbox makes the redelivery harmless). The connection is
re-opened with exponential backoff; `stop()` ends `run()` cleanly.

Usage (the lead's CLI):
    worker = TmallWorker(load_config().tmall, intake, sku_maps=...)
    await worker.run()          # until worker.stop() (e.g. on SIGTERM)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx
import msgspec
import websockets
from websockets.exceptions import WebSocketException

from adapters import tmall, tmc
from adapters.errors import AdapterError
from adapters.normalized import Channel, ChannelEventKind
from oms.channels.backoff import Backoff, sleep_unless
from oms.channels.config import TmallConfig
from oms.channels.fetch import FetchError, fetch_tmall_trade
from oms.channels.ports import Intake, SkuMapSource, StaticSkuMap
from oms.channels.rejections import log_rejection

log = logging.getLogger("oms.channels.tmall")


class HandshakeError(Exception):
    """TMC refused the connection (bad signature, unknown app, group not found...)."""


class WorkerStats(msgspec.Struct, kw_only=True):
    connects: int = 0
    received: int = 0
    handled: int = 0
    confirmed: int = 0
    refused: int = 0  # malformed messages: logged, left unconfirmed
    failed: int = 0  # fetch or intake failures: left unconfirmed for redelivery


class TmallWorker:
    """Consume TMC messages for one app key and group, feeding the core's Intake."""

    def __init__(
        self,
        config: TmallConfig,
        intake: Intake,
        *,
        client: httpx.AsyncClient | None = None,
        sku_maps: SkuMapSource | None = None,
        pull_interval: float = 30.0,
        handshake_timeout: float = 10.0,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.intake = intake
        self.sku_maps = sku_maps or StaticSkuMap()
        self.pull_interval = pull_interval
        self.handshake_timeout = handshake_timeout
        self.backoff = backoff or Backoff()
        self.clock = clock
        self.stats = WorkerStats()
        self._client = client
        self._stop = asyncio.Event()
        self.connected = asyncio.Event()  # set while a handshaken session is open (tests, health)

    def stop(self) -> None:
        """Ask run() to finish: the open connection is closed and no reconnect is made."""
        self._stop.set()

    async def run(self) -> None:
        """Connect, consume, reconnect with backoff, until stop()."""
        client = self._client or httpx.AsyncClient()
        try:
            while not self._stop.is_set():
                try:
                    await self._session(client)
                except (OSError, TimeoutError, WebSocketException, HandshakeError, AdapterError) as exc:
                    log.warning("TMC session ended: %s: %s", type(exc).__name__, exc)
                finally:
                    self.connected.clear()
                if self._stop.is_set():
                    break
                await sleep_unless(self._stop, self.backoff.next())
        finally:
            if self._client is None:
                await client.aclose()

    async def _session(self, client: httpx.AsyncClient) -> None:
        creds = self.config.credentials
        async with websockets.connect(self.config.tmc_url, open_timeout=self.handshake_timeout,
                                      max_size=8 * 1024 * 1024) as ws:
            stamp = int(self.clock() * 1000)
            await ws.send(tmc.connect_frame(creds.app_key, creds.app_secret, self.config.tmc_group, stamp))
            ack = tmc.decode_frame(await asyncio.wait_for(ws.recv(), self.handshake_timeout))
            if ack.message_type != tmc.MessageType.CONNECTACK or ack.status_code not in (None, 0) or not ack.token:
                raise HandshakeError(ack.status_phrase or f"unexpected frame type {ack.message_type}")
            token = ack.token
            self.stats.connects += 1
            self.backoff.reset()
            self.connected.set()
            log.info("TMC connected (group %s)", self.config.tmc_group)
            watchers = [
                asyncio.create_task(self._close_on_stop(ws)),
                asyncio.create_task(self._pull_loop(ws, token)),
            ]
            try:
                async for data in ws:
                    await self._on_frame(ws, token, data, client)
            finally:
                for task in watchers:
                    task.cancel()
                await asyncio.gather(*watchers, return_exceptions=True)

    async def _close_on_stop(self, ws) -> None:  # noqa: ANN001 - websockets connection
        await self._stop.wait()
        await ws.close()

    async def _pull_loop(self, ws, token: str) -> None:  # noqa: ANN001
        # the SDK asks for pending messages periodically, in case a push was lost
        while not self._stop.is_set():
            if await sleep_unless(self._stop, self.pull_interval):
                return
            await ws.send(tmc.pull_frame(token))

    async def _on_frame(self, ws, token: str, data: bytes | str, client: httpx.AsyncClient) -> None:  # noqa: ANN001
        if isinstance(data, str):
            log.warning("TMC sent a text frame; ignored")
            return
        try:
            frame = tmc.decode_frame(data)
        except AdapterError as exc:
            log_rejection(Channel.TMALL, exc.message, None, exc.field)
            self.stats.refused += 1
            return
        if frame.message_type != tmc.MessageType.SEND or "topic" not in frame.headers:
            return  # acks of our pull requests, server notices
        self.stats.received += 1
        message_id = frame.headers.get("id")
        try:
            message = tmall.message_from_tmc_headers(frame.headers)
            # the inbox keeps the message as JSON: the same shape the relay webhook receives
            event = tmall.event_from_message(message, msgspec.json.encode(message))
        except AdapterError as exc:
            log_rejection(Channel.TMALL, exc.message, str(message_id) if message_id is not None else None, exc.field)
            self.stats.refused += 1
            return
        try:
            if event.kind is ChannelEventKind.UPSERT:
                sku_map = await self.sku_maps.sku_map(Channel.TMALL)
                order = await fetch_tmall_trade(client, event.external_id, self.config, sku_map=sku_map)
                event = msgspec.structs.replace(event, order=order, status=order.status)
            await self.intake.handle(event)
        except (FetchError, AdapterError) as exc:
            log.warning("TMC message %s not confirmed: %s", event.message_id, exc)
            self.stats.failed += 1
            return
        except Exception:  # noqa: BLE001 - the core failed; Taobao will redeliver
            log.exception("TMC message %s not confirmed: intake failed", event.message_id)
            self.stats.failed += 1
            return
        self.stats.handled += 1
        await ws.send(tmc.confirm_frame(token, message.id))
        self.stats.confirmed += 1
