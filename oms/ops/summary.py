"""The ops summary: what the sale looks like right now, read from PostgreSQL and Redis.

Nothing here comes from one process's memory, so every worker answers the same: order counts,
GMV, backorders and store load are queries (sql/queries/ops.sql), routing p50/p99 come from
the Redis list every process pushes its decision times to (oms.metrics.record_routing), and
the oversell check reads both PostgreSQL (the system of record) and Redis availability.

Its cost does not grow with the day's orders: counts come from rollups that triggers keep on the
write path (per minute and channel, per hour and SKU, per backorder kind, per node; see
sql/migrations/017_ops_rollups.sql), and the live lists are bounded index reads (the at-risk list
reads only the open orders due within their node's horizon, not every open fulfilment).

The summary is cached in Redis for a second (SUMMARY_CACHE_MS), so a room full of wall screens
and several workers cost PostgreSQL one set of queries per second, not one per screen. Its reads
run on the read replica when OMS_DATABASE_READ_URL names one (oms.infra.reads); the one write,
folding the rollups, runs on the primary, at most once a second (fold_rollups).
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections import OrderedDict
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import h3
import msgspec
from prometheus_client.core import GaugeMetricFamily

from oms.channels.outbox import SyncFigures, figures as sync_figures
from oms.infra.db import Q, connection_lost
from oms.network.promise import PromiseClock
from oms.ops import metrics
from oms.stock.inventory import Inventory
from oms.stock.reconciler import stats as reconciler_stats
from routing import distance_m

#: the day of a sale starts at midnight China time (no daylight saving there)
SALE_TZ = timezone(timedelta(hours=8))
WINDOW_MINUTES = 60
#: how many at-risk fulfilments the summary lists (least time left first)
AT_RISK_LISTED = 50
SUMMARY_CACHE_KEY = "ops:summary:v1"
SUMMARY_CACHE_MS = 1000
#: the rollups are folded at most this often (fold_rollups), whoever asks
FOLD_THROTTLE_KEY = "ops:fold:recent"
FOLD_EVERY_MS = 1000
MAP_RADIUS_M = 60_000


# ---- the shapes -----------------------------------------------------------------------------

class Window(msgspec.Struct, kw_only=True):
    """Orders and GMV over the chart's window (the last hour)."""

    orders: int = 0
    gmv_fen: int = 0


class Totals(msgspec.Struct, kw_only=True):
    orders: int = 0
    gmv_fen: int = 0
    accepted: int = 0
    backordered: int = 0
    cancelled: int = 0


class ChannelTotals(Totals, kw_only=True):
    channel: str


class OrdersPerMinute(msgspec.Struct, kw_only=True):
    """`minutes[i]` is the start of minute i (UTC); `series[channel][i]` the orders created in it."""

    minutes: list[datetime]
    series: dict[str, list[int]]
    total: list[int]
    gmv_fen: list[int]


class BackorderReason(msgspec.Struct, kw_only=True):
    reason: str  # the kind of reason (names and lists taken out)
    orders: int
    example: str | None = None  # the latest full reason of this kind


class Backorder(msgspec.Struct, kw_only=True):
    order_id: str
    channel: str
    external_id: str
    reason: str | None
    created_at: datetime


class Backorders(msgspec.Struct, kw_only=True):
    open: int
    reasons: list[BackorderReason]
    recent: list[Backorder]


class RanOut(msgspec.Struct, kw_only=True):
    node_id: str
    name: str
    kind: str


class OutOfStock(msgspec.Struct, kw_only=True):
    """A SKU whose lines were backordered today: where it ran out (nodes that stock it and have
    none available now) and how much is still available elsewhere, with the latest line's reason."""

    sku: str
    name: str
    lines: int
    units: int
    orders: int
    available_now: int
    ran_out_at: list[RanOut] = []
    ran_out_count: int = 0
    example: str | None = None


class StoreLoad(msgspec.Struct, kw_only=True):
    node_id: str
    name: str
    kind: str
    city: str | None
    lat: float
    lng: float
    capacity_per_hour: int
    open_picks: int = 0
    to_pick: int = 0
    picked: int = 0
    at_risk: int = 0
    late: int = 0


class AtRisk(msgspec.Struct, kw_only=True):
    order_id: str
    fulfillment_id: str
    channel: str
    external_id: str
    delivery_mode: str
    node_id: str
    node_name: str
    status: str
    promised_by: datetime
    minutes_left: float
    pick_minutes: float


class Routing(msgspec.Struct, kw_only=True):
    samples: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None


class OversoldPair(msgspec.Struct, kw_only=True):
    node_id: str
    sku: str
    on_hand: int
    reserved: int


class Oversell(msgspec.Struct, kw_only=True):
    """`count`: (node, SKU) pairs with reserved + committed > on-hand in PostgreSQL (must be 0);
    `redis_count`: the same check on Redis availability. `ok` only when both are 0."""

    ok: bool
    count: int
    postgres: list[OversoldPair]
    redis_count: int
    redis: list[OversoldPair]


class Assumptions(msgspec.Struct, kw_only=True):
    delivery_promise_minutes: int
    courier_minutes: int
    #: per order at a node that states no capacity (others pick one order in 60 / capacity minutes)
    picking_minutes: float


class Reconciliation(msgspec.Struct, kw_only=True):
    """What the reconciler put right between Redis and PostgreSQL (oms.stock.reconciler)."""

    passes: int = 0
    drift_repaired: int = 0
    released: int = 0
    reapplied: int = 0
    committed: int = 0
    last_pass_at: datetime | None = None


class Summary(msgspec.Struct, kw_only=True):
    generated_at: datetime
    since: datetime
    window_minutes: int
    totals: Totals
    last_hour: Window
    channels: list[ChannelTotals]
    orders_per_minute: OrdersPerMinute
    backorders: Backorders
    out_of_stock: list[OutOfStock]
    stores: list[StoreLoad]
    open_picks: int
    at_risk_total: int
    at_risk: list[AtRisk]
    routing: Routing
    oversell: Oversell
    map_version: str
    assumptions: Assumptions
    #: stock publication and hand-over confirmations per channel and shop (oms/channels/outbox.py)
    channel_sync: SyncFigures | None = None
    reconciler: Reconciliation = msgspec.field(default_factory=Reconciliation)


class MapCell(msgspec.Struct, kw_only=True):
    h: str  # H3 cell
    n: list[str]  # the nodes whose area it is: the nearest store(s) delivering there (ties share it)
    b: list[tuple[float, float]]  # boundary, (lat, lng)


class MapNode(msgspec.Struct, kw_only=True):
    id: str
    name: str
    kind: str
    lat: float
    lng: float


class CityMap(msgspec.Struct, kw_only=True):
    version: str
    resolution: int
    center: tuple[float, float]
    cells: list[MapCell]
    nodes: list[MapNode]
    #: active nodes too far from this city to draw (another city)
    elsewhere: int


# ---- the summary ------------------------------------------------------------------------------

def day_start(now: datetime) -> datetime:
    local = now.astimezone(SALE_TZ)
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


def _ceil(at: datetime, step: timedelta) -> datetime:
    """The first whole `step` (UTC) at or after `at`: where the rollups take over from a direct count."""
    epoch = datetime(2000, 1, 1, tzinfo=timezone.utc)
    steps = -((epoch - at) // step)
    return epoch + steps * step


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


async def routing_stats(redis: Any) -> Routing:
    await metrics.flush_routing(redis)  # this process's latest samples; others flush within 0.25 s
    raw = await redis.lrange(metrics.ROUTING_SAMPLES_KEY, 0, -1)
    vals = sorted(float(v) for v in raw)
    return Routing(samples=len(vals), p50_ms=percentile(vals, 50), p99_ms=percentile(vals, 99),
                   max_ms=vals[-1] if vals else None)


async def redis_oversold(inventory: Inventory, node_ids: list[str]) -> list[OversoldPair]:
    """(node, SKU) pairs whose Redis reserved count exceeds the Redis on-hand."""
    if not node_ids:
        return []
    snap = await inventory.snapshot(node_ids)
    return [OversoldPair(node_id=n, sku=s, on_hand=o, reserved=r)
            for (n, s), (o, r) in sorted(snap.items()) if r > o]


async def postgres_oversold(conn: Any) -> list[OversoldPair]:
    return [OversoldPair(node_id=r["node_id"], sku=r["sku"], on_hand=r["on_hand"], reserved=r["reserved"])
            for r in await conn.fetch(Q["oversold_pairs"])]


class Work(msgspec.Struct):
    """Open work per node (open_picks, to_pick, picked, at_risk, late) and the at-risk fulfilments."""

    load: dict[str, dict[str, int]]
    at_risk: list[AtRisk]


def _horizon(clock: PromiseClock, to_pick: int, capacity_per_hour: int) -> float:
    """Minutes ahead beyond which no open fulfilment at a node can be at risk: the last of its
    `to_pick` queue needs to_pick picking slots and the courier (plus rounding: the clock rounds
    minutes left and picking time to a tenth)."""
    return clock.picking_minutes(max(to_pick, 1) - 1, capacity_per_hour) + clock.courier_minutes + 0.2


async def open_work(conn: Any, clock: PromiseClock, now: datetime, node_names: dict[str, str]) -> Work:
    """Open picks per node from the rollup; at risk and late judged by the promise clock (the same
    rule as the order view and pick list) over the open fulfilments due within their node's horizon."""
    load: dict[str, dict[str, int]] = {}
    horizon: dict[str, float] = {}
    capacity: dict[str, int] = {}
    for r in await conn.fetch(Q["ops_node_work"]):
        load[r["node_id"]] = {"open_picks": r["to_pick"] + r["picked"], "to_pick": r["to_pick"],
                              "picked": r["picked"], "at_risk": 0, "late": 0}
        horizon[r["node_id"]] = _horizon(clock, r["to_pick"], r["capacity_per_hour"])
        capacity[r["node_id"]] = r["capacity_per_hour"]
    risky = []
    rows = await conn.fetch(Q["ops_promise_candidates"], now, list(horizon), list(horizon.values()),
                            max(horizon.values()) * 60) if horizon else []
    for r in rows:
        left = clock.minutes_left(r["promised_by"], "allocated", now)
        e = clock.estimate(left, r["status"], r["ahead"], capacity[r["node_id"]])
        l = load[r["node_id"]]
        l["late"] += e.late
        if e.at_risk:
            l["at_risk"] += 1
            risky.append((left, r["order_id"], e.pick_minutes, r))
    risky.sort(key=lambda x: x[:2])
    return Work(load=load, at_risk=[
        AtRisk(order_id=r["order_id"], fulfillment_id=r["fulfillment_id"], channel=r["channel"],
               external_id=r["external_id"], delivery_mode=r["delivery_mode"], node_id=r["node_id"],
               node_name=node_names.get(r["node_id"], r["node_id"]), status=r["status"],
               promised_by=r["promised_by"], minutes_left=left, pick_minutes=pick)
        for left, _, pick, r in risky[:AT_RISK_LISTED]])


async def build_summary(services: Any, *, since: datetime | None = None, city: str | None = None,
                        now: datetime | None = None) -> Summary:
    settings = services.settings
    now = now or datetime.now(timezone.utc)
    since = since or day_start(now)
    minute0 = now.replace(second=0, microsecond=0) - timedelta(minutes=WINDOW_MINUTES - 1)
    clock = PromiseClock.from_settings(settings)
    await fold_rollups(services)

    async def read(conn: asyncpg.Connection) -> dict[str, Any]:
        # one snapshot: the rollups, the live lists and the oversell check describe the same moment
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            r: dict[str, Any] = dict(
                channel_rows=await conn.fetch(Q["ops_channel_totals"], since, _ceil(since, timedelta(minutes=1))),
                minute_rows=await conn.fetch(Q["ops_orders_per_minute"], minute0),
                backordered_open=await conn.fetchval(Q["ops_backordered_count"]),
                reasons=await conn.fetch(Q["ops_backorder_reasons"], 8),
                recent=await conn.fetch(Q["ops_backorders_recent"], 10),
                oos=await conn.fetch(Q["ops_top_out_of_stock"], since, _ceil(since, timedelta(hours=1)), 10),
                nodes=await conn.fetch(Q["nodes_all"]),
                pg_oversold=await postgres_oversold(conn))
            r["work"] = await open_work(conn, clock, now, {n["id"]: n["name"] for n in r["nodes"]})
            r["stocked"] = await conn.fetch(Q["ops_stock_nodes"], [x["sku"] for x in r["oos"]]) if r["oos"] else []
        r["channel_sync"] = await sync_figures(conn)
        return r

    # on the read replica when there is one: every figure here tolerates its lag
    pg = await services.reads.run(read)
    channel_rows, minute_rows, backordered_open, reasons, recent, oos, nodes, pg_oversold, work, stocked = (
        pg[k] for k in ("channel_rows", "minute_rows", "backordered_open", "reasons", "recent", "oos", "nodes",
                        "pg_oversold", "work", "stocked"))
    node_ids = [n["id"] for n in nodes]
    active = [n for n in nodes if n["active"]]
    rd_oversold = await redis_oversold(services.inventory, node_ids)
    routing = await routing_stats(services.redis)
    reconciled = await reconciler_stats(services.redis)
    available, ran_out = await _stock_now(services.inventory, active, [r["sku"] for r in oos], stocked)
    channels = [ChannelTotals(channel=r["channel"], orders=r["orders"], gmv_fen=r["gmv_fen"], accepted=r["accepted"],
                              backordered=r["backordered"], cancelled=r["cancelled"]) for r in channel_rows]
    totals = Totals(**{f: sum(getattr(c, f) for c in channels)
                       for f in ("orders", "gmv_fen", "accepted", "backordered", "cancelled")})
    per_minute = _per_minute(minute_rows, minute0, channels)
    return Summary(
        generated_at=now,
        since=since,
        window_minutes=WINDOW_MINUTES,
        totals=totals,
        last_hour=Window(orders=sum(per_minute.total), gmv_fen=sum(per_minute.gmv_fen)),
        channels=channels,
        orders_per_minute=per_minute,
        backorders=Backorders(
            open=backordered_open,
            reasons=[BackorderReason(reason=r["reason"], orders=r["orders"], example=r["example"]) for r in reasons],
            recent=[Backorder(order_id=r["id"], channel=r["channel"], external_id=r["external_id"],
                              reason=r["reason"], created_at=r["created_at"]) for r in recent],
        ),
        out_of_stock=[OutOfStock(sku=r["sku"], name=r["name"], lines=r["lines"], units=r["units"], orders=r["orders"],
                                 available_now=available.get(r["sku"], 0), ran_out_at=ran_out.get(r["sku"], [])[:5],
                                 ran_out_count=len(ran_out.get(r["sku"], [])), example=r["example"]) for r in oos],
        stores=_store_loads(active, work.load),
        open_picks=sum(r["open_picks"] for r in work.load.values()),
        at_risk_total=sum(r["at_risk"] for r in work.load.values()),
        at_risk=work.at_risk,
        routing=routing,
        oversell=Oversell(ok=not pg_oversold and not rd_oversold, count=len(pg_oversold), postgres=pg_oversold,
                          redis_count=len(rd_oversold), redis=rd_oversold),
        map_version=map_version(active, city),
        reconciler=Reconciliation(
            passes=int(reconciled.get("passes", 0)), drift_repaired=int(reconciled.get("drift", 0)),
            released=int(reconciled.get("released", 0)), reapplied=int(reconciled.get("reapplied", 0)),
            committed=int(reconciled.get("committed", 0)),
            last_pass_at=(datetime.fromtimestamp(reconciled["last_pass_at"], timezone.utc)
                          if "last_pass_at" in reconciled else None)),
        assumptions=Assumptions(delivery_promise_minutes=settings.delivery_promise_minutes,
                                courier_minutes=settings.courier_minutes,
                                picking_minutes=clock.pick_minutes),
        channel_sync=pg["channel_sync"],
    )


async def fold_rollups(services: Any) -> None:
    """Fold the rollups' appended rows into their totals, on the primary (a write), at most once a
    second over all processes. Readers sum folded and appended rows alike, so they are exact
    without it: it only keeps what they sum short. A primary that cannot fold now (down) is left
    alone: the summary still reads, from the replica when there is one."""
    if not await services.redis.set(FOLD_THROTTLE_KEY, b"1", nx=True, px=FOLD_EVERY_MS):
        return
    try:
        await services.pool.execute(Q["ops_fold"])
    except Exception as exc:  # noqa: BLE001 - the next summary folds again
        (metrics.log.debug if connection_lost(exc) else metrics.log.warning)("could not fold the ops rollups: %r", exc)


async def _stock_now(inventory: Inventory, active: list[Any], skus: list[str],
                     stocked: list[Any]) -> tuple[dict[str, int], dict[str, list[RanOut]]]:
    """Units of each SKU available now over the active nodes (Redis), and where it ran out: the
    nodes that stock it (`stocked`: sku, node_id rows) with none available now, warehouses first."""
    available: dict[str, int] = {}
    ran_out: dict[str, list[RanOut]] = {}
    if not skus or not active:
        return available, ran_out
    avail = await inventory.available([n["id"] for n in active], skus)
    for per_node in avail.values():
        for sku, a in per_node.items():
            available[sku] = available.get(sku, 0) + max(a, 0)
    by_id = {n["id"]: n for n in active}
    for r in stocked:
        n = by_id.get(r["node_id"])
        if n is not None and avail.get(n["id"], {}).get(r["sku"], 0) <= 0:
            ran_out.setdefault(r["sku"], []).append(RanOut(node_id=n["id"], name=n["name"], kind=n["kind"]))
    for places in ran_out.values():  # the warehouse first: it runs out last and matters most
        places.sort(key=lambda p: (p.kind != "warehouse", p.node_id))
    return available, ran_out


def _per_minute(rows: list[Any], minute0: datetime, channels: list[ChannelTotals]) -> OrdersPerMinute:
    """Orders and GMV per minute over the window, per channel and in total."""
    minutes = [minute0 + timedelta(minutes=i) for i in range(WINDOW_MINUTES)]
    index = {m: i for i, m in enumerate(minutes)}
    series: dict[str, list[int]] = {c.channel: [0] * WINDOW_MINUTES for c in channels}
    total, gmv = [0] * WINDOW_MINUTES, [0] * WINDOW_MINUTES
    for r in rows:
        i = index.get(r["minute"].astimezone(timezone.utc))
        if i is None:
            continue
        series.setdefault(r["channel"], [0] * WINDOW_MINUTES)[i] += r["orders"]
        total[i] += r["orders"]
        gmv[i] += r["gmv_fen"]
    return OrdersPerMinute(minutes=minutes, series=dict(sorted(series.items())), total=total, gmv_fen=gmv)


def _store_loads(active: list[Any], load: dict[str, dict[str, int]]) -> list[StoreLoad]:
    """Every active node with its open work, busiest first."""
    stores = [StoreLoad(node_id=n["id"], name=n["name"], kind=n["kind"], city=n["city"], lat=n["lat"], lng=n["lng"],
                        capacity_per_hour=n["capacity_per_hour"], **load.get(n["id"], {}))
              for n in active]
    stores.sort(key=lambda s: (-s.open_picks, -s.at_risk, s.node_id))
    return stores


async def summary_json(services: Any, *, since: datetime | None = None, city: str | None = None,
                       fresh: bool = False) -> bytes:
    """The summary as JSON; the default view is shared through Redis for SUMMARY_CACHE_MS."""
    cacheable = since is None and city is None
    if cacheable and not fresh:
        cached = await services.redis.get(SUMMARY_CACHE_KEY)
        if cached:
            return cached
    body = msgspec.json.encode(await build_summary(services, since=since, city=city))
    if cacheable:
        await services.redis.set(SUMMARY_CACHE_KEY, body, px=SUMMARY_CACHE_MS)
    return body


# ---- the city map ----------------------------------------------------------------------------

def _fingerprint(active_nodes: list[Any], city: str | None) -> str:
    h = hashlib.sha1((city or "").encode())
    for n in sorted(active_nodes, key=lambda n: n["id"]):
        h.update(f"|{n['id']}:{n['kind']}:{n['lat']:.6f}:{n['lng']:.6f}:{n['delivery_radius_m']}:{n['name']}:"
                 f"{n['city']}:{','.join(sorted(n['capabilities']))}".encode())
    return h.hexdigest()[:16]


def map_version(active_nodes: list[Any], city: str | None = None) -> str:
    return _fingerprint(active_nodes, city)


_MAP_CACHE: "OrderedDict[str, CityMap]" = OrderedDict()


def city_map(active_nodes: list[Any], city: str | None = None) -> CityMap:
    """The city as H3 hexagons: a cell with stores in it is theirs; any other cell within a store's
    delivery radius belongs to the nearest such store. Colouring cells by their stores' open
    picks shows the load over the city.

    The city is the stores around the median store position (within MAP_RADIUS_M), or those of
    `city` when named; nodes farther away (another city) are counted in `elsewhere`. The result
    depends only on the node list, so it is cached by its fingerprint (the version).
    """
    version = _fingerprint(active_nodes, city)
    if version in _MAP_CACHE:
        return _MAP_CACHE[version]
    nodes = [n for n in active_nodes if city is None or (n["city"] or "").lower() == city.lower()]
    stores = [n for n in nodes if n["kind"] == "store"] or nodes
    if not stores:
        result = CityMap(version=version, resolution=7, center=(0.0, 0.0), cells=[], nodes=[],
                         elsewhere=len(active_nodes))
    else:
        center = (statistics.median(n["lat"] for n in stores), statistics.median(n["lng"] for n in stores))
        near = [n for n in nodes if distance_m(center[0], center[1], n["lat"], n["lng"]) <= MAP_RADIUS_M]
        near_stores = [n for n in near if n["kind"] == "store"]
        extent = max((distance_m(center[0], center[1], n["lat"], n["lng"]) for n in near), default=0.0)
        res = 8 if extent < 6_000 else 7
        step_m = h3.average_hexagon_edge_length(res, "m") * math.sqrt(3)  # centre to centre
        owner: dict[str, tuple[float, list[str]]] = {}
        home: dict[str, list[str]] = {}  # a store's own cell is always its (shared with stores in it)
        for n in near_stores:
            home.setdefault(h3.latlng_to_cell(n["lat"], n["lng"], res), []).append(n["id"])
        for cell, ids in home.items():
            owner[cell] = (-1.0, ids)
        for n in near_stores:
            radius = n["delivery_radius_m"] if "delivery" in n["capabilities"] else 0
            k = max(0, min(3 if res == 7 else 5, round(radius / step_m)))
            for cell in h3.grid_disk(h3.latlng_to_cell(n["lat"], n["lng"], res), k):
                if cell in home:
                    continue
                clat, clng = h3.cell_to_latlng(cell)
                d = distance_m(clat, clng, n["lat"], n["lng"])
                best = owner.get(cell)
                if best is None or d < best[0] - 1.0:
                    owner[cell] = (d, [n["id"]])
                elif d <= best[0] + 1.0:  # as near as the best (stores in one place): they share it
                    best[1].append(n["id"])
        cells = [MapCell(h=c, n=sorted(ids), b=[(round(a, 5), round(b, 5)) for a, b in h3.cell_to_boundary(c)])
                 for c, (_, ids) in sorted(owner.items())]
        result = CityMap(
            version=version, resolution=res, center=(round(center[0], 6), round(center[1], 6)), cells=cells,
            nodes=[MapNode(id=n["id"], name=n["name"], kind=n["kind"], lat=n["lat"], lng=n["lng"]) for n in near],
            elsewhere=len(active_nodes) - len(near),
        )
    _MAP_CACHE[version] = result
    while len(_MAP_CACHE) > 8:
        _MAP_CACHE.popitem(last=False)
    return result


async def build_map(services: Any, city: str | None = None) -> CityMap:
    nodes = [n for n in await services.reads.run(lambda conn: conn.fetch(Q["nodes_all"])) if n["active"]]
    return city_map(nodes, city)


# ---- scrape-time gauges for /metrics ------------------------------------------------------------

async def scrape_gauges(services: Any) -> list[GaugeMetricFamily]:
    """State read from PostgreSQL and Redis when Prometheus scrapes, the same from any worker."""
    ok = GaugeMetricFamily("oms_ops_scrape_ok", "1 when the gauges below could be read from PostgreSQL and Redis")
    now = datetime.now(timezone.utc)

    async def read(conn: asyncpg.Connection) -> tuple[Any, ...]:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            return (await conn.fetch(Q["nodes_all"]),
                    (await open_work(conn, PromiseClock.from_settings(services.settings), now, {})).load,
                    await conn.fetchval(Q["ops_backordered_count"]), await postgres_oversold(conn))

    try:
        await fold_rollups(services)
        nodes, load, backordered, pg_oversold = await services.reads.run(read)  # the replica's, when there is one
        rd_oversold = await redis_oversold(services.inventory, [n["id"] for n in nodes])
    except Exception:
        metrics.log.exception("could not read the ops gauges")
        ok.add_metric([], 0)
        return [ok]
    ok.add_metric([], 1)
    picks = GaugeMetricFamily("oms_open_picks", "Fulfilments a node still has to pick or hand over (allocated, picked)",
                              labels=["node"])
    risk = GaugeMetricFamily("oms_orders_at_risk",
                             "Open fulfilments whose promise is nearer than courier + picking time", labels=["node"])
    late = GaugeMetricFamily("oms_orders_late", "Open fulfilments already past their promise", labels=["node"])
    for n in nodes:
        if not n["active"] and n["id"] not in load:
            continue
        l = load.get(n["id"])
        picks.add_metric([n["id"]], l["open_picks"] if l else 0)
        risk.add_metric([n["id"]], l["at_risk"] if l else 0)
        late.add_metric([n["id"]], l["late"] if l else 0)
    back = GaugeMetricFamily("oms_backordered_orders", "Orders waiting in backorder")
    back.add_metric([], backordered)
    over = GaugeMetricFamily("oms_oversold_pairs", "(node, SKU) pairs with reserved + committed above on-hand; must be 0",
                             labels=["source"])
    over.add_metric(["postgres"], len(pg_oversold))
    over.add_metric(["redis"], len(rd_oversold))
    return [ok, picks, risk, late, back, over, *await _replica_gauges(services), *await _sync_gauges(services)]


async def _replica_gauges(services: Any) -> list[GaugeMetricFamily]:
    """With a read replica: whether reads use it, and how far its replay is behind the primary."""
    up = services.reads.replica_up
    if up is None:
        return []
    state = GaugeMetricFamily("oms_read_replica_up", "1 while lag-tolerant reads go to the read replica, "
                              "0 while they fall back to the primary")
    state.add_metric([], 1 if up else 0)
    lag = await services.reads.lag_bytes()
    if lag is None:
        return [state]
    behind = GaugeMetricFamily("oms_read_replica_lag_bytes", "WAL the primary wrote that the read replica "
                               "has not replayed yet")
    behind.add_metric([], max(lag, 0))
    return [state, behind]


async def _sync_gauges(services: Any) -> list[GaugeMetricFamily]:
    """Outbox queues per channel (lag histograms are oms_sync_lag_seconds, from the dispatcher)."""
    try:
        fig = await services.reads.run(sync_figures)
    except Exception:
        metrics.log.exception("could not read the outbox gauges")
        return []
    pending = GaugeMetricFamily("oms_sync_pending", "Stock values and confirmations waiting to be sent",
                                labels=["channel", "kind"])
    dead = GaugeMetricFamily("oms_sync_dead_letters",
                             "Stock values and confirmations dead-lettered, blocked or left for ops", labels=["channel", "kind"])
    oldest = GaugeMetricFamily("oms_sync_oldest_unconfirmed_seconds", "Age of the oldest hand-over not yet confirmed",
                               labels=["channel"])
    lag = GaugeMetricFamily("oms_sync_lag_recent_ms", "Sync lag percentiles over the last 15 minutes",
                            labels=["channel", "kind", "quantile"])
    for c in fig.channels:
        pending.add_metric([c.channel, "stock"], c.stock_pending)
        pending.add_metric([c.channel, "confirmation"], c.confirmations_pending)
        dead.add_metric([c.channel, "stock"], c.stock_dead)
        dead.add_metric([c.channel, "confirmation"], c.confirmations_failed)
        oldest.add_metric([c.channel], c.oldest_unconfirmed_s or 0)
        for kind, p50, p99 in (("stock", c.stock_lag_p50_ms, c.stock_lag_p99_ms),
                               ("handover", c.confirm_lag_p50_ms, c.confirm_lag_p99_ms)):
            if p50 is not None:
                lag.add_metric([c.channel, kind, "0.5"], p50)
                lag.add_metric([c.channel, kind, "0.99"], p99 or 0)
    resync = GaugeMetricFamily("oms_shop_last_full_resync_timestamp", "Last full stock resync of a shop (unix s)",
                               labels=["shop"])
    for shop in fig.shops:
        if shop.last_full_resync_at:
            resync.add_metric([shop.shop_id], datetime.fromisoformat(shop.last_full_resync_at).timestamp())
    return [pending, dead, oldest, lag, resync]
