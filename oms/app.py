"""The Litestar application: routes, the error mapping, start-up and shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import asynccontextmanager
from collections.abc import AsyncIterator

from litestar import Litestar, Response, get
from litestar.datastructures import State
from litestar.di import Provide

from oms.api.catalogue import CatalogueController
from oms.api.errors import EXCEPTION_HANDLERS
from oms.api import openapi
from oms.api.text import reject_bad_text
from oms.api.orders import OrderController
from oms.api import ops as ops_api, shops as shops_api, stores as stores_api
from oms.api import webhooks as webhooks_api
from oms.channels import workers as channel_workers
from oms.config import Settings
from oms.ops import metrics
from oms.orders.timers import TimerJob
from oms.stock.fence import LOCK_KEY
from oms.stock.liveness import stop_task
from oms.stock.reconciler import Reconciler
from oms.wiring import Services, prepared_by_parent


@get("/healthz", summary="Liveness and readiness: PostgreSQL and Redis answer, Redis holds the stock",
     description="200 {\"status\": \"ok\"}; 503 {\"status\": \"degraded: rebuilding\"} while Redis is "
                 "being rebuilt from PostgreSQL (orders wait or get 503 meanwhile); 503 when a database "
                 "does not answer.", tags=["ops"])
async def healthz(services: Services) -> Response[dict]:
    await services.pool.fetchval("select 1")
    await services.redis.ping()
    if services.fence.rebuilding or await services.redis.exists(LOCK_KEY):
        return Response({"status": "degraded: rebuilding"}, status_code=503, headers={"Retry-After": "1"})
    return Response({"status": "ok"})


def start_background(services: Services) -> list[asyncio.Task]:
    """What every serving process runs beside requests: the fence's look for a Redis that lost
    its stock, and the reconciler (which works only while this process holds its lease)."""
    s = services.settings
    reconciler = Reconciler(services.pool, services.redis, services.inventory, services.fence,
                            grace_s=s.reconcile_grace_s, interval_s=s.reconcile_interval_s,
                            full_s=s.reconcile_full_s)
    services.reconciler = reconciler
    loop = asyncio.get_running_loop()
    return [loop.create_task(services.fence.watch(services.nodes)), loop.create_task(reconciler.run())]


async def stop_background(services: Services, tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        await stop_task(task)
    reconciler = getattr(services, "reconciler", None)
    if reconciler is not None:
        await reconciler.release_lease()


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        services = await Services.start(settings, prepare=not prepared_by_parent())
        app.state.services = services
        background = start_background(services)
        # what start-up built lives as long as the process: keep it out of every later collection,
        # and collect the young generation less often (each request allocates a few thousand objects)
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        stop_jobs = asyncio.Event()
        jobs = channel_workers.start_in_app(services, settings.channel_workers, stop_jobs)
        if settings.timers:  # one process of all hosts runs them at a time (a lease)
            jobs.append(asyncio.create_task(TimerJob(services).run(stop_jobs)))
        try:
            yield
        finally:
            stop_jobs.set()
            await asyncio.gather(*jobs, return_exceptions=True)
            await stop_background(services, background)
            await webhooks_api.aclose(app)
            await services.close()
            metrics.flush_counts()

    def provide_services(state: State) -> Services:
        return state.services

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every platform call at INFO with its query, where platform APIs carry access tokens
    logging.getLogger("httpx").setLevel(logging.WARNING)
    app = Litestar(
        route_handlers=[healthz, OrderController, CatalogueController, *stores_api.ROUTES, *shops_api.ROUTES,
                        *ops_api.ROUTES, *webhooks_api.ROUTES, openapi.swagger_asset],
        dependencies={"services": Provide(provide_services, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,
        before_request=reject_bad_text,
        lifespan=[lifespan],
        openapi_config=openapi.config(),
        debug=False,
    )
    openapi.complete(app)
    return app
