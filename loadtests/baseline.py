"""What the two baseline apps (floor_app.py, rowlock_app.py) share with each other and with the
OMS's HTTP edge, so that a comparison measures the design behind the edge and nothing else:

- the same request body, decoded into the same type as the OMS's `POST /orders`
  (`adapters.normalized.NormalizedOrder`, with its validation) by Litestar + msgspec;
- the same bearer-token check (a constant-time compare of the Authorization header);
- the same answer shape: 201 and a small JSON for a new order, allocated or backordered;
- the same process model as `oms serve`: N uvicorn workers on one port with SO_REUSEPORT, the
  garbage collector tuned the same way after start-up.

Configuration comes from the environment: BASELINE_DATABASE_URL, BASELINE_REDIS_URL (floor
only), BASELINE_TOKEN (the admin token the driver sends), BASELINE_NODE (the one fixed node
every order is taken from; default the demo warehouse).
"""

from __future__ import annotations

import argparse
import gc
import hmac
import itertools
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
from pathlib import Path

import msgspec
from litestar import Request
from litestar.exceptions import NotAuthorizedException

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # adapters/ when run from a checkout without an install
    sys.path.insert(0, str(ROOT))

from adapters.normalized import NormalizedOrder  # noqa: E402,F401  (the OMS's own body type)

DEFAULT_NODE = "SH-WH-JIADING"


class Accepted(msgspec.Struct, kw_only=True):
    """The answer to a new order: its id, `allocated` or `backordered`, and the node."""

    id: str
    status: str
    node_id: str


class Settings(msgspec.Struct, kw_only=True):
    database_url: str
    redis_url: str | None
    token: str
    node: str

    @classmethod
    def from_env(cls) -> "Settings":
        e = os.environ
        return cls(database_url=e["BASELINE_DATABASE_URL"], redis_url=e.get("BASELINE_REDIS_URL"),
                   token=e.get("BASELINE_TOKEN", ""), node=e.get("BASELINE_NODE", DEFAULT_NODE))


def require_token(request: Request, token: str) -> None:
    """401 unless the request carries `Authorization: Bearer <token>`."""
    got = request.headers.get("authorization", "")
    if not hmac.compare_digest(got.encode(), b"Bearer " + token.encode()):
        raise NotAuthorizedException("admin token required")


def merged_lines(order: NormalizedOrder) -> dict[str, int]:
    """Units per SKU: two lines of one SKU must be checked against stock together."""
    want: dict[str, int] = {}
    for line in order.lines:
        want[line.sku] = want.get(line.sku, 0) + line.quantity
    return want


class OrderIds:
    """Unique order ids without a round trip: a per-process prefix (start time, pid) + a counter."""

    def __init__(self) -> None:
        self._prefix = f"{time.time_ns() // 1_000_000:x}{os.getpid():x}-"
        self._n = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._n)}"


async def create_schema(conn, schema: str) -> None:
    """Create the app's tables; under a lock, since two workers starting at once would race."""
    async with conn.transaction():
        await conn.execute("select pg_advisory_xact_lock(hashtext('loadtests-baseline-schema'))")
        await conn.execute(schema)


def tune_gc() -> None:
    """As the OMS workers do after start-up: freeze what exists, collect the young less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


# --- the process model of `oms serve` (see oms/server.py): N workers, SO_REUSEPORT -----------

def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _worker(app: str, host: str, port: int) -> None:
    import uvicorn

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    config = uvicorn.Config(app, factory=True, log_level="warning", access_log=False, loop="auto",
                            http="auto", backlog=4096, proxy_headers=False, server_header=False)
    uvicorn.Server(config).run(sockets=[_listen(host, port)])


def serve(app: str, host: str, port: int, workers: int) -> None:
    """Run `workers` uvicorn processes of the factory `app` ("module:function") until SIGTERM."""
    if workers <= 1:
        _worker(app, host, port)
        return
    ctx = mp.get_context("spawn")
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    procs = [ctx.Process(target=_worker, args=(app, host, port)) for _ in range(workers)]
    for p in procs:
        p.start()
    try:
        while not stopping and all(p.is_alive() for p in procs):
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()  # uvicorn finishes in-flight requests on SIGTERM
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()


def main(app: str, doc: str | None) -> None:
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8100)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    serve(app, args.host, args.port, args.workers)
