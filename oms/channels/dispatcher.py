"""The outbox dispatcher: tells every platform what it must hear (issues 13 §3, 14).

One pass (`run_once`):
  1. fold   pending 'stock' rows (one per SKU changed, written by the triggers in the change's
            own transaction) and 'resync' rows into `stock_sync`: one row per (shop, SKU), so
            a hundred changes of a hot SKU become one send per shop;
  2. stock  lease due (shop, SKU) rows, compute each shop's sellable value NOW from Redis (the
            newest full value, never a delta), send it; one shop's calls go one after another,
            so a rate-limit reply holds back the very next call; shops go in parallel;
  3. confirmations  lease due hand-over / cancel messages and send the platform's call.
Every lease expires (`lease_s`): a dispatcher killed mid-batch leaves rows that the next one
takes over and sends again -- harmless for stock (full values) and checked for shipments (the
platform's order state is asked first when the message may have gone out, or its request id
makes the repeat a no-op). Two dispatchers never hold one row at once (FOR UPDATE SKIP LOCKED
at claim, then the lease).

Replies: accepted -> done (lag recorded); rate-limited -> the shop pauses for the seconds the
platform names (or a backoff) and the attempt is not counted; retryable -> backoff, counted;
rejected -> dead at once with the platform's code and message; `max_attempts` counted failures
-> dead. Dead letters are listed and re-sent by the admin API (/outbox/dead, /outbox/resend).
A Douyin refund-pending reply blocks the shipment and marks the fulfilment for its store.

`oms channels sync` runs one; `oms serve` runs one in its parent process unless
`--no-dispatcher` or OMS_DISPATCHER=0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import signal
import socket
import time
from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import asyncpg
import httpx
import msgspec

from adapters.outbound.common import Outcome, OutcomeKind, ShipState, StateCheck, outcome_after_check
from oms.channels import outbound, shops
from oms.channels.config import ChannelsConfig, load_config
from oms.infra.db import Q
from oms.ops import metrics

log = logging.getLogger("oms.channels.dispatcher")


class DispatcherSettings(msgspec.Struct, frozen=True, kw_only=True):
    batch: int = 500
    lease_s: float = 30.0
    max_attempts: int = 8
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 300.0
    idle_s: float = 0.2
    #: passes start at least this far apart, so a burst of write notifications makes one pass,
    #: not one per batch (a pass costs a few PostgreSQL round trips whether it finds 1 row or 500)
    min_gap_s: float = 0.05
    #: full resync of every shop this often (0: only on demand)
    resync_every_s: float = 3600.0
    #: sync_log rows kept this long (the lag percentiles on /ops)
    log_keep_s: float = 3600.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "DispatcherSettings":
        e = os.environ if env is None else env
        base = cls()
        return cls(
            batch=int(e.get("OMS_SYNC_BATCH", base.batch)),
            lease_s=float(e.get("OMS_SYNC_LEASE_S", base.lease_s)),
            max_attempts=int(e.get("OMS_SYNC_MAX_ATTEMPTS", base.max_attempts)),
            backoff_initial_s=float(e.get("OMS_SYNC_BACKOFF_S", base.backoff_initial_s)),
            backoff_max_s=float(e.get("OMS_SYNC_BACKOFF_MAX_S", base.backoff_max_s)),
            idle_s=float(e.get("OMS_SYNC_IDLE_S", base.idle_s)),
            min_gap_s=float(e.get("OMS_SYNC_MIN_GAP_S", base.min_gap_s)),
            resync_every_s=float(e.get("OMS_SYNC_RESYNC_EVERY_S", base.resync_every_s)),
        )


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Dispatcher:
    def __init__(self, services: Any, config: ChannelsConfig | None = None,
                 settings: DispatcherSettings | None = None, client: httpx.AsyncClient | None = None) -> None:
        self.services = services
        self.pool: asyncpg.Pool = services.pool
        self.config = config if config is not None else load_config()
        self.settings = settings or DispatcherSettings.from_env()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._client = client
        self._own_client = client is None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._last_resync_check = 0.0
        self._last_prune = 0.0
        self._paused: dict[str, float] = {}  # shop -> monotonic time its pause ends (this process)

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            self._client = httpx.AsyncClient(headers={"User-Agent": "oms-dispatcher"},
                                             limits=httpx.Limits(max_connections=64, max_keepalive_connections=32))
        return self._client

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    # ---- the loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Passes until stopped; woken at once by the outbox triggers' NOTIFY."""
        await shops.ensure_default_shops(self.pool, self.config)
        listener = await self._listen()
        parent = os.environ.get("OMS_DISPATCHER_PARENT")
        try:
            last_pass = 0.0
            while not self._stop.is_set():
                if parent and os.getppid() != int(parent):  # `oms serve` that started us is gone
                    log.warning("the serving process exited: dispatcher stopping")
                    break
                gap = self.settings.min_gap_s - (time.monotonic() - last_pass)
                if gap > 0:
                    await asyncio.sleep(gap)
                last_pass = time.monotonic()
                try:
                    done = await self.run_once()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("dispatcher pass failed (%s); trying again", exc)
                    done = 0
                    await asyncio.sleep(1.0)
                if done == 0 and not self._stop.is_set():
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), timeout=self.settings.idle_s)
                    except TimeoutError:
                        pass
        finally:
            if listener is not None:
                await listener.close()
            if self._own_client and self._client is not None:
                await self._client.aclose()

    async def _listen(self) -> asyncpg.Connection | None:
        try:
            conn = await self.pool.acquire()
        except (OSError, asyncpg.PostgresError):
            return None
        await self.pool.release(conn)
        try:
            listener = await asyncpg.connect(**_connect_args(self.pool))
            await listener.add_listener("oms_outbox", lambda *_: self._wake.set())
            return listener
        except (OSError, asyncpg.PostgresError, TypeError):
            return None  # polling every idle_s still works

    async def run_once(self) -> int:
        """One pass; returns how much was done (0: idle)."""
        work = await self.fold()
        work += await self.send_stock()
        work += await self.send_messages()
        now = time.monotonic()
        if self.settings.resync_every_s > 0 and now - self._last_resync_check > 10:
            self._last_resync_check = now
            queued = await self.pool.fetch(Q["outbox_resync_due"], self.settings.resync_every_s)
            work += len(queued)
        if now - self._last_prune > 60:
            self._last_prune = now
            await self.pool.execute(Q["sync_log_prune"], self.settings.log_keep_s)
        return work

    # ---- 1. fold ------------------------------------------------------------------------------
    async def fold(self) -> int:
        r1 = await self.pool.fetchrow(Q["outbox_fold_stock"], 5000)
        r2 = await self.pool.fetchrow(Q["outbox_fold_resync"])
        return r1["folded"] + r2["folded"]

    # ---- 2. stock -----------------------------------------------------------------------------
    async def send_stock(self) -> int:
        rows = await self.pool.fetch(Q["stock_sync_claim"], self.settings.batch, self.settings.lease_s, self.owner)
        if not rows:
            return 0
        by_shop: dict[str, list[asyncpg.Record]] = defaultdict(list)
        for r in rows:
            by_shop[r["shop_id"]].append(r)
        await asyncio.gather(*(self._shop_stock(shop_id, claimed) for shop_id, claimed in by_shop.items()))
        return len(rows)

    async def _shop_stock(self, shop_id: str, claimed: list[asyncpg.Record]) -> None:
        row = await self.pool.fetchrow(Q["shop_get"], shop_id)
        skus = [c["sku"] for c in claimed]
        try:
            if row is None:
                raise outbound.NotSendable(f"shop '{shop_id}' is gone")
            ctx = outbound.shop_context(row, self.config)
            listings = {l["sku"]: l for l in await self.pool.fetch(Q["listings_for"], shop_id, skus)}
            values = await shops.sellable_of(self.pool, self.services.inventory, row, skus)
        except outbound.NotSendable as exc:
            for c in claimed:
                await self._stock_failed(c, Outcome(kind=OutcomeKind.REJECTED, message=str(exc)), row)
            return
        lags: list[int] = []
        for c in claimed:
            listing = listings.get(c["sku"])
            if listing is None:  # unlisted meanwhile: nothing to tell
                await self.pool.execute(Q["stock_sync_skip"], shop_id, c["sku"], self.owner)
                continue
            if self._pause_left(shop_id) > 0:  # a rate limit earlier in this batch
                await self._stock_failed(c, Outcome(kind=OutcomeKind.RATE_LIMITED, message="shop paused",
                                                    retry_after=self._pause_left(shop_id)), row, pause=False)
                continue
            quantity = values[c["sku"]].sellable
            ref = f"oms-{shop_id}-{c['sku']}-{c['seq']}"
            try:
                call = outbound.stock_call(ctx, listing, quantity, ref, _now())
            except outbound.NotSendable as exc:
                await self._stock_failed(c, Outcome(kind=OutcomeKind.REJECTED, message=str(exc)), row)
                continue
            status, body = await outbound.send(self.client, call.request)
            outcome = call.parse(status, body)
            metrics.outbound_call(row["channel"], "stock", outcome.kind.value)
            if outcome.done:
                await self.pool.execute(Q["stock_sync_done"], shop_id, c["sku"], self.owner, quantity)
                if c["inflight_since"] is not None:
                    lag = max(int((_now() - c["inflight_since"]).total_seconds() * 1000), 0)
                    lags.append(lag)
                    metrics.SYNC_LAG.labels(row["channel"], "stock").observe(lag / 1000)
            else:
                await self._stock_failed(c, outcome, row)
        if lags:
            await self.pool.execute(Q["sync_log_add"], row["channel"], "stock", lags)

    async def _stock_failed(self, c: asyncpg.Record, outcome: Outcome, row: Any, *, pause: bool = True) -> None:
        delay, counted = self._delay(outcome, c["attempts"] + 1)
        if outcome.kind is OutcomeKind.RATE_LIMITED and pause:
            await self._pause(c["shop_id"], delay)
        count = self.settings.max_attempts if outcome.kind is OutcomeKind.REJECTED else counted
        status = await self.pool.fetchval(
            Q["stock_sync_failed"], c["shop_id"], c["sku"], self.owner, delay, count, self.settings.max_attempts,
            outcome.code or outcome.kind.value, _error_text(outcome))
        if status == "dead":
            log.error("stock of %s for shop %s dead-lettered: %s", c["sku"], c["shop_id"], _error_text(outcome))

    # ---- 3. confirmations ---------------------------------------------------------------------
    async def send_messages(self) -> int:
        rows = await self.pool.fetch(Q["outbox_claim_messages"], self.settings.batch, self.settings.lease_s,
                                     self.owner)
        by_shop: dict[str | None, list[asyncpg.Record]] = defaultdict(list)
        for r in rows:
            by_shop[r["shop_id"]].append(r)

        async def one_shop(messages: list[asyncpg.Record]) -> None:
            for m in messages:
                try:
                    await self._message(m)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    raise
                except Exception as exc:  # noqa: BLE001 - one bad message must not stop the others
                    log.exception("outbox message %s failed", m["id"])
                    await self._retry(m, Outcome(kind=OutcomeKind.RETRYABLE, message=f"{type(exc).__name__}: {exc}"))

        await asyncio.gather(*(one_shop(ms) for ms in by_shop.values()))
        return len(rows)

    async def _message(self, m: asyncpg.Record) -> None:
        if m["kind"] == "cancel":
            shop = await self.pool.fetchrow(Q["shop_get"], m["shop_id"]) if m["shop_id"] else None
            await self._finish(m, "manual", "no-call", outbound.cancel_note(shop["channel"] if shop else "unknown"))
            return
        h, row = await self._handover(m)
        if h is None or row is None:
            await self._finish(m, "manual", "no-shop", "order or shop not found: confirm by hand")
            return
        if self._pause_left(row["id"]) > 0:
            await self._retry(m, Outcome(kind=OutcomeKind.RATE_LIMITED, retry_after=self._pause_left(row["id"])),
                              pause=False)
            return
        try:
            ctx = outbound.shop_context(row, self.config)
            if m["tried"] > 0:  # it may have reached the platform already: ask before sending again
                check, verdict = await self._state(ctx, h)
                if check is not None and check.outcome.kind is not OutcomeKind.ACCEPTED:
                    await self._retry(m, check.outcome)  # the state query itself failed: never send blind
                    return
                if verdict is not None and not (verdict.kind is OutcomeKind.RETRYABLE
                                                and check.state in (ShipState.OPEN, ShipState.PARTLY_SHIPPED)):
                    await self._settle(m, h, verdict, row)
                    return
            call = outbound.confirmation(ctx, h, _now())
        except outbound.NotSendable as exc:
            await self._finish(m, "manual", "not-sendable", str(exc))
            return
        if isinstance(call, outbound.Deferred):
            await self._finish(m, "done", "deferred", call.reason)
            return
        status, body = await outbound.send(self.client, call.request)
        outcome = call.parse(status, body)
        metrics.outbound_call(row["channel"], "handover", outcome.kind.value)
        if outcome.kind is OutcomeKind.CHECK_STATE:
            check, verdict = await self._state(ctx, h)
            outcome = verdict or outcome
            if check is not None and check.outcome.kind is OutcomeKind.ACCEPTED and outcome.kind is OutcomeKind.RETRYABLE:
                outcome = msgspec.structs.replace(outcome, kind=OutcomeKind.REJECTED,
                                                  message=f"refused while open on the platform: {outcome.message}")
        await self._settle(m, h, outcome, row)

    async def _state(self, ctx: outbound.ShopContext, h: outbound.Handover
                     ) -> tuple[StateCheck | None, Outcome | None]:
        """The platform's order state and what it means for this shipment (None: no query)."""
        query = outbound.state_call(ctx, h, _now())
        if query is None:
            return None, None
        status, body = await outbound.send(self.client, query.request)
        check = query.parse(status, body)
        return check, outcome_after_check(check, outbound.split_lines(h))

    async def _settle(self, m: asyncpg.Record, h: outbound.Handover, outcome: Outcome, row: Any) -> None:
        if outcome.done:
            await self._finish(m, "done", outcome.kind.value if outcome.kind is not OutcomeKind.ACCEPTED else None,
                               None)
            lag = max(int((_now() - m["created_at"]).total_seconds() * 1000), 0)
            await self.pool.execute(Q["sync_log_add"], row["channel"], "handover", [lag])
            metrics.SYNC_LAG.labels(row["channel"], "handover").observe(lag / 1000)
        elif outcome.kind is OutcomeKind.INTERCEPTED:
            reason = f"STOP: {row['channel']} refuses the shipment ({outcome.message or outcome.code}); " \
                     "keep the parcel, the order is being refunded"
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(Q["fulfillment_intercept"], h.part_id, reason)
                await conn.execute(Q["outbox_message_finish"], m["id"], self.owner, "blocked", outcome.code,
                                   _error_text(outcome))
            log.warning("hand-over of order %s intercepted by %s: %s", h.order_id, row["channel"], outcome.message)
        elif outcome.kind is OutcomeKind.REJECTED or outcome.kind is OutcomeKind.PARTIAL:
            await self._finish(m, "dead", outcome.code or outcome.kind.value, _error_text(outcome))
        else:
            await self._retry(m, outcome)

    async def _handover(self, m: asyncpg.Record) -> tuple[outbound.Handover | None, Any]:
        order = await self.pool.fetchrow(Q["handover_context"], m["order_id"])
        if order is None:
            return None, None
        shop_id = order["shop_id"] or shops.default_shop_id(order["channel"])
        row = await self.pool.fetchrow(Q["shop_get"], shop_id) if shop_id else None
        parts = [outbound.Part(fulfillment_id=p["id"], node_id=p["node_id"], node_kind=p["node_kind"],
                               status=p["status"], carrier=p["carrier"], tracking_no=p["tracking_no"],
                               lines=list(p["lines"]))
                 for p in await self.pool.fetch(Q["handover_parts"], m["order_id"])]
        if not any(p.fulfillment_id == m["fulfillment_id"] for p in parts):
            return None, row
        h = outbound.Handover(order_id=order["id"], external_id=order["external_id"],
                              delivery_mode=order["delivery_mode"], buyer=order["buyer"] or {}, parts=parts,
                              part_id=m["fulfillment_id"])
        return h, row

    async def _finish(self, m: asyncpg.Record, status: str, code: str | None, error: str | None) -> None:
        await self.pool.execute(Q["outbox_message_finish"], m["id"], self.owner, status, code, error)
        if status in ("dead", "manual"):
            log.error("outbox message %s (%s, order %s) %s: %s", m["id"], m["kind"], m["order_id"], status, error)

    async def _retry(self, m: asyncpg.Record, outcome: Outcome, *, pause: bool = True) -> None:
        delay, counted = self._delay(outcome, m["tried"] + 1)
        if outcome.kind is OutcomeKind.RATE_LIMITED and pause and m["shop_id"]:
            await self._pause(m["shop_id"], delay)
        status = await self.pool.fetchval(Q["outbox_message_retry"], m["id"], self.owner, delay, counted,
                                          self.settings.max_attempts, outcome.code or outcome.kind.value,
                                          _error_text(outcome))
        if status == "dead":
            log.error("outbox message %s dead-lettered: %s", m["id"], _error_text(outcome))

    # ---- waits --------------------------------------------------------------------------------
    def _delay(self, outcome: Outcome, attempt: int) -> tuple[float, int]:
        """(seconds to wait, 1 when the attempt counts towards dead-lettering)."""
        s = self.settings
        backoff = min(s.backoff_max_s, s.backoff_initial_s * 2 ** max(attempt - 1, 0))
        backoff *= 1 + random.uniform(0, 0.1)  # noqa: S311 - spreads retries, not crypto
        if outcome.kind is OutcomeKind.RATE_LIMITED:
            # the platform's own figure is a floor: a little margin so the ban is surely over
            return (outcome.retry_after + 0.05 if outcome.retry_after else backoff), 0
        if outcome.retry_after:
            return max(outcome.retry_after, backoff), 1
        return backoff, 1

    def _pause_left(self, shop_id: str) -> float:
        return max(self._paused.get(shop_id, 0.0) - time.monotonic(), 0.0)

    async def _pause(self, shop_id: str, seconds: float) -> None:
        self._paused[shop_id] = max(self._paused.get(shop_id, 0.0), time.monotonic() + seconds)
        await self.pool.execute(Q["shop_pause"], shop_id, seconds)
        log.warning("shop %s rate-limited: nothing sent to it for %.1f s", shop_id, seconds)


def _error_text(outcome: Outcome) -> str:
    parts = [p for p in (outcome.kind.value, f"HTTP {outcome.http_status}" if outcome.http_status else "",
                         outcome.code, outcome.message) if p]
    return ": ".join(parts)[:500]


def _connect_args(pool: asyncpg.Pool) -> dict[str, Any]:
    """Connection arguments of the pool (a LISTEN needs a connection of its own)."""
    args, kwargs = pool._connect_args, dict(pool._connect_kwargs)  # noqa: SLF001 - asyncpg keeps them here
    if args:
        kwargs["dsn"] = args[0]
    return kwargs


# ---- `oms channels sync` ---------------------------------------------------------------------
async def run_dispatcher(env: Mapping[str, str] | None = None) -> int:
    """Run one dispatcher until SIGINT/SIGTERM."""
    from oms.config import Settings
    from oms.infra import db
    from oms.wiring import Services

    settings = Settings.from_env(dict(env) if env is not None else None)
    services = await Services.start(settings, prepare=False)
    try:
        async with services.pool.acquire() as conn:
            await db.migrate(conn)
        dispatcher = Dispatcher(services, load_config(env), DispatcherSettings.from_env(env))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, dispatcher.stop)
        print("oms channels sync: running (SIGINT/SIGTERM to stop)", flush=True)
        await dispatcher.run()
        return 0
    finally:
        await services.close()
