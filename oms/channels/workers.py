"""The channel workers (Tmall's TMC consumer, JD's order poller), each run by one process at a time.

`oms channels tmall|jd` runs one in its own process; `oms serve` runs those named in
`OMS_CHANNEL_WORKERS` beside the API. Either way the worker holds the lease
`lease:{channel-worker:<channel>}`, so any number of hosts may start it: one consumes, the others
wait and take over within the lease's time to live when it dies.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Mapping, Sequence

from oms.channels.config import ChannelsConfig, load_config
from oms.channels.inbox import PgSkuMapSource, PgWatermarkStore, ServiceIntake
from oms.channels.jd_worker import JdPoller
from oms.channels.tmall_worker import TmallWorker
from oms.infra.lease import Lease, run_exclusively

log = logging.getLogger("oms.channels.workers")

WORKER_CHANNELS = ("tmall", "jd")


def lease_for(services, channel: str) -> Lease:  # noqa: ANN001 - oms.wiring.Services (import cycle)
    return Lease(services.redis, f"channel-worker:{channel}", ttl_s=services.settings.lease_ttl_s)


def configuration_problem(channel: str, config: ChannelsConfig) -> str | None:
    """Why the worker for `channel` cannot run, or None."""
    if channel not in WORKER_CHANNELS:
        return f"no channel worker for '{channel}' (tmall or jd)"
    if channel == "tmall" and config.tmall is None:
        return "tmall channel is not configured: set OMS_TMALL_APP_KEY and OMS_TMALL_APP_SECRET"
    if channel == "jd" and config.jd is None:
        return "jd channel is not configured: set OMS_JD_APP_KEY and OMS_JD_APP_SECRET"
    return None


def make_worker(channel: str, services, config: ChannelsConfig) -> TmallWorker | JdPoller:  # noqa: ANN001
    intake = ServiceIntake(services)
    sku_maps = PgSkuMapSource(services.pool)
    if channel == "tmall":
        return TmallWorker(config.tmall, intake, sku_maps=sku_maps)
    return JdPoller(config.jd, intake, PgWatermarkStore(services.pool), sku_maps=sku_maps)


async def run_leased(channel: str, services, config: ChannelsConfig, stop: asyncio.Event) -> None:  # noqa: ANN001
    """Run the channel's worker whenever this process holds its lease, until `stop`."""
    async def job() -> None:
        worker = make_worker(channel, services, config)
        log.info("%s channel worker started", channel)
        try:
            await worker.run()
        finally:
            worker.stop()
            log.info("%s channel worker stopped", channel)

    await run_exclusively(lease_for(services, channel), job, stop)


def start_in_app(services, channels: Sequence[str], stop: asyncio.Event) -> list[asyncio.Task]:  # noqa: ANN001
    """Start the named workers beside the API (each competes for its lease); returns their tasks."""
    config = load_config()
    tasks = []
    for channel in channels:
        problem = configuration_problem(channel, config)
        if problem:
            log.error("OMS_CHANNEL_WORKERS names %s: %s; not started", channel, problem)
            continue
        tasks.append(asyncio.get_running_loop().create_task(run_leased(channel, services, config, stop)))
    return tasks


async def run_channel_worker(channel: str, *, env: Mapping[str, str] | None = None) -> int:
    """`oms channels tmall|jd`: run the worker (under its lease) until SIGINT/SIGTERM."""
    from oms.config import Settings
    from oms.infra import db
    from oms.wiring import Services

    config = load_config(env)
    problem = configuration_problem(channel, config)
    if problem:
        log.error("%s", problem)
        return 2
    settings = Settings.from_env(dict(env) if env is not None else None)
    # no inventory rebuild here: the API servers may be taking orders at the same moment
    services = await Services.start(settings, prepare=False)
    try:
        async with services.pool.acquire() as conn:
            await db.migrate(conn)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"oms channels {channel}: running (SIGINT/SIGTERM to stop); one process at a time holds "
              f"its lease, others wait", flush=True)
        await run_leased(channel, services, config, stop)
        return 0
    finally:
        await services.close()
