"""Stock availability in Redis: where units are reserved, released and committed.

Keys are hash-tagged by node (`inv:{NODE}:...`) so every script touches one Redis Cluster slot:
    inv:{N}:onhand        hash sku -> on-hand units
    inv:{N}:reserved      hash sku -> units held by open reservations
    inv:{N}:avail         hash sku -> on-hand - reserved, kept by the scripts so a read is one HMGET;
                          also the field GEN_FIELD: the node's generation marker (below)
    inv:{N}:res:<fid>     hash sku -> units of one fulfilment's reservation (its idempotency key)
    inv:{N}:holders       hash fid -> the process that made the reservation ('pg': a rebuild):
                          the index the reconciler and the repair script walk
Available = on-hand - reserved. PostgreSQL holds the same facts (`stock`, `reservations`) and
`rebuild` / the fence (oms.stock.fence) recompute these keys from it.

The generation marker is written last when a node is installed from PostgreSQL. A Redis that lost
its data (flush, failover to a lagging replica, restart without its files) has no marker, and
every script that reserves or sets stock refuses on it, as does every availability read: nothing
is decided on an empty Redis. The fence rebuilds the node and the caller tries again.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path

import asyncpg
import msgspec
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from oms.errors import StockFenced
from oms.infra.db import Q
from oms.stock.redis_batch import RedisBatcher

_LUA = Path(__file__).resolve().parent / "lua"
#: the field of `inv:{N}:avail` holding the node's generation (no SKU can hold U+0000)
GEN_FIELD = "\x00gen"


def onhand_key(node: str) -> str:
    return f"inv:{{{node}}}:onhand"


def reserved_key(node: str) -> str:
    return f"inv:{{{node}}}:reserved"


def avail_key(node: str) -> str:
    return f"inv:{{{node}}}:avail"


def holders_key(node: str) -> str:
    return f"inv:{{{node}}}:holders"


def record_prefix(node: str) -> str:
    return f"inv:{{{node}}}:res:"


def record_key(node: str, fulfillment_id: str) -> str:
    return f"inv:{{{node}}}:res:{fulfillment_id}"


def script(name: str) -> str:
    return (_LUA / f"{name}.lua").read_text()


class ReserveResult(msgspec.Struct, frozen=True):
    ok: bool
    already: bool = False
    short_sku: str | None = None
    short_available: int = 0
    #: the node's generation when reserved: a later rebuild shows as a different one
    gen: str = ""


class StockLevel(msgspec.Struct, frozen=True):
    node_id: str
    sku: str
    on_hand: int
    reserved: int

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


#: called with nodes found fenced; returns once they are rebuilt (or raises StockFenced)
Heal = Callable[[Sequence[str]], Awaitable[None]]


class Inventory:
    """The Lua scripts, bound to one Redis client.

    Reservations and availability reads of concurrent requests share one pipeline per turn of
    the event loop (oms.redis_batch): each stays one atomic script or command. `owner` names this
    process on its reservations (see oms.stock.liveness); `heal` rebuilds fenced nodes (without
    it, a fenced node is StockFenced at once).
    """

    def __init__(self, redis: aioredis.Redis, owner: str = "", heal: Heal | None = None) -> None:
        self.redis = redis
        self.owner = owner or "-"
        self.heal = heal
        self.batch = RedisBatcher(redis, avail_key)
        self._reserve = redis.register_script(script("reserve"))
        self._release = redis.register_script(script("release"))
        self._commit = redis.register_script(script("commit"))
        self._set = redis.register_script(script("set_on_hand"))
        self._confirm = redis.register_script(script("confirm"))
        for s in (self._reserve, self._release, self._commit, self._set, self._confirm):  # a cluster node may lack them
            self.batch.script(s.script)

    async def _healed(self, nodes: Sequence[str]) -> None:
        if self.heal is None:
            raise StockFenced(f"stock at {', '.join(nodes)} is not loaded in Redis (rebuild-inventory); retry")
        await self.heal(nodes)

    async def reserve(self, node: str, fulfillment_id: str, lines: Iterable[tuple[str, int]]) -> ReserveResult:
        """All lines at `node` or none; a retry with the same fulfilment id reserves nothing more."""
        argv: list[str | int] = [self.owner, fulfillment_id]
        for sku, qty in _merge(lines).items():
            argv += [sku, qty]
        keys = [avail_key(node), reserved_key(node), record_key(node, fulfillment_id), holders_key(node)]
        for attempt in range(2):
            try:
                res = await self.batch.command("EVALSHA", self._reserve.sha, 4, *keys, *argv)
            except NoScriptError:  # Redis restarted and forgot the script: this call loads it
                res = await self._reserve(keys=keys, args=argv)
            code = int(res[0])
            if code == -1:
                if attempt:
                    raise StockFenced(f"stock at {node} is being rebuilt from PostgreSQL; retry")
                await self._healed([node])
                continue
            if code in (1, 2):
                return ReserveResult(True, already=code == 2, gen=_text(res[1]))
            return ReserveResult(False, short_sku=_text(res[1]), short_available=int(res[2]))
        raise AssertionError("unreachable")

    async def confirm(self, node: str, fulfillment_id: str, lines: Iterable[tuple[str, int]], gen: str,
                      wait_s: float = 10.0) -> bool:
        """After the order's write committed: put the reservation back if a rebuild since `gen`
        lost it (its PostgreSQL read came before our commit). True when it was put back."""
        argv: list[str | int] = [gen, self.owner, fulfillment_id]
        for sku, qty in _merge(lines).items():
            argv += [sku, qty]
        keys = [avail_key(node), reserved_key(node), record_key(node, fulfillment_id), holders_key(node)]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            try:
                res = int(await self.batch.command("EVALSHA", self._confirm.sha, 4, *keys, *argv))
            except NoScriptError:
                res = int(await self._confirm(keys=keys, args=argv))
            if res >= 0:
                return res == 1
            if loop.time() > deadline:  # the reconciler re-applies it when the rebuild is done
                return False
            await asyncio.sleep(0.05)  # being rebuilt: its PostgreSQL read may miss our write

    async def release(self, node: str, fulfillment_id: str, lines: Iterable[tuple[str, int]] | None = None) -> int:
        """Give back all of a reservation (or the named lines); returns units released."""
        argv: list[str | int] = [fulfillment_id]
        for sku, qty in _merge(lines or ()).items():
            argv += [sku, qty]
        keys = [avail_key(node), reserved_key(node), record_key(node, fulfillment_id), holders_key(node)]
        return int(await self._release(keys=keys, args=argv))

    async def commit(self, node: str, fulfillment_id: str) -> int:
        """Hand-over: on-hand and reserved go down by the reservation; returns units committed."""
        keys = [onhand_key(node), reserved_key(node), record_key(node, fulfillment_id), holders_key(node)]
        return int(await self._commit(keys=keys, args=[fulfillment_id]))

    async def _set_level(self, node: str, sku: str, value: int, mode: str) -> StockLevel:
        keys = [onhand_key(node), reserved_key(node), avail_key(node)]
        for attempt in range(2):
            res = await self._set(keys=keys, args=[sku, value, mode])
            if int(res[0]) == 1:
                return StockLevel(node, sku, int(res[1]), int(res[2]))
            if attempt:
                break
            # Redis lost this node: reserved would read 0 and on-hand minus 0 would oversell;
            # rebuild it (reserved from PostgreSQL's open reservations) and set again
            await self._healed([node])
        raise StockFenced(f"stock at {node} is being rebuilt from PostgreSQL; retry")

    async def set_on_hand(self, node: str, sku: str, on_hand: int) -> StockLevel:
        return await self._set_level(node, sku, on_hand, "set")

    async def adjust(self, node: str, sku: str, delta: int) -> StockLevel:
        return await self._set_level(node, sku, delta, "add")

    async def available(self, nodes: Sequence[str], skus: Sequence[str]) -> dict[str, dict[str, int]]:
        """node -> sku -> available units, for these nodes and SKUs, in one round trip.

        A node without its generation marker is fenced: it is rebuilt first (a read of an empty
        Redis would say 0 and backorder stock that exists)."""
        if not nodes or not skus:
            return {}
        wanted = [*skus, GEN_FIELD]
        for attempt in range(2):
            got = await self.batch.read_available(nodes, wanted)
            fenced = [n for n in nodes if not got[n].pop(GEN_FIELD, 0)]
            if not fenced:
                return got
            if attempt:
                break
            await self._healed(fenced)
        raise StockFenced(f"stock at {', '.join(fenced[:5])} is being rebuilt from PostgreSQL; retry")

    async def fenced(self, nodes: Sequence[str]) -> list[str]:
        """The nodes whose generation marker is missing."""
        pipe = self.redis.pipeline(transaction=False)
        for node in nodes:
            pipe.hexists(avail_key(node), GEN_FIELD)
        return [n for n, ok in zip(nodes, await pipe.execute()) if not ok]

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


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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


class NodeStock(msgspec.Struct):
    """One node as PostgreSQL holds it: on-hand per SKU and its open reservations."""

    on_hand: dict[str, int] = msgspec.field(default_factory=dict)
    records: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)


async def stock_of_nodes(conn: asyncpg.Connection, nodes: Sequence[str] | None = None) -> dict[str, NodeStock]:
    """node -> its stock in PostgreSQL, for the given nodes (None: every node)."""
    if nodes is None:
        ids = [r["id"] for r in await conn.fetch(Q["node_ids"])]
        stock, open_ = await conn.fetch(Q["stock_all"]), await conn.fetch(Q["reservations_open"])
    else:
        ids = list(nodes)
        stock = await conn.fetch(Q["stock_of_nodes"], ids)
        open_ = await conn.fetch(Q["reservations_open_of_nodes"], ids)
    out = {n: NodeStock() for n in ids}
    for r in stock:
        out.setdefault(r["node_id"], NodeStock()).on_hand[r["sku"]] = r["on_hand"]
    for r in open_:
        out.setdefault(r["node_id"], NodeStock()).records.setdefault(r["fulfillment_id"], {})[r["sku"]] = r["quantity"]
    return out


async def run_scripts(redis: aioredis.Redis, source: str, calls: list[tuple[list[str], list[str | int]]]) -> list:
    """Run one script for many (keys, args): one pipeline on a single Redis; on a cluster (whose
    pipelines refuse scripts) concurrent calls, each routed to its keys' slot."""
    if not calls:
        return []
    sha = await redis.script_load(source)  # Redis may have lost it (flush, restart); a cluster: every primary
    if isinstance(redis, RedisCluster):
        return list(await asyncio.gather(*(redis.evalsha(sha, len(k), *k, *a) for k, a in calls)))
    pipe = redis.pipeline(transaction=False)
    for keys, args in calls:
        pipe.evalsha(sha, len(keys), *keys, *args)
    return await pipe.execute()


async def install(redis: aioredis.Redis, nodes: dict[str, NodeStock], gen: str, *, force: bool = False) -> list[str]:
    """Write each node's keys as PostgreSQL holds them, the generation marker last; returns the
    nodes installed (without `force`, a node another process installed meanwhile is left alone)."""
    calls = []
    order = list(nodes)
    for node in order:
        st = nodes[node]
        argv: list[str | int] = ["force" if force else "missing", gen, record_prefix(node), len(st.on_hand)]
        for sku, qty in st.on_hand.items():
            argv += [sku, qty]
        argv.append(len(st.records))
        for fid, lines in st.records.items():
            argv += [fid, len(lines)]
            for sku, qty in lines.items():
                argv += [sku, qty]
        calls.append(([onhand_key(node), reserved_key(node), avail_key(node), holders_key(node)], argv))
    done = await run_scripts(redis, script("install"), calls)
    return [n for n, ok in zip(order, done) if int(ok) == 1]


async def rebuild(conn: asyncpg.Connection, redis: aioredis.Redis) -> int:
    """Recompute every inventory key from PostgreSQL; returns the number of (node, SKU) pairs.

    Run it with intake quiesced (start-up does): a reservation between our read and our write
    would be lost from Redis until the reconciler puts it back. At run time the fence rebuilds
    fenced nodes itself (oms.stock.fence), safely under load.
    """
    nodes = await stock_of_nodes(conn)
    stale = [k async for k in redis.scan_iter(match="inv:*", count=1000)]
    for i in range(0, len(stale), 500):
        # outside the pipeline: on a cluster, a multi-key UNLINK is split by slot only when sent alone
        await redis.unlink(*stale[i : i + 500])
    await install(redis, nodes, new_generation(), force=True)
    await redis.set(EPOCH_KEY, new_generation())
    levels, _ = await expected_from_postgres(conn)
    return len(levels)


#: set by every full rebuild and kept by the fence: gone means all of Redis was lost, not one node
EPOCH_KEY = "oms:inv:epoch"


def new_generation() -> str:
    import secrets
    import time

    return str(int(time.time() * 1000) * 1000 + secrets.randbelow(1000))


async def in_step(conn: asyncpg.Connection, redis: aioredis.Redis) -> bool:
    """True when Redis holds exactly the availability PostgreSQL implies, every node marked."""
    levels, records = await expected_from_postgres(conn)
    nodes = [r["id"] for r in await conn.fetch(Q["node_ids"])]
    inv = Inventory(redis)
    if await inv.fenced(nodes):
        return False
    actual = await inv.snapshot(nodes)
    if actual != levels:
        return False
    pipe = redis.pipeline(transaction=False)
    for node in nodes:
        pipe.hgetall(avail_key(node))
    for node, avail in zip(nodes, await pipe.execute()):
        avail.pop(GEN_FIELD.encode(), None)
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
