"""Outbound calls to the platforms: pure request builders and reply parsers (no I/O).

The service (outbox dispatcher, not here) picks the call, builds a `PlatformRequest` with a
`build_*` function, sends it, and hands the status and body to the matching `parse_*`, which
answers an `Outcome` telling it what to do next (done, retry, wait, intercept, give up).

    common.py    PlatformRequest, Outcome/OutcomeKind, StateCheck, typed inputs
    carriers.py  our carrier names -> each platform's carrier code
    tmall.py     Taobao/Tmall TOP: stock (item/skus quantity), offline/ascp/dummy send, trade state
    jd.py        JD JOS: ware.stock.sku.set, pop.order.shipment, order state
    douyin.py    Douyin: sku/syncStock(+Batch), order/logisticsAdd(+MultiPack)
    wechat.py    WeChat mini-program: upload_shipping_info, get_order (no stock push)

Facts and their sources: docs platforms/outbound.md; values it marks unconfirmed are marked
"UNCONFIRMED" in the code.
"""
