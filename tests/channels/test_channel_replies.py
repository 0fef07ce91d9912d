"""One table from an outcome to every platform's reply (oms/channels/replies.py), without servers."""

from __future__ import annotations

import json

import pytest

from adapters.errors import PayloadError, SignatureError, UpstreamError
from oms.channels import replies
from oms.channels.ports import IntakeError
from oms.channels.replies import Platform
from oms.errors import IllegalTransition, Unavailable

FAILED = {
    Platform.DOUYIN: lambda b: b["code"] != 0,
    Platform.TMALL_RELAY: lambda b: b["success"] is False,
    Platform.JD_RELAY: lambda b: b["success"] is False,
    Platform.MINIPROGRAM_PUSH: lambda b: b["ok"] is False,
    Platform.WECHATPAY: lambda b: b["code"] == "FAIL",
}


@pytest.mark.parametrize("platform", list(Platform))
def test_every_platform_answers_each_outcome_in_its_own_format(platform):
    ok = replies.ok(platform)
    assert ok.status in (200, 204)
    for reply, status in ((replies.retry(platform), 503), (replies.not_configured(platform, "it"), 503),
                          (replies.rejected(platform, SignatureError("bad signature")), 401),
                          (replies.refused(platform, 409, [{"error": "IntakeError", "message": "too late"}]), 409)):
        assert reply.status == status
        assert FAILED[platform](json.loads(reply.body)), reply.body


def test_a_typed_failure_answers_with_its_own_status_and_anything_else_is_retried():
    assert replies.status_of(PayloadError("lines", "missing")) == 400
    assert replies.status_of(UpstreamError("platform down")) == 502
    assert replies.status_of(IntakeError(409, "handed over")) == 409
    assert replies.status_of(IllegalTransition("no")) == 409
    assert replies.status_of(Unavailable("retry")) == 503
    assert replies.status_of(RuntimeError("boom")) == 503


def test_a_refusal_names_the_field_where_the_platform_reads_it():
    douyin = json.loads(replies.rejected(Platform.DOUYIN, PayloadError("[1].data", "not valid JSON")).body)
    assert douyin["code"] == 40000 and douyin["errors"][0]["field"] == "[1].data"
    mp = json.loads(replies.rejected(Platform.MINIPROGRAM_PUSH, PayloadError("body.total_fen", "not a number")).body)
    assert mp["ok"] is False and mp["field"] == "body.total_fen"
    wx = json.loads(replies.refused(Platform.WECHATPAY, 400, [{"message": "amount differs"}]).body)
    assert wx == {"code": "FAIL", "message": "amount differs"}
