"""Channel configuration from the environment variables named in DESIGN.md."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from oms.channels.config import load_config


def test_unset_channels_are_none():
    config = load_config({})
    assert config.tmall is None and config.jd is None and config.douyin is None and config.miniprogram is None


def test_all_channels_from_env(tmp_path):
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    key_file = tmp_path / "wechatpay_pub.pem"
    key_file.write_text(pem)
    env = {
        "OMS_TMALL_APP_KEY": "tk", "OMS_TMALL_APP_SECRET": "ts", "OMS_TMALL_SESSION": "sess",
        "OMS_TMALL_TMC_URL": "ws://127.0.0.1:1/", "OMS_TMALL_TOP_URL": "http://127.0.0.1:2/router/rest",
        "OMS_JD_APP_KEY": "jk", "OMS_JD_APP_SECRET": "js", "OMS_JD_ACCESS_TOKEN": "jt",
        "OMS_JD_API_URL": "http://127.0.0.1:3/routerjson", "OMS_JD_POLL_INTERVAL_S": "15", "OMS_JD_POLL_OVERLAP_S": "120",
        "OMS_DOUYIN_APP_KEY": "dk", "OMS_DOUYIN_APP_SECRET": "ds", "OMS_DOUYIN_ACCESS_TOKEN": "dt",
        "OMS_DOUYIN_API_URL": "http://127.0.0.1:4",
        "OMS_MINIPROGRAM_APIV3_KEY": "0123456789abcdef0123456789ABCDEF",
        "OMS_MINIPROGRAM_PLATFORM_PUBLIC_KEY": str(key_file),
        "OMS_MINIPROGRAM_PUSH_SECRET": "push",
    }
    config = load_config(env)
    assert config.tmall.credentials.app_secret == "ts" and config.tmall.tmc_url == "ws://127.0.0.1:1/"
    assert config.tmall.top_url == "http://127.0.0.1:2/router/rest" and config.tmall.credentials.session == "sess"
    assert config.jd.credentials.access_token == "jt" and config.jd.poll_overlap_s == 120.0
    assert config.jd.api_url == "http://127.0.0.1:3/routerjson" and config.jd.poll_interval_s == 15.0
    assert config.douyin.api_url == "http://127.0.0.1:4" and config.douyin.credentials.app_key == "dk"
    assert config.miniprogram.apiv3_key == b"0123456789abcdef0123456789ABCDEF"
    assert config.miniprogram.platform_public_key_pem == pem  # read from the path
    inline = load_config(env | {"OMS_MINIPROGRAM_PLATFORM_PUBLIC_KEY": pem}).miniprogram
    assert inline.platform_public_key_pem.strip() == pem.strip()
    # secrets never show in a repr (and so never in a log line built from one)
    text = repr(config)
    for secret in ("ts", "js", "ds", "sess", "jt", "dt", "push", "0123456789abcdef"):
        assert f"'{secret}'" not in text and secret + "'" not in text
