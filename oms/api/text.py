"""Bad text at the edge: U+0000 or a lone surrogate in any field is a 400 naming that field.

PostgreSQL cannot store either (text refuses NUL, UTF-8 has no lone surrogates), so such a
value would otherwise fail deep inside a write and look like an outage (503, retried forever).
One `before_request` hook checks every request before any handler or decoder sees it: path
parameters, the query string and the body — JSON (also JSON nested in a string field, as Douyin
sends it) and form bodies. The common case costs a substring search of the raw bytes.
"""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qsl

from litestar import Request

from oms.errors import InvalidInput
from oms.infra.text import bad_char, find_bad_text

#: a JSON escape of U+0000 or of a UTF-16 surrogate (pairs are checked after decoding)
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")
_FORM = "application/x-www-form-urlencoded"


def check_body(body: bytes, content_type: str = "") -> None:
    """Raise InvalidInput naming the first field holding bad text."""
    if not body:
        return
    if content_type.startswith(_FORM):
        check_query(body)
        return
    if not _SUSPECT_ESCAPE.search(body):
        return
    try:
        doc = json.loads(body)  # stdlib json keeps lone surrogates, so they can be found
    except ValueError:
        return  # not JSON: the handler's own decoding answers it
    found = find_bad_text(doc)
    if found:
        raise InvalidInput(f"{found[0]}: {found[1]}", field=found[0])


def check_query(raw: bytes) -> None:
    """A query string or form body: each value (and JSON inside one, as JD relays send it)."""
    if not raw:
        return
    low = raw.lower()
    if not any(s in low for s in (b"%00", b"%ed", b"%5cu", b"\\u")):
        return
    for k, v in parse_qsl(raw.decode("latin-1"), keep_blank_values=True, encoding="utf-8",
                          errors="surrogateescape"):
        if bad_char(k):
            raise InvalidInput(f"a parameter name: {bad_char(k)}", field="query")
        found = find_bad_text(v, k)
        if found:
            raise InvalidInput(f"{found[0]}: {found[1]}", field=found[0])


async def reject_bad_text(request: Request) -> None:
    """App-wide before_request hook: 400 for bad text anywhere in the request."""
    for name, value in request.path_params.items():
        if isinstance(value, str):
            problem = bad_char(value)
            if problem:
                raise InvalidInput(f"{name}: {problem}", field=name)
    check_query(request.scope.get("query_string", b""))
    if request.method in ("POST", "PUT", "PATCH"):
        check_body(await request.body(), request.headers.get("content-type", ""))
