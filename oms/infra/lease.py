"""Leases: a job that must run once (a channel consumer, a poller, a timer) runs in one process of
all hosts at a time, and is taken over when its holder dies.

A lease is one Redis key `lease:{name}` holding the holder's token with a time to live. The holder
renews it every third of the TTL; another process takes it only once it has expired. A holder that
cannot renew for two thirds of the TTL (Redis unreachable, the loop stalled) stops its job itself,
before anybody else can have taken the lease, so two holders never run the same job at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

log = logging.getLogger("oms.lease")

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def holder_id() -> str:
    """Who holds a lease: host, pid and a random part (a restarted pid is another holder)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Lease:
    """One named lease; `acquire`, `renew` and `release` are each one atomic Redis command."""

    def __init__(self, redis: aioredis.Redis, name: str, ttl_s: float = 10.0, holder: str | None = None) -> None:
        self.redis = redis
        self.name = name
        self.key = f"lease:{{{name}}}"
        self.ttl_ms = int(ttl_s * 1000)
        self.holder = holder or holder_id()

    async def acquire(self) -> bool:
        return bool(await self.redis.set(self.key, self.holder, nx=True, px=self.ttl_ms))

    async def renew(self) -> bool:
        return bool(await self.redis.eval(_RENEW, 1, self.key, self.holder, self.ttl_ms))

    async def release(self) -> None:
        await self.redis.eval(_RELEASE, 1, self.key, self.holder)

    async def current_holder(self) -> str | None:
        val = await self.redis.get(self.key)
        return val.decode() if val else None


async def run_exclusively(lease: Lease, job: Callable[[], Awaitable[None]], stop: asyncio.Event,
                          *, retry_s: float | None = None) -> None:
    """Until `stop` is set: wait for the lease, run `job` while holding it, stop the job when the lease
    is lost. A job that fails is started again (after the lease was let go, so another may take it)."""
    ttl_s = lease.ttl_ms / 1000
    retry_s = ttl_s / 3 if retry_s is None else retry_s
    while not stop.is_set():
        try:
            got = await lease.acquire()
        except (aioredis.RedisError, OSError) as exc:
            log.warning("lease %s: Redis unreachable (%s); retrying", lease.name, exc)
            got = False
        if got:
            log.info("lease %s: taken by %s", lease.name, lease.holder)
            await _hold(lease, job, stop, ttl_s)
        if not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=retry_s)
            except asyncio.TimeoutError:
                pass


async def _hold(lease: Lease, job: Callable[[], Awaitable[None]], stop: asyncio.Event, ttl_s: float) -> None:
    task = asyncio.ensure_future(job())
    stopper = asyncio.ensure_future(stop.wait())
    last_ok = time.monotonic()
    try:
        while True:
            done, _ = await asyncio.wait({task, stopper}, timeout=ttl_s / 3, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                if task.exception() is not None:
                    log.error("lease %s: job failed: %r; it will be started again", lease.name, task.exception())
                return
            if stopper in done:
                return
            try:
                if not await lease.renew():
                    log.warning("lease %s: lost (expired and taken by another holder); stopping the job", lease.name)
                    return
                last_ok = time.monotonic()
            except (aioredis.RedisError, OSError) as exc:
                if time.monotonic() - last_ok > ttl_s * 2 / 3:
                    log.warning("lease %s: cannot renew (%s); stopping the job before it can expire", lease.name, exc)
                    return
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        try:
            await lease.release()
        except (aioredis.RedisError, OSError):  # it expires on its own
            pass
