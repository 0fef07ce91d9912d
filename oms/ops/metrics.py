"""Prometheus metrics: what the service counts as it works, and the /metrics exposition.

Counters and histograms live in each process. With several worker processes
(`oms serve --workers N`) every process writes them to files under PROMETHEUS_MULTIPROC_DIR
and /metrics reads all of them (prometheus_client's MultiProcessCollector), so whichever
worker answers the scrape reports the same totals.

PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client is first imported. When it is
not set by the operator, a worker process started by `oms serve` (a spawned child of the
serving process, OMS_PREPARED=1) sets it itself to a directory named after that parent
process, so all workers of one `oms serve` share one directory and a new `oms serve` starts
from an empty one. `use_multiprocess_dir()` does the same explicitly for the parent.

Figures that are state, not events (open picks, at-risk orders, oversold pairs) are not kept
in process memory at all: /metrics reads them from PostgreSQL and Redis at scrape time
(oms.ops.scrape_gauges) and adds them to the exposition.

The routing decision time is also pushed to a capped Redis list (one pipelined LPUSH+LTRIM
per decision) so /ops/summary can report p50/p99 across every process.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("oms.metrics")

_ENV = "PROMETHEUS_MULTIPROC_DIR"
_DIR_PREFIX = "oms-prometheus-"


def _proc_start_ticks(pid: int) -> str:
    """The process's start time (Linux clock ticks), so a reused pid never reuses a directory."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "0"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_dirs(root: Path) -> None:
    """Directories left by `oms serve` processes that have exited."""
    for d in root.glob(_DIR_PREFIX + "*"):
        try:
            pid = int(d.name[len(_DIR_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if not _pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)


def use_multiprocess_dir(path: str | os.PathLike | None = None, *, fresh: bool = True) -> str:
    """Point this process (and the workers it starts) at one metrics directory.

    For the process that starts workers, before it starts them: `oms serve --workers N` (N > 1)
    can call `oms.metrics.use_multiprocess_dir()` ahead of `uvicorn.run(...)`; the workers
    inherit the variable. `fresh` empties the directory (counters restart with the server).
    A process that imported prometheus_client before the variable was set keeps its metrics in
    memory and reports them from there (see multiprocess_dir), so calling this in a process that
    then serves by itself is harmless.
    """
    if path is None:
        pid = os.getpid()
        path = Path(tempfile.gettempdir()) / f"{_DIR_PREFIX}{pid}-{_proc_start_ticks(pid)}"
    p = Path(path)
    if fresh and p.exists():
        shutil.rmtree(p, ignore_errors=True)
    p.mkdir(parents=True, exist_ok=True)
    os.environ[_ENV] = str(p)
    return str(p)


def _auto_multiprocess_dir() -> None:
    """A worker of `oms serve --workers N` with no directory configured: share the parent's."""
    configured = os.environ.get(_ENV) or os.environ.get("prometheus_multiproc_dir")
    if configured:  # the operator's choice; prometheus_client needs it to exist
        Path(configured).mkdir(parents=True, exist_ok=True)
        return
    if os.environ.get("OMS_PREPARED") != "1":
        return
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return  # one process: the default registry is the truth
    if "prometheus_client" in sys.modules:
        log.warning("prometheus_client was imported before oms.metrics: worker metrics stay per process")
        return
    root = Path(tempfile.gettempdir())
    path = root / f"{_DIR_PREFIX}{parent.pid}-{_proc_start_ticks(parent.pid)}"
    path.mkdir(parents=True, exist_ok=True)
    os.environ[_ENV] = str(path)
    try:
        _remove_stale_dirs(root)
    except OSError:
        pass


_auto_multiprocess_dir()

# imported only now: prometheus_client picks its value class from the environment at import
from prometheus_client import (  # noqa: E402
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client import values as _values  # noqa: E402
from prometheus_client.metrics_core import Metric  # noqa: E402

# ---- the metrics -------------------------------------------------------------------------

ORDERS_RECEIVED = Counter(
    "oms_orders_received", "Orders handed to intake, per channel (every push or POST, retries included)",
    ["channel"],
)
ORDER_OUTCOMES = Counter(
    "oms_order_outcomes",
    "Allocation decisions per channel: accepted (stock reserved), backordered, cancelled, "
    "unpaid (stored, waiting for payment)",
    ["channel", "outcome"],
)
RESERVATION_FAILURES = Counter(
    "oms_reservation_failures",
    "Redis reservations refused because the stock moved since routing read it (a lost race), per short SKU",
    ["sku"],
)
STOCKOUTS = Counter(
    "oms_stockouts", "Order lines of known SKUs that could not be reserved in full (backordered or partly), per SKU",
    ["sku"],
)
ROUTING_SECONDS = Histogram(
    "oms_routing_decision_seconds", "Time to choose the node(s) for one order and reserve there",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
WEBHOOK_SECONDS = Histogram(
    "oms_webhook_latency_seconds", "Time from a channel push arriving to its answer, per channel",
    ["channel"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

SYNC_LAG = Histogram(
    "oms_sync_lag_seconds", "From a change (stock, hand-over) to the platform acknowledging it, per channel and kind",
    ["channel", "kind"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
OUTBOUND_CALLS = Counter(
    "oms_outbound_calls", "Calls to the platforms by the dispatcher, per channel, kind and outcome",
    ["channel", "kind", "outcome"],
)


def outbound_call(channel: str, kind: str, outcome: str) -> None:
    OUTBOUND_CALLS.labels(channel, kind, outcome).inc()


INVENTORY_REBUILDS = Counter(
    "oms_inventory_rebuilds", "Nodes whose stock Redis had lost and the fence rebuilt from PostgreSQL",
)
RECONCILE_REPAIRS = Counter(
    "oms_reconcile_repairs",
    "What the reconciler put right between Redis and PostgreSQL: drift (hash fields repaired), "
    "released (reservations no order holds), reapplied (reservations Redis had lost), committed",
    ["kind"],
)
IN_DOUBT_WRITES = Counter(
    "oms_in_doubt_writes", "Order writes whose connection was lost during or after COMMIT, by what the "
    "read-back found: stored, not_stored",
    ["outcome"],
)
READ_REPLICA_FALLBACKS = Counter(
    "oms_read_replica_fallbacks", "Lag-tolerant reads the primary served instead of the read replica, by why: "
    "unavailable (down, refusing, connection lost), error (it refused the statement), behind (it had not got "
    "the row yet)",
    ["reason"],
)


#: Redis list of recent routing decision times in milliseconds, newest first
ROUTING_SAMPLES_KEY = "ops:routing_ms"
ROUTING_SAMPLES_MAX = 5000


# ---- what intake calls ---------------------------------------------------------------------
#
# Intake counts in plain ints per process and hands the sums to prometheus_client a few times a
# second (and before every exposition): in multiprocess mode each .inc() is a locked write into
# an mmapped file with a pid check, several per order, and the counts only need to be right when
# scraped. A process that dies loses at most its last quarter second of counts.

_FLUSH_AFTER_S = 0.25
#: (counter, label values) -> units not yet handed to prometheus_client
_tally: dict[tuple[Any, tuple[str, ...]], int] = {}
#: routing decision times (s) not yet observed by the histogram
_routing_pending: list[float] = []
_flush_due = False


def _count(metric: Any, labels: tuple[str, ...], n: int = 1) -> None:
    key = (metric, labels)
    _tally[key] = _tally.get(key, 0) + n
    _schedule_flush()


def _schedule_flush() -> None:
    global _flush_due
    if _flush_due:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no loop (a script, a test helper): count at once
        flush_counts()
        return
    _flush_due = True
    loop.call_later(_FLUSH_AFTER_S, flush_counts)


def flush_counts() -> None:
    """Hand the counts kept since the last flush to prometheus_client (its files or memory)."""
    global _flush_due
    _flush_due = False
    if _tally:
        pending = list(_tally.items())
        _tally.clear()
        for (metric, labels), n in pending:
            (metric.labels(*labels) if labels else metric).inc(n)
    if _routing_pending:
        samples = _routing_pending[:]
        del _routing_pending[:]
        _observe_many(ROUTING_SECONDS, samples)


def _observe_many(hist: Histogram, samples: list[float]) -> None:
    """Histogram.observe for many values: one write per bucket touched, one for the sum."""
    bounds = getattr(hist, "_upper_bounds", None)
    buckets = getattr(hist, "_buckets", None)
    total = getattr(hist, "_sum", None)
    if bounds is None or buckets is None or total is None:  # another prometheus_client: one by one
        for x in samples:
            hist.observe(x)
        return
    counts = [0] * len(bounds)
    for x in samples:
        counts[bisect.bisect_left(bounds, x)] += 1  # the first bound >= x, as observe() picks
    for i, n in enumerate(counts):
        if n:
            buckets[i].inc(n)
    total.inc(sum(samples))


def order_received(channel: object) -> None:
    _count(ORDERS_RECEIVED, (str(channel),))


_OUTCOME = {"allocated": "accepted", "backordered": "backordered", "cancelled": "cancelled", "created": "unpaid"}


def order_outcome(channel: object, status: object) -> None:
    _count(ORDER_OUTCOMES, (str(channel), _OUTCOME.get(str(status), str(status))))


def order_cancelled(channel: object) -> None:
    _count(ORDER_OUTCOMES, (str(channel), "cancelled"))


def observe_order(order: Any, created: bool) -> None:
    """After intake answered: the outcome of a new order and its stock-outs. Never raises."""
    if not created:
        return
    try:
        order_outcome(order.channel, order.status)
        for line in order.lines:
            # backordered, or open with a reason: only partly served
            short = line.status == "backordered" or (line.status == "open" and line.reason)
            if short and not (line.reason or "").startswith("unknown SKU"):
                _count(STOCKOUTS, (line.sku,))
    except Exception:  # metrics never fail an order
        log.exception("could not record order metrics")


def reservation_failed(sku: str | None) -> None:
    _count(RESERVATION_FAILURES, (sku or "unknown",))


def inventory_rebuilt(nodes: int) -> None:
    INVENTORY_REBUILDS.inc(nodes)


def reconciled(kind: str, n: int) -> None:
    if n:
        RECONCILE_REPAIRS.labels(kind).inc(n)


def in_doubt_resolved(stored: bool) -> None:
    IN_DOUBT_WRITES.labels("stored" if stored else "not_stored").inc()


def read_replica_fallback(reason: str) -> None:
    _count(READ_REPLICA_FALLBACKS, (reason,))


#: samples (s) waiting to be pushed to Redis; flushed together so the hot path never waits on it
_pending_samples: list[float] = []


def _record_routing(redis: Any, seconds: float) -> None:
    _routing_pending.append(seconds)
    _schedule_flush()
    _pending_samples.append(seconds)
    if len(_pending_samples) == 1:
        asyncio.get_running_loop().call_later(_FLUSH_AFTER_S, lambda: asyncio.ensure_future(flush_routing(redis)))


async def record_routing(redis: Any, seconds: float) -> None:
    """Histogram here, and the sample in Redis for the cross-process p50/p99.

    Samples are pushed in one LPUSH per quarter second per process, not one round trip per
    order; the summary reads them from Redis, so every worker's decisions count.
    """
    _record_routing(redis, seconds)


async def flush_routing(redis: Any) -> None:
    """Push the pending routing samples to Redis (one pipelined LPUSH + LTRIM)."""
    if not _pending_samples:
        return
    batch = [f"{x * 1000:.3f}" for x in _pending_samples]
    del _pending_samples[:]
    try:
        pipe = redis.pipeline(transaction=False)
        pipe.lpush(ROUTING_SAMPLES_KEY, *batch)
        pipe.ltrim(ROUTING_SAMPLES_KEY, 0, ROUTING_SAMPLES_MAX - 1)
        await pipe.execute()
    except Exception:  # Redis trouble shows elsewhere; never fail an order for a metric
        log.debug("could not record routing samples", exc_info=True)


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def timed_routing(fn: F) -> F:
    """Decorator for Allocator.place: records how long each decision took (see record_routing)."""

    @functools.wraps(fn)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        result = await fn(self, *args, **kwargs)
        _record_routing(self.inventory.redis, time.perf_counter() - t0)
        return result

    return wrapper  # type: ignore[return-value]


# ---- exposition ------------------------------------------------------------------------------

def multiprocess_dir() -> str | None:
    """The shared directory, when this process's metrics really are written there (the variable
    was set before prometheus_client was imported); None: this process's memory is the truth."""
    if _values.ValueClass is _values.MutexValue:
        return None
    return os.environ.get(_ENV) or os.environ.get("prometheus_multiproc_dir") or None


class _Fixed:
    """A collector that yields metric families computed beforehand (the scrape-time gauges)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return iter(self.families)


class _DefaultRegistry:
    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def exposition(extra: Iterable[Metric] = ()) -> tuple[bytes, str]:
    """The Prometheus text of every process's metrics plus `extra`; returns (body, content type)."""
    flush_counts()  # this process's own counts are exact; others' lag by at most _FLUSH_AFTER_S
    registry = CollectorRegistry(auto_describe=False)
    path = multiprocess_dir()
    if path:
        multiprocess.MultiProcessCollector(registry, path=path)
    else:
        registry.register(_DefaultRegistry())
    registry.register(_Fixed(extra))
    return generate_latest(registry), CONTENT_TYPE_LATEST
