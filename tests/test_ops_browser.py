"""The ops page in a real browser: headless Chromium (Debian's `chromium` package, installed here
when missing) opens /ops served by `oms serve`, sees the order count change after orders are
posted without reloading, and saves screenshots at 1920x1080 and 1366x768.

Screenshots: <tmp>/ops-1920.png and <tmp>/ops-1366.png, copied to /tmp/ops-1920.png and
/tmp/ops-1366.png to look at.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
                  "--hide-scrollbars", "--mute-audio"]

# stores at real places in Shanghai, so the map looks like a city
STORES = [
    ("nanjing-e", 31.2382, 121.4843), ("xintiandi", 31.2198, 121.4754), ("jingan", 31.2237, 121.4460),
    ("lujiazui", 31.2397, 121.4998), ("xujiahui", 31.1950, 121.4370), ("wujiaochang", 31.2990, 121.5140),
    ("zhongshan-park", 31.2230, 121.4170), ("century-park", 31.2150, 121.5510),
]


# ---- Chromium -------------------------------------------------------------------------------

def _apt_install(*packages: str) -> str:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", *packages]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:  # an old or empty package list: refresh it once and try again
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True, timeout=300)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return "" if r.returncode == 0 else (r.stderr or r.stdout)[-600:]


def chromium_path() -> str:
    """Debian's chromium, installed with apt-get when missing; skip (saying why) when it cannot be."""
    def found() -> str | None:
        for c in ("/usr/bin/chromium", shutil.which("chromium")):
            if c and os.access(c, os.X_OK):
                return c
        return None

    path = found()
    if path is None:
        if not shutil.which("apt-get"):
            pytest.skip("headless Chromium is needed: install Debian's 'chromium' package (no apt-get here)")
        if os.geteuid() != 0:
            pytest.skip("headless Chromium is needed: run 'apt-get install chromium' as root (tests are not root)")
        problem = _apt_install("chromium")
        path = found()
        if path is None:
            pytest.skip(f"headless Chromium is needed and 'apt-get install chromium' failed: {problem}")
    # store names are Chinese: without a CJK font they render as boxes (best effort, small package)
    if shutil.which("fc-list") and os.geteuid() == 0:
        have = subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True).stdout.strip()
        if not have and shutil.which("apt-get"):
            _apt_install("fonts-wqy-microhei")
    return path


class CDP:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.next_id = 0
        self.events: list[dict] = []  # what the browser told us meanwhile (e.g. Network.requestWillBeSent)

    async def call(self, method: str, **params):
        self.next_id += 1
        my = self.next_id
        await self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    async def eval(self, expression: str):
        r = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20.0, what: str = ""):
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = await self.eval(expression)
            if value:
                return value
            await asyncio.sleep(0.2)
        state = await self.eval("JSON.stringify({polls: window.__ops && window.__ops.polls, ok: window.__ops && window.__ops.ok,"
                                " errors: window.__ops && window.__ops.errors.slice(-5)})")
        raise AssertionError(f"timed out waiting for {what or expression}; page state: {state}")

    async def wait_until(self, expression: str, timeout: float = 30.0, what: str = ""):
        """wait_for for pages other than /ops."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.eval(expression)
            if value:
                return value
            await asyncio.sleep(0.2)
        problems = [e["params"] for e in self.events
                    if e.get("method") in ("Runtime.exceptionThrown", "Log.entryAdded", "Network.loadingFailed")][-5:]
        raise AssertionError(f"timed out waiting for {what or expression}; {problems}")

    async def screenshot(self, width: int, height: int, path: Path) -> None:
        await self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                        mobile=False)
        await self.eval("new Promise(r => setTimeout(r, 300))")  # the resize redraw
        polls = await self.eval("window.__ops.ok")
        await self.wait_for(f"window.__ops.ok > {polls}", what="a refresh at the new size")
        shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        path.write_bytes(base64.b64decode(shot["data"]))


# ---- the app ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # it runs in a session of its own
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


async def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"{proc.args[:4]} exited ({proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
            try:
                if (await c.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"{url} did not answer in {timeout}s:\n{log.read_text(errors='replace')[-3000:]}")


def _digits(text: str | None) -> int | None:
    d = "".join(ch for ch in (text or "") if ch.isdigit())
    return int(d) if d else None


async def test_ops_page_updates_live_and_is_readable(settings, client, world, services, tmp_path):
    chromium = chromium_path()
    import websockets

    # a small city with some load: stores, stock, orders on every channel, a backorder, one at risk
    skus = [await world.sku(f"br-{i}", 9900 + 1000 * i) for i in range(4)]
    town = world.id("shanghai")  # the page draws this city's map (?city=), whatever other tests left
    nodes = []
    for i, (name, lat, lng) in enumerate(STORES):
        n = world.id(f"br-{name}")
        r = await client.put(f"/nodes/{n}", json={
            "kind": "store", "name": f"br-{name}", "lat": lat, "lng": lng, "city": town,
            "capabilities": ["delivery", "pickup", "ship"], "delivery_radius_m": 3500, "capacity_per_hour": 40 + 10 * i})
        assert r.status_code in (200, 201), r.text
        nodes.append((n, lat, lng))
        for sku in skus[:3]:
            await world.stock(n, sku, 30)
    channels = ["tmall", "jd", "douyin", "miniprogram"]
    made = []
    for i in range(24):
        n, lat, lng = nodes[(i * 3) % len(nodes)]
        body = world.order(f"br-{i}", [(skus[i % 3], 1 + i % 2)], lat=lat + 0.004, lng=lng - 0.003,
                           channel=channels[i % 4])
        r = await world.post_order(body)
        assert r.status_code == 201, r.text
        made.append(r.json())
    r = await world.post_order(world.order("br-none", [(skus[3], 2)], channel="tmall"))
    assert r.json()["status"] == "backordered"
    rush = next(o for o in made if o["status"] == "allocated")
    await services.pool.execute("update orders set promised_by = now() + interval '12 minutes' where id = $1",
                                rush["id"])

    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir", "OMS_PREPARED")}
    env.update(OMS_DATABASE_URL=settings.database_url, OMS_REDIS_URL=settings.redis_url,
               OMS_ADMIN_TOKEN=settings.admin_token, OMS_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1")
    server_log = tmp_path / "server.log"
    browser_log = tmp_path / "chromium.log"
    profile = tmp_path / "chromium-profile"
    with open(server_log, "wb") as slog, open(browser_log, "wb") as blog:
        server = subprocess.Popen([sys.executable, "-m", "oms.cli", "serve", "--host", "127.0.0.1",
                                   "--port", str(port), "--workers", "1"],
                                  cwd=ROOT, env=env, stdout=slog, stderr=subprocess.STDOUT, start_new_session=True)
        browser = None
        try:
            base = f"http://127.0.0.1:{port}"
            await wait_http(base + "/healthz", server, server_log)
            browser = subprocess.Popen(
                [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                 "--remote-allow-origins=*", "--window-size=1920,1080", "about:blank"],
                stdout=blog, stderr=subprocess.STDOUT, start_new_session=True)
            port_file = profile / "DevToolsActivePort"
            deadline = time.monotonic() + 30
            while not (port_file.exists() and port_file.read_text().strip()):
                assert browser.poll() is None, browser_log.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline, "Chromium did not open its debugging port"
                await asyncio.sleep(0.1)
            devtools_port = int(port_file.read_text().split()[0])
            async with httpx.AsyncClient(timeout=5) as c:
                targets = (await c.get(f"http://127.0.0.1:{devtools_port}/json/list")).json()
            page = next(t for t in targets if t["type"] == "page")

            async with websockets.connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
                cdp = CDP(ws)
                await cdp.call("Page.enable")
                await cdp.call("Runtime.enable")
                await cdp.call("Emulation.setDeviceMetricsOverride", width=1920, height=1080, deviceScaleFactor=1,
                               mobile=False)
                await cdp.call("Page.navigate", url=f"{base}/ops?city={town}&token={settings.admin_token}")
                await cdp.wait_for("window.__ops && window.__ops.ok >= 1 && /\\d/.test("
                                   "document.getElementById('orders-total').textContent)", what="the first summary")
                # the token left the address bar and lives in the tab's sessionStorage
                href = await cdp.eval("location.href")
                assert "token=" not in href and f"city={town}" in href
                await cdp.eval("window.__sameDocument = 'yes'")
                before = _digits(await cdp.eval("document.getElementById('orders-total').textContent"))
                assert before is not None and before >= 25

                for i in range(3):
                    r = await world.post_order(world.order(f"br-live-{i}", [(skus[0], 1)], channel="douyin",
                                                           lat=STORES[0][1], lng=STORES[0][2]))
                    assert r.status_code == 201, r.text
                expected = before + 3
                await cdp.wait_for(f"(document.getElementById('orders-total').textContent.replace(/\\D/g, '')|0) "
                                   f"=== {expected}", timeout=20, what=f"the order count to become {expected}")
                assert await cdp.eval("window.__sameDocument") == "yes", "the page was reloaded"

                # what the wall must show
                assert await cdp.eval("document.getElementById('oversell-tile').classList.contains('ok')")
                assert await cdp.eval("document.getElementById('oversell-alert').classList.contains('hidden')")
                hexes = await cdp.eval("document.querySelectorAll('#map polygon.hex').length")
                assert hexes >= 20
                stores_drawn = await cdp.eval("document.querySelectorAll('#map circle.node').length")
                assert stores_drawn == len(STORES)
                assert await cdp.eval(f"document.querySelector('#at-risk tbody').textContent.includes("
                                      f"{json.dumps(rush['external_id'])})")
                assert await cdp.eval("document.querySelectorAll('#chart path.series').length") >= 4
                assert await cdp.eval("window.__ops.errors.length") == 0, await cdp.eval("window.__ops.errors")

                for width, height in ((1920, 1080), (1366, 768)):
                    path = tmp_path / f"ops-{width}.png"
                    await cdp.screenshot(width, height, path)
                    shutil.copyfile(path, f"/tmp/ops-{width}.png")
                    assert path.stat().st_size > 20_000
                    # readable: nothing scrolls off the screen and no big number is cut off
                    layout = await cdp.eval("""(() => {
                        const cut = [...document.querySelectorAll('.tile .value')]
                            .filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.id);
                        return {cut, tall: document.documentElement.scrollHeight > innerHeight + 1,
                                wide: document.documentElement.scrollWidth > innerWidth + 1};
                    })()""")
                    assert layout == {"cut": [], "tall": False, "wide": False}, (width, layout)
                await cdp.call("Browser.close")
        finally:
            if browser is not None:
                try:
                    browser.wait(5)
                except subprocess.TimeoutExpired:
                    stop_group(browser)
            stop_group(server)


# ---- the API docs offline, and the wall during a sale --------------------------------------------

class Browser:
    """Headless Chromium with one page over CDP; `offline` resolves no host name at all, so only
    the server on 127.0.0.1 can answer (a CDN could not)."""

    def __init__(self, chromium: str, tmp: Path, offline: bool = True) -> None:
        self.log = tmp / "chromium.log"
        self.profile = tmp / "chromium-profile"
        flags = [*CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
                 "--remote-allow-origins=*", "--window-size=1366,768"]
        if offline:
            flags.append("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen([chromium, *flags, "about:blank"], stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    async def page(self) -> str:
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert self.proc.poll() is None, self.log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "Chromium did not open its debugging port"
            await asyncio.sleep(0.1)
        devtools_port = int(port_file.read_text().split()[0])
        async with httpx.AsyncClient(timeout=5) as c:
            targets = (await c.get(f"http://127.0.0.1:{devtools_port}/json/list")).json()
        return next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"]

    def stop(self) -> None:
        stop_group(self.proc)
        self._log.close()


async def test_swagger_ui_works_with_the_network_disabled(settings, tmp_path):
    chromium = chromium_path()
    import websockets

    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir", "OMS_PREPARED")}
    env.update(OMS_DATABASE_URL=settings.database_url, OMS_REDIS_URL=settings.redis_url,
               OMS_ADMIN_TOKEN=settings.admin_token, OMS_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1")
    server_log = tmp_path / "server.log"
    with open(server_log, "wb") as slog:
        server = subprocess.Popen([sys.executable, "-m", "oms.cli", "serve", "--host", "127.0.0.1",
                                   "--port", str(port), "--workers", "1"],
                                  cwd=ROOT, env=env, stdout=slog, stderr=subprocess.STDOUT, start_new_session=True)
        browser = None
        try:
            base = f"http://127.0.0.1:{port}"
            await wait_http(base + "/healthz", server, server_log)
            browser = Browser(chromium, tmp_path)
            async with websockets.connect(await browser.page(), max_size=None) as ws:
                cdp = CDP(ws)
                await cdp.call("Page.enable")
                await cdp.call("Network.enable")
                await cdp.call("Runtime.enable")
                await cdp.call("Log.enable")
                await cdp.call("Page.navigate", url=f"{base}/schema/swagger")
                ops = await cdp.wait_until("document.querySelectorAll('.opblock').length", timeout=40,
                                           what="Swagger UI to list the operations")
                assert ops >= 25
                text = await cdp.eval("document.body.innerText")
                for path in ("/orders", "/skus", "/stores/{node_id}/picklist", "/webhooks/douyin", "/ops/summary"):
                    assert path in text, path
                assert await cdp.eval("!!document.querySelector('.btn.authorize')"), "no Authorize button"
                # open POST /orders: the error schema and its statuses are listed
                clicked = await cdp.eval("""(() => {
                    const op = [...document.querySelectorAll('.opblock-post')].find(
                        b => b.querySelector('.opblock-summary-path')?.getAttribute('data-path') === '/orders');
                    (op?.querySelector('.opblock-summary-control') || op?.querySelector('.opblock-summary'))?.click();
                    return !!op;
                })()""")
                assert clicked, "POST /orders is not listed"
                await cdp.wait_until("document.body.innerText.includes('missing or wrong bearer token')",
                                     what="the 401 of POST /orders")
                urls = [urlsplit(e["params"]["request"]["url"]) for e in cdp.events
                        if e.get("method") == "Network.requestWillBeSent"]
                hosts = {u.hostname for u in urls if u.scheme not in ("data", "blob")}
                assert hosts == {"127.0.0.1"}, hosts  # everything came from the service itself
                assert any(u.path == "/schema/assets/swagger-ui-bundle.js" for u in urls)
                await cdp.call("Browser.close")
        finally:
            if browser is not None:
                browser.stop()
            stop_group(server)


async def test_the_ops_wall_during_a_sale_makes_the_readme_screenshot(server_urls, tmp_path):
    """`make run` + `make sale` in small: the demo city served, a sale running, the wall filling.
    The screenshot lands in <tmp>; with OMS_UPDATE_DOCS=1 it replaces docs/ops-sale.png."""
    chromium = chromium_path()
    import websockets
    from newcomer_demo_server import ADMIN_TOKEN, DemoServer

    demo = DemoServer(*server_urls, tmp_path / "data")
    browser = sale = None
    try:
        await demo.start()
        sale = subprocess.Popen([sys.executable, "-m", "oms.cli", "simulate-sale", "--url", demo.url,
                                 "--seconds", "25", "--rate", "10", "--seed", "7"],
                                cwd=ROOT, env=demo.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        browser = Browser(chromium, tmp_path)
        async with websockets.connect(await browser.page(), max_size=None) as ws:
            cdp = CDP(ws)
            await cdp.call("Page.enable")
            await cdp.call("Emulation.setDeviceMetricsOverride", width=1366, height=768, deviceScaleFactor=1,
                           mobile=False)
            await cdp.call("Page.navigate", url=f"{demo.url}/ops?token={ADMIN_TOKEN}")
            await cdp.wait_for("window.__ops && window.__ops.ok >= 1", what="the first summary")
            await cdp.wait_for("(document.getElementById('orders-total').textContent.replace(/\\D/g, '')|0) >= 120",
                               timeout=40, what="the sale to fill the wall")
            await cdp.wait_for("document.querySelectorAll('#map polygon.hex').length > 50", what="the city map")
            assert await cdp.eval("document.getElementById('oversell-tile').classList.contains('ok')")
            assert await cdp.eval("window.__ops.errors.length") == 0
            shot = await cdp.call("Page.captureScreenshot", format="png",
                                  clip={"x": 0, "y": 0, "width": 1366, "height": 768, "scale": 0.75})
            path = tmp_path / "ops-sale.png"
            path.write_bytes(base64.b64decode(shot["data"]))
            assert 30_000 < path.stat().st_size < 400_000
            shutil.copyfile(path, "/tmp/ops-sale.png")
            if os.environ.get("OMS_UPDATE_DOCS") == "1":
                shutil.copyfile(path, ROOT / "docs" / "ops-sale.png")
            await cdp.call("Browser.close")
    finally:
        if sale is not None:
            stop_group(sale)
        if browser is not None:
            browser.stop()
        await demo.stop()
