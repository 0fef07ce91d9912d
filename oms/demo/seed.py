"""`oms seed-demo`: the demo city (Shanghai + a few Hangzhou stores), its catalogue and stock."""

from __future__ import annotations

import asyncpg
import h3

from oms.api.catalogue import NODE_H3_RES
from oms.infra.db import Q
from oms.demo.city import DEMO_NODES, DEMO_SKUS, demo_stock


async def seed_demo(conn: asyncpg.Connection) -> dict[str, int]:
    """Upsert the demo nodes, SKUs and stock in one transaction (Redis is rebuilt by the caller)."""
    async with conn.transaction():
        for n in DEMO_NODES:
            city = "杭州" if n.id.startswith("HZ-") else "上海"
            await conn.execute(
                Q["node_upsert"], n.id, n.kind, n.name, n.lat, n.lng,
                h3.latlng_to_cell(n.lat, n.lng, NODE_H3_RES), sorted(n.capabilities),
                n.delivery_radius_m, n.capacity_per_hour, city, True,
            )
        await conn.execute(Q["sku_upsert_many"], [s.sku for s in DEMO_SKUS], [s.name for s in DEMO_SKUS],
                           [s.unit_price_fen for s in DEMO_SKUS])
        rows = demo_stock()
        await conn.execute(Q["stock_set_many"], [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
    return {"nodes": len(DEMO_NODES), "skus": len(DEMO_SKUS), "stock_rows": len(rows)}
