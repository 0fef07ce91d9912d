"""Text PostgreSQL cannot store: U+0000 (NUL) and lone UTF-16 surrogates, found with their field."""

from __future__ import annotations

import json
from typing import Any


def bad_char(value: str) -> str | None:
    """What is wrong with `value` (None when nothing)."""
    if "\x00" in value:
        return "U+0000 (NUL) is not allowed in text"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "text holds a lone UTF-16 surrogate (not valid Unicode)"
    return None


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def find_bad_text(value: Any, path: str = "") -> tuple[str, str] | None:
    """(field path, problem) of the first bad string in decoded JSON, or None."""
    if isinstance(value, str):
        problem = bad_char(value)
        if problem:
            return path or "body", problem
        if "\\u" in value and value[:1] in "{[":  # JSON inside a string field: look inside too
            try:
                inner = json.loads(value)
            except ValueError:
                return None
            return find_bad_text(inner, path)
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            problem = bad_char(k)
            if problem:
                return _join(path, k.encode("utf-8", "backslashreplace").decode()), problem
            found = find_bad_text(v, _join(path, k))
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = find_bad_text(v, _join(path, i))
            if found:
                return found
    return None
