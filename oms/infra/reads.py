"""Reads that tolerate a little lag (pick lists, order reads, the ops summary), sent to a streaming
replica of the primary when OMS_DATABASE_READ_URL names one.

Nothing that decides stock, writes, or reads under a row lock comes here: those run on the
primary pool (services.pool) as before. A read here runs on one replica connection and is asked
again on the primary when the replica cannot answer it well:

- the replica is down, refuses connections or drops one mid-read: the read runs on the primary
  and the replica is left alone for `retry_after_s` (logged once when it goes, once when it is back);
- the replica refused the statement itself (a recovery conflict cancelled it, a table a fresh
  migration made has not replayed yet): this read runs on the primary;
- the replica has not got the row yet (`NotFound`, or an answer `stale_if` rejects: an order
  created a moment ago): the primary answers, so a caller never misses what it just wrote.

Each such read is counted (`on_fallback(reason)`: unavailable, error, behind). When the primary
fails too, its error goes up as it would without a replica (503 with Retry-After).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from oms.errors import NotFound, OmsError
from oms.infra.db import Q, connection_lost

log = logging.getLogger("oms.reads")

T = TypeVar("T")
Read = Callable[[asyncpg.Connection], Awaitable[T]]


def _replica_unreachable(exc: BaseException) -> bool:
    """The replica as a whole cannot serve (not one statement refused): connecting failed, the
    connection broke, it is starting up or shutting down, or it has no connection slot left."""
    return connection_lost(exc) or isinstance(exc, (asyncpg.CannotConnectNowError,
                                                    asyncpg.TooManyConnectionsError))


class Reads:
    """Where lag-tolerant reads run: `run(read)`."""

    def __init__(self, primary: asyncpg.Pool, replica: asyncpg.Pool | None = None, *,
                 on_fallback: Callable[[str], None] = lambda reason: None, retry_after_s: float = 5.0) -> None:
        self.primary = primary
        self.replica = replica
        self.on_fallback = on_fallback
        self.retry_after_s = retry_after_s
        #: monotonic time before which the replica is not tried again (it failed)
        self._skip_until = 0.0
        self._down = False
        self._refusal_logged_at = float("-inf")

    @property
    def replica_up(self) -> bool | None:
        """None without a replica; else False while reads skip it after a failure."""
        return None if self.replica is None else not self._down

    async def lag_bytes(self) -> int | None:
        """WAL the primary has written and the replica not yet replayed (None without a replica or
        when either cannot say); the staleness of what the replica answers."""
        if self.replica is None or self._down:
            return None
        try:
            async with self.replica.acquire() as conn:
                replayed = await conn.fetchval(Q["replica_replayed_lsn"])
            async with self.primary.acquire() as conn:
                return None if replayed is None else await conn.fetchval(Q["primary_wal_behind"], replayed)
        except Exception:  # noqa: BLE001 - a gauge left out; the reads themselves fall back
            return None

    async def run(self, read: Read[T], *, stale_if: Callable[[T], bool] | None = None) -> T:
        """`read` on one connection: the replica's when there is one and it answers, else the primary's."""
        if self.replica is None:
            return await self._on(self.primary, read)
        if time.monotonic() < self._skip_until:
            self.on_fallback("unavailable")
            return await self._on(self.primary, read)
        try:
            result = await self._on(self.replica, read)
        except NotFound:
            self.on_fallback("behind")
            return await self._on(self.primary, read)
        except (OmsError, asyncpg.DataError):  # the answer to this input: the primary would say the same
            raise
        except Exception as exc:  # noqa: BLE001 - every replica failure is retried on the primary
            if not _replica_unreachable(exc):
                self.on_fallback("error")
                if time.monotonic() - self._refusal_logged_at > 60:  # a storm of conflicts logs once a minute
                    self._refusal_logged_at = time.monotonic()
                    log.warning("the read replica refused a read (%r); it runs on the primary", exc)
                return await self._on(self.primary, read)
            await self._went_down(exc)
            self.on_fallback("unavailable")
            return await self._on(self.primary, read)
        self._answered()
        if stale_if is not None and stale_if(result):
            self.on_fallback("behind")
            return await self._on(self.primary, read)
        return result

    @staticmethod
    async def _on(pool: asyncpg.Pool, read: Read[T]) -> T:
        async with pool.acquire() as conn:
            return await read(conn)

    async def _went_down(self, exc: BaseException) -> None:
        self._skip_until = time.monotonic() + self.retry_after_s
        # its idle connections died with it (a restart, a failover): the next try opens new ones
        await self.replica.expire_connections()
        if not self._down:
            self._down = True
            log.warning("the read replica is unavailable (%r): its reads go to the primary, and it is "
                        "tried again every %.0f s", exc, self.retry_after_s)

    def _answered(self) -> None:
        if self._down:
            self._down = False
            log.info("the read replica answers again: lag-tolerant reads go to it")
