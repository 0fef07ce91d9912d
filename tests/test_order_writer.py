"""Group commit (oms/orders/writer.py): under load a batch waits a moment so more orders share
its statement; every order still gets its own answer."""

from __future__ import annotations

import asyncio
import secrets

from oms.orders.writer import OrderWriter
from test_order_partitions import _rows


async def _transactions(services, ids: list[str]) -> int:
    """How many transactions wrote these orders (one per batch statement)."""
    return await services.pool.fetchval("select count(distinct xmin::text) from orders where id = any($1::text[])", ids)


async def _trickle(writer: OrderWriter, tag: str, n: int, gap_s: float) -> list[str]:
    """Two orders at once (the writer sees load), then `n` more, one every `gap_s`."""
    ids = [f"o-{tag}-{i}-{secrets.token_hex(3)}" for i in range(n + 2)]

    async def one(i: int) -> bool:
        await asyncio.sleep(0 if i < 2 else (i - 1) * gap_s)
        return await writer.write(_rows(ids[i], "manual", ids[i], "sku-w"))

    assert all(await asyncio.gather(*(one(i) for i in range(n + 2))))
    return ids[2:]


async def test_orders_trickling_in_under_load_share_batches_when_the_writer_gathers(services):
    plain = await _trickle(OrderWriter(services.pool), "plain", 10, 0.01)
    gathered = await _trickle(OrderWriter(services.pool, gather_s=0.2), "gather", 10, 0.01)
    assert await _transactions(services, plain) >= 8  # each arrived alone: its own statement
    assert await _transactions(services, gathered) <= 2  # they waited for each other
