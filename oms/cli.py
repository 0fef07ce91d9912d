"""`oms` command line: serve, migrate, seed-demo, rebuild-inventory, channels, simulate-sale, timers, stop-embedded,
version."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys

import asyncpg
import redis

from oms.config import Settings


def _run_long(main):
    """Run a long-lived process's main coroutine on uvloop where installed, as `oms serve`'s
    workers run through uvicorn. The outbox dispatcher is woken by every write batch's NOTIFY:
    on uvloop it costs about a quarter less CPU per order under load (compare.py)."""
    try:
        import uvloop
    except ImportError:  # Windows
        return asyncio.run(main)
    return uvloop.run(main)


async def _with_services(fn, prepare: bool = True):
    from oms.wiring import Services

    services = await Services.start(Settings.from_env(), prepare=prepare)
    try:
        return await fn(services)
    finally:
        await services.close()


def cmd_migrate(_: argparse.Namespace) -> int:
    from oms.infra import db

    async def run(s):
        async with s.pool.acquire() as conn:
            applied = await db.migrate(conn)
        print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))

    asyncio.run(_with_services(run, prepare=False))
    return 0


def cmd_seed_demo(args: argparse.Namespace) -> int:
    from oms.stock import inventory
    from oms.infra.db import Q
    from oms.demo.seed import seed_demo

    async def run(s):
        async with s.pool.acquire() as conn:
            if args.if_empty and await conn.fetchval(Q["sku_count"]) > 0:
                print("database already has data: not seeding")
                return
            counts = await seed_demo(conn)
            await inventory.rebuild(conn, s.redis)
        print(f"seeded demo city: {counts['nodes']} nodes, {counts['skus']} SKUs, {counts['stock_rows']} stock rows")

    asyncio.run(_with_services(run))
    return 0


def cmd_rebuild_inventory(_: argparse.Namespace) -> int:
    from oms.infra import db
    from oms.stock import inventory

    async def run(s):
        async with s.pool.acquire() as conn:
            await db.migrate(conn)
            pairs = await inventory.rebuild(conn, s.redis)
        print(f"rebuilt Redis availability from PostgreSQL: {pairs} (node, SKU) pairs")

    asyncio.run(_with_services(run, prepare=False))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from oms.infra import embedded
    from oms import server

    server.check_port(args.host, args.port)
    settings = Settings.from_env()
    db_url, redis_url = embedded.resolve_urls(settings.database_url, settings.redis_url, settings.data_dir)
    embedded_in_use = (settings.database_url is None, settings.redis_url is None)
    # workers inherit one set of URLs and one token, and skip the start-up checks done here once
    os.environ.update(OMS_DATABASE_URL=db_url, OMS_REDIS_URL=redis_url, OMS_ADMIN_TOKEN=settings.admin_token)
    if args.demo_channels:  # the demo shop's credentials, for the variables the user left unset
        from oms.demo import channels as demo_channels

        demo = demo_channels.load_or_create(settings.data_dir)
        if demo_channels.apply(demo, os.environ):
            print(f"demo shop: channel credentials from {settings.data_dir / demo_channels.FILE_NAME}; "
                  f"platform order APIs at {demo.platform_url} (served by `oms simulate-sale`)", flush=True)
    asyncio.run(_with_services(lambda s: asyncio.sleep(0)))  # migrate + inventory check
    os.environ["OMS_PREPARED"] = "1"
    if args.workers > 1:  # one Prometheus directory for every worker: /metrics reports one truth
        from oms.ops import metrics

        metrics.use_multiprocess_dir()
    print(f"OMS listening on http://{args.host}:{args.port}  (admin token: {settings.admin_token})", flush=True)
    dispatcher = _start_dispatcher(args)
    try:
        server.serve(args.host, args.port, args.workers, args.log_level)
    finally:
        if dispatcher is not None:
            dispatcher.terminate()
            try:
                dispatcher.wait(30)
            except subprocess.TimeoutExpired:
                dispatcher.kill()
        if not args.keep_embedded:  # clean stop of the embedded servers we use; data stays
            if embedded_in_use[0]:
                embedded.stop_postgres(settings.data_dir)
            if embedded_in_use[1]:
                embedded.stop_redis(settings.data_dir)
    return 0


def _start_dispatcher(args: argparse.Namespace) -> subprocess.Popen | None:
    """`oms serve` runs one outbox dispatcher beside its workers unless told not to (it holds
    leases, so dispatchers on other hosts are welcome too)."""
    if args.no_dispatcher or os.environ.get("OMS_DISPATCHER", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    return subprocess.Popen([sys.executable, "-m", "oms.cli", "channels", "sync"],
                            env=dict(os.environ, OMS_DISPATCHER_PARENT=str(os.getpid())))


def cmd_channels(args: argparse.Namespace) -> int:
    import logging

    if args.channel == "sync":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from oms.channels.dispatcher import run_dispatcher

        return _run_long(run_dispatcher())
    from oms.channels.workers import run_channel_worker

    return _run_long(run_channel_worker(args.channel))


def cmd_simulate_sale(args: argparse.Namespace) -> int:
    from oms.demo import sale

    return sale.main(args)


def cmd_timers(args: argparse.Namespace) -> int:
    import msgspec

    from oms.orders.timers import run_once

    async def run(s):
        done = await run_once(s)
        print(msgspec.json.encode(done).decode())

    asyncio.run(_with_services(run))
    return 0


def cmd_stop_embedded(_: argparse.Namespace) -> int:
    from oms.infra import embedded

    settings = Settings.from_env()
    pg = embedded.stop_postgres(settings.data_dir)
    rd = embedded.stop_redis(settings.data_dir)
    print(f"embedded PostgreSQL {'stopped' if pg else 'was not running'}; Redis {'stopped' if rd else 'was not running'}")
    return 0


def cmd_version(_: argparse.Namespace) -> int:
    from importlib.metadata import PackageNotFoundError, version

    from oms.infra.db import SQL_DIR

    try:
        v = version("oms")
    except PackageNotFoundError:  # run from a checkout that was never installed
        v = "unknown (not installed)"
    migrations = sorted(p.name.split("_", 1)[0] for p in (SQL_DIR / "migrations").glob("*.sql"))
    print(f"oms {v}; schema migrations up to {migrations[-1] if migrations else 'none'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="oms", description="Omnichannel order management service")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve the HTTP API (starts embedded servers when no URLs are set)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--log-level", default="warning")
    s.add_argument("--keep-embedded", action="store_true", help="leave embedded PostgreSQL/Redis running on exit")
    s.add_argument("--no-dispatcher", action="store_true",
                   help="do not run the outbox dispatcher (also OMS_DISPATCHER=0); run `oms channels sync` elsewhere")
    s.add_argument("--demo-channels", action="store_true",
                   help="set the demo shop's channel credentials (kept in OMS_DATA_DIR) for unset OMS_* variables")
    s.set_defaults(fn=cmd_serve)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(fn=cmd_migrate)
    sd = sub.add_parser("seed-demo", help="load the demo city, catalogue and stock")
    sd.add_argument("--if-empty", action="store_true", help="only when the catalogue is empty")
    sd.set_defaults(fn=cmd_seed_demo)
    sub.add_parser("rebuild-inventory", help="recompute Redis availability from PostgreSQL").set_defaults(fn=cmd_rebuild_inventory)
    sub.add_parser("stop-embedded", help="stop the embedded PostgreSQL and Redis").set_defaults(fn=cmd_stop_embedded)
    sub.add_parser("version", help="print the version and the newest schema migration").set_defaults(fn=cmd_version)
    ch = sub.add_parser("channels", help="run a channel worker: tmall (TMC consumer), jd (order poller), "
                                         "sync (outbox dispatcher: stock and hand-overs to the platforms)")
    ch.add_argument("channel", choices=["tmall", "jd", "sync"])
    ch.set_defaults(fn=cmd_channels)
    ss = sub.add_parser("simulate-sale", help="drive the running demo like the first minutes of Double 11")
    from oms.demo.sale import add_arguments

    add_arguments(ss)
    ss.set_defaults(fn=cmd_simulate_sale)
    tm = sub.add_parser("timers", help="the timer job (pickup expiry, unpaid holds, at-risk escalation)")
    tm.add_argument("action", choices=["run-once"], help="run one round now and print what it did")
    tm.set_defaults(fn=cmd_timers)
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, redis.RedisError) as exc:
        # a server that cannot be reached or refuses us: say which, without a stack trace
        print(f"oms {args.cmd}: {_which_server(exc)} is not usable: {exc}", file=sys.stderr)
        return 1


def _which_server(exc: BaseException) -> str:
    if isinstance(exc, redis.RedisError):
        return "Redis (OMS_REDIS_URL)"
    return "PostgreSQL (OMS_DATABASE_URL)" if os.environ.get("OMS_DATABASE_URL") else "a database server"


if __name__ == "__main__":
    sys.exit(main())
