"""A demo city of its own for the newcomer tests: a fresh database and Redis logical db seeded with
`oms seed-demo`, and `oms serve --demo-channels` on a free 127.0.0.1 port, as `make run` does.

The demo city has stores around 人民广场, where other tests build their small networks, so it
lives in its own database: the tests sharing the session database never see it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "newcomer-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _with_db(url: str, dbname: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + dbname))


def _redis_db(url: str, db: int) -> str:
    if url.startswith("unix://"):
        return f"{url.split('?')[0]}?db={db}"
    return urlunsplit(urlsplit(url)._replace(path=f"/{db}"))


class DemoServer:
    """The demo seeded in its own database, served by `oms serve --demo-channels`."""

    def __init__(self, pg_url: str, redis_url: str, data_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.pg_root, self.redis_root = pg_url, redis_url
        self.data_dir = data_dir
        self.extra_env = extra_env or {}
        self.dbname = "oms_demo_" + secrets.token_hex(4)
        self.database_url = _with_db(pg_url, self.dbname)
        self.redis_url = ""
        self.port = free_port()
        self.platform_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir / "server.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("OMS_") and k not in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")}
        env.update(OMS_DATABASE_URL=self.database_url, OMS_REDIS_URL=self.redis_url, OMS_ADMIN_TOKEN=ADMIN_TOKEN,
                   OMS_DATA_DIR=str(self.data_dir), OMS_DEMO_PLATFORM_PORT=str(self.platform_port),
                   PYTHONUNBUFFERED="1", **self.extra_env)
        return env

    async def start(self, seed: bool = True) -> None:
        admin = await asyncpg.connect(self.pg_root)
        await admin.execute(f'create database "{self.dbname}"')
        await admin.close()
        session = secrets.token_hex(8)
        for db in range(15, 0, -1):
            url = _redis_db(self.redis_root, db)
            r = aioredis.Redis.from_url(url)
            if await r.set("oms:test-session", session, nx=True, ex=3600):
                await r.flushdb()
                await r.set("oms:test-session", session, ex=3600)
                await r.aclose()
                self.redis_url = url
                break
            await r.aclose()
        else:
            raise RuntimeError("no free Redis logical db for the demo server")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if seed:
            out = subprocess.run([sys.executable, "-m", "oms.cli", "seed-demo"], cwd=ROOT, env=self.env(),
                                 capture_output=True, text=True, timeout=180)
            assert out.returncode == 0, out.stderr
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "oms.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "2", "--demo-channels"],
            cwd=ROOT, env=self.env(), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(timeout=2) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"oms serve exited:\n{self.output()}")
                try:
                    if (await c.get(self.url + "/healthz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError(f"oms serve did not answer:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.proc is not None:
            self.log.close()
        admin = await asyncpg.connect(self.pg_root)
        await admin.execute(f'drop database if exists "{self.dbname}" with (force)')
        await admin.close()
        if self.redis_url:
            r = aioredis.Redis.from_url(self.redis_url)
            await r.flushdb()
            await r.aclose()

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=30, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
