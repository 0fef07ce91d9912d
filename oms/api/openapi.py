"""The OpenAPI document and its Swagger UI, complete and offline.

Litestar describes each route's success and parameters; this module adds what it cannot know:
the bearer schemes (admin token, store token), the real error body `{error, message, field}`
with every status each route can answer (the statuses come from the typed errors that
oms/api/errors.py maps), and the webhook request bodies in each platform's own format. Swagger
UI's script and style sheet come from the `swagger-ui-bundle-v2` package and are served by the
service under /schema/assets/, so the page works without internet.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar, Response, get
from litestar.exceptions import NotFoundException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from adapters import douyin, miniprogram, tmall

ASSETS_PATH = "/schema/assets"
#: the Swagger UI files served, with their media types
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


class Error(msgspec.Struct, kw_only=True):
    """Every error the API answers (webhooks answer in each platform's own format instead)."""

    #: machine-readable kind: invalid, unauthorized, forbidden, not_found, illegal_transition,
    #: conflict, unknown_reference, too_many_requests, unavailable
    error: str
    #: what is wrong, naming the field or the rule broken
    message: str
    #: the field at fault (a body path such as `lines[0].quantity`, a parameter, or `authorization`)
    field: str | None = None


ADMIN = [{"adminToken": []}]
STORE = [{"storeToken": []}]

_400 = "malformed JSON, or a field or parameter that breaks a rule (the field is named)"
_401 = "missing or wrong bearer token"
_404 = "no such order / node / token"
_409 = "the status does not allow it (the current status is named)"
_422 = "names an unknown SKU or node"
_503 = "PostgreSQL or Redis failed mid-way: nothing was kept, retry"
_403_STORE = "another store's token, or the admin token (ops act for a store with that store's token)"

#: (method, path) -> (security, {status: why}); the one list of what each route can answer
ROUTES: dict[tuple[str, str], tuple[list | None, dict[int, str]]] = {
    ("GET", "/healthz"): (None, {503: _503}),
    ("POST", "/orders"): (ADMIN, {400: _400, 401: _401, 409: "the order exists and cannot take this status",
                                  422: _422, 503: _503}),
    ("GET", "/orders"): (ADMIN, {400: _400, 401: _401}),
    ("GET", "/orders/{order_id}"): (ADMIN, {401: _401, 404: _404}),
    ("POST", "/orders/{order_id}/allocate"): (ADMIN, {401: _401, 404: _404,
                                                      409: "only a backordered or partially allocated order",
                                                      503: _503}),
    ("POST", "/orders/{order_id}/cancel"): (ADMIN, {400: _400, 401: _401, 404: "no such order, or a named line / "
                                                    "fulfilment is not the order's",
                                                    409: "a part was handed over (named in `handed_over`): name only "
                                                         "open lines or fulfilments", 503: _503}),
    ("POST", "/orders/{order_id}/delivered"): (ADMIN, {400: _400, 401: _401, 404: _404,
                                                       409: "nothing shipped to the buyer yet", 503: _503}),
    ("POST", "/orders/{order_id}/complete"): (ADMIN, {401: _401, 404: _404, 409: "not delivered or collected yet",
                                                      503: _503}),
    ("GET", "/nodes"): (ADMIN, {401: _401}),
    ("PUT", "/nodes/{node_id}"): (ADMIN, {400: _400, 401: _401}),
    ("GET", "/skus"): (ADMIN, {400: _400, 401: _401}),
    ("PUT", "/skus/{sku}"): (ADMIN, {400: _400, 401: _401}),
    ("PUT", "/sku-map/{channel}/{platform_sku_id}"): (ADMIN, {400: _400, 401: _401, 422: _422}),
    ("PUT", "/inventory/{node_id}/{sku}"): (ADMIN, {400: _400, 401: _401, 422: _422, 503: _503}),
    ("GET", "/inventory/{sku}"): (ADMIN, {400: _400, 401: _401, 422: _422}),
    ("GET", "/nodes/{node_id}/tokens"): (ADMIN, {401: _401, 404: _404}),
    ("POST", "/nodes/{node_id}/tokens"): (ADMIN, {400: _400, 401: _401, 404: _404}),
    ("DELETE", "/nodes/{node_id}/tokens/{token_id}"): (ADMIN, {401: _401, 404: _404}),
    ("GET", "/stores/{node_id}/picklist"): (STORE, {401: _401, 403: _403_STORE}),
    ("POST", "/stores/{node_id}/orders/{order_id}/picked"): (STORE, {401: _401, 403: _403_STORE, 404: _404,
                                                                     409: _409, 503: _503}),
    ("POST", "/stores/{node_id}/orders/{order_id}/reject"): (STORE, {400: _400, 401: _401, 403: _403_STORE,
                                                                     404: _404, 409: _409, 503: _503}),
    ("POST", "/stores/{node_id}/orders/{order_id}/handover"): (STORE, {400: _400, 401: _401, 403: _403_STORE,
                                                                       404: _404, 409: _409, 503: _503}),
    ("POST", "/stores/{node_id}/orders/{order_id}/received"): (STORE, {401: _401, 403: _403_STORE, 404: _404,
                                                                       409: "nothing shipped to this store yet",
                                                                       503: _503}),
    ("POST", "/stores/{node_id}/orders/{order_id}/delivered"): (STORE, {401: _401, 403: _403_STORE, 404: _404,
                                                                        409: "not shipped yet", 503: _503}),
    ("POST", "/stores/{node_id}/orders/{order_id}/shipped"): (STORE, {401: _401, 403: _403_STORE, 404: _404,
                                                                      409: _409, 503: _503}),
    ("POST", "/stores/{node_id}/pickups/{code}"): (STORE, {401: _401, 403: _403_STORE, 404: "wrong code",
                                                           409: "code already used", 429: "10 wrong codes in 10 minutes",
                                                           503: _503}),
    ("GET", "/ops/summary"): (ADMIN, {400: _400, 401: _401}),
    ("GET", "/ops/map"): (ADMIN, {401: _401}),
    ("GET", "/metrics"): (ADMIN, {401: _401 + " (unless the server runs with OMS_METRICS_PUBLIC=1)"}),
    ("PUT", "/shops/{shop_id}"): (ADMIN, {400: _400, 401: _401, 422: _422}),
    ("GET", "/shops"): (ADMIN, {401: _401}),
    ("GET", "/shops/{shop_id}"): (ADMIN, {401: _401, 404: _404}),
    ("PUT", "/shops/{shop_id}/listings/{sku}"): (ADMIN, {400: _400, 401: _401, 404: _404, 422: _422}),
    ("GET", "/shops/{shop_id}/listings"): (ADMIN, {401: _401, 404: _404}),
    ("GET", "/shops/{shop_id}/sellable"): (ADMIN, {400: _400, 401: _401, 404: _404, 422: _422, 503: _503}),
    ("POST", "/shops/{shop_id}/resync"): (ADMIN, {401: _401, 404: _404}),
    ("PUT", "/safety-stock"): (ADMIN, {400: _400, 401: _401, 422: _422}),
    ("GET", "/safety-stock"): (ADMIN, {401: _401}),
    ("DELETE", "/safety-stock"): (ADMIN, {400: _400, 401: _401, 404: _404}),
    ("GET", "/outbox/dead"): (ADMIN, {401: _401}),
    ("POST", "/outbox/resend"): (ADMIN, {400: _400, 401: _401}),
}


# ---- webhooks: the platforms' own bodies and answers ---------------------------------------------

class JdRelayForm(msgspec.Struct, kw_only=True):
    """JD relay: application/x-www-form-urlencoded, JOS-signed (see docs/channels.md)."""

    #: JSON text: {"orderId", "orderState", "modified", "msgId"}
    param_json: str = msgspec.field(name="360buy_param_json")
    app_key: str
    method: str
    timestamp: str
    v: str = "2.0"
    #: UPPER(md5(secret + sorted key+value + secret))
    sign: str


class DouyinAnswer(msgspec.Struct, kw_only=True):
    code: int
    msg: str
    errors: list[dict[str, str]] | None = None


class RelayAnswer(msgspec.Struct, kw_only=True):
    success: bool
    message: str | None = None


class MiniprogramAnswer(msgspec.Struct, kw_only=True):
    """Order push: {"ok": true}; refused: {"ok": false, "error", "message", "field"}. WeChat Pay:
    204 without a body, else {"code": "FAIL", "message"}."""

    ok: bool | None = None
    code: str | None = None
    message: str | None = None


WEBHOOKS: dict[str, dict[str, Any]] = {
    "/webhooks/douyin": {
        "content": "application/json", "body": list[douyin.DouyinPushMessage], "answer": DouyinAnswer,
        "headers": ("app-id", "event-sign", "sign-method"),
        "statuses": {200: '{"code":0,"msg":"success"}: every message recorded',
                     400: "some messages refused (listed in `errors`); the good ones were kept",
                     401: "wrong event-sign: nothing stored", 503: "retry later (platform API or a database)"},
    },
    "/webhooks/tmall": {
        "content": "application/json", "body": tmall.TmcMessage, "answer": RelayAnswer,
        "query": ("app_key", "timestamp", "sign_method", "sign"),
        "statuses": {200: '{"success":true}', 400: "message refused", 401: "wrong sign or stale timestamp",
                     503: "retry later"},
    },
    "/webhooks/jd": {
        "content": "application/x-www-form-urlencoded", "body": JdRelayForm, "answer": RelayAnswer,
        "statuses": {200: '{"success":true}', 400: "message refused", 401: "wrong sign or stale timestamp",
                     503: "retry later"},
    },
    "/webhooks/miniprogram": {
        "content": "application/json", "body": (miniprogram.MpPush, miniprogram.WechatPayNotification),
        "answer": MiniprogramAnswer,
        "headers": ("X-OMS-Timestamp", "X-OMS-Signature", "Wechatpay-Timestamp", "Wechatpay-Nonce",
                    "Wechatpay-Signature", "Wechatpay-Serial"),
        "statuses": {200: 'order push recorded: {"ok":true}', 204: "WeChat Pay notification recorded",
                     400: "refused (the field is named)", 401: "wrong signature or a timestamp 5 minutes old",
                     503: "retry later"},
    },
}


def _schemas(types: list[Any]) -> tuple[list[dict], dict[str, dict]]:
    refs, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    return list(refs), components


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def document(schema: dict) -> dict:
    """Complete Litestar's OpenAPI dict in place: security, error bodies, webhook bodies."""
    components = schema.setdefault("components", {})
    comp_schemas = components.setdefault("schemas", {})
    components["securitySchemes"] = {
        "adminToken": {"type": "http", "scheme": "bearer",
                       "description": "the admin token (OMS_ADMIN_TOKEN; `make run` keeps it in .oms/admin_token)"},
        "storeToken": {"type": "http", "scheme": "bearer",
                       "description": "a store's own token, issued with POST /nodes/{node_id}/tokens"},
    }
    bodies = [b for w in WEBHOOKS.values() for b in (w["body"] if isinstance(w["body"], tuple) else (w["body"],))]
    answers = [w["answer"] for w in WEBHOOKS.values()]
    refs, defs = _schemas([Error, *bodies, *answers])
    comp_schemas.update(defs)
    error_ref = refs[0]
    body_iter = iter(refs[1:1 + len(bodies)])
    body_refs = []
    for w in WEBHOOKS.values():
        n = len(w["body"]) if isinstance(w["body"], tuple) else 1
        parts = [next(body_iter) for _ in range(n)]
        body_refs.append(parts[0] if n == 1 else {"oneOf": parts})
    answer_refs = refs[1 + len(bodies):]
    for (method, path), (security, statuses) in ROUTES.items():
        op = schema["paths"].get(path, {}).get(method.lower())
        if op is None:
            continue
        if security is not None:
            op["security"] = security
        responses = op.setdefault("responses", {})
        responses.pop("400", None)  # Litestar's own {status_code, detail} is not what we answer
        for status, why in sorted(statuses.items()):
            responses[str(status)] = {"description": why, "content": {"application/json": {"schema": error_ref}}}
    for (path, hook), body_ref, answer_ref in zip(WEBHOOKS.items(), body_refs, answer_refs):
        op = schema["paths"].get(path, {}).get("post")
        if op is None:
            continue
        op["security"] = []  # the platforms sign their requests: no bearer token
        op["requestBody"] = {"required": True, "content": {hook["content"]: {"schema": body_ref}},
                             "description": "the platform's own format, signed; see docs/channels.md"}
        params = op.setdefault("parameters", [])
        params += [{"name": h, "in": "header", "required": False, "schema": {"type": "string"}}
                   for h in hook.get("headers", ())]
        params += [{"name": q, "in": "query", "required": True, "schema": {"type": "string"}}
                   for q in hook.get("query", ())]
        op["responses"] = {str(s): ({"description": why} if s == 204 else
                                    {"description": why, "content": {"application/json": {"schema": answer_ref}}})
                           for s, why in sorted(hook["statuses"].items())}
    return schema


def config() -> OpenAPIConfig:
    assets = ASSETS_PATH
    return OpenAPIConfig(
        title="OMS", version="0.1.0", path="/schema",
        description="Omnichannel order management. Authorize with the admin token for the admin API, "
                    "or a store token for /stores/{node_id}/…. Errors are {error, message, field}.",
        components=Components(security_schemes={
            "adminToken": SecurityScheme(type="http", scheme="bearer"),
            "storeToken": SecurityScheme(type="http", scheme="bearer")}),
        render_plugins=[SwaggerRenderPlugin(
            js_url=f"{assets}/swagger-ui-bundle.js", css_url=f"{assets}/swagger-ui.css",
            standalone_preset_js_url=f"{assets}/swagger-ui-standalone-preset.js",
            favicon=f"<link rel='icon' type='image/png' href='{assets}/favicon-32x32.png'>")],
    )


def complete(app: Litestar) -> None:
    """Build the document once, now that every route is registered, and complete it."""
    from litestar._openapi.plugin import OpenAPIPlugin

    document(app.plugins.get(OpenAPIPlugin).provide_openapi_schema())


@get(ASSETS_PATH + "/{name:str}", include_in_schema=False, cache=False)
async def swagger_asset(name: str) -> Response[bytes]:
    """Swagger UI's files from the installed package: the docs need no CDN."""
    from swagger_ui_bundle import swagger_ui_path

    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFoundException(f"no asset '{name}'")
    return Response((swagger_ui_path / name).read_bytes(), media_type=media_type,
                    headers={"Cache-Control": "public, max-age=86400"})
