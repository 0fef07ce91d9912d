"""Channel credentials of the demo shop: generated once, kept in OMS_DATA_DIR beside the admin token.

`make run` (`oms serve --demo-channels`) sets the OMS_* channel variables from this file for
the variables that are not set already, so all four webhooks answer at once; `oms simulate-sale`
reads the same file to sign its pushes the way each platform does. The demo shop's "platform"
order APIs (Douyin order.orderDetail, Taobao TOP, JD JOS) point at 127.0.0.1:<platform port>,
where `oms simulate-sale` serves the orders it sells while it runs: nothing leaves the machine.

The WeChat Pay platform key pair is generated too: the server gets the public key (as it would
download WeChat Pay's platform certificate), the simulator keeps the private key to sign its
notifications as WeChat Pay would. None of this is a real credential.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import MutableMapping
from pathlib import Path

import msgspec

FILE_NAME = "demo_channels.json"
DEFAULT_PLATFORM_PORT = 8079


class DemoChannels(msgspec.Struct, frozen=True, kw_only=True):
    platform_port: int
    #: the OMS_* variables the server uses for the demo shop
    env: dict[str, str]
    #: PEM of the demo WeChat Pay platform private key (the simulator signs with it)
    wechatpay_private_key_pem: str

    @property
    def platform_url(self) -> str:
        return f"http://127.0.0.1:{self.platform_port}"


def _platform_env(port: int) -> dict[str, str]:
    base = f"http://127.0.0.1:{port}"
    return {
        "OMS_DOUYIN_API_URL": f"{base}/douyin",
        "OMS_TMALL_TOP_URL": f"{base}/tmall/router/rest",
        "OMS_JD_API_URL": f"{base}/jd/routerjson",
    }


def _generate(port: int, key_dir: Path) -> DemoChannels:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    public_path = key_dir / "demo_wechatpay_platform_public.pem"
    public_path.write_text(public_pem)
    env = {
        "OMS_DOUYIN_APP_KEY": "demo-douyin-app",
        "OMS_DOUYIN_APP_SECRET": secrets.token_hex(16),
        "OMS_DOUYIN_ACCESS_TOKEN": "demo-douyin-" + secrets.token_hex(8),
        "OMS_TMALL_APP_KEY": "12345678",
        "OMS_TMALL_APP_SECRET": secrets.token_hex(16),
        "OMS_TMALL_SESSION": "demo-tmall-" + secrets.token_hex(8),
        "OMS_JD_APP_KEY": "demo-jd-app",
        "OMS_JD_APP_SECRET": secrets.token_hex(16),
        "OMS_JD_ACCESS_TOKEN": "demo-jd-" + secrets.token_hex(8),
        "OMS_MINIPROGRAM_PUSH_SECRET": secrets.token_hex(16),
        # the APIv3 key is 32 bytes of text, as the WeChat Pay merchant console issues it
        "OMS_MINIPROGRAM_APIV3_KEY": secrets.token_hex(16),
        "OMS_MINIPROGRAM_PLATFORM_PUBLIC_KEY": str(public_path),
        "OMS_MINIPROGRAM_PLATFORM_SERIAL": "DEMO" + secrets.token_hex(8).upper(),
        **_platform_env(port),
    }
    return DemoChannels(platform_port=port, env=env, wechatpay_private_key_pem=private_pem)


def load_or_create(data_dir: Path, port: int | None = None) -> DemoChannels:
    """The demo shop's credentials, generated on first use (port: OMS_DEMO_PLATFORM_PORT or 8079)."""
    path = data_dir / FILE_NAME
    if path.exists():
        return msgspec.json.decode(path.read_bytes(), type=DemoChannels)
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or int(os.environ.get("OMS_DEMO_PLATFORM_PORT") or DEFAULT_PLATFORM_PORT)
    demo = _generate(port, data_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(json.dumps(msgspec.to_builtins(demo), indent=2).encode())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return msgspec.json.decode(path.read_bytes(), type=DemoChannels)


def load(data_dir: Path) -> DemoChannels | None:
    path = data_dir / FILE_NAME
    return msgspec.json.decode(path.read_bytes(), type=DemoChannels) if path.exists() else None


def apply(demo: DemoChannels, environ: MutableMapping[str, str]) -> list[str]:
    """Set the demo shop's variables that are unset; returns the names it set. A channel whose
    app key the user configured keeps all of the user's variables."""
    channel_of = {"DOUYIN": "OMS_DOUYIN_APP_KEY", "TMALL": "OMS_TMALL_APP_KEY", "JD": "OMS_JD_APP_KEY",
                  "MINIPROGRAM": "OMS_MINIPROGRAM_PUSH_SECRET"}
    user_channels = {ch for ch, key in channel_of.items() if environ.get(key)}
    set_now = []
    for name, value in demo.env.items():
        channel = name.split("_")[1]
        if channel in user_channels or environ.get(name):
            continue
        environ[name] = value
        set_now.append(name)
    return set_now
