"""Store staff API (issue: store operations). Route handlers are listed in ROUTES.

Admin: issue, list and revoke store tokens (`/nodes/{node_id}/tokens`).
Store (that store's token only): pick list, picked, reject, shipped / handover, received, delivered,
pickup codes (`/stores/{node_id}/...`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from oms.stores import handover, model, picking, picklist, reject, tokens
from oms.api.auth import admin_guard, bearer
from oms.errors import Conflict, Forbidden, InvalidInput, Unauthorized
from oms.wiring import Services


async def store_guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """`/stores/{node_id}/...` needs that node's token: none or unknown 401, another store's or the
    admin token 403."""
    token = bearer(connection)
    if token is None:
        raise Unauthorized("missing store token: send 'Authorization: Bearer <token>'", field="authorization")
    services = connection.app.state.services
    if hmac.compare_digest(token.encode(), services.settings.admin_token.encode()):
        # ops act for a store with that store's token, so every action is the store's own
        raise Forbidden("admin token is not a store token: issue one with POST /nodes/{node_id}/tokens",
                        field="authorization")
    owner = await tokens.token_owner(services.pool, token)
    if owner is None:
        raise Unauthorized("unknown or revoked store token", field="authorization")
    node_id = connection.path_params.get("node_id")
    if owner != node_id:
        raise Forbidden(f"this token is for store '{owner}'; it cannot see or act for store '{node_id}'",
                        field="node_id")


class TokenIn(msgspec.Struct, kw_only=True):
    label: Annotated[str, msgspec.Meta(max_length=200)] = ""


class RejectLine(msgspec.Struct, frozen=True, kw_only=True):
    sku: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    quantity: Annotated[int, msgspec.Meta(ge=1, le=100_000)]


class RejectIn(msgspec.Struct, kw_only=True):
    #: why: e.g. "out_of_stock" (the SKU's availability here goes to zero), "damaged", free text
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    #: which units; left out, all of this store's part is rejected
    lines: Annotated[list[RejectLine], msgspec.Meta(max_length=200)] | None = None


class ShippedIn(msgspec.Struct, kw_only=True):
    #: our carrier name (sf, zto, yto, sto, yunda, ems, jd, deppon, self) or the platform's own code;
    #: required with tracking_no for a parcel, optional for a one-hour order by the store's own rider
    carrier: Annotated[str, msgspec.Meta(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_\-]+$")] | None = None
    tracking_no: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9\-]+$")] | None = None


class StoreTokenController(Controller):
    path = "/nodes/{node_id:str}/tokens"
    guards = [admin_guard]
    tags = ["store operations"]

    @post("", status_code=201, summary="Issue a store token (shown once; only its hash is kept)")
    async def issue(self, node_id: str, services: Services, data: TokenIn | None = None) -> model.IssuedToken:
        return await tokens.issue_token(services.pool, node_id, data.label if data else "")

    @get("", summary="A node's tokens (never the secrets)")
    async def list_tokens(self, node_id: str, services: Services) -> list[model.TokenInfo]:
        return await tokens.list_tokens(services.pool, node_id)

    @delete("/{token_id:str}", status_code=204, summary="Revoke a store token (at once)")
    async def revoke(self, node_id: str, token_id: str, services: Services) -> None:
        await tokens.revoke_token(services.pool, node_id, token_id)


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    bare = etag.removeprefix("W/")
    return any(t.strip() == "*" or t.strip().removeprefix("W/") == bare for t in header.split(","))


class StoreController(Controller):
    """Every step is idempotent: repeated (an app retry) it answers the same 200. A request with
    an `Idempotency-Key` header gets, on a retry with the same key, the answer of the first."""

    path = "/stores/{node_id:str}"
    guards = [store_guard]
    tags = ["store operations"]

    @get("/picklist", summary="Work allocated here and not yet picked, most urgent first; ETag / If-None-Match")
    async def picklist(self, node_id: str, request: Request, services: Services) -> Response[model.PickList]:
        etag, listing = await picklist.read_pick_list(
            services, node_id, model.utcnow(), lambda tag: _etag_matches(request.headers.get("if-none-match"), tag))
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if listing is None:
            return Response(content=b"", status_code=304, headers=headers)
        return Response(listing, headers=headers)

    @post("/orders/{order_id:str}/picked", status_code=200,
          summary="Picked: delivery ready for the courier; pickup ready, and a code goes to the buyer")
    async def picked(self, node_id: str, order_id: str, request: Request,
                     services: Services) -> Response[model.StoreOrder]:
        return await _once(services, node_id, request, lambda: picking.mark_picked(services, node_id, order_id))

    @post("/orders/{order_id:str}/reject", status_code=200,
          summary="Cannot serve (part of) it: units leave availability, re-routed in this request")
    async def reject(self, node_id: str, order_id: str, request: Request, services: Services,
                     data: RejectIn | None = None) -> Response[model.StoreOrder]:
        if data is None:
            raise InvalidInput('reason: send a JSON body naming why, e.g. {"reason": "out_of_stock"}', field="reason")
        lines = None if data.lines is None else [(l.sku, l.quantity) for l in data.lines]
        return await _once(services, node_id, request,
                           lambda: reject.reject(services, node_id, order_id, data.reason, lines))

    @post("/orders/{order_id:str}/shipped", status_code=200,
          summary="The courier took it (picked first): reservation committed, on-hand down, the platform told",
          description="Body (optional for one-hour orders by the store's own rider): {\"carrier\", \"tracking_no\"}.")
    async def shipped(self, node_id: str, order_id: str, request: Request, services: Services,
                      data: ShippedIn | None = None) -> Response[model.StoreOrder]:
        return await _once(services, node_id, request, lambda: handover.mark_shipped(
            services, node_id, order_id, data.carrier if data else None, data.tracking_no if data else None))

    @post("/orders/{order_id:str}/handover", status_code=200,
          summary="Picked and handed to the courier in one step (recorded as both); body as for shipped")
    async def handover(self, node_id: str, order_id: str, request: Request, services: Services,
                       data: ShippedIn | None = None) -> Response[model.StoreOrder]:
        return await _once(services, node_id, request, lambda: handover.mark_shipped(
            services, node_id, order_id, data.carrier if data else None, data.tracking_no if data else None,
            pick_first=True))

    @post("/orders/{order_id:str}/received", status_code=200,
          summary="Goods transferred in for a pickup order arrived here; all arrived and nothing left to "
                  "pick: ready for the buyer")
    async def received(self, node_id: str, order_id: str, request: Request,
                       services: Services) -> Response[model.StoreOrder]:
        return await _once(services, node_id, request, lambda: picking.mark_received(services, node_id, order_id))

    @post("/orders/{order_id:str}/delivered", status_code=200,
          summary="This store's shipped part reached the buyer (the store's own courier)")
    async def delivered(self, node_id: str, order_id: str, request: Request,
                        services: Services) -> Response[model.StoreOrder]:
        return await _once(services, node_id, request, lambda: handover.mark_delivered(
            services, order_id, node_id=node_id, cause="store:delivered"))

    @post("/pickups/{code:str}", status_code=200,
          summary="The buyer collected with this code: wrong 404, used 409, too many wrong 429")
    async def collect(self, node_id: str, code: str, request: Request,
                      services: Services) -> Response[model.StoreOrder]:
        return await _once(services, node_id, request, lambda: handover.collect_pickup(services, node_id, code))


async def _once(services: Services, node_id: str, request: Request,
                run: Callable[[], Awaitable[model.StoreOrder]]) -> Response:
    """Run a store step; with an Idempotency-Key, a retry with the same key gets the first answer
    (a second copy arriving while the first runs waits for it)."""
    key = request.headers.get("idempotency-key")
    if not key:
        return Response(await run())
    if len(key) > 200:
        raise InvalidInput("idempotency-key: at most 200 characters", field="idempotency-key")
    digest = hashlib.sha256(f"{request.method} {request.url.path} {key}".encode()).hexdigest()[:32]
    done, busy = f"store:idem:{{{node_id}}}:{digest}", f"store:idem:{{{node_id}}}:{digest}:busy"
    for _ in range(200):
        if (cached := await services.redis.get(done)) is not None:
            return Response(content=cached, media_type="application/json")
        if await services.redis.set(busy, 1, nx=True, ex=30):
            break
        await asyncio.sleep(0.05)
    else:
        raise Conflict("the same request (Idempotency-Key) is still being processed; retry", field="idempotency-key")
    try:
        answer = await run()
        await services.redis.set(done, msgspec.json.encode(answer), ex=model.IDEMPOTENCY_TTL_S)
        return Response(answer)
    finally:
        await services.redis.delete(busy)


ROUTES: list = [StoreTokenController, StoreController]
