"""The package installs as a wheel and serves from any folder: migrations and queries ship inside it."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def wheel_venv(tmp_path: Path) -> Path:
    """A fresh venv holding only the built wheel; the dependencies come from the test venv by a .pth line."""
    src = tmp_path / "src"  # a clean copy: setuptools reuses a build/ folder left in the checkout
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("oms", "routing", "adapters", "sql"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("oms-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # a plain path line: the test venv's packages are importable, its editable-install hooks are not
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                              "--no-deps", "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    return venv


async def test_a_wheel_in_a_fresh_venv_serves_healthz_from_an_empty_folder(wheel_venv, settings, tmp_path):
    parts = urlsplit(settings.database_url)
    dbname = "oms_wheel_" + secrets.token_hex(4)
    admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
    await admin.execute(f'create database "{dbname}"')
    await admin.close()
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {**os.environ, "OMS_DATABASE_URL": urlunsplit(parts._replace(path="/" + dbname)),
           "OMS_REDIS_URL": settings.redis_url, "OMS_ADMIN_TOKEN": "wheel-token", "OMS_DATA_DIR": str(empty / "data")}
    env.pop("PYTHONPATH", None)
    oms_bin = wheel_venv / "bin" / "oms"
    where = subprocess.run([wheel_venv / "bin" / "python", "-c", "import oms; print(oms.__file__)"],
                           cwd=empty, env=env, capture_output=True, text=True, check=True).stdout
    assert str(wheel_venv) in where, f"oms imported from {where}, not from the wheel"
    version = subprocess.run([oms_bin, "version"], cwd=empty, env=env, capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and "oms 0.1.0" in version.stdout, version.stderr

    port = _free_port()
    server = subprocess.Popen([oms_bin, "serve", "--port", str(port), "--workers", "1"], cwd=empty, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert server.poll() is None, server.communicate()[1][-2000:]
                assert time.monotonic() < deadline, "oms serve did not answer within 60 s"
                time.sleep(0.2)
        assert r.status_code == 200 and r.json()["status"] == "ok"
        nodes = httpx.get(f"http://127.0.0.1:{port}/nodes", headers={"Authorization": "Bearer wheel-token"}, timeout=5)
        assert nodes.status_code == 200, nodes.text  # the schema was migrated from the wheel's own sql/
    finally:
        server.terminate()
        server.wait(timeout=30)
        admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
        await admin.execute(f'drop database if exists "{dbname}" with (force)')
        await admin.close()
