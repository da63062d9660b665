"""Opaque list cursors: `?limit=&cursor=` in, `{"items", "next"}` out."""

from __future__ import annotations

import base64
from typing import Any, TypeVar, overload

import msgspec

from modelport.errors import RequestInvalid
from modelport.registry.db import Row

MAX_LIMIT = 500
DEFAULT_LIMIT = 50


def encode_cursor(key: str | int) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(key)).decode().rstrip("=")


K = TypeVar("K", str, int)


@overload
def decode_cursor(cursor: str | None) -> str | int | None: ...
@overload
def decode_cursor(cursor: str | None, kind: type[K]) -> K | None: ...
def decode_cursor(cursor: str | None, kind: type[Any] | None = None) -> str | int | None:
    """The key a cursor holds; with `kind`, None unless the key is of that type (a cursor of
    another list starts from the beginning)."""
    if not cursor:
        return None
    try:
        key = msgspec.json.decode(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except Exception:
        raise RequestInvalid(
            "The cursor is not one this server gave out.", field="cursor"
        ) from None
    if not isinstance(key, (str, int)) or isinstance(key, bool):
        raise RequestInvalid("The cursor is not one this server gave out.", field="cursor")
    if kind is not None and not isinstance(key, kind):
        return None
    return key


def clamp_limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_LIMIT
    if limit < 1 or limit > MAX_LIMIT:
        raise RequestInvalid(f"limit must be between 1 and {MAX_LIMIT}.", field="limit")
    return limit


def next_cursor(rows: list[Row] | list[Any], limit: int, key: str) -> str | None:
    """Callers fetch limit+1 rows (dicts, or row Structs); a next page exists when they got more
    than limit. The cursor holds the last row's ``key``."""
    if len(rows) <= limit:
        return None
    del rows[limit:]
    last = rows[-1]
    return encode_cursor(last[key] if isinstance(last, dict) else getattr(last, key))
