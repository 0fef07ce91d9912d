"""The reconciler: Redis and PostgreSQL agree again by themselves, every few seconds.

One process at a time holds the lease (`oms:reconciler:lease`, renewed each pass; any number of
`oms serve` processes may run it) and in each pass:
  1. looks for fenced nodes (Redis lost) and has the fence rebuild them;
  2. compares each node's reservation records in Redis (its `holders` index) with the open
     reservations in PostgreSQL, read after Redis so an order written meanwhile is not missed:
       - a record whose order PostgreSQL never got: released once its process is dead, or once
         it is older than the grace period (a write in flight is younger than that);
       - a record whose reservation PostgreSQL released or committed: released or committed
         (Redis missed it, e.g. it failed at that moment);
       - an open reservation missing in Redis: put back (a rebuild raced its write);
  3. repairs drift inside each node (reserved = sum of its records, available = on-hand -
     reserved) at once, and on-hand that differs from PostgreSQL when seen twice in a row (one
     sighting may be a stock change in flight);
  4. marks dead processes whose reservations are settled, so their claims are taken over.
A node split into stock buckets is compared as a whole (its records in whichever bucket holds
them, on-hand summed over the buckets); a bucket left with negative availability (on-hand set
below what it had reserved) is covered from the others; a bucket count in Redis that differs
from PostgreSQL's (a re-split that failed half-way) has the fence re-split the node.
What it did is counted: Prometheus `oms_reconcile_repairs_total{kind}` and `reconciler` in
/ops/summary (from the Redis hash `oms:reconcile:stats`, shared by every process).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Sequence

import asyncpg
import msgspec
import redis.asyncio as aioredis

from oms.infra.db import Q
from oms.infra.ids import id_age_s
from oms.ops import metrics
from oms.stock import inventory, liveness
from oms.stock.fence import _CONFIRM, Fence, reapply
from oms.stock.inventory import (Inventory, avail_key, bucket_ids, holders_key, onhand_key, record_key,
                                 record_prefix, reserved_key)

log = logging.getLogger("oms.reconciler")

LEASE_KEY = "oms:reconciler:lease"
STATS_KEY = "oms:reconcile:stats"
#: a reservation without an order, made by a live process, is released after this long
GRACE_S = 60.0
#: ... and by a process found dead (no heartbeat) for this long, at once
DEAD_FOR_S = 2.0
INTERVAL_S = 2.0


class PassReport(msgspec.Struct):
    fenced: int = 0
    released: int = 0
    committed: int = 0
    reapplied: int = 0
    drift: int = 0
    settled_workers: list[str] = msgspec.field(default_factory=list)


class Reconciler:
    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis, inv: Inventory, fence: Fence, *,
                 grace_s: float = GRACE_S, interval_s: float = INTERVAL_S, dead_for_s: float = DEAD_FOR_S) -> None:
        self.pool = pool
        self.redis = redis
        self.inventory = inv
        self.fence = fence
        self.grace_s = grace_s
        self.interval_s = interval_s
        self.dead_for_s = dead_for_s
        self.token = secrets.token_hex(8)
        self._missing_since: dict[str, float] = {}
        self._onhand_seen: dict[tuple[str, str], tuple[int, int]] = {}
        #: (node, fulfilment id) -> the bucket whose record index holds it, as last read
        self._where: dict[tuple[str, str], str] = {}
        self._release = redis.register_script(inventory.script("release"))
        self._commit = redis.register_script(inventory.script("commit"))
        self._repair = redis.register_script(inventory.script("repair"))

    # ---- the loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Every `interval_s`: hold (or wait for) the lease, and reconcile while holding it."""
        while True:
            try:
                if await self._lease():
                    await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - PostgreSQL or Redis away: next pass
                log.warning("reconcile pass failed: %r", exc)
            await asyncio.sleep(self.interval_s)

    async def _lease(self) -> bool:
        ttl = int(self.interval_s * 3 * 1000)
        if await self.redis.set(LEASE_KEY, self.token, nx=True, px=ttl):
            return True
        if await self.redis.get(LEASE_KEY) == self.token.encode():
            await self.redis.pexpire(LEASE_KEY, ttl)
            return True
        return False

    async def release_lease(self) -> None:
        try:
            if await self.redis.get(LEASE_KEY) == self.token.encode():
                await self.redis.delete(LEASE_KEY)
        except Exception:  # noqa: BLE001 - it expires
            pass

    # ---- one pass ----------------------------------------------------------------------------
    async def reconcile(self) -> PassReport:
        report = PassReport()
        nodes = [r["id"] for r in await self.pool.fetch(Q["node_ids"])]
        fenced = await self.fence.check(nodes)
        report.fenced = len(fenced)
        await self._rebucket(nodes, fenced)
        # Redis first, then PostgreSQL: a reservation is in Redis before its order is written,
        # so one seen in PostgreSQL but not in the earlier Redis read is checked again below
        held = await self._holders(nodes)
        async with self.pool.acquire() as conn:
            open_ = await inventory.stock_of_nodes(conn, nodes)
        orphans = [(n, fid) for n in nodes for fid in held.get(n, {}) if fid not in open_[n].records]
        lost = [(n, fid) for n in nodes for fid in open_[n].records if fid not in held.get(n, {})]
        if orphans or lost:
            rows = await self.pool.fetch(Q["reservations_by_fulfillments"], [f for _, f in orphans + lost])
            in_pg: dict[str, list[asyncpg.Record]] = defaultdict(list)
            for r in rows:
                in_pg[r["fulfillment_id"]].append(r)
            await self._settle_orphans(orphans, held, in_pg, report)
            await self._put_back(lost, in_pg, report)
        await self._repair_drift(nodes, open_, report)
        await self._settle_workers(held, report)
        await self._count(report)
        return report

    async def _rebucket(self, nodes: Sequence[str], fenced: Sequence[str]) -> None:
        """Re-split nodes whose bucket count in Redis is not PostgreSQL's."""
        counts = {r["id"]: r["stock_buckets"] for r in await self.pool.fetch(Q["node_stock_buckets"], list(nodes))}
        for n in nodes:
            if n not in fenced and counts.get(n, 1) != self.inventory.buckets.get(n, 1):
                log.warning("stock at %s is in %d bucket(s), PostgreSQL says %d: re-splitting",
                            n, self.inventory.buckets.get(n, 1), counts.get(n, 1))
                await self.fence.rebucket(n)

    def _buckets(self, node: str) -> list[str]:
        return bucket_ids(node, self.inventory.buckets.get(node, 1))

    async def _holders(self, nodes: Sequence[str]) -> dict[str, dict[str, str]]:
        """node -> fulfilment id -> owning process, over all the node's buckets."""
        units = [(n, b) for n in nodes for b in self._buckets(n)]
        pipe = self.redis.pipeline(transaction=False)
        for _, b in units:
            pipe.hgetall(holders_key(b))
        out: dict[str, dict[str, str]] = {n: {} for n in nodes}
        for (n, b), h in zip(units, await pipe.execute()):
            for k, v in h.items():
                out[n][k.decode()] = v.decode()
                self._where[(n, k.decode())] = b
        return out

    def _keys(self, node: str, fid: str, *, commit: bool = False) -> list[str]:
        """The keys of the release (or commit) script for the bucket holding the record."""
        b = self._where.get((node, fid), node)
        return [onhand_key(b) if commit else avail_key(b), reserved_key(b), record_key(b, fid), holders_key(b)]

    async def _dead(self, workers: set[str]) -> set[str]:
        """Processes with no heartbeat, continuously for `dead_for_s` as seen by this reconciler."""
        workers = {w for w in workers if w not in ("pg", "-")}
        if not workers:
            return set()
        ordered = sorted(workers)
        pipe = self.redis.pipeline(transaction=False)
        for w in ordered:
            pipe.exists(liveness.alive_key(w))
        now = time.monotonic()
        dead = set()
        for w, alive in zip(ordered, await pipe.execute()):
            if alive:
                self._missing_since.pop(w, None)
            elif now - self._missing_since.setdefault(w, now) >= self.dead_for_s:
                dead.add(w)
        return dead

    async def _settle_orphans(self, orphans: list[tuple[str, str]], held: dict[str, dict[str, str]],
                              in_pg: dict[str, list[asyncpg.Record]], report: PassReport) -> None:
        dead = await self._dead({held[n][fid] for n, fid in orphans})
        for node, fid in orphans:
            rows = in_pg.get(fid)
            if rows:
                if any(r["state"] == "reserved" for r in rows):
                    continue  # opened since our PostgreSQL read: in step
                if any(r["state"] == "committed" for r in rows):  # handed over; Redis missed the commit
                    keys = self._keys(node, fid, commit=True)
                    report.committed += int(await self._commit(keys=keys, args=[fid]) > 0)
                else:  # released in PostgreSQL (cancel, reject); Redis missed it
                    keys = self._keys(node, fid)
                    report.released += int(await self._release(keys=keys, args=[fid]) > 0)
                continue
            # no order holds it: its write failed and the release failed too, or its process died
            # between reserving and writing. A write in flight is younger than the grace period.
            age = id_age_s(fid)
            owner = held[node][fid]
            if (owner in dead and age >= self.dead_for_s) or age >= self.grace_s:
                if await self._release(keys=self._keys(node, fid), args=[fid]) > 0:
                    report.released += 1
                    log.warning("released reservation %s at %s: no order in PostgreSQL (%s, %.0f s old)",
                                fid, node, "its process died" if owner in dead else "past the grace period", age)

    async def _put_back(self, lost: list[tuple[str, str]], in_pg: dict[str, list[asyncpg.Record]],
                        report: PassReport) -> None:
        queued, calls = [], []
        for node, fid in lost:
            lines = {r["sku"]: r["quantity"] for r in in_pg.get(fid, []) if r["state"] == "reserved"}
            if lines:  # still open now: Redis lost it
                calls.append(reapply(node, fid, lines, self.inventory.buckets.get(node, 1)))
                queued.append((node, fid))
        if queued:
            for (node, fid), res in zip(queued, await inventory.run_scripts(self.redis, _CONFIRM, calls)):
                if int(res) == 1:
                    report.reapplied += 1
                    log.warning("put back reservation %s at %s: open in PostgreSQL, missing in Redis", fid, node)

    async def _repair_drift(self, nodes: Sequence[str], pg: dict[str, inventory.NodeStock],
                            report: PassReport) -> None:
        units = [(n, b) for n in nodes for b in self._buckets(n)]
        pipe = self.redis.pipeline(transaction=False)
        for _, b in units:
            pipe.hgetall(onhand_key(b))
        redis_onhand: dict[str, dict[str, int]] = {n: defaultdict(int) for n in nodes}
        for (n, _), onh in zip(units, await pipe.execute()):
            for k, v in onh.items():
                redis_onhand[n][k.decode()] += int(v)
        seen: dict[tuple[str, str], tuple[int, int]] = {}
        for n in nodes:
            for sku in set(redis_onhand[n]) | set(pg[n].on_hand):
                have, want = redis_onhand[n].get(sku, 0), pg[n].on_hand.get(sku, 0)
                if have != want:
                    seen[(n, sku)] = (have, want)
        # on-hand: only what differed the same way last pass too (a stock change may be in flight)
        confirmed = {k: v for k, v in seen.items() if self._onhand_seen.get(k) == v}
        self._onhand_seen = seen
        by_node: dict[str, list[str | int]] = defaultdict(list)
        for (n, sku), (have, want) in confirmed.items():
            if len(self._buckets(n)) > 1:  # a bucketed node: the difference, spread over its buckets
                await self.inventory.adjust(n, sku, want - have)
                report.drift += 1
            else:
                by_node[n] += [sku, want]
        results = await inventory.run_scripts(self.redis, self._repair.script, [
            ([onhand_key(b), reserved_key(b), avail_key(b), holders_key(b)], [record_prefix(b), *by_node.get(b, [])])
            for _, b in units])
        for (n, b), fixed in zip(units, results):
            if int(fixed) > 0:
                report.drift += int(fixed)
                log.warning("repaired %d drifted field(s) of the stock at %s", int(fixed), b)
        for n in {n for n in nodes if len(self._buckets(n)) > 1}:
            moved = await self.inventory.rebalance(n)
            if moved:
                log.warning("moved %d unit(s) between the stock buckets of %s to cover a short bucket", moved, n)

    async def _settle_workers(self, held: dict[str, dict[str, str]], report: PassReport) -> None:
        """Dead processes with no record left in Redis are settled: their claims may be taken over."""
        workers = {m.decode() for m in await self.redis.smembers(liveness.WORKERS_KEY)}
        dead = await self._dead(workers)
        if not dead:
            return
        holders = await self._holders(list(held))
        theirs = {fid: w for h in holders.values() for fid, w in h.items() if w in dead}
        open_ = {r["fulfillment_id"] for r in await self.pool.fetch(Q["reservations_by_fulfillments"], list(theirs))
                 if r["state"] == "reserved"} if theirs else set()
        still = {w for fid, w in theirs.items() if fid not in open_}  # records no order holds yet
        pipe = self.redis.pipeline(transaction=False)
        for w in sorted(dead - still):
            pipe.set(liveness.reconciled_key(w), 1, ex=liveness.RECONCILED_TTL_S)
            pipe.srem(liveness.WORKERS_KEY, w)
            report.settled_workers.append(w)
        await pipe.execute()
        for w in report.settled_workers:
            self._missing_since.pop(w, None)
            log.warning("process %s died; its reservations are settled and its claims released", w)

    async def _count(self, report: PassReport) -> None:
        for kind in ("released", "committed", "reapplied", "drift"):
            metrics.reconciled(kind, getattr(report, kind))
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrby(STATS_KEY, "passes", 1)
        for kind in ("released", "committed", "reapplied", "drift"):
            if getattr(report, kind):
                pipe.hincrby(STATS_KEY, kind, getattr(report, kind))
        pipe.hset(STATS_KEY, "last_pass_at", f"{time.time():.3f}")
        await pipe.execute()


async def stats(redis: aioredis.Redis) -> dict[str, float]:
    """What the reconcilers have done so far (all processes, since Redis last lost its data)."""
    raw = await redis.hgetall(STATS_KEY)
    return {k.decode(): float(v) for k, v in raw.items()}
