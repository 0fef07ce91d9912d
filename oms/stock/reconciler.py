"""The reconciler: Redis and PostgreSQL agree again by themselves, every few seconds.

One process at a time holds the lease (`oms:reconciler:lease`, renewed each pass; any number of
`oms serve` processes may run it). Every pass (`INTERVAL_S`) it looks for fenced nodes (Redis
lost) and has the fence rebuild them, re-splits nodes whose bucket count in Redis is not
PostgreSQL's, and then runs either a fast pass or a full one. What each must find follows from
the direction of the divergence:

OVERSELL direction, found by every pass (the fast one costs O(SKUs x nodes + reservations made
in the last `recent_s`), however many reservations are open — a sale day leaves a million at the
central warehouse waiting for picking):
  - an open reservation missing in Redis: put back. A rebuild that raced its write, or a failover
    that lost the last writes, concern RECENT reservations: the fast pass reads PostgreSQL's
    open reservations whose fulfilment id is younger than `recent_s` (ids carry their
    milliseconds, so that is a range of the primary key) and Redis's recent index
    (`inv:{N}:recent`, a sorted set reserve adds to; oms.stock.inventory) and compares them;
  - on-hand in Redis that differs from PostgreSQL's, seen twice the same way in a row (one
    sighting may be a stock change in flight): set (per node and SKU);
  - available != on-hand - reserved: set at once (per SKU; repair.lua, no record walk).
  - a record of a process found dead that no order holds (its write was in flight: recent by
    nature) is released at once, and one of a live process past the grace period (a write
    in flight is younger than that): the fast pass remembers every recent record no order holds
    yet (`_suspects`) and looks at those again each pass by id, so the timing is as before.
UNDERSELL direction (units held, never sold twice), left to the FULL pass (every `full_s`, also
right after a fence rebuild or a re-split, when a fast pass repaired something, and as the first
pass of a new lease holder), which pages through every record without blocking Redis (HSCAN of
the index, one script per page summing the records: `sum_records.lua`) and reads every open
reservation from PostgreSQL (a cursor):
  - a record whose reservation PostgreSQL released or committed (Redis missed it, any age):
    released or committed; a record no order holds, of any age: as above;
  - an old open reservation missing in Redis: put back (as in the fast pass);
  - reserved != the sum of the records (a script failed half-way): the walk sums the records made
    before its cut-off and `tally.lua` reads, at one instant, reserved and the records made since.
    Old records only shrink or go during the walk, so the difference is never larger than the
    true one when reserved is too high; a difference is applied only when two consecutive full
    passes saw it the same (a confirming full pass follows a first sighting at once), as a delta
    (`shift.lua`: HINCRBY, never an overwrite from a walk that was not atomic), and a decrease
    never takes reserved below what PostgreSQL holds open there, so available never exceeds
    on-hand minus that.
Finally it marks dead processes whose reservations are settled, so their claims are taken over.
Measured (`loadtests/reconcile_bench.py`, README "Measured"): the old pass cost grew with the open
reservations (Redis blocked for the whole record walk inside repair.lua, every 2 s); the fast pass
stays flat. Tried and not taken: the record index split by the minute in the fid (no extra write
on the hot path, but every script's index key changes, which an old and a new process running
side by side during a rolling deploy would disagree on: the old reconciler's repair would recompute
reserved from an index missing the new records, an oversell); the recent index is additive, so
old processes keep working and their reservations are seen by the full pass.
A node split into stock buckets is compared as a whole (its records in whichever bucket holds
them, on-hand summed over the buckets); a bucket left with negative availability (on-hand set
below what it had reserved) is covered from the others.
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
from oms.infra.ids import _b36, id_age_s
from oms.ops import metrics
from oms.stock import inventory, liveness
from oms.stock.fence import _CONFIRM, Fence, reapply
from oms.stock.inventory import (RECENT_KEEP_S, Inventory, avail_key, bucket_ids, fid_ms, holders_key, home_bucket,
                                 onhand_key, recent_key, record_key, record_prefix, reserved_key)

log = logging.getLogger("oms.reconciler")

LEASE_KEY = "oms:reconciler:lease"
STATS_KEY = "oms:reconcile:stats"
#: a reservation without an order, made by a live process, is released after this long
GRACE_S = 60.0
#: ... and by a process found dead (no heartbeat) for this long, at once
DEAD_FOR_S = 2.0
INTERVAL_S = 2.0
#: seconds between full passes (the fast ones between them look at recent reservations only)
FULL_S = 60.0
#: how far back a fast pass looks: covers a write's way from reserving to committing and a
#: replica's lag at failover, many times over
RECENT_S = 20.0
#: the prefix of fulfilment ids (oms.orders.allocate), and the next one: the bounds of their range
FID_PREFIX, FID_END = "f", "g"
#: index entries per HSCAN page / records per summing script in the full walk
PAGE = 1000


class PassReport(msgspec.Struct):
    fenced: int = 0
    released: int = 0
    committed: int = 0
    reapplied: int = 0
    drift: int = 0
    settled_workers: list[str] = msgspec.field(default_factory=list)
    #: a full pass (every record) rather than a fast one
    full: bool = False
    #: reservation records (index entries) read from Redis, and reservation rows from PostgreSQL
    records_read: int = 0
    pg_rows_read: int = 0


class _Seen(msgspec.Struct):
    """What one pass read: node -> fulfilment id -> owning process (Redis), node -> open
    fulfilment ids (PostgreSQL), node -> sku -> on-hand (PostgreSQL)."""

    held: dict[str, dict[str, str]]
    open_: dict[str, set[str]]
    on_hand: dict[str, dict[str, int]]


class Reconciler:
    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis, inv: Inventory, fence: Fence, *,
                 grace_s: float = GRACE_S, interval_s: float = INTERVAL_S, dead_for_s: float = DEAD_FOR_S,
                 full_s: float = FULL_S, recent_s: float = RECENT_S) -> None:
        self.pool = pool
        self.redis = redis
        self.inventory = inv
        self.fence = fence
        self.grace_s = grace_s
        self.interval_s = interval_s
        self.dead_for_s = dead_for_s
        self.full_s = full_s
        self.recent_s = min(recent_s, RECENT_KEEP_S / 2)  # the index keeps twice that
        self.token = secrets.token_hex(8)
        self._missing_since: dict[str, float] = {}
        self._onhand_seen: dict[tuple[str, str], tuple[int, int]] = {}
        #: (bucket, sku) -> reserved minus the sum of the records, as the last full pass saw it
        self._sum_seen: dict[tuple[str, str], int] = {}
        #: (node, fulfilment id) -> the bucket whose record index holds it, as last read
        self._where: dict[tuple[str, str], str] = {}
        #: (node, fulfilment id) -> owner: records seen with no order holding them yet
        self._suspects: dict[tuple[str, str], str] = {}
        self._next_full = 0.0  # the first pass is a full one
        self._confirming = False
        self._release = redis.register_script(inventory.script("release"))
        self._commit = redis.register_script(inventory.script("commit"))
        self._sum = redis.register_script(inventory.script("sum_records"))

    # ---- the loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Every `interval_s`: hold (or wait for) the lease, and reconcile while holding it."""
        while True:
            try:
                if await self._lease():
                    await self.reconcile()
                else:
                    self._next_full = 0.0  # whoever holds it now, we start with a full pass when we get it
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
    async def reconcile(self, full: bool | None = None) -> PassReport:
        """One pass: a full one when `full`, or (None) when one is due."""
        report = PassReport()
        nodes = [r["id"] for r in await self.pool.fetch(Q["node_ids"])]
        fenced = await self.fence.check(nodes)
        report.fenced = len(fenced)
        resplit = await self._rebucket(nodes, fenced)
        if full is None:
            full = bool(fenced or resplit) or time.monotonic() >= self._next_full
        report.full = full
        if full:
            seen = await self._full(nodes, report)
        else:
            seen = await self._fast(nodes, report)
        await self._repair_drift(nodes, seen.on_hand, report)
        await self._settle_workers(seen.held, report)
        await self._count(report)
        if full:
            # a first sighting of a record-sum difference is confirmed (or not) by the next pass
            again = bool(self._sum_seen) and not self._confirming
            self._confirming = again
            self._next_full = time.monotonic() + (0 if again else self.full_s)
        elif report.released or report.committed or report.reapplied or report.drift:
            self._next_full = 0.0  # something was wrong: look at everything next
        return report

    async def _rebucket(self, nodes: Sequence[str], fenced: Sequence[str]) -> bool:
        """Re-split nodes whose bucket count in Redis is not PostgreSQL's; True when one was."""
        counts = {r["id"]: r["stock_buckets"] for r in await self.pool.fetch(Q["node_stock_buckets"], list(nodes))}
        done = False
        for n in nodes:
            if n not in fenced and counts.get(n, 1) != self.inventory.buckets.get(n, 1):
                log.warning("stock at %s is in %d bucket(s), PostgreSQL says %d: re-splitting",
                            n, self.inventory.buckets.get(n, 1), counts.get(n, 1))
                await self.fence.rebucket(n)
                done = True
        return done

    def _buckets(self, node: str) -> list[str]:
        return bucket_ids(node, self.inventory.buckets.get(node, 1))

    def _units(self, nodes: Sequence[str]) -> list[tuple[str, str]]:
        return [(n, b) for n in nodes for b in self._buckets(n)]

    # ---- the fast pass -----------------------------------------------------------------------
    async def _fast(self, nodes: Sequence[str], report: PassReport) -> _Seen:
        """Recent records against recent open reservations, and the suspects of earlier passes."""
        now_ms = int(time.time() * 1000)
        since = now_ms - int(self.recent_s * 1000)
        units = self._units(nodes)
        # Redis first, then PostgreSQL: a reservation is in Redis before its order is written,
        # so one seen in PostgreSQL but not in the earlier Redis read is checked again below
        got = await inventory.run_scripts(self.redis, _RECENT, [
            ([recent_key(b), holders_key(b)], [since, now_ms - int(RECENT_KEEP_S * 1000)]) for _, b in units])
        held: dict[str, dict[str, str]] = {n: {} for n in nodes}
        for (n, b), flat in zip(units, got):
            for i in range(0, len(flat), 2):
                fid = flat[i].decode()
                held[n][fid] = flat[i + 1].decode()
                self._where[(n, fid)] = b
            report.records_read += len(flat) // 2
        await self._look_at_suspects(held, report)
        cutoff = FID_PREFIX + _b36(since, 9)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(Q["reservations_open_since"], list(nodes), cutoff, FID_END)
            on_hand = await self._on_hand(conn, nodes)
        report.pg_rows_read += len(rows)
        open_: dict[str, set[str]] = {n: set() for n in nodes}
        for r in rows:
            open_.setdefault(r["node_id"], set()).add(r["fulfillment_id"])
        recent_held = {n: {f for f in h if fid_ms(f) >= since} for n, h in held.items()}
        lost = await self._indexed_elsewhere(
            [(n, fid) for n in nodes for fid in open_[n] if fid not in recent_held[n]], held)
        await self._settle(nodes, held, open_, lost, report)
        return _Seen(held, open_, on_hand)

    async def _indexed_elsewhere(self, lost: list[tuple[str, str]], held: dict[str, dict[str, str]]) -> list[tuple[str, str]]:
        """Of open reservations the recent index lacks, those no bucket's record index holds either
        (one made by a process of the version before the recent index is indexed all the same)."""
        if not lost:
            return lost
        asks = [(n, fid, b) for n, fid in lost for b in self._buckets(n)]
        pipe = self.redis.pipeline(transaction=False)
        for _, fid, b in asks:
            pipe.hget(holders_key(b), fid)
        for (n, fid, b), owner in zip(asks, await pipe.execute()):
            if owner is not None:
                held[n][fid] = owner.decode()
                self._where[(n, fid)] = b
        return [(n, fid) for n, fid in lost if fid not in held[n]]

    async def _look_at_suspects(self, held: dict[str, dict[str, str]], report: PassReport) -> None:
        """Add the suspects older than the recent window to `held`, when their record is still there."""
        older = [(n, fid) for n, fid in self._suspects if n in held and fid not in held[n]]
        if not older:
            return
        pipe = self.redis.pipeline(transaction=False)
        for n, fid in older:
            pipe.hget(holders_key(self._where.get((n, fid), n)), fid)
        for (n, fid), owner in zip(older, await pipe.execute()):
            if owner is None:
                self._suspects.pop((n, fid), None)  # released or committed since
            else:
                held[n][fid] = owner.decode()
        report.records_read += len(older)

    async def _on_hand(self, conn: asyncpg.Connection, nodes: Sequence[str]) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {n: {} for n in nodes}
        for r in await conn.fetch(Q["stock_of_nodes"], list(nodes)):
            out.setdefault(r["node_id"], {})[r["sku"]] = r["on_hand"]
        return out

    # ---- what both passes settle ---------------------------------------------------------------
    async def _settle(self, nodes: Sequence[str], held: dict[str, dict[str, str]], open_: dict[str, set[str]],
                      lost: list[tuple[str, str]], report: PassReport) -> None:
        """Records no open reservation holds are settled, open reservations Redis lacks put back."""
        orphans = [(n, fid) for n in nodes for fid in held.get(n, {}) if fid not in open_[n]]
        suspects: dict[tuple[str, str], str] = {}
        if orphans or lost:
            rows = await self.pool.fetch(Q["reservations_by_fulfillments"], [f for _, f in orphans + lost])
            report.pg_rows_read += len(rows)
            in_pg: dict[str, list[asyncpg.Record]] = defaultdict(list)
            for r in rows:
                in_pg[r["fulfillment_id"]].append(r)
            suspects = await self._settle_orphans(orphans, held, in_pg, report)
            await self._put_back(lost, in_pg, report)
        for key in [k for k in self._suspects if k[0] in held]:
            if key not in suspects and (key[1] in held[key[0]] or report.full):
                del self._suspects[key]  # settled, or its order came
        self._suspects.update(suspects)

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
                              in_pg: dict[str, list[asyncpg.Record]], report: PassReport) -> dict[tuple[str, str], str]:
        """Returns the records left alone because their order may still come (the suspects)."""
        dead = await self._dead({held[n][fid] for n, fid in orphans})
        waiting: dict[tuple[str, str], str] = {}
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
            else:
                waiting[(node, fid)] = owner
        return waiting

    async def _put_back(self, lost: list[tuple[str, str]], in_pg: dict[str, list[asyncpg.Record]],
                        report: PassReport) -> None:
        queued, calls = [], []
        for node, fid in lost:
            lines = {r["sku"]: r["quantity"] for r in in_pg.get(fid, []) if r["state"] == "reserved"}
            if lines:  # still open now: Redis lost it (confirm.lua does nothing when it is there)
                calls.append(reapply(node, fid, lines, self.inventory.buckets.get(node, 1)))
                queued.append((node, fid))
        if queued:
            for (node, fid), res in zip(queued, await inventory.run_scripts(self.redis, _CONFIRM, calls)):
                if int(res) == 1:
                    report.reapplied += 1
                    log.warning("put back reservation %s at %s: open in PostgreSQL, missing in Redis", fid, node)

    # ---- the full pass -----------------------------------------------------------------------
    async def _full(self, nodes: Sequence[str], report: PassReport) -> _Seen:
        """Every record against every open reservation, and reserved against the records' sum."""
        cut = int((time.time() - self.recent_s) * 1000)
        units = self._units(nodes)
        self._where = {}
        held: dict[str, dict[str, str]] = {n: {} for n in nodes}
        old_sums: dict[str, dict[str, int]] = {}
        for n, b in units:
            old_sums[b] = await self._walk(n, b, cut, held[n], report)
        tallies = await inventory.run_scripts(self.redis, _TALLY, [
            ([avail_key(b), reserved_key(b), recent_key(b)], [record_prefix(b), cut]) for _, b in units])
        # PostgreSQL after Redis (see the fast pass); what it holds open per bucket is the floor a
        # decrease of reserved stops at
        open_: dict[str, set[str]] = {n: set() for n in nodes}
        floor: dict[tuple[str, str], int] = defaultdict(int)
        async with self.pool.acquire() as conn:
            async with conn.transaction(readonly=True):
                async for r in conn.cursor(Q["reservations_open_of_nodes"], list(nodes), prefetch=5000):
                    n, fid = r["node_id"], r["fulfillment_id"]
                    open_.setdefault(n, set()).add(fid)
                    b = self._where.get((n, fid)) or inventory.bucket_id(n, home_bucket(fid, len(self._buckets(n))))
                    floor[(b, r["sku"])] += r["quantity"]
                    report.pg_rows_read += 1
            on_hand = await self._on_hand(conn, nodes)
        lost = [(n, fid) for n in nodes for fid in open_[n] if fid not in held[n]]
        await self._settle(nodes, held, open_, lost, report)
        await self._shift(units, old_sums, tallies, floor, report)
        return _Seen(held, open_, on_hand)

    async def _walk(self, node: str, bucket: str, cut: int, held: dict[str, str], report: PassReport) -> dict[str, int]:
        """Page through a bucket's record index (HSCAN: Redis serves others between pages) into
        `held`; returns the units of the records made before `cut`, per SKU."""
        sums: dict[str, int] = defaultdict(int)
        cursor = 0
        while True:
            cursor, page = await self.redis.hscan(holders_key(bucket), cursor, count=PAGE)
            old = []
            for k, v in page.items():
                fid = k.decode()
                if fid in held:
                    continue  # HSCAN may return an entry twice
                held[fid] = v.decode()
                self._where[(node, fid)] = bucket
                if fid_ms(fid) < cut:
                    old.append(fid)
            report.records_read += len(page)
            if old:
                flat = await self._sum_records(bucket, old)
                gone = flat.index(b"")
                for i in range(0, gone, 2):
                    sums[flat[i].decode()] += int(flat[i + 1])
                for fid in flat[gone + 1:]:
                    held.pop(fid.decode(), None)
            if int(cursor) == 0:
                return sums

    async def _sum_records(self, bucket: str, fids: list[str]) -> list:
        return await self._sum(keys=[holders_key(bucket)], args=[record_prefix(bucket), *fids])

    async def _shift(self, units: list[tuple[str, str]], old_sums: dict[str, dict[str, int]], tallies: list,
                     floor: dict[tuple[str, str], int], report: PassReport) -> None:
        """Reserved against the records' sum, per bucket: repaired by the difference seen twice."""
        seen: dict[tuple[str, str], int] = {}
        gens: dict[str, str] = {}
        for (_, b), (gen, res_flat, recent_flat) in zip(units, tallies):
            if not gen:
                continue  # fenced: the rebuild sets everything
            gens[b] = gen.decode()
            want = defaultdict(int, old_sums[b])
            for i in range(0, len(recent_flat), 2):
                want[recent_flat[i].decode()] += int(recent_flat[i + 1])
            reserved = {res_flat[i].decode(): int(res_flat[i + 1]) for i in range(0, len(res_flat), 2)}
            for sku in set(want) | set(reserved):
                diff = want.get(sku, 0) - reserved.get(sku, 0)
                if diff:
                    seen[(b, sku)] = diff
        confirmed = {k: d for k, d in seen.items() if self._sum_seen.get(k) == d}
        self._sum_seen = {k: d for k, d in seen.items() if k not in confirmed}
        by_bucket: dict[str, list[str | int]] = defaultdict(list)
        for (b, sku), d in sorted(confirmed.items()):
            by_bucket[b] += [sku, d, floor.get((b, sku), 0)]
        calls = [([avail_key(b), reserved_key(b)], [gens[b], *args]) for b, args in by_bucket.items()]
        for (b, _), moved in zip(calls, await inventory.run_scripts(self.redis, _SHIFT, calls)):
            if int(moved) > 0:
                report.drift += int(moved)
                log.warning("moved reserved of %d SKU(s) at %s to the sum of its reservation records", int(moved), b)

    # ---- on-hand and available (both passes: O(SKUs)) -------------------------------------------
    async def _repair_drift(self, nodes: Sequence[str], pg_on_hand: dict[str, dict[str, int]],
                            report: PassReport) -> None:
        units = self._units(nodes)
        pipe = self.redis.pipeline(transaction=False)
        for _, b in units:
            pipe.hgetall(onhand_key(b))
        redis_onhand: dict[str, dict[str, int]] = {n: defaultdict(int) for n in nodes}
        for (n, _), onh in zip(units, await pipe.execute()):
            for k, v in onh.items():
                redis_onhand[n][k.decode()] += int(v)
        seen: dict[tuple[str, str], tuple[int, int]] = {}
        for n in nodes:
            want_n = pg_on_hand.get(n, {})
            for sku in set(redis_onhand[n]) | set(want_n):
                have, want = redis_onhand[n].get(sku, 0), want_n.get(sku, 0)
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
        results = await inventory.run_scripts(self.redis, _REPAIR, [
            ([onhand_key(b), reserved_key(b), avail_key(b)], by_node.get(b, [])) for _, b in units])
        for (n, b), fixed in zip(units, results):
            if int(fixed) > 0:
                report.drift += int(fixed)
                log.warning("repaired %d drifted field(s) of the stock at %s", int(fixed), b)
        for n in {n for n in nodes if len(self._buckets(n)) > 1}:
            moved = await self.inventory.rebalance(n)
            if moved:
                log.warning("moved %d unit(s) between the stock buckets of %s to cover a short bucket", moved, n)

    # ---- processes ---------------------------------------------------------------------------
    async def _settle_workers(self, held: dict[str, dict[str, str]], report: PassReport) -> None:
        """Dead processes with no record left in Redis that no order holds are settled: their
        claims may be taken over. Their records in flight are recent, or suspects of earlier
        passes: `held` (what this pass read) has them."""
        workers = {m.decode() for m in await self.redis.smembers(liveness.WORKERS_KEY)}
        dead = await self._dead(workers)
        if not dead:
            return
        theirs = [(n, fid, w) for n, h in held.items() for fid, w in h.items() if w in dead]
        still: set[str] = set()
        if theirs:
            pipe = self.redis.pipeline(transaction=False)
            for n, fid, _ in theirs:
                pipe.hexists(holders_key(self._where.get((n, fid), n)), fid)
            kept = [(n, fid, w) for (n, fid, w), there in zip(theirs, await pipe.execute()) if there]
            open_ = {r["fulfillment_id"] for r in await self.pool.fetch(
                Q["reservations_by_fulfillments"], [fid for _, fid, _ in kept])
                if r["state"] == "reserved"} if kept else set()
            still = {w for _, fid, w in kept if fid not in open_}  # records no order holds yet
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
        if report.full:
            pipe.hincrby(STATS_KEY, "full_passes", 1)
        for kind in ("released", "committed", "reapplied", "drift"):
            if getattr(report, kind):
                pipe.hincrby(STATS_KEY, kind, getattr(report, kind))
        pipe.hset(STATS_KEY, "last_pass_at", f"{time.time():.3f}")
        await pipe.execute()


_RECENT = inventory.script("recent")
_REPAIR = inventory.script("repair")
_TALLY = inventory.script("tally")
_SHIFT = inventory.script("shift")


async def stats(redis: aioredis.Redis) -> dict[str, float]:
    """What the reconcilers have done so far (all processes, since Redis last lost its data)."""
    raw = await redis.hgetall(STATS_KEY)
    return {k.decode(): float(v) for k, v in raw.items()}
