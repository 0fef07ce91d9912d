"""Orders: POST a normalized order, read, list, cancel."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, Response, get, post
from litestar.params import Parameter

from oms.api import cursor
from oms.api.auth import admin_only
from oms.orders.model import WAITING, NormalizedOrder, Order, OrderStatus
from oms.errors import Conflict, InvalidInput
from oms.orders.cancel import cancel_order
from oms.orders.read import list_orders, load_order
from oms.stores import handover
from oms.wiring import Services


class CancelIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=500)] | None = None
    #: a partial cancel: these lines (line_no from the order view) ...
    lines: Annotated[list[Annotated[int, msgspec.Meta(ge=1)]], msgspec.Meta(min_length=1, max_length=200)] | None = None
    #: ... and/or these fulfilments (ids); both left out, the whole order is cancelled
    fulfillments: Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=64)]],
                            msgspec.Meta(min_length=1, max_length=50)] | None = None


class DeliveredIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: which shipped part arrived; left out, every shipped part of the order
    fulfillment_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None


class OrderPage(msgspec.Struct, kw_only=True):
    items: list[Order]
    next_before: str | None = None


class OrderController(Controller):
    path = "/orders"
    middleware = [admin_only]
    tags = ["orders"]

    @post("", status_code=201, summary="Submit a normalized order (idempotent by channel + external_id)")
    async def submit(self, data: NormalizedOrder, services: Services) -> Response[Order]:
        order, created = await services.intake.submit(data, cause="api:POST /orders")
        return Response(order, status_code=201 if created else 200)

    @get("/{order_id:str}", summary="One order with its fulfilments and history")
    async def get_order(self, order_id: str, services: Services) -> Order:
        # on the read replica; one it has not got yet (created a moment ago) the primary answers
        return await services.reads.run(lambda conn: load_order(conn, order_id, clock=services.promise))

    @get("", summary="Orders, newest first; filter by channel, external_id, status")
    async def list(
        self,
        services: Services,
        channel: str | None = None,
        external_id: str | None = None,
        status: str | None = None,
        before: Annotated[str | None, Parameter(description="opaque cursor from next_before (URL-safe)")] = None,
        limit: Annotated[int, Parameter(ge=1, le=500)] = 50,
    ) -> OrderPage:
        if status is not None and status not in OrderStatus.__members__.values():
            raise InvalidInput(f"status must be one of {', '.join(OrderStatus)}", field="status")
        position = None
        if before:
            at, oid = cursor.decode(before, 2, "before")
            try:
                position = (datetime.fromisoformat(at), oid)
            except ValueError:
                raise InvalidInput("before is not a cursor this API returned", field="before") from None
        # on the read replica; a look-up by external_id it answers empty (an order pushed a moment
        # ago) the primary answers again
        items = await services.reads.run(
            lambda conn: list_orders(conn, channel=channel, external_id=external_id, status=status,
                                     before=position, limit=limit, clock=services.promise),
            stale_if=lambda found: external_id is not None and not found)
        nxt = cursor.encode(items[-1].created_at.isoformat(), items[-1].id) if len(items) == limit else None
        return OrderPage(items=items, next_before=nxt)

    @post("/{order_id:str}/allocate", status_code=200,
          summary="Route what a backordered or partially allocated order waits for (also done, oldest "
                  "first, when stock is set)")
    async def allocate(self, order_id: str, services: Services) -> Order:
        async with services.pool.acquire() as conn:
            current = await load_order(conn, order_id, history=False)
        if current.status not in WAITING:
            raise Conflict(f"order is '{current.status}'; only a backordered or partially allocated order "
                           "is allocated again", current=str(current.status))
        return await services.allocator.allocate_existing(order_id, "api:allocate")

    @post("/{order_id:str}/cancel", status_code=200,
          summary="Cancel and release stock, or only the named lines / fulfilments still open; 409 naming "
                  "the parts already handed over")
    async def cancel(self, order_id: str, services: Services, data: CancelIn | None = None) -> Order:
        data = data or CancelIn()
        return await cancel_order(services.pool, services.inventory, order_id, "api:cancel", reason=data.reason,
                                  lines=data.lines, fulfillments=data.fulfillments)

    @post("/{order_id:str}/delivered", status_code=200,
          summary="The courier delivered a shipped part (or all of them); the order is delivered once all are")
    async def delivered(self, order_id: str, services: Services, data: DeliveredIn | None = None) -> Order:
        await handover.mark_delivered(services, order_id, fulfillment_id=data.fulfillment_id if data else None,
                                      cause="api:delivered")
        async with services.pool.acquire() as conn:
            return await load_order(conn, order_id, clock=services.promise)

    @post("/{order_id:str}/complete", status_code=200,
          summary="Close a delivered or collected order (the buyer confirmed receipt); idempotent")
    async def complete(self, order_id: str, services: Services) -> Order:
        await handover.complete_order(services, order_id, cause="api:complete")
        async with services.pool.acquire() as conn:
            return await load_order(conn, order_id, clock=services.promise)
