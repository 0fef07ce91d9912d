"""Channel adapters: a pure library (no database, Redis, web framework or network I/O).

Raw bytes + headers + credentials in; verified, typed ChannelEvents and NormalizedOrders out.

    normalized.py   the shared contract (NormalizedOrder, ChannelEvent, ...)
    douyin.py       Douyin shop push: where a Douyin push is verified (event-sign), routed by
                    tag, and order.orderDetail is built/parsed
    tmall.py        Taobao/Tmall: TMC messages routed by topic, TOP signing,
                    taobao.trade.fullinfo.get, the relay webhook
    tmc.py          the TMC WebSocket's binary frames and connect signature
    jd.py           JD: JOS signing, jingdong.pop.order.search / order.get, the relay webhook
    miniprogram.py  our mini-program's HMAC order push; WeChat Pay API v3 notifications
                    (RSA-SHA256 verification, AEAD_AES_256_GCM decryption)
    money.py        yuan text -> integer fen, exactly
    timeutil.py     Beijing time -> aware datetimes
    geo.py          GCJ-02, WGS-84 conversion, district centres from the cpca gazetteer
    errors.py       AdapterError -> SignatureError / StaleTimestamp (401), PayloadError (400),
                    UpstreamError (502)
    common.py       request/reply shapes, strict decoding, SKU resolution
    outbound/       calls TO the platforms: stock levels and ship confirmations (pure builders
                    and reply parsers; the dispatcher that sends them is in oms/)

The I/O side (HTTP calls, webhook handlers, TMC consumer, JD poller) is in oms/channels/.
"""
