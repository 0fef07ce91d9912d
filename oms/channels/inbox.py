"""The core side of the channels: `ServiceIntake` records and applies each verified ChannelEvent.

oms/channels/ (webhook handlers, the TMC worker, the JD poller) verify and parse a platform's
message and hand a `ChannelEvent` to `Intake.handle`; this module is that Intake, on PostgreSQL
and Redis:

    inbox      the raw message is stored once per (channel, message id). A message already
               processed is acknowledged without effect; one that failed (or whose process
               died) is applied again, which is safe because every step below is idempotent.
    UPSERT     IntakeService.submit(order, strict=False): one order per (channel, external id);
               an unknown SKU backorders that line, not the push; a newer status is applied,
               unpaid -> paid allocates.
    CANCEL     cancel_order by (channel, external id), releasing stock also when the order is on
               a store's pick list. A cancel for an order we do not have yet is *recorded* (its
               inbox row, kind 'cancel'); the order's create, when it comes, is stored cancelled
               with nothing reserved. Every upsert checks for such a record after it wrote the
               order too, so a cancel racing its create is never lost.
    REFUND_LINES  oms.orders.cancel_lines: those lines cancelled, their reserved units given
               back; the last line refunded cancels the order.
    STATUS     apply_update with the new status (shipped/completed elsewhere: recorded; WeChat
               Pay paid: the amount is checked against the stored order first, then the order
               is marked paid, which allocates it).
    IGNORE     stored and acknowledged.

Answers (see oms/channels/ports.py): `IntakeError(4xx)` for a definite refusal (a paid amount
that is not the order's total: 400), `IntakeError(503)` when the platform should simply retry
later (a payment for an order not received yet); any other exception is temporary as well.
A cancel or refund of an order already handed over is acknowledged and noted in the inbox, not
refused: the platform cannot change that, and a return is a different flow.

Also here: `PgSkuMapSource` (the sku_map table, cached a few seconds), `PgWatermarkStore`
(channel_watermarks, for the JD poller). The workers that feed it: oms/channels/workers.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import datetime, timezone

import msgspec

from adapters import miniprogram
from adapters.errors import AdapterError
from adapters.normalized import (
    Channel,
    ChannelEvent,
    ChannelEventKind,
    ChannelStatus,
    DeliveryMode,
    Destination,
    NormalizedOrder,
    OrderLine,
)
from oms.ops import metrics
from oms.channels.ports import IntakeError
from oms.infra.db import Q
from oms.orders.decide import UnknownOrderNews, news_for_unknown_order, too_late_to_cancel
from oms.orders.model import OrderStatus
from oms.errors import IllegalTransition, OmsError
from oms.orders.cancel import cancel_lines, cancel_order

log = logging.getLogger("oms.channel_intake")

#: the inbox keeps at most this much of an error text
_ERROR_MAX = 500


class ServiceIntake:
    """`oms.channels.intake.Intake` on the service: inbox + the core's order functions."""

    def __init__(self, services) -> None:  # noqa: ANN001 - oms.services.Services (import cycle)
        self.services = services
        self.pool = services.pool

    # ---- the Protocol ------------------------------------------------------------------------
    async def handle(self, event: ChannelEvent) -> None:
        channel, message_id = str(event.channel), event.message_id
        inserted = await self.pool.fetchval(
            Q["inbox_insert"], channel, message_id, event.topic, event.external_id or None, event.raw or b"",
            str(event.kind),
        )
        if inserted is None and await self.pool.fetchval(Q["inbox_status"], channel, message_id) == "processed":
            log.info("%s message %s already processed: acknowledged again, nothing applied", channel, message_id)
            return
        try:
            note = await self._apply(event)
        except IntakeError as exc:
            await self._mark_failed(event, exc.reason)
            raise
        except OmsError as exc:
            await self._mark_failed(event, exc.message)
            if exc.status_code >= 500:
                raise IntakeError(503, exc.message) from exc
            raise IntakeError(exc.status_code, exc.message, field=exc.field) from exc
        except Exception as exc:
            await self._mark_failed(event, f"{type(exc).__name__}: {exc}")
            raise
        await self.pool.execute(Q["inbox_mark"], channel, message_id, "processed", None, note)

    async def _mark_failed(self, event: ChannelEvent, error: str) -> None:
        try:
            await self.pool.execute(Q["inbox_mark"], str(event.channel), event.message_id, "failed",
                                    error[:_ERROR_MAX], None)
        except Exception:  # noqa: BLE001 - the original failure is what the caller must see
            log.exception("could not mark %s message %s failed", event.channel.value, event.message_id)

    # ---- applying one event --------------------------------------------------------------------
    async def _apply(self, event: ChannelEvent) -> str | None:
        """Apply the event; returns a note for the inbox when it did something not obvious."""
        cause = f"{event.channel.value}:{event.topic}"
        kind = event.kind
        if kind is ChannelEventKind.IGNORE:
            return None
        if kind is ChannelEventKind.UPSERT:
            return await self._upsert(event, cause)
        if kind is ChannelEventKind.CANCEL:
            return await self._cancel(event, cause)
        if kind is ChannelEventKind.REFUND_LINES:
            return await self._refund_lines(event, cause)
        if kind is ChannelEventKind.STATUS:
            return await self._status(event, cause)
        raise IntakeError(422, f"unknown event kind '{kind}'")

    async def _order_id(self, event: ChannelEvent) -> str | None:
        return await self.pool.fetchval(Q["order_id_by_external"], str(event.channel), event.external_id)

    async def _cancel_recorded(self, event: ChannelEvent) -> bool:
        return bool(await self.pool.fetchval(Q["inbox_cancel_recorded"], str(event.channel), event.external_id))

    async def _upsert(self, event: ChannelEvent, cause: str) -> str | None:
        order = event.order
        if order is None:
            raise IntakeError(422, "upsert event carries no order", field="order")
        note = None
        if order.status is not ChannelStatus.CANCELLED and await self._cancel_recorded(event):
            # the platform's cancel came first: store it cancelled, reserve nothing
            order = msgspec.structs.replace(order, status=ChannelStatus.CANCELLED)
            note = "a cancel for this order arrived before it: stored cancelled"
        try:
            view, _created = await self.services.intake.submit(order, cause=cause, strict=False)
        except IllegalTransition as exc:  # the platform says cancelled, the goods are already out
            return self._too_late(event, exc.extra.get("current", "handed over"))
        if view.status != OrderStatus.CANCELLED and await self._cancel_recorded(event):
            # a cancel recorded while we were writing the order (it found no order then)
            return await self._cancel_known(view.id, event, cause) or "a cancel arrived meanwhile: cancelled"
        if order.status is ChannelStatus.PAID:
            await self._paid(view, order.paid_at or event.occurred_at, cause)
        return note

    async def _cancel(self, event: ChannelEvent, cause: str) -> str | None:
        # the inbox row (kind 'cancel') is already stored: an upsert of this order from now on
        # sees it, so looking the order up only after that cannot miss a concurrent create
        oid = await self._order_id(event)
        if oid is not None:
            return await self._cancel_known(oid, event, cause)
        if event.order is not None:  # the push carries the order: store it, cancelled
            order = msgspec.structs.replace(event.order, status=ChannelStatus.CANCELLED)
            view, _ = await self.services.intake.submit(order, cause=cause, strict=False)
            if view.status != OrderStatus.CANCELLED:  # stored meanwhile by a create: cancel it
                return await self._cancel_known(view.id, event, cause)
            return "cancel for an order not seen before: stored cancelled"
        log.info("%s message %s: cancel for order %s not received yet; recorded", event.channel.value,
                 event.message_id, event.external_id)
        return "cancel for an order not received yet: recorded, its create will be stored cancelled"

    async def _cancel_known(self, oid: str, event: ChannelEvent, cause: str) -> str | None:
        """Cancel a stored order and release its stock; after hand-over, acknowledge with a note."""
        await self.pool.execute(Q["order_set_channel_status"], oid, str(ChannelStatus.CANCELLED), None)
        row = await self.pool.fetchrow(Q["order_by_id"], oid)
        status = row["status"] if row is not None else None
        if too_late_to_cancel(status):
            return self._too_late(event, status)
        try:
            await cancel_order(self.pool, self.services.inventory, oid, cause,
                               reason=f"cancelled by {event.channel.value}")
        except IllegalTransition as exc:
            return self._too_late(event, exc.extra.get("current", "handed over"))
        if status != OrderStatus.CANCELLED:
            metrics.order_cancelled(event.channel.value)
        return None

    def _too_late(self, event: ChannelEvent, status: object) -> str:
        log.warning("%s message %s: order %s is already %s; cancel/refund not applied (a return, not ours)",
                    event.channel.value, event.message_id, event.external_id, status)
        return f"order already {status}: cancel/refund not applied"

    async def _refund_lines(self, event: ChannelEvent, cause: str) -> str | None:
        if not event.refunded_line_ids:
            return "refund names no lines: nothing released (a line refund push names them)"
        oid = await self._order_id(event)
        if oid is None:
            return "refund for an order we do not have: nothing to release"
        try:
            _, unknown = await cancel_lines(self.pool, self.services.inventory, oid, list(event.refunded_line_ids),
                                            cause, reason=f"refunded on {event.channel.value}")
        except IllegalTransition as exc:
            return self._too_late(event, exc.extra.get("current", "handed over"))
        return f"lines not in the order: {', '.join(unknown)}" if unknown else None

    async def _status(self, event: ChannelEvent, cause: str) -> str | None:
        if event.status is None:
            raise IntakeError(422, "status event carries no status", field="status")
        oid = await self._order_id(event)
        payment = event.status is ChannelStatus.PAID and event.amount_fen is not None
        if oid is None:
            news = news_for_unknown_order(event.status, is_payment=payment, carries_order=event.order is not None)
            if news is UnknownOrderNews.RETRY:
                # WeChat Pay can notify before the mini-program's order push reached us: retry later
                raise IntakeError(503, "payment for an order not received yet; retry later")
            if news is UnknownOrderNews.CREATE:
                await self.services.intake.submit(
                    msgspec.structs.replace(event.order, status=event.status), cause=cause, strict=False)
                return None
            return f"'{event.status}' for an order we do not have: nothing to update"
        stored = await self._stored_order(oid)
        if payment:
            try:
                miniprogram.check_paid_amount(event, stored)
            except AdapterError as exc:
                raise IntakeError(exc.status, exc.message, field=exc.field) from None
        base = event.order or stored
        # a status-only message carries no order time of its own: the status rank decides
        update = msgspec.structs.replace(base, status=event.status,
                                         updated_at=event.order.updated_at if event.order else None)
        view = await self.services.intake.apply_update(oid, update, cause)
        if event.status is ChannelStatus.PAID:
            if view.status == OrderStatus.CANCELLED:
                log.warning("%s message %s: payment for cancelled order %s (refund it on the platform)",
                            event.channel.value, event.message_id, event.external_id)
                return "paid after it was cancelled: nothing allocated"
            await self._paid(view, (event.order.paid_at if event.order else None) or event.occurred_at, cause)
        return None

    async def _paid(self, view, paid_at: datetime | None, cause: str) -> None:  # noqa: ANN001 - domain.Order
        """After a paid status was applied: record when it was paid, and make sure it is allocated.

        apply_update records the channel status before it allocates; if that allocation failed
        (the message is then retried), the status is no longer 'newer' and would not allocate
        again, so an order still 'created' here is allocated now (allocate_existing is idempotent).
        """
        await self.pool.execute(Q["order_fill_paid_at"], view.id, paid_at or datetime.now(timezone.utc),
                                self.services.settings.delivery_promise_minutes)
        if view.status == OrderStatus.CREATED and view.channel_status == ChannelStatus.PAID:
            await self.services.allocator.allocate_existing(view.id, cause)

    async def _stored_order(self, oid: str) -> NormalizedOrder:
        """The stored order in the adapters' shape (for the paid-amount check and status updates)."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(Q["order_by_id"], oid)
            lines = await conn.fetch(Q["order_lines_by_order"], oid)
        return NormalizedOrder(
            channel=Channel(row["channel"]),
            external_id=row["external_id"],
            delivery_mode=DeliveryMode(row["delivery_mode"]),
            destination=Destination(lat=row["dest_lat"], lng=row["dest_lng"], address=row["dest_address"],
                                    approximate=row["dest_approximate"]),
            lines=[OrderLine(sku=l["sku"], quantity=l["quantity"], unit_price=l["unit_price_fen"],
                             platform_line_id=l["platform_line_id"], platform_sku_id=l["platform_sku_id"])
                   for l in lines],
            status=ChannelStatus(row["channel_status"]),
            pickup_node_id=row["pickup_node_id"],
            total_fen=row["total_fen"],
            freight_fen=row["freight_fen"],
            discount_fen=row["discount_fen"],
            paid_at=row["paid_at"],
            promised_by=row["promised_by"],
            updated_at=row["channel_updated_at"],
        )


class PgSkuMapSource:
    """The SKU mapping table (platform SKU id -> merchant SKU), per channel, cached `max_age_s`."""

    def __init__(self, pool, max_age_s: float = 5.0) -> None:  # noqa: ANN001 - asyncpg.Pool
        self.pool = pool
        self.max_age_s = max_age_s
        self._cache: dict[Channel, tuple[float, dict[str, str]]] = {}

    async def sku_map(self, channel: Channel) -> Mapping[str, str]:
        cached = self._cache.get(channel)
        if cached is not None and time.monotonic() - cached[0] < self.max_age_s:
            return cached[1]
        # the sku_map table, then every shop's listings of this channel (later rows win)
        rows = await self.pool.fetch(Q["sku_map_with_listings"], str(channel))
        mapping = {r["platform_sku_id"]: r["sku"] for r in rows}
        self._cache[channel] = (time.monotonic(), mapping)
        return mapping


class PgWatermarkStore:
    """The JD poller's watermark in `channel_watermarks` (key -> ISO-8601 time with its offset)."""

    def __init__(self, pool) -> None:  # noqa: ANN001 - asyncpg.Pool
        self.pool = pool

    async def get(self, key: str) -> datetime | None:
        value = await self.pool.fetchval(Q["channel_watermark_get"], key)
        return datetime.fromisoformat(value) if value else None

    async def set(self, key: str, value: datetime) -> None:
        if value.tzinfo is None:
            raise ValueError("a watermark needs a timezone offset")
        await self.pool.execute(Q["channel_watermark_set"], key, value.isoformat())
