"""Known SKU codes, cached per process; a miss asks PostgreSQL, so new SKUs are seen at once."""

from __future__ import annotations

import time

import asyncpg

from oms.infra.db import Q


class SkuCatalogue:
    """Which SKU codes exist: an order or stock line must name a known one."""

    def __init__(self, pool: asyncpg.Pool, max_age_s: float = 30.0) -> None:
        self.pool = pool
        self.max_age_s = max_age_s
        self._known: set[str] = set()
        self._loaded_at = 0.0

    async def unknown(self, skus: set[str]) -> set[str]:
        """The codes among `skus` that no SKU has."""
        if time.monotonic() - self._loaded_at > self.max_age_s:
            self._known = {r["sku"] for r in await self.pool.fetch("select sku from skus")}
            self._loaded_at = time.monotonic()
        missing = skus - self._known
        if missing:
            found = {r["sku"] for r in await self.pool.fetch(Q["skus_known"], list(missing))}
            self._known |= found
            missing -= found
        return missing
