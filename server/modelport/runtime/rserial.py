"""A call's arguments in R's own serialization format, which R reads with one ``unserialize``.

jsonlite's parser costs an R replica more per call than the rest of its work on a small call;
R's unserialize is C all the way. The values are made as jsonlite's ``parse_json`` would make
them from the same JSON: an object is a named list (``{}`` a named empty list), a whole number
that fits R's integers is an integer and any other number a double, a string is UTF-8 text,
true/false logicals, null NULL. Arrays are not: jsonlite turns them into vectors, matrices or
data frames by rules of its own, so a body holding one goes to R as JSON text, which worker.R
gives to jsonlite (``Unfit``). Format: R's serialization version 2, XDR (big-endian), as
``serialize(x, NULL, version = 2)`` writes it ("R Internals", "Serialization Formats").
"""

from __future__ import annotations

import math
import struct
from typing import Any

__all__ = ["Unfit", "call_frame", "text_frame"]

_HEADER = b"X\n" + struct.pack(">iii", 2, 0x040202, 0x020300)  # version 2, by R 4.2.2, for 2.3.0+
_NIL = struct.pack(">i", 254)  # NILVALUE_SXP
_LGL = struct.Struct(">iii").pack  # LGLSXP (10), length 1, 0/1
_INT = struct.Struct(">iii").pack  # INTSXP (13), length 1, the value
_REAL = struct.Struct(">iid").pack  # REALSXP (14), length 1, the value
_HEAD2 = struct.Struct(">ii").pack
_STR1 = _HEAD2(16, 1)  # STRSXP (16) of length 1, its CHARSXP follows
_ASCII = 9 | 64 << 12  # CHARSXP (9), marked ASCII
_UTF8 = 9 | 8 << 12  # CHARSXP, marked UTF-8
_LIST = 19  # VECSXP
_NAMED_LIST = 19 | 1 << 9  # VECSXP with attributes
# The attributes of a named list: a pairlist of one cell, tagged `names`, holding a STRSXP.
_NAMES_TAG = struct.pack(">ii", 2 | 1 << 10, 1) + _HEAD2(_ASCII, 5) + b"names"
# R's integers: -2^31 is NA_integer_, so whole numbers out of this range are doubles
_INT_MAX = 2**31 - 1


class Unfit(Exception):
    """The value is not one that this encoder makes as jsonlite would (an array, bytes, a string
    holding NUL, a number JSON cannot hold): send it as JSON text."""


def _chars(text: str) -> bytes:
    data = text.encode()
    if "\x00" in text:
        raise Unfit
    return _HEAD2(_ASCII if len(data) == len(text) else _UTF8, len(data)) + data


def _put(value: Any, out: list[bytes]) -> None:
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):
            raise Unfit
        out.append(_REAL(14, 1, value))
    elif kind is str:
        out.append(_STR1)
        out.append(_chars(value))
    elif kind is bool:
        out.append(_LGL(10, 1, value))
    elif kind is int:
        if -_INT_MAX <= value <= _INT_MAX:
            out.append(_INT(13, 1, value))
        else:
            as_float = float(value)  # (OverflowError past a double's range: Unfit below)
            out.append(_REAL(14, 1, as_float))
    elif value is None:
        out.append(_NIL)
    elif kind is dict:
        _named_list(value, out)
    else:
        raise Unfit


def _named_list(obj: dict[str, Any], out: list[bytes]) -> None:
    out.append(_HEAD2(_NAMED_LIST, len(obj)))
    for item in obj.values():
        _put(item, out)
    out.append(_NAMES_TAG)
    out.append(_HEAD2(16, len(obj)))
    for key in obj:
        out.append(_chars(key))
    out.append(_NIL)  # the end of the attributes' pairlist


def call_frame(by: float, args: dict[str, Any]) -> bytes:
    """``list(by, args)`` serialized: the wall-clock time by which the call must start (0: none)
    and its arguments as a named list; Unfit when they cannot be made so."""
    out = [_HEADER, _HEAD2(_LIST, 2), _REAL(14, 1, by)]
    try:
        _named_list(args, out)
    except OverflowError:
        raise Unfit from None
    return b"".join(out)


def text_frame(by: float, json: bytes) -> bytes:
    """``list(by, json)`` serialized: the arguments as JSON text, for jsonlite to parse."""
    mark = _ASCII if json.isascii() else _UTF8
    return b"".join(
        (_HEADER, _HEAD2(_LIST, 2), _REAL(14, 1, by), _STR1, _HEAD2(mark, len(json)), json)
    )
