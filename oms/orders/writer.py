"""Group commit: new orders from concurrent requests are written together, one transaction per batch.

One PostgreSQL round trip per table per batch instead of per order keeps intake fast under a
stampede, while each caller still awaits its own durable commit before it answers. A batch that
fails is retried order by order, so one bad order fails alone.

A batch whose connection is lost while its statement runs (during or after the implicit COMMIT)
may have been kept: its callers get WriteInDoubt, never a plain failure, so nobody releases
stock an order may hold. An order the batch did keep shows on the retry as already there
under its own id, which the caller recognises as its own.
"""

from __future__ import annotations

import asyncio
from collections import deque

import asyncpg
import msgspec

from oms.errors import WriteInDoubt
from oms.infra.db import Q, connection_lost
from oms.orders.rows import NewOrderRows


class OrderWriter:
    """Group commit. Under load (the last batch held more than one order) each batch waits
    `gather_s` before it is cut: PostgreSQL's cost per statement (≈ 0.56 ms of CPU: the statement,
    its triggers, the commit) is then shared by more orders; one order alone is written at once."""

    def __init__(self, pool: asyncpg.Pool, max_batch: int = 256, parallel: int = 1, gather_s: float = 0.0) -> None:
        self.pool = pool
        self.gather_s = gather_s
        self._last_size = 0
        self.max_batch = max_batch
        self.parallel = parallel
        self._queue: deque[tuple[NewOrderRows, asyncio.Future[bool]]] = deque()
        self._workers = 0

    async def write(self, rows: NewOrderRows) -> bool:
        """Durably write a new order; False when (channel, external_id) already existed."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((rows, fut))
        if self._workers < self.parallel:
            self._workers += 1
            asyncio.get_running_loop().create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        try:
            while self._queue:
                if self.gather_s and self._last_size > 1 and len(self._queue) < self.max_batch:
                    # busy (the last batch was shared): a moment more lets more orders join this one
                    await asyncio.sleep(self.gather_s)
                batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
                self._last_size = len(batch)
                try:
                    inserted = await self._write_batch([rows for rows, _ in batch])
                except Exception as batch_exc:  # noqa: BLE001 - retried one by one
                    doubt = isinstance(batch_exc, WriteInDoubt)
                    for rows, fut in batch:
                        try:
                            ok = (await self._write_batch([rows]))[0]
                        except Exception as exc:  # noqa: BLE001 - handed to the caller
                            if doubt and not isinstance(exc, WriteInDoubt):  # the batch may have kept it
                                exc = WriteInDoubt(_DOUBT)
                                exc.__cause__ = batch_exc
                            _resolve(fut, exc=exc)
                        else:
                            _resolve(fut, ok)
                else:
                    for (_, fut), ok in zip(batch, inserted):
                        _resolve(fut, ok)
        finally:
            self._workers -= 1

    async def _write_batch(self, batch: list[NewOrderRows]) -> list[bool]:
        doc = msgspec.json.encode([
            [rows.order for rows in batch],
            [t for rows in batch for t in rows.lines],
            [t for rows in batch for t in rows.fulfillments],
            [t for rows in batch for t in rows.reservations],
            [t for rows in batch for t in rows.history],
        ]).decode()
        async with self.pool.acquire() as conn:  # a failure to connect: nothing was sent
            try:
                inserted = {r["id"] for r in await conn.fetch(Q["orders_write_batch"], doc)}
            except Exception as exc:
                if connection_lost(exc):
                    raise WriteInDoubt(_DOUBT) from exc
                raise
        return [rows.order_id in inserted for rows in batch]


_DOUBT = ("the connection to PostgreSQL was lost while the order was being stored; whether it was "
          "kept is being checked: retry in a moment (a retry finds the order if it was)")


def _resolve(fut: asyncio.Future[bool], ok: bool = False, exc: BaseException | None = None) -> None:
    if fut.done():  # the caller went away (cancelled request)
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(ok)
