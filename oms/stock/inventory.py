"""Stock availability in Redis: where units are reserved, released and committed.

Keys are hash-tagged by node (`inv:{NODE}:...`) so every script touches one Redis Cluster slot:
    inv:{N}:onhand        hash sku -> on-hand units
    inv:{N}:reserved      hash sku -> units held by open reservations
    inv:{N}:avail         hash sku -> on-hand - reserved, kept by the scripts so a read is one HMGET
    inv:{N}:res:<fid>     hash sku -> units of one fulfilment's reservation (its idempotency key)
Available = on-hand - reserved. PostgreSQL holds the same facts (`stock`, `reservations`) and
`rebuild` recomputes these keys from it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import asyncpg
import msgspec
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from oms.infra.db import Q
from oms.stock.redis_batch import RedisBatcher

_LUA = Path(__file__).resolve().parent / "lua"


def onhand_key(node: str) -> str:
    return f"inv:{{{node}}}:onhand"


def reserved_key(node: str) -> str:
    return f"inv:{{{node}}}:reserved"


def avail_key(node: str) -> str:
    return f"inv:{{{node}}}:avail"


def record_key(node: str, fulfillment_id: str) -> str:
    return f"inv:{{{node}}}:res:{fulfillment_id}"


class ReserveResult(msgspec.Struct, frozen=True):
    ok: bool
    already: bool = False
    short_sku: str | None = None
    short_available: int = 0


class StockLevel(msgspec.Struct, frozen=True):
    node_id: str
    sku: str
    on_hand: int
    reserved: int

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


class Inventory:
    """The Lua scripts, bound to one Redis client.

    Reservations and availability reads of concurrent requests share one pipeline per turn of
    the event loop (oms.redis_batch): each stays one atomic script or command.
    """

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.batch = RedisBatcher(redis, avail_key)
        self._reserve = redis.register_script((_LUA / "reserve.lua").read_text())
        self._release = redis.register_script((_LUA / "release.lua").read_text())
        self._commit = redis.register_script((_LUA / "commit.lua").read_text())
        self._set = redis.register_script((_LUA / "set_on_hand.lua").read_text())
        for script in (self._reserve, self._release, self._commit, self._set):  # a cluster node may lack them
            self.batch.script(script.script)

    async def reserve(self, node: str, fulfillment_id: str, lines: Iterable[tuple[str, int]]) -> ReserveResult:
        """All lines at `node` or none; a retry with the same fulfilment id reserves nothing more."""
        argv: list[str | int] = []
        for sku, qty in _merge(lines).items():
            argv += [sku, qty]
        keys = [avail_key(node), reserved_key(node), record_key(node, fulfillment_id)]
        try:
            res = await self.batch.command("EVALSHA", self._reserve.sha, 3, *keys, *argv)
        except NoScriptError:  # Redis restarted and forgot the script: this call loads it
            res = await self._reserve(keys=keys, args=argv)
        code = int(res[0])
        if code == 1:
            return ReserveResult(True)
        if code == 2:
            return ReserveResult(True, already=True)
        sku = res[1].decode() if isinstance(res[1], bytes) else str(res[1])
        return ReserveResult(False, short_sku=sku, short_available=int(res[2]))

    async def release(self, node: str, fulfillment_id: str, lines: Iterable[tuple[str, int]] | None = None) -> int:
        """Give back all of a reservation (or the named lines); returns units released."""
        argv: list[str | int] = []
        for sku, qty in _merge(lines or ()).items():
            argv += [sku, qty]
        keys = [avail_key(node), reserved_key(node), record_key(node, fulfillment_id)]
        return int(await self._release(keys=keys, args=argv))

    async def commit(self, node: str, fulfillment_id: str) -> int:
        """Hand-over: on-hand and reserved go down by the reservation; returns units committed."""
        keys = [onhand_key(node), reserved_key(node), record_key(node, fulfillment_id)]
        return int(await self._commit(keys=keys, args=[]))

    async def set_on_hand(self, node: str, sku: str, on_hand: int) -> StockLevel:
        res = await self._set(keys=[onhand_key(node), reserved_key(node), avail_key(node)], args=[sku, on_hand, "set"])
        return StockLevel(node, sku, int(res[0]), int(res[1]))

    async def adjust(self, node: str, sku: str, delta: int) -> StockLevel:
        res = await self._set(keys=[onhand_key(node), reserved_key(node), avail_key(node)], args=[sku, delta, "add"])
        return StockLevel(node, sku, int(res[0]), int(res[1]))

    async def available(self, nodes: Sequence[str], skus: Sequence[str]) -> dict[str, dict[str, int]]:
        """node -> sku -> available units, for these nodes and SKUs, in one round trip."""
        return await self.batch.read_available(nodes, skus)

    async def levels(self, nodes: Sequence[str], sku: str) -> list[StockLevel]:
        pipe = self.redis.pipeline(transaction=False)
        for node in nodes:
            pipe.hget(onhand_key(node), sku)
            pipe.hget(reserved_key(node), sku)
        raw = await pipe.execute()
        return [
            StockLevel(node, sku, int(raw[2 * i] or 0), int(raw[2 * i + 1] or 0))
            for i, node in enumerate(nodes)
            if raw[2 * i] is not None or raw[2 * i + 1] is not None
        ]

    async def snapshot(self, nodes: Sequence[str]) -> dict[tuple[str, str], tuple[int, int]]:
        """(node, sku) -> (on_hand, reserved) as Redis holds them, for the given nodes."""
        pipe = self.redis.pipeline(transaction=False)
        for node in nodes:
            pipe.hgetall(onhand_key(node))
            pipe.hgetall(reserved_key(node))
        raw = await pipe.execute()
        out: dict[tuple[str, str], tuple[int, int]] = {}
        for i, node in enumerate(nodes):
            onh, res = raw[2 * i], raw[2 * i + 1]
            for sku in set(onh) | set(res):
                o, r = int(onh.get(sku, 0)), int(res.get(sku, 0))
                if o or r:
                    out[(node, sku.decode())] = (o, r)
        return out


def _merge(lines: Iterable[tuple[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = defaultdict(int)
    for sku, qty in lines:
        merged[sku] += int(qty)
    return dict(sorted(merged.items()))


async def expected_from_postgres(conn: asyncpg.Connection) -> tuple[
    dict[tuple[str, str], tuple[int, int]], dict[tuple[str, str], dict[str, int]]
]:
    """What Redis should hold: (node, sku) -> (on_hand, reserved), and (node, fid) -> record."""
    levels: dict[tuple[str, str], list[int]] = {}
    for r in await conn.fetch(Q["stock_all"]):
        levels[(r["node_id"], r["sku"])] = [r["on_hand"], 0]
    records: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for r in await conn.fetch(Q["reservations_open"]):
        levels.setdefault((r["node_id"], r["sku"]), [0, 0])[1] += r["quantity"]
        records[(r["node_id"], r["fulfillment_id"])][r["sku"]] = r["quantity"]
    return {k: (v[0], v[1]) for k, v in levels.items() if v[0] or v[1]}, dict(records)


async def rebuild(conn: asyncpg.Connection, redis: aioredis.Redis) -> int:
    """Recompute every inventory key from PostgreSQL; returns the number of (node, SKU) pairs.

    Run it with intake quiesced (start-up does): a reservation between our read and our write
    would be lost from Redis until the next rebuild.
    """
    levels, records = await expected_from_postgres(conn)
    stale = [k async for k in redis.scan_iter(match="inv:*", count=1000)]
    for i in range(0, len(stale), 500):
        # outside the pipeline: on a cluster, a multi-key UNLINK is split by slot only when sent alone
        await redis.unlink(*stale[i : i + 500])
    pipe = redis.pipeline(transaction=False)
    by_node: dict[str, tuple[dict[str, int], dict[str, int]]] = defaultdict(lambda: ({}, {}))
    for (node, sku), (on_hand, reserved) in levels.items():
        by_node[node][0][sku] = on_hand
        if reserved:
            by_node[node][1][sku] = reserved
    for node, (onh, res) in by_node.items():
        if onh:
            pipe.hset(onhand_key(node), mapping=onh)
        if res:
            pipe.hset(reserved_key(node), mapping=res)
        avail = {sku: onh.get(sku, 0) - res.get(sku, 0) for sku in set(onh) | set(res)}
        if avail:
            pipe.hset(avail_key(node), mapping=avail)
    for (node, fid), rec in records.items():
        pipe.hset(record_key(node, fid), mapping=rec)
    await pipe.execute()
    return len(levels)


async def in_step(conn: asyncpg.Connection, redis: aioredis.Redis) -> bool:
    """True when Redis holds exactly the availability PostgreSQL implies."""
    levels, records = await expected_from_postgres(conn)
    nodes = [r["id"] for r in await conn.fetch(Q["node_ids"])]
    actual = await Inventory(redis).snapshot(nodes)
    if actual != levels:
        return False
    pipe = redis.pipeline(transaction=False)
    for node in nodes:
        pipe.hgetall(avail_key(node))
    for node, avail in zip(nodes, await pipe.execute()):
        for sku, value in avail.items():
            on_hand, reserved = levels.get((node, sku.decode()), (0, 0))
            if int(value) != on_hand - reserved:
                return False
        held = {sku.decode() for sku in avail}
        if any(n == node and sku not in held for (n, sku), (o, r) in levels.items() if o - r):
            return False
    n_records = 0
    async for _ in redis.scan_iter(match="inv:*:res:*", count=1000):
        n_records += 1
    return n_records == len(records)


async def ensure_in_step(conn: asyncpg.Connection, redis: aioredis.Redis) -> bool:
    """Rebuild when Redis is empty or out of step with PostgreSQL; True when it rebuilt."""
    if await in_step(conn, redis):
        return False
    await rebuild(conn, redis)
    return True
