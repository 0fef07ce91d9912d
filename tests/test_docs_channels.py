"""The docs cannot rot: every curl of the README and every signed example request of
docs/channels.md is parsed out of the markdown and run, as written, against a real `oms serve`
over the demo city started with the documented test credentials (docs/test-channels.env)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from newcomer_demo_server import ADMIN_TOKEN, ROOT, DemoServer

DOC_URL = "http://127.0.0.1:8000"
BLOCK = re.compile(r"^```(sh|python)\n(.*?)^```", re.S | re.M)


def blocks(path: str, lang: str | None = None) -> list[tuple[str, str]]:
    text = (ROOT / path).read_text(encoding="utf-8")
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(text) if lang is None or m.group(1) == lang]


def documented_env() -> dict[str, str]:
    env = {}
    for line in (ROOT / "docs" / "test-channels.env").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
    return env


@pytest.fixture(scope="module")
async def demo(server_urls, tmp_path_factory):
    server = DemoServer(*server_urls, tmp_path_factory.mktemp("docs") / "data", extra_env=documented_env())
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


def run(lang: str, code: str, demo: DemoServer) -> subprocess.CompletedProcess:
    code = code.replace(DOC_URL, demo.url).replace("localhost:8000", demo.url.removeprefix("http://"))
    code = code.replace(".oms/admin_token", str(demo.data_dir / "admin_token"))
    argv = ["bash", "-e", "-c", code] if lang == "sh" else [sys.executable, "-c", code]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)


def expected(code: str) -> str:
    found = re.findall(r"^# prints: (.*)$", code, re.M)
    assert len(found) == 1, f"a runnable example says what it prints once:\n{code}"
    return found[0].strip()


def test_channels_doc_has_a_signed_example_for_every_platform():
    text = "\n".join(code for _, code in blocks("docs/channels.md"))
    for path in ("/webhooks/douyin", "/webhooks/tmall", "/webhooks/jd", "/webhooks/miniprogram"):
        assert path in text, path
    assert "Wechatpay-Signature" in text
    doc = (ROOT / "docs" / "channels.md").read_text()
    from oms.channels import config

    # every channel variable the service reads is documented
    for name in set(re.findall(r"OMS_[A-Z0-9_]+", config.__doc__ or "")):
        assert f"`{name}`" in doc, name
    assert "docs/channels.md" in (ROOT / "README.md").read_text()


async def test_every_signed_example_in_the_channels_doc_answers_as_written(demo):
    examples = blocks("docs/channels.md")
    assert len(examples) >= 6
    for lang, code in examples:
        out = run(lang, code, demo)
        assert out.returncode == 0, f"{code}\n{out.stdout}\n{out.stderr}"
        last = out.stdout.strip().splitlines()[-1].strip()
        assert last == expected(code), f"{code}\nprinted: {out.stdout}\n{out.stderr}"
    # what the examples did: the mini-program order exists, was paid by the WeChat Pay example and allocated
    async with demo.client() as c:
        items = (await c.get("/orders", params={"channel": "miniprogram", "external_id": "MPDOC0001"})).json()["items"]
        assert len(items) == 1 and items[0]["status"] == "allocated", items
        # the Douyin cancel of an order not seen yet is remembered, not refused
        assert (await c.get("/orders", params={"channel": "douyin"})).json()["items"] == []


async def test_every_readme_curl_runs_against_the_demo(demo):
    (demo.data_dir / "admin_token").write_text(ADMIN_TOKEN)
    runnable = [code for lang, code in blocks("README.md", "sh") if "curl" in code]
    assert runnable
    for code in runnable:
        out = run("sh", code, demo)
        assert out.returncode == 0, f"{code}\n{out.stdout}\n{out.stderr}"
        assert '"error"' not in out.stdout, out.stdout
        assert out.stdout.strip(), code
    text = "".join(run("sh", code, demo).stdout for code in runnable)
    assert '{"status":"ok"}' in text and "SKU-TEE-WHT-M" in text and '"status":"allocated"' in text
