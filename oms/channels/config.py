"""Channel credentials and platform base URLs from the environment.

Names from DESIGN.md: OMS_TMALL_APP_KEY, OMS_TMALL_APP_SECRET, OMS_JD_APP_KEY, OMS_JD_APP_SECRET,
OMS_DOUYIN_APP_KEY, OMS_DOUYIN_APP_SECRET, OMS_MINIPROGRAM_APIV3_KEY,
OMS_MINIPROGRAM_PLATFORM_PUBLIC_KEY (PEM path or PEM text). Added here (all optional):

    OMS_TMALL_SESSION            TOP session key of the shop (taobao.trade.fullinfo.get)
    OMS_TMALL_TOP_URL            default https://eco.taobao.com/router/rest
    OMS_TMALL_TMC_URL            default wss://mc.api.taobao.com/
    OMS_TMALL_TMC_GROUP          default "default"
    OMS_JD_ACCESS_TOKEN          JOS access token of the shop
    OMS_JD_API_URL               default https://api.jd.com/routerjson
    OMS_JD_POLL_INTERVAL_S       default 60
    OMS_JD_POLL_OVERLAP_S        default 300 (each window re-reads this much of the last one)
    OMS_DOUYIN_ACCESS_TOKEN      Doudian access token of the shop
    OMS_DOUYIN_API_URL           default https://openapi-fxg.jinritemai.com
    OMS_MINIPROGRAM_PUSH_SECRET  shared HMAC secret of the mini-program backend's order push
    OMS_MINIPROGRAM_PLATFORM_SERIAL  optional: expected Wechatpay-Serial (platform key id)

A channel whose app key (or, for the mini-program, push secret / APIv3 key) is unset is None:
its webhook answers 503 and its worker refuses to start, instead of accepting unsigned input.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import msgspec

from adapters import douyin, jd, tmall
from adapters.douyin import DouyinCredentials
from adapters.jd import JdCredentials
from adapters.tmall import TmallCredentials


class TmallConfig(msgspec.Struct, frozen=True, kw_only=True):
    credentials: TmallCredentials
    top_url: str = tmall.DEFAULT_TOP_URL
    tmc_url: str = tmall.DEFAULT_TMC_URL
    tmc_group: str = "default"


class JdConfig(msgspec.Struct, frozen=True, kw_only=True):
    credentials: JdCredentials
    api_url: str = jd.DEFAULT_API_URL
    poll_interval_s: float = 60.0
    poll_overlap_s: float = 300.0


class DouyinConfig(msgspec.Struct, frozen=True, kw_only=True):
    credentials: DouyinCredentials
    api_url: str = douyin.DEFAULT_API_URL


class MiniprogramConfig(msgspec.Struct, frozen=True, kw_only=True):
    push_secret: str = ""
    apiv3_key: bytes = b""
    platform_public_key_pem: str = ""
    platform_serial: str | None = None

    def __repr__(self) -> str:
        return f"MiniprogramConfig(push_secret=***, apiv3_key=***, platform_serial={self.platform_serial!r})"


class ChannelsConfig(msgspec.Struct, frozen=True, kw_only=True):
    tmall: TmallConfig | None = None
    jd: JdConfig | None = None
    douyin: DouyinConfig | None = None
    miniprogram: MiniprogramConfig | None = None


def _pem(value: str) -> str:
    """PEM text as given, or read from the path it names."""
    if "-----BEGIN" in value:
        return value
    path = Path(value).expanduser()
    return path.read_text(encoding="utf-8")


def load_config(env: Mapping[str, str] | None = None) -> ChannelsConfig:
    """Read every channel's configuration; unset channels are None."""
    e = os.environ if env is None else env

    def get(name: str, default: str = "") -> str:
        return (e.get(name) or default).strip()

    tmall_cfg = jd_cfg = douyin_cfg = mp_cfg = None
    if get("OMS_TMALL_APP_KEY"):
        tmall_cfg = TmallConfig(
            credentials=TmallCredentials(
                app_key=get("OMS_TMALL_APP_KEY"), app_secret=get("OMS_TMALL_APP_SECRET"), session=get("OMS_TMALL_SESSION")
            ),
            top_url=get("OMS_TMALL_TOP_URL", tmall.DEFAULT_TOP_URL),
            tmc_url=get("OMS_TMALL_TMC_URL", tmall.DEFAULT_TMC_URL),
            tmc_group=get("OMS_TMALL_TMC_GROUP", "default"),
        )
    if get("OMS_JD_APP_KEY"):
        jd_cfg = JdConfig(
            credentials=JdCredentials(
                app_key=get("OMS_JD_APP_KEY"), app_secret=get("OMS_JD_APP_SECRET"), access_token=get("OMS_JD_ACCESS_TOKEN")
            ),
            api_url=get("OMS_JD_API_URL", jd.DEFAULT_API_URL),
            poll_interval_s=float(get("OMS_JD_POLL_INTERVAL_S", "60")),
            poll_overlap_s=float(get("OMS_JD_POLL_OVERLAP_S", "300")),
        )
    if get("OMS_DOUYIN_APP_KEY"):
        douyin_cfg = DouyinConfig(
            credentials=DouyinCredentials(
                app_key=get("OMS_DOUYIN_APP_KEY"),
                app_secret=get("OMS_DOUYIN_APP_SECRET"),
                access_token=get("OMS_DOUYIN_ACCESS_TOKEN"),
            ),
            api_url=get("OMS_DOUYIN_API_URL", douyin.DEFAULT_API_URL),
        )
    push_secret, apiv3 = get("OMS_MINIPROGRAM_PUSH_SECRET"), get("OMS_MINIPROGRAM_APIV3_KEY")
    if push_secret or apiv3:
        key_setting = get("OMS_MINIPROGRAM_PLATFORM_PUBLIC_KEY")
        mp_cfg = MiniprogramConfig(
            push_secret=push_secret,
            apiv3_key=apiv3.encode("utf-8"),
            platform_public_key_pem=_pem(key_setting) if key_setting else "",
            platform_serial=get("OMS_MINIPROGRAM_PLATFORM_SERIAL") or None,
        )
    return ChannelsConfig(tmall=tmall_cfg, jd=jd_cfg, douyin=douyin_cfg, miniprogram=mp_cfg)
