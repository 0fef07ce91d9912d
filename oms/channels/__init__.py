"""The I/O side of the sales channels: webhook handlers, platform API calls, channel workers.

Depends only on `adapters/` (pure parsing and signing) plus httpx / websockets. The core hands
in an `Intake` (oms/channels/intake.py) that records and applies each ChannelEvent.

    webhooks.py      framework-free handlers for POST /webhooks/{douyin,tmall,jd,miniprogram}
    fetch.py         real HTTP calls to the platforms' order APIs (configurable base URLs)
    tmall_worker.py  Taobao TMC WebSocket consumer (`oms channels tmall`)
    jd_worker.py     JD order poller with a persisted watermark (`oms channels jd`)
    config.py        credentials and base URLs from OMS_* environment variables
"""
