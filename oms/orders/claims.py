"""Claims: at most one request works on a channel order at a time.

A claim is `SET NX` of `claim:{channel:external_id}` holding the id the order will have, so a
duplicate push waits for the first and then finds that order in PostgreSQL, whose unique key on
(channel, external_id) backs the claim up should Redis lose it.
"""

from __future__ import annotations

import redis.asyncio as aioredis

#: a claim outlives platform retries of the same push; PostgreSQL's unique key backs it up
CLAIM_TTL_S = 7 * 24 * 3600
#: a claim whose order is still not stored after this long belongs to a process that died
ORPHAN_CLAIM_S = 30


def claim_key(channel: str, external_id: str) -> str:
    return f"claim:{{{channel}:{external_id}}}"


async def drop_claim(redis: aioredis.Redis, key: str, value: str) -> None:
    """Let go of our claim (only if it is still ours); a failure leaves it to expire."""
    try:
        if (await redis.get(key)) == value.encode():
            await redis.delete(key)
    except aioredis.RedisError:  # the claim expires on its own
        pass
