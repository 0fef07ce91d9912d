"""Which processes are alive: each reservation and claim names the process that made it.

Every serving process has an id and refreshes `oms:alive:<id>` (a short TTL) twice a second, and
adds itself to `oms:workers`. A process killed mid-request (kill -9, OOM, a host lost) stops
refreshing; the reconciler then settles what it left in Redis (reservations with no order in
PostgreSQL are released) and marks it `oms:reconciled:<id>`, which lets a retry of an order it
was working on take its claim over at once instead of waiting for the claim to age out.
"""

from __future__ import annotations

import asyncio
import logging
import os

import redis.asyncio as aioredis

from oms.infra.ids import new_id

log = logging.getLogger("oms.liveness")

WORKERS_KEY = "oms:workers"
#: a process not seen for this long is dead (it refreshes every BEAT_S)
ALIVE_TTL_MS = 3000
BEAT_S = 0.5
#: how long the mark of a settled dead process is kept (its claims may be retried until then)
RECONCILED_TTL_S = 24 * 3600


def alive_key(worker: str) -> str:
    return f"oms:alive:{worker}"


def reconciled_key(worker: str) -> str:
    return f"oms:reconciled:{worker}"


class Liveness:
    def __init__(self, redis: aioredis.Redis, worker_id: str | None = None) -> None:
        self.redis = redis
        # the pid shows in logs and lets an operator (or a test) find the process
        self.worker_id = worker_id or f"w{os.getpid()}.{new_id('')[-6:]}"
        self._task: asyncio.Task | None = None

    async def beat(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(alive_key(self.worker_id), 1, px=ALIVE_TTL_MS)
        pipe.sadd(WORKERS_KEY, self.worker_id)
        await pipe.execute()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis down: beat again when it is back
                log.debug("heartbeat failed: %r", exc)
            await asyncio.sleep(BEAT_S)

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
        try:  # a clean exit: nothing of ours is in flight any more
            await self.redis.delete(alive_key(self.worker_id))
        except Exception:  # noqa: BLE001
            pass


async def reconciled(redis: aioredis.Redis, worker: str) -> bool:
    """True when `worker` died and the reconciler has settled its reservations."""
    return bool(await redis.exists(reconciled_key(worker)))


async def stop_task(task: asyncio.Task, timeout_s: float = 2.0) -> None:
    """Cancel a background task and wait for it; cancel again should a library have swallowed
    the first cancellation (redis-py may, inside a command)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not task.done() and loop.time() < deadline:
        task.cancel()
        await asyncio.wait([task], timeout=0.1)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: no "never retrieved" warning
