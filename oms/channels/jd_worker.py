"""JD order poller (`oms channels jd`): jingdong.pop.order.search by modified time.

Each poll reads the window [watermark - overlap, now] page by page, hands every order to the
core as a ChannelEvent (message id = order id @ modified time), and only when the whole window
was handed over moves the persisted watermark to the window's end. So:
- a restart never misses an order: the watermark only moves past orders already handed over;
- orders JD indexes late (modified a little before the last watermark) are caught by the overlap;
- nothing is applied twice: re-read orders carry the same message id, and the core's inbox is
  idempotent by (channel, message id).
A malformed order (e.g. quantity 0) is logged and skipped, so it cannot block the watermark.
If the result count changes while paging (an order moved out of the window, shifting pages),
the window is read once more.

Usage (the lead's CLI):
    poller = JdPoller(load_config().jd, intake, store)     # store: the lead's PostgreSQL store
    await poller.run()                                      # until poller.stop()
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

import httpx
import msgspec

from adapters.normalized import Channel
from adapters.timeutil import now_beijing
from oms.channels.backoff import Backoff, sleep_unless
from oms.channels.config import JdConfig
from oms.channels.fetch import search_jd_orders
from oms.channels.ports import Intake, SkuMapSource, StaticSkuMap
from oms.channels.rejections import log_rejection

log = logging.getLogger("oms.channels.jd")

WATERMARK_KEY = "jd:pop.order.search:modified"


class WatermarkStore(Protocol):
    """Where the poller keeps its watermark across restarts (the lead: a PostgreSQL row)."""

    async def get(self, key: str) -> datetime | None: ...

    async def set(self, key: str, value: datetime) -> None: ...


class InMemoryWatermarkStore:
    """For tests and a single throw-away process only: forgets everything on exit."""

    def __init__(self) -> None:
        self.values: dict[str, datetime] = {}

    async def get(self, key: str) -> datetime | None:
        return self.values.get(key)

    async def set(self, key: str, value: datetime) -> None:
        self.values[key] = value


class PollReport(msgspec.Struct, frozen=True, kw_only=True):
    start: datetime
    end: datetime
    handled: int
    refused: int
    pages: int


class JdPoller:
    """Poll JD for orders modified since the watermark and feed them to the core's Intake."""

    def __init__(
        self,
        config: JdConfig,
        intake: Intake,
        store: WatermarkStore,
        *,
        client: httpx.AsyncClient | None = None,
        sku_maps: SkuMapSource | None = None,
        page_size: int = 50,
        initial_lookback: timedelta = timedelta(hours=1),
        max_window: timedelta = timedelta(hours=6),
        backoff: Backoff | None = None,
        clock: Callable[[], datetime] = now_beijing,
    ) -> None:
        self.config = config
        self.intake = intake
        self.store = store
        self.sku_maps = sku_maps or StaticSkuMap()
        self.page_size = page_size
        self.overlap = timedelta(seconds=config.poll_overlap_s)
        self.initial_lookback = initial_lookback
        self.max_window = max_window  # catching up after downtime goes in bounded windows
        self.backoff = backoff or Backoff()
        self.clock = clock
        self._client = client
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Ask run() to finish after the current poll."""
        self._stop.set()

    async def poll_once(self, client: httpx.AsyncClient | None = None) -> PollReport:
        """Read one window and hand every order over; raise (watermark unchanged) on failure."""
        own = client is None and self._client is None
        http = client or self._client or httpx.AsyncClient()
        try:
            return await self._poll(http)
        finally:
            if own:
                await http.aclose()

    async def _poll(self, http: httpx.AsyncClient) -> PollReport:
        now = self.clock()
        watermark = await self.store.get(WATERMARK_KEY)
        if watermark is None:
            watermark = now - self.initial_lookback
        start = watermark - self.overlap
        end = min(now, start + self.max_window)
        sku_map = await self.sku_maps.sku_map(Channel.JD)
        handled = refused = pages = 0
        for _attempt in range(2):
            total: int | None = None
            shifted = False
            page = 1
            while True:
                result = await search_jd_orders(
                    http, self.config, start=start, end=end, page=page, page_size=self.page_size, sku_map=sku_map
                )
                pages += 1
                if total is None:
                    total = result.total
                elif result.total != total:
                    shifted = True
                for item in result.results:
                    if item.error is not None:
                        log_rejection(Channel.JD, item.error.message, item.order_id, item.error.field)
                        refused += 1
                        continue
                    assert item.event is not None
                    await self.intake.handle(item.event)  # a failure propagates: watermark stays
                    handled += 1
                if not result.results or page * self.page_size >= result.total:
                    break
                page += 1
            if not shifted:
                break
            log.info("JD result count changed while paging; reading the window again")
        await self.store.set(WATERMARK_KEY, end)
        return PollReport(start=start, end=end, handled=handled, refused=refused, pages=pages)

    async def run(self) -> None:
        """Poll every poll_interval_s (sooner while catching up), back off on failures, until stop()."""
        client = self._client or httpx.AsyncClient()
        try:
            while not self._stop.is_set():
                try:
                    report = await self.poll_once(client)
                except Exception as exc:  # noqa: BLE001 - keep polling; the window is re-read
                    log.warning("JD poll failed: %s: %s", type(exc).__name__, exc)
                    delay = self.backoff.next()
                else:
                    self.backoff.reset()
                    behind = self.clock() - report.end > timedelta(seconds=self.config.poll_interval_s)
                    delay = 0.0 if behind else self.config.poll_interval_s
                await sleep_unless(self._stop, delay)
        finally:
            if self._client is None:
                await client.aclose()
