"""The OpenAPI document tells the truth: bearer schemes, the real error body, every status each
route can answer, the webhook bodies; and its Swagger UI's files come from the service itself."""

from __future__ import annotations

import msgspec

from oms.api import openapi
from oms.errors import OmsError


async def schema(client) -> dict:
    r = await client.get("/schema/openapi.json", headers={"Authorization": ""})
    assert r.status_code == 200
    return r.json()


async def test_the_document_has_the_bearer_schemes_and_the_error_schema(client):
    s = await schema(client)
    schemes = s["components"]["securitySchemes"]
    assert schemes["adminToken"] == {**schemes["adminToken"], "type": "http", "scheme": "bearer"}
    assert schemes["storeToken"]["scheme"] == "bearer"
    error = s["components"]["schemas"]["Error"]
    assert set(error["properties"]) == {"error", "message", "field"} and set(error["required"]) == {"error", "message"}
    post = s["paths"]["/orders"]["post"]
    assert post["security"] == [{"adminToken": []}]
    assert {"400", "401", "409", "422", "503"} <= set(post["responses"])
    for status in ("400", "401", "422"):
        assert post["responses"][status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert s["paths"]["/stores/{node_id}/picklist"]["get"]["security"] == [{"storeToken": []}]
    assert "429" in s["paths"]["/stores/{node_id}/pickups/{code}"]["post"]["responses"]


async def test_every_route_is_in_the_status_table_and_no_litestar_error_body_is_left(client):
    s = await schema(client)
    listed = set(openapi.ROUTES) | {("POST", p) for p in openapi.WEBHOOKS} | {("GET", "/ops")}
    for path, item in s["paths"].items():
        for method, op in item.items():
            assert (method.upper(), path) in listed, f"{method.upper()} {path} has no line in oms/api/openapi.py"
            text = msgspec.json.encode(op).decode()
            assert "status_code" not in text, f"{method} {path} still documents Litestar's error body"


async def test_the_table_knows_only_statuses_the_error_mapping_answers(client):
    answered = {cls.status_code for cls in _subclasses(OmsError)} | {400, 401, 503}
    for (_, _), (_, statuses) in openapi.ROUTES.items():
        assert set(statuses) <= answered, statuses


async def test_webhook_bodies_are_described_in_the_platforms_own_formats(client):
    s = await schema(client)
    douyin = s["paths"]["/webhooks/douyin"]["post"]
    body = douyin["requestBody"]["content"]["application/json"]["schema"]
    assert body["type"] == "array" and body["items"] == {"$ref": "#/components/schemas/DouyinPushMessage"}
    assert douyin["security"] == [] and {"200", "400", "401", "503"} <= set(douyin["responses"])
    jd = s["paths"]["/webhooks/jd"]["post"]["requestBody"]["content"]
    assert "360buy_param_json" in s["components"]["schemas"]["JdRelayForm"]["properties"]
    assert "application/x-www-form-urlencoded" in jd
    mp = s["paths"]["/webhooks/miniprogram"]["post"]
    assert {"$ref": "#/components/schemas/MpPush"} in mp["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert "204" in mp["responses"]
    tmall = s["paths"]["/webhooks/tmall"]["post"]
    assert {p["name"] for p in tmall["parameters"]} >= {"app_key", "timestamp", "sign"}


async def test_swagger_ui_is_served_from_the_package_not_a_cdn(client):
    page = await client.get("/schema/swagger", headers={"Authorization": ""})
    assert page.status_code == 200
    assert "https://" not in page.text and "http://" not in page.text
    for name, kind in (("swagger-ui-bundle.js", "text/javascript"), ("swagger-ui.css", "text/css"),
                       ("swagger-ui-standalone-preset.js", "text/javascript")):
        assert f"/schema/assets/{name}" in page.text
        r = await client.get(f"/schema/assets/{name}", headers={"Authorization": ""})
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind) and len(r.content) > 50_000
    assert (await client.get("/schema/assets/..%2Fsecrets")).status_code == 404
    assert (await client.get("/schema/assets/index.html")).status_code == 404


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)
