"""Canonical JSON (RFC 8785 style) and the SHA3-512 digests computed over it.

Object keys are sorted by their UTF-16 code units, there is no insignificant white space, strings
are minimally escaped, and numbers are written the way ECMAScript prints them, so one value has
exactly one byte encoding and therefore one checksum.
"""

from __future__ import annotations

import hashlib
import json
import math
from decimal import Decimal
from typing import Any

GENESIS = "0" * 128


def _number(x: float) -> str:
    """ECMAScript Number.prototype.toString for a finite double (as RFC 8785 requires)."""
    if not math.isfinite(x):
        raise ValueError("NaN and infinity have no JSON encoding")
    if x == 0:
        return "0"
    if x.is_integer() and abs(x) < 1e21:
        return str(int(x))
    if 1e-6 <= abs(x) < 1e21:
        return format(Decimal(repr(x)), "f")
    mantissa, _, power = repr(x).partition("e")  # shortest round-trip digits, e.g. '2.5e-07'
    exponent = int(power)
    return f"{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent)}"


def _encode(value: Any, out: list[str]) -> None:
    if value is None or isinstance(value, bool):
        out.append(json.dumps(value))
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(_number(value))
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, dict):
        out.append("{")
        for i, key in enumerate(sorted(value, key=lambda k: str(k).encode("utf-16-be"))):
            if not isinstance(key, str):
                raise TypeError(f"object keys must be strings, not {type(key).__name__}")
            out.append("," if i else "")
            out.append(json.dumps(key, ensure_ascii=False) + ":")
            _encode(value[key], out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            out.append("," if i else "")
            _encode(item, out)
        out.append("]")
    else:
        raise TypeError(f"{type(value).__name__} has no canonical JSON encoding")


def canonical_json(value: Any) -> bytes:
    """The one UTF-8 encoding of a JSON value (dicts, lists, str, int, float, bool, None)."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out).encode()


def sha3_512_hex(data: bytes) -> str:
    return hashlib.sha3_512(data).hexdigest()


def checksum(value: Any) -> str:
    """SHA3-512 (hex) of the canonical JSON of `value`."""
    return sha3_512_hex(canonical_json(value))
