"""The commands a user runs: migrate, seed-demo, serve (as `make run` does), against real servers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def _env(settings) -> dict[str, str]:
    return {**os.environ, "OMS_DATABASE_URL": settings.database_url, "OMS_REDIS_URL": settings.redis_url,
            "OMS_ADMIN_TOKEN": settings.admin_token, "OMS_DATA_DIR": str(settings.data_dir)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_make_run_path_seeds_demo_city_and_serves_healthz_and_nodes(settings):
    env = _env(settings)
    migrate = subprocess.run([BIN / "oms", "migrate"], env=env, capture_output=True, text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stderr
    seed = subprocess.run([BIN / "oms", "seed-demo"], env=env, capture_output=True, text=True, timeout=120)
    assert seed.returncode == 0, seed.stderr
    assert "seeded demo city" in seed.stdout

    port = _free_port()
    server = subprocess.Popen([BIN / "oms", "serve", "--port", str(port), "--workers", "1"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                health = httpx.get(url + "/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert server.poll() is None, server.stderr.read()
                assert time.time() < deadline, "server did not answer within 60 s"
                time.sleep(0.3)
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        nodes = httpx.get(url + "/nodes", headers={"Authorization": f"Bearer {settings.admin_token}"}, timeout=10).json()
        shanghai_stores = [n for n in nodes if n["kind"] == "store" and n["id"].startswith("SH-")]
        assert len(shanghai_stores) >= 40
        assert any(n["kind"] == "warehouse" for n in nodes)
        assert httpx.get(url + "/nodes", timeout=10).status_code == 401
    finally:
        server.terminate()
        server.wait(20)


def test_an_unreachable_database_is_a_clear_message_not_a_traceback(settings):
    env = {**_env(settings), "OMS_DATABASE_URL": "postgresql://127.0.0.1:1/nowhere"}
    r = subprocess.run([BIN / "oms", "migrate"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "OMS_DATABASE_URL" in r.stderr and "Traceback" not in r.stderr
