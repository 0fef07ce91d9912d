"""Stock availability in Redis: where units are reserved, released and committed.

Keys are hash-tagged by node (`inv:{NODE}:...`) so every script touches one Redis Cluster slot:
    inv:{N}:onhand        hash sku -> on-hand units
    inv:{N}:reserved      hash sku -> units held by open reservations
    inv:{N}:avail         hash sku -> on-hand - reserved, kept by the scripts so a read is one HMGET;
                          also the field GEN_FIELD: the node's generation marker (below)
    inv:{N}:res:<fid>     hash sku -> units of one fulfilment's reservation (its idempotency key)
    inv:{N}:holders       hash fid -> the process that made the reservation ('pg': a rebuild):
                          the index of every record, which the reconciler's full pass pages through
    inv:{N}:recent        sorted set fid, scored by the milliseconds in the id (ids are time-ordered):
                          the records made lately, which the reconciler's fast pass reads instead of
                          the whole index. Added by reserve (and put-backs), never removed by release
                          or commit (the index says whether a record is still held): the reconciler
                          trims it to the last RECENT_KEEP_S, so it costs one ZADD per reservation.
Available = on-hand - reserved. PostgreSQL holds the same facts (`stock`, `reservations`) and
`rebuild` / the fence (oms.stock.fence) recompute these keys from it.

Stock buckets (a hot node, e.g. the central warehouse on a Redis Cluster): a node whose
`stock_buckets` K > 1 keeps its stock in K buckets, bucket k under the hash tag `{N#k}` (bucket 0
keeps `{N}`, so K = 1 is exactly the layout above), which Redis Cluster spreads over its shards.
Bucket 0's available hash also holds K (field KFIELD). On-hand is split evenly over the buckets;
a reservation tries its fulfilment's home bucket (crc32(fid) mod K), then the others in turn, each
all-or-nothing, and when no single bucket holds its lines though all together do, moves units
into the home bucket first (`move`: taken at the source, then given to the home bucket; in
between they count nowhere, so reads under-count, never over). A reservation's record lives in
the bucket that took it; release and commit look in the home bucket, then in the others. Reads
sum the buckets. Rebuilds install the whole node (all its buckets) from PostgreSQL, which knows
only node totals: records go to their home buckets and each bucket's on-hand covers its records
first, the rest split evenly.

The generation marker is written last when a node is installed from PostgreSQL. A Redis that lost
its data (flush, failover to a lagging replica, restart without its files) has no marker, and
every script that reserves or sets stock refuses on it, as does every availability read: nothing
is decided on an empty Redis. The fence rebuilds the node and the caller tries again.
"""

from __future__ import annotations

import asyncio
import time
import zlib
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
#: the field of bucket 0's `inv:{N}:avail` holding the node's number of stock buckets (absent: 1)
KFIELD = "\x00k"
#: the most buckets a node may have (PUT /nodes checks it; migration 020 too)
MAX_BUCKETS = 64


def bucket_id(node: str, k: int) -> str:
    """The hash tag of a node's bucket k: the node itself for bucket 0, else `node#k`."""
    return node if k == 0 else f"{node}#{k}"


def bucket_ids(node: str, count: int) -> list[str]:
    return [bucket_id(node, k) for k in range(count)]


def home_bucket(fulfillment_id: str, count: int) -> int:
    """The bucket a fulfilment's reservation tries first (and where a rebuild puts its record)."""
    return zlib.crc32(fulfillment_id.encode()) % count if count > 1 else 0


def split(total: int, count: int) -> list[int]:
    """`total` over `count` buckets, evenly; the remainder one each to the first buckets."""
    q, r = divmod(total, count)
    return [q + (1 if k < r else 0) for k in range(count)]


def onhand_key(node: str) -> str:
    return f"inv:{{{node}}}:onhand"


def reserved_key(node: str) -> str:
    return f"inv:{{{node}}}:reserved"


def avail_key(node: str) -> str:
    return f"inv:{{{node}}}:avail"


def holders_key(node: str) -> str:
    return f"inv:{{{node}}}:holders"


def recent_key(node: str) -> str:
    return f"inv:{{{node}}}:recent"


#: how far back the recent index keeps records (the reconciler trims it to this; install fills it)
RECENT_KEEP_S = 60.0


def fid_ms(fulfillment_id: str) -> int:
    """The milliseconds in a fulfilment id (oms.infra.ids), as the scripts score it; 0 when it is
    not one (such a record is never recent: the reconciler's full pass sees it)."""
    stamp = fulfillment_id[1:10]
    return int(stamp, 36) if stamp.isascii() and stamp.isalnum() else 0


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
    it, a fenced node is StockFenced at once). `buckets` caches each node's bucket count as Redis
    holds it (learnt on first use, refreshed by every `fenced` look, i.e. by each heal and the
    fence's watch); a stale count never oversells: buckets are separate stock, a stale reader
    sees fewer of them or a fenced one.
    """

    def __init__(self, redis: aioredis.Redis, owner: str = "", heal: Heal | None = None) -> None:
        self.redis = redis
        self.owner = owner or "-"
        self.heal = heal
        self.batch = RedisBatcher(redis, avail_key)
        self.buckets: dict[str, int] = {}
        self._wide: set[str] = set()  # nodes with more than one bucket
        self._reserve = redis.register_script(script("reserve"))
        self._release = redis.register_script(script("release"))
        self._commit = redis.register_script(script("commit"))
        self._set = redis.register_script(script("set_on_hand"))
        self._confirm = redis.register_script(script("confirm"))
        for s in (self._reserve, self._release, self._commit, self._set, self._confirm):  # a cluster node may lack them
            self.batch.script(s.script)

    # ---- bucket counts -----------------------------------------------------------------------
    def remember(self, node: str, count: int) -> None:
        self.buckets[node] = count
        if count > 1:
            self._wide.add(node)
        else:
            self._wide.discard(node)

    async def _learn(self, nodes: Sequence[str]) -> None:
        """Read the bucket count of nodes not seen yet (one batched HGET each, once per process)."""
        unknown = [n for n in nodes if n not in self.buckets]
        if unknown:
            got = await asyncio.gather(*(self.batch.command("HGET", avail_key(n), KFIELD) for n in unknown))
            for n, k in zip(unknown, got):
                self.remember(n, int(k) if k else 1)

    async def count(self, node: str) -> int:
        """The node's number of stock buckets."""
        k = self.buckets.get(node)
        if k is None:
            await self._learn([node])
            k = self.buckets[node]
        return k

    async def _healed(self, nodes: Sequence[str]) -> None:
        if self.heal is None:
            raise StockFenced(f"stock at {', '.join(nodes)} is not loaded in Redis (rebuild-inventory); retry")
        await self.heal(nodes)

    # ---- reserve -----------------------------------------------------------------------------
    async def _reserve_at(self, bucket: str, fulfillment_id: str, argv: list[str | int]) -> list:
        keys = [avail_key(bucket), reserved_key(bucket), record_key(bucket, fulfillment_id), holders_key(bucket),
                recent_key(bucket)]
        try:
            return await self.batch.command("EVALSHA", self._reserve.sha, 5, *keys, *argv)
        except NoScriptError:  # Redis restarted and forgot the script: this call loads it
            return await self._reserve(keys=keys, args=argv)

    async def reserve(self, node: str, fulfillment_id: str, lines: Iterable[tuple[str, int]]) -> ReserveResult:
        """All lines at `node` or none; a retry with the same fulfilment id reserves nothing more
        (with buckets: when the retry finds the bucket that took it first; ids are never reused)."""
        argv: list[str | int] = [self.owner, fulfillment_id]
        merged = _merge(lines)
        for sku, qty in merged.items():
            argv += [sku, qty]
        if (self.buckets.get(node) or await self.count(node)) > 1:
            return await self._reserve_spread(node, fulfillment_id, argv, merged)
        for attempt in range(2):
            res = await self._reserve_at(node, fulfillment_id, argv)
            code = int(res[0])
            if code == -1:
                if attempt:
                    raise StockFenced(f"stock at {node} is being rebuilt from PostgreSQL; retry")
                await self._healed([node])
                if self.buckets.get(node, 1) > 1:  # the heal found the node split meanwhile
                    return await self._reserve_spread(node, fulfillment_id, argv, merged)
                continue
            if code in (1, 2):
                return ReserveResult(True, already=code == 2, gen=_text(res[1]))
            return ReserveResult(False, short_sku=_text(res[1]), short_available=int(res[2]))
        raise AssertionError("unreachable")

    async def _reserve_spread(self, node: str, fid: str, argv: list[str | int], merged: dict[str, int]) -> ReserveResult:
        """A bucketed node: the home bucket, then the others in turn, then units gathered home."""
        short = ReserveResult(False)
        for attempt in range(2):
            count = self.buckets.get(node, 1)
            home = home_bucket(fid, count)
            fenced = False
            for k in [(home + i) % count for i in range(count)]:
                res = await self._reserve_at(bucket_id(node, k), fid, argv)
                code = int(res[0])
                if code == -1:
                    fenced = True
                    break
                if code in (1, 2):
                    return ReserveResult(True, already=code == 2, gen=f"{_text(res[1])}@{k}")
            if not fenced:
                # no bucket alone holds the lines: move units home when all buckets together do
                ok, short = await self._gather(node, count, home, merged)
                if not ok:
                    return short
                res = await self._reserve_at(bucket_id(node, home), fid, argv)
                code = int(res[0])
                if code in (1, 2):
                    return ReserveResult(True, already=code == 2, gen=f"{_text(res[1])}@{home}")
                if code == 0:  # taken by others meanwhile: the units stay moved, the order is short
                    return ReserveResult(False, short_sku=_text(res[1]), short_available=int(res[2]))
            if attempt:
                break
            await self._healed([node])
        raise StockFenced(f"stock at {node} is being rebuilt from PostgreSQL; retry")

    async def _gather(self, node: str, count: int, home: int, need: dict[str, int]) -> tuple[bool, ReserveResult]:
        """Move what `need` lacks in the home bucket from the other buckets into it; False (and the
        short line) when all buckets together do not hold it."""
        ids = bucket_ids(node, count)
        got = await self.batch.read_available(ids, list(need))
        plan: list[tuple[str, int, int]] = []  # (sku, from bucket, units)
        for sku, qty in need.items():
            total = sum(max(got[b][sku], 0) for b in ids)
            lack = qty - got[ids[home]][sku]
            if total < qty:
                return False, ReserveResult(False, short_sku=sku, short_available=total)
            donors = sorted((k for k in range(count) if k != home and got[ids[k]][sku] > 0),
                            key=lambda k: -got[ids[k]][sku])
            for k in donors:
                if lack <= 0:
                    break
                units = min(lack, got[ids[k]][sku])
                plan.append((sku, k, units))
                lack -= units
        moved = await asyncio.gather(*(self.move(node, sku, k, home, units) for sku, k, units in plan))
        lacking = {sku for (sku, _, units), m in zip(plan, moved) if m < units}
        if lacking:
            sku = min(lacking)
            return False, ReserveResult(False, short_sku=sku, short_available=0)
        return True, ReserveResult(True)

    async def move(self, node: str, sku: str, source: int, dest: int, units: int) -> int:
        """Move up to `units` available units of `sku` from bucket `source` to bucket `dest` of a
        node; returns units moved. Taken at the source first (one script there), then given at the
        destination (one script there): in between a read counts them nowhere, never twice."""
        if units <= 0 or source == dest:
            return 0
        res = await self._set_at(bucket_id(node, source), sku, units, "take")
        taken = int(res[3]) if int(res[0]) == 1 else 0
        if taken:
            await self._set_at(bucket_id(node, dest), sku, taken, "add")  # fenced: a rebuild sets both
        return taken

    # ---- confirm, release, commit ------------------------------------------------------------
    async def confirm(self, node: str, fulfillment_id: str, lines: Iterable[tuple[str, int]], gen: str,
                      wait_s: float = 10.0) -> bool:
        """After the order's write committed: put the reservation back if a rebuild since `gen`
        lost it (its PostgreSQL read came before our commit). True when it was put back."""
        gen, _, took = gen.partition("@")
        if gen and not took:
            # the common case, no rebuild since the reservation: the marker is still ours. Read
            # it with this turn's availability reads (one field more in a shared HMGET) instead
            # of a script per order; the script makes the same check first
            marker = (await self.batch.read_fields(node, (GEN_FIELD,)))[GEN_FIELD]
            if marker is not None and marker.decode() == gen:
                return False
        argv: list[str | int] = [gen, self.owner, fulfillment_id]
        for sku, qty in _merge(lines).items():
            argv += [sku, qty]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            bucket = node
            if took:  # a bucketed node: was the bucket that took it rebuilt since?
                count = await self.count(node)
                now = await self.batch.command("HGET", avail_key(bucket_id(node, int(took))), GEN_FIELD)
                if now is not None and _text(now) == gen:
                    return False
                if now is not None or int(took) >= count:
                    # rebuilt: a rebuild puts records in their home bucket; '' = unless fenced
                    bucket, argv[0] = bucket_id(node, home_bucket(fulfillment_id, count)), ""
                else:
                    bucket = ""  # fenced: wait
            if bucket:
                keys = [avail_key(bucket), reserved_key(bucket), record_key(bucket, fulfillment_id),
                        holders_key(bucket), recent_key(bucket)]
                try:
                    res = int(await self.batch.command("EVALSHA", self._confirm.sha, 5, *keys, *argv))
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

        async def at(bucket: str) -> int:
            keys = [avail_key(bucket), reserved_key(bucket), record_key(bucket, fulfillment_id), holders_key(bucket)]
            return int(await self._release(keys=keys, args=argv))

        return await self._where_held(node, fulfillment_id, at)

    async def commit(self, node: str, fulfillment_id: str) -> int:
        """Hand-over: on-hand and reserved go down by the reservation; returns units committed."""

        async def at(bucket: str) -> int:
            keys = [onhand_key(bucket), reserved_key(bucket), record_key(bucket, fulfillment_id), holders_key(bucket)]
            return int(await self._commit(keys=keys, args=[fulfillment_id]))

        return await self._where_held(node, fulfillment_id, at)

    async def _where_held(self, node: str, fid: str, at: Callable[[str], Awaitable[int]]) -> int:
        """Run `at` on the bucket holding the fulfilment's record: home first, then the others
        (at most one holds it; the others answer 0)."""
        count = await self.count(node)
        if count == 1:
            return await at(node)
        home = home_bucket(fid, count)
        done = await at(bucket_id(node, home))
        if done:
            return done
        return sum(await asyncio.gather(*(at(bucket_id(node, k)) for k in range(count) if k != home)))

    # ---- on-hand -----------------------------------------------------------------------------
    async def _set_at(self, bucket: str, sku: str, value: int, mode: str) -> list:
        return await self._set(keys=[onhand_key(bucket), reserved_key(bucket), avail_key(bucket)],
                               args=[sku, value, mode])

    async def _set_level(self, node: str, sku: str, value: int, mode: str) -> StockLevel:
        for attempt in range(2):
            if await self.count(node) > 1:
                if await self._set_spread(node, sku, value, mode):
                    return (await self.levels([node], sku) or [StockLevel(node, sku, 0, 0)])[0]
            else:
                res = await self._set_at(node, sku, value, mode)
                if int(res[0]) == 1:
                    return StockLevel(node, sku, int(res[1]), int(res[2]))
            if attempt:
                break
            # Redis lost this node: reserved would read 0 and on-hand minus 0 would oversell;
            # rebuild it (reserved from PostgreSQL's open reservations) and set again
            await self._healed([node])
        raise StockFenced(f"stock at {node} is being rebuilt from PostgreSQL; retry")

    async def _set_spread(self, node: str, sku: str, value: int, mode: str) -> bool:
        """Set or adjust a bucketed node's on-hand by a change per bucket: added evenly; taken from
        the buckets' available units (most first); what no bucket has available (on-hand set
        below what is reserved) is taken from bucket 0, whose available goes negative until
        releases cover it (`rebalance`). False when a bucket is fenced."""
        count = self.buckets[node]
        ids = bucket_ids(node, count)
        if mode == "set":
            pipe = self.redis.pipeline(transaction=False)
            for b in ids:
                pipe.hget(onhand_key(b), sku)
            value -= sum(int(v or 0) for v in await pipe.execute())
        if value > 0:
            got = await asyncio.gather(*(self._set_at(b, sku, share, "add")
                                         for b, share in zip(ids, split(value, count)) if share))
            return all(int(r[0]) == 1 for r in got)
        if value < 0:
            lack = -value
            avail = (await self.batch.read_available(ids, [sku]))
            for b in sorted(ids, key=lambda b: -avail[b][sku]):
                if lack <= 0 or avail[b][sku] <= 0:
                    break
                res = await self._set_at(b, sku, lack, "take")
                if int(res[0]) != 1:
                    return False
                lack -= int(res[3])
            if lack > 0:
                return int((await self._set_at(ids[0], sku, -lack, "add"))[0]) == 1
        return True

    async def set_on_hand(self, node: str, sku: str, on_hand: int) -> StockLevel:
        return await self._set_level(node, sku, on_hand, "set")

    async def adjust(self, node: str, sku: str, delta: int) -> StockLevel:
        return await self._set_level(node, sku, delta, "add")

    async def rebalance(self, node: str) -> int:
        """A bucketed node: cover buckets whose available went negative (on-hand set below what
        was reserved there) from buckets with units available; returns units moved."""
        count = await self.count(node)
        if count == 1:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for b in bucket_ids(node, count):
            pipe.hgetall(avail_key(b))
        per = [{k.decode(): int(v) for k, v in h.items() if k.decode() not in (GEN_FIELD, KFIELD)}
               for h in await pipe.execute()]
        moved = 0
        for sku in sorted({s for h in per for s, v in h.items() if v < 0}):
            for short in (k for k in range(count) if per[k].get(sku, 0) < 0):
                for k in sorted(range(count), key=lambda k: -per[k].get(sku, 0)):
                    lack = -per[short].get(sku, 0)
                    if lack <= 0 or per[k].get(sku, 0) <= 0:
                        break
                    n = await self.move(node, sku, k, short, min(lack, per[k][sku]))
                    per[k][sku] -= n
                    per[short][sku] += n
                    moved += n
        return moved

    # ---- reads -------------------------------------------------------------------------------
    async def available(self, nodes: Sequence[str], skus: Sequence[str]) -> dict[str, dict[str, int]]:
        """node -> sku -> available units, for these nodes and SKUs, in one round trip (a bucketed
        node: the sum of its buckets).

        A node without its generation marker is fenced: it is rebuilt first (a read of an empty
        Redis would say 0 and backorder stock that exists)."""
        if not nodes or not skus:
            return {}
        wanted = [*skus, GEN_FIELD]
        for attempt in range(2):
            if any(n not in self.buckets for n in nodes):
                await self._learn(nodes)
            if self._wide and not self._wide.isdisjoint(nodes):
                got = await self._available_spread(nodes, skus, wanted)
            else:
                got = await self.batch.read_available(nodes, wanted)
            fenced = [n for n in nodes if not got[n].pop(GEN_FIELD, 0)]
            if not fenced:
                return got
            if attempt:
                break
            await self._healed(fenced)
        raise StockFenced(f"stock at {', '.join(fenced[:5])} is being rebuilt from PostgreSQL; retry")

    async def _available_spread(self, nodes: Sequence[str], skus: Sequence[str],
                                wanted: list[str]) -> dict[str, dict[str, int]]:
        parts = {n: bucket_ids(n, self.buckets[n]) for n in nodes}
        raw = await self.batch.read_available([b for ids in parts.values() for b in ids], wanted)
        out = {}
        for n, ids in parts.items():
            sums = {s: sum(raw[b][s] for b in ids) for s in skus}
            sums[GEN_FIELD] = int(all(raw[b][GEN_FIELD] for b in ids))  # fenced when any bucket is
            out[n] = sums
        return out

    async def fenced(self, nodes: Sequence[str]) -> list[str]:
        """The nodes with a bucket whose generation marker is missing (refreshes bucket counts)."""
        pipe = self.redis.pipeline(transaction=False)
        for node in nodes:
            pipe.hmget(avail_key(node), [GEN_FIELD, KFIELD])
        missing = set()
        for node, (gen, k) in zip(nodes, await pipe.execute()):
            if gen is None:
                missing.add(node)  # its count is unknown until rebuilt: keep what we had
            else:
                self.remember(node, int(k) if k else 1)
        wide = [(n, b) for n in nodes if n not in missing for b in bucket_ids(n, self.buckets.get(n, 1))[1:]]
        if wide:
            pipe = self.redis.pipeline(transaction=False)
            for _, b in wide:
                pipe.hexists(avail_key(b), GEN_FIELD)
            missing |= {n for (n, _), ok in zip(wide, await pipe.execute()) if not ok}
        return [n for n in nodes if n in missing]

    async def levels(self, nodes: Sequence[str], sku: str) -> list[StockLevel]:
        await self._learn(nodes)
        units = [(node, b) for node in nodes for b in bucket_ids(node, self.buckets[node])]
        pipe = self.redis.pipeline(transaction=False)
        for _, b in units:
            pipe.hget(onhand_key(b), sku)
            pipe.hget(reserved_key(b), sku)
        raw = await pipe.execute()
        seen: dict[str, list[int]] = {}
        for i, (node, _) in enumerate(units):
            if raw[2 * i] is not None or raw[2 * i + 1] is not None:
                level = seen.setdefault(node, [0, 0])
                level[0] += int(raw[2 * i] or 0)
                level[1] += int(raw[2 * i + 1] or 0)
        return [StockLevel(node, sku, *seen[node]) for node in nodes if node in seen]

    async def snapshot(self, nodes: Sequence[str]) -> dict[tuple[str, str], tuple[int, int]]:
        """(node, sku) -> (on_hand, reserved) as Redis holds them (summed over buckets)."""
        await self._learn(nodes)
        units = [(node, b) for node in nodes for b in bucket_ids(node, self.buckets[node])]
        pipe = self.redis.pipeline(transaction=False)
        for _, b in units:
            pipe.hgetall(onhand_key(b))
            pipe.hgetall(reserved_key(b))
        raw = await pipe.execute()
        sums: dict[tuple[str, str], list[int]] = {}
        for i, (node, _) in enumerate(units):
            onh, res = raw[2 * i], raw[2 * i + 1]
            for sku in set(onh) | set(res):
                level = sums.setdefault((node, sku.decode()), [0, 0])
                level[0] += int(onh.get(sku, 0))
                level[1] += int(res.get(sku, 0))
        return {k: (o, r) for k, (o, r) in sums.items() if o or r}

    async def bucket_snapshot(self, node: str) -> list[dict[str, tuple[int, int, int]]]:
        """Per bucket of a node: sku -> (on_hand, reserved, available)."""
        ids = bucket_ids(node, await self.count(node))
        pipe = self.redis.pipeline(transaction=False)
        for b in ids:
            pipe.hgetall(onhand_key(b))
            pipe.hgetall(reserved_key(b))
            pipe.hgetall(avail_key(b))
        raw = await pipe.execute()
        out = []
        for k in range(len(ids)):
            onh, res, av = raw[3 * k], raw[3 * k + 1], raw[3 * k + 2]
            skus = {s for s in set(onh) | set(res) | set(av) if s.decode() not in (GEN_FIELD, KFIELD)}
            out.append({s.decode(): (int(onh.get(s, 0)), int(res.get(s, 0)), int(av.get(s, 0))) for s in skus})
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
    #: the node's `stock_buckets`
    buckets: int = 1

    def split(self) -> list["NodeStock"]:
        """Per bucket: each record in its home bucket; each bucket's on-hand covers its records
        first (as far as the node's on-hand goes), the rest split evenly."""
        parts = [NodeStock() for _ in range(self.buckets)]
        for fid, lines in self.records.items():
            parts[home_bucket(fid, self.buckets)].records[fid] = lines
        for sku, on_hand in self.on_hand.items():
            held = [sum(r.get(sku, 0) for r in p.records.values()) for p in parts]
            cover = []
            for h in held:  # a shortfall (reserved above on-hand) stays with the last buckets
                cover.append(min(h, on_hand - sum(cover)))
            for p, c, extra in zip(parts, cover, split(on_hand - sum(cover), self.buckets)):
                if c + extra:
                    p.on_hand[sku] = c + extra
        return parts


async def stock_of_nodes(conn: asyncpg.Connection, nodes: Sequence[str] | None = None) -> dict[str, NodeStock]:
    """node -> its stock in PostgreSQL, for the given nodes (None: every node)."""
    if nodes is None:
        ids = [r["id"] for r in await conn.fetch(Q["node_ids"])]
        stock, open_ = await conn.fetch(Q["stock_all"]), await conn.fetch(Q["reservations_open"])
    else:
        ids = list(nodes)
        stock = await conn.fetch(Q["stock_of_nodes"], ids)
        open_ = await conn.fetch(Q["reservations_open_of_nodes"], ids)
    rows = await conn.fetch(Q["node_stock_buckets"], None if nodes is None else ids)
    out = {n: NodeStock() for n in ids}
    for r in rows:
        out.setdefault(r["id"], NodeStock()).buckets = r["stock_buckets"]
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
    nodes installed (without `force`, a node another process installed meanwhile is left alone;
    a bucketed node is always installed whole: PostgreSQL knows only its totals)."""
    calls = []
    owners = []
    recent_from = int((time.time() - RECENT_KEEP_S) * 1000)
    for node, st in nodes.items():
        parts = st.split() if st.buckets > 1 else [st]
        for k, part in enumerate(parts):
            b = bucket_id(node, k)
            argv: list[str | int] = ["force" if force or st.buckets > 1 else "missing", gen, record_prefix(b),
                                     recent_from, len(part.on_hand)]
            for sku, qty in part.on_hand.items():
                argv += [sku, qty]
            argv.append(len(part.records))
            for fid, lines in part.records.items():
                argv += [fid, len(lines)]
                for sku, qty in lines.items():
                    argv += [sku, qty]
            if k == 0 and st.buckets > 1:
                argv.append(st.buckets)
            calls.append(([onhand_key(b), reserved_key(b), avail_key(b), holders_key(b), recent_key(b)], argv))
            owners.append(node)
    done = await run_scripts(redis, script("install"), calls)
    ok: dict[str, bool] = {}
    for node, d in zip(owners, done):
        ok[node] = ok.get(node, True) and int(d) == 1
    return [n for n in nodes if ok.get(n)]


async def drop_buckets(redis: aioredis.Redis, node: str, first: int, last: int) -> None:
    """Delete buckets first..last-1 of a node (left over when its bucket count went down)."""
    for k in range(first, last):
        b = bucket_id(node, k)
        fids = await redis.hkeys(holders_key(b))
        keys = [onhand_key(b), reserved_key(b), avail_key(b), holders_key(b), recent_key(b),
                *(record_prefix(b) + f.decode() for f in fids)]
        for i in range(0, len(keys), 500):  # one slot per bucket: a multi-key DEL is fine on a cluster
            await redis.delete(*keys[i:i + 500])


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
    """True when Redis holds exactly the availability PostgreSQL implies, every node (every bucket
    of it) marked, split into the bucket count PostgreSQL holds."""
    levels, records = await expected_from_postgres(conn)
    nodes = [r["id"] for r in await conn.fetch(Q["node_ids"])]
    counts = {r["id"]: r["stock_buckets"] for r in await conn.fetch(Q["node_stock_buckets"], None)}
    inv = Inventory(redis)
    if await inv.fenced(nodes):
        return False
    if any(inv.buckets.get(n, 1) != counts.get(n, 1) for n in nodes):
        return False
    actual = await inv.snapshot(nodes)
    if actual != levels:
        return False
    units = [(n, b) for n in nodes for b in bucket_ids(n, inv.buckets[n])]
    pipe = redis.pipeline(transaction=False)
    for _, b in units:
        pipe.hgetall(onhand_key(b))
        pipe.hgetall(reserved_key(b))
        pipe.hgetall(avail_key(b))
    raw = await pipe.execute()
    held: dict[tuple[str, str], int] = defaultdict(int)
    for i, (node, _) in enumerate(units):
        onh, res, avail = raw[3 * i], raw[3 * i + 1], raw[3 * i + 2]
        avail.pop(GEN_FIELD.encode(), None)
        avail.pop(KFIELD.encode(), None)
        for sku, value in avail.items():  # each bucket: available = its on-hand - its reserved
            if int(value) != int(onh.get(sku, 0)) - int(res.get(sku, 0)):
                return False
            held[(node, sku.decode())] += 1
    if any((n, sku) not in held for (n, sku), (o, r) in levels.items() if o - r):
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
