"""Orders: POST a normalized order, read, list, cancel."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, Response, get, post
from litestar.params import Parameter

from oms.api import cursor
from oms.api.auth import admin_guard
from oms.orders.model import NormalizedOrder, Order, OrderStatus
from oms.errors import Conflict, InvalidInput
from oms.orders.cancel import cancel_order
from oms.orders.read import list_orders, load_order
from oms.wiring import Services


class CancelIn(msgspec.Struct, kw_only=True):
    reason: str | None = None


class OrderPage(msgspec.Struct, kw_only=True):
    items: list[Order]
    next_before: str | None = None


class OrderController(Controller):
    path = "/orders"
    guards = [admin_guard]
    tags = ["orders"]

    @post("", status_code=201, summary="Submit a normalized order (idempotent by channel + external_id)")
    async def submit(self, data: NormalizedOrder, services: Services) -> Response[Order]:
        order, created = await services.intake.submit(data, cause="api:POST /orders")
        return Response(order, status_code=201 if created else 200)

    @get("/{order_id:str}", summary="One order with its fulfilments and history")
    async def get_order(self, order_id: str, services: Services) -> Order:
        async with services.pool.acquire() as conn:
            return await load_order(conn, order_id, clock=services.promise)

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
        async with services.pool.acquire() as conn:
            items = await list_orders(conn, channel=channel, external_id=external_id, status=status,
                                      before=position, limit=limit, clock=services.promise)
        nxt = cursor.encode(items[-1].created_at.isoformat(), items[-1].id) if len(items) == limit else None
        return OrderPage(items=items, next_before=nxt)

    @post("/{order_id:str}/allocate", status_code=200,
          summary="Route a backordered order again (also done for the oldest ones when stock is set)")
    async def allocate(self, order_id: str, services: Services) -> Order:
        async with services.pool.acquire() as conn:
            current = await load_order(conn, order_id, history=False)
        if current.status is not OrderStatus.BACKORDERED:
            raise Conflict(f"order is '{current.status}'; only a backordered order is allocated again",
                           current=str(current.status))
        return await services.allocator.allocate_existing(order_id, "api:allocate")

    @post("/{order_id:str}/cancel", status_code=200, summary="Cancel and release stock; 409 after hand-over")
    async def cancel(self, order_id: str, services: Services, data: CancelIn | None = None) -> Order:
        reason = data.reason if data else None
        return await cancel_order(services.pool, services.inventory, order_id, "api:cancel", reason=reason)
