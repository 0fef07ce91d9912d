"""Jobs that must run once hold a lease: many `oms serve` processes behave as one service."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "channels"))
sys.path.insert(0, str(Path(__file__).parent / "adapters"))

from channel_fakes import FakeHttpServer  # noqa: E402
from test_channel_jd_worker import FakeJos  # noqa: E402

from oms.infra.lease import Lease, run_exclusively  # noqa: E402

BIN = Path(sys.executable).parent


async def test_one_holder_at_a_time_and_only_the_holder_renews_or_releases(services, uid):
    a = Lease(services.redis, f"test-{uid}", ttl_s=5, holder="a")
    b = Lease(services.redis, f"test-{uid}", ttl_s=5, holder="b")
    assert await a.acquire()
    assert not await b.acquire()
    assert not await b.renew()
    await b.release()  # not b's: changes nothing
    assert await a.current_holder() == "a"
    assert await a.renew()
    await a.release()
    assert await b.acquire()
    await b.release()


async def test_an_expired_lease_is_taken_over_and_the_old_holder_stops_its_job(services, uid):
    ttl = 0.6
    running: list[str] = []
    seen_together = False

    def job(name: str):
        async def run() -> None:
            nonlocal seen_together
            running.append(name)
            try:
                while True:
                    seen_together |= len(running) > 1
                    await asyncio.sleep(0.02)
            finally:
                running.remove(name)
        return run

    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    a = asyncio.create_task(run_exclusively(Lease(services.redis, f"job-{uid}", ttl, "a"), job("a"), stop_a))
    await asyncio.sleep(0.2)
    b = asyncio.create_task(run_exclusively(Lease(services.redis, f"job-{uid}", ttl, "b"), job("b"), stop_b))
    await asyncio.sleep(1.0)
    assert running == ["a"]
    stop_a.set()  # the holder goes away (lets go): b takes over
    await asyncio.wait_for(a, 5)
    for _ in range(100):
        if running == ["b"]:
            break
        await asyncio.sleep(0.05)
    assert running == ["b"]
    stop_b.set()
    await asyncio.wait_for(b, 5)
    assert running == [] and not seen_together


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_two_oms_serve_processes_run_one_jd_poller_and_the_other_takes_over_when_it_is_killed(
        settings, services):
    jos = FakeJos()
    lease = Lease(services.redis, "channel-worker:jd")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMS_JD_", "OMS_TMALL_"))}
    procs: list[asyncio.subprocess.Process] = []
    async with FakeHttpServer(jos.handler) as api:
        env |= {"OMS_DATABASE_URL": settings.database_url, "OMS_REDIS_URL": settings.redis_url,
                "OMS_DATA_DIR": str(settings.data_dir), "OMS_ADMIN_TOKEN": settings.admin_token,
                "OMS_JD_APP_KEY": "jd-app", "OMS_JD_APP_SECRET": "jd-secret", "OMS_JD_ACCESS_TOKEN": "jd-token",
                "OMS_JD_API_URL": api.url + "/routerjson", "OMS_JD_POLL_INTERVAL_S": "0.2",
                "OMS_CHANNEL_WORKERS": "jd", "OMS_LEASE_TTL_S": "1.5"}
        try:
            for _ in range(2):
                procs.append(await asyncio.create_subprocess_exec(
                    BIN / "oms", "serve", "--port", str(_free_port()), "--workers", "1", env=env,
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE))

            async def holder_pid() -> int:
                while True:
                    held = await lease.current_holder()
                    if held:
                        return int(held.split(":")[1])
                    for p in procs:
                        assert p.returncode is None, (await p.stderr.read()).decode()[-2000:]
                    await asyncio.sleep(0.1)

            first = await asyncio.wait_for(holder_pid(), 60)
            assert first in {p.pid for p in procs}
            while not jos.searches:
                await asyncio.sleep(0.1)
            # the other process polls nothing while the holder lives
            await asyncio.sleep(1.0)
            assert await lease.current_holder() is not None and int((await lease.current_holder()).split(":")[1]) == first

            victim = next(p for p in procs if p.pid == first)
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
            killed_at = asyncio.get_running_loop().time()
            searches_before = len(jos.searches)

            async def new_holder() -> int:
                while True:
                    held = await lease.current_holder()
                    if held and int(held.split(":")[1]) != first:
                        return int(held.split(":")[1])
                    await asyncio.sleep(0.05)

            second = await asyncio.wait_for(new_holder(), 10)
            took = asyncio.get_running_loop().time() - killed_at
            assert second in {p.pid for p in procs} - {first}
            assert took < 1.5 + 1.0, f"took over after {took:.1f} s with a 1.5 s lease"
            while len(jos.searches) == searches_before:
                await asyncio.sleep(0.1)
        finally:
            for p in procs:
                if p.returncode is None:
                    p.terminate()
            for p in procs:
                try:
                    await asyncio.wait_for(p.wait(), 20)
                except asyncio.TimeoutError:
                    p.kill()
                    await p.wait()
