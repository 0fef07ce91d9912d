"""Claims: at most one request works on a channel order at a time.

A claim is `SET NX` of `claim:{channel:external_id}` holding the id the order will have and the
process working on it (`<order id>@<process id>`), so a duplicate push waits for the first and
then finds that order in PostgreSQL, whose unique key on (channel, external_id) backs the claim
up should Redis lose it. A claim of a process that died is taken over as soon as the reconciler
has settled that process's reservations (oms.stock.liveness), not when the claim grows old.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from oms.stock import liveness

#: a claim outlives platform retries of the same push; PostgreSQL's unique key backs it up
CLAIM_TTL_S = 7 * 24 * 3600
#: a claim whose order is still not stored after this long belongs to a process that died
ORPHAN_CLAIM_S = 30


def claim_key(channel: str, external_id: str) -> str:
    return f"claim:{{{channel}:{external_id}}}"


def claim_value(order_id: str, worker: str) -> str:
    return f"{order_id}@{worker}"


def parse_claim(value: bytes) -> tuple[str, str | None]:
    """(order id, process id or None) of a claim's value."""
    oid, _, worker = value.decode().partition("@")
    return oid, worker or None


async def holder_settled(redis: aioredis.Redis, worker: str) -> bool:
    """True when the claim's process died and its reservations were settled: take it over."""
    return await liveness.reconciled(redis, worker)


async def drop_claim(redis: aioredis.Redis, key: str, value: str) -> None:
    """Let go of our claim (only if it is still ours); a failure leaves it to expire."""
    try:
        if (await redis.get(key)) == value.encode():
            await redis.delete(key)
    except aioredis.RedisError:  # the claim expires on its own
        pass
