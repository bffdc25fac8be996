"""Compact JSON bodies that carry large base64 files without blocking the event loop.

`json.dumps` and `base64.b64encode` hold the GIL for their whole run, so a 20 MB output would stall every
other request (e.g. /health) for tens of milliseconds, even from a worker thread. Here the files are encoded
in slices with a yield to the event loop between slices, and base64 text (which never needs JSON escaping)
is spliced into the body as is.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SLICE = 3 * 256 * 1024  # a multiple of 3, so slices encode to base64 without padding in between


@dataclass(frozen=True)
class Base64List:
    """A JSON array of base64 strings, encoded from `files` only when the body is written."""

    files: Sequence[bytes]


@dataclass(frozen=True)
class Base64Str:
    """One base64 string, encoded from `data` only when the body is written."""

    data: bytes


def js_compatible(value: Any) -> Any:
    """Floats with an integral value become ints, as JSON.stringify would print them (1.0 -> 1)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: js_compatible(item) for key, item in value.items()}
    if isinstance(value, list):
        return [js_compatible(item) for item in value]
    return value


def dumps(value: Any) -> bytes:
    """Compact JSON like JSON.stringify: no spaces, non-ASCII kept, integral floats printed as ints."""
    return json.dumps(js_compatible(value), separators=(",", ":"), ensure_ascii=False).encode()


def encoded_size(payload: Mapping[str, Any]) -> int:
    """Bytes of base64 file data in a payload (to decide whether slicing is worth it)."""
    total = 0
    for value in payload.values():
        if isinstance(value, Base64List):
            total += sum(len(data) for data in value.files)
        elif isinstance(value, Base64Str):
            total += len(value.data)
    return total


@dataclass(frozen=True)
class _Raw:
    """File bytes to be written as base64 text (the quotes are separate plan parts)."""

    data: bytes


Plan = list[bytes | _Raw]


def plan(payload: Mapping[str, Any]) -> Plan:
    """The body as a list of ready JSON fragments and raw file bytes (encoded when written)."""
    parts: Plan = [b"{"]
    for index, (key, value) in enumerate(payload.items()):
        parts.append((b"," if index else b"") + dumps(key) + b":")
        if isinstance(value, Base64Str):
            parts += [b'"', _Raw(value.data), b'"']
        elif isinstance(value, Base64List):
            parts.append(b"[")
            for position, data in enumerate(value.files):
                parts += [b',"' if position else b'"', _Raw(data), b'"']
            parts.append(b"]")
        else:
            parts.append(dumps(value))
    parts.append(b"}")
    return parts


def plan_size(body: Plan) -> int:
    """Exact byte length of the encoded body (base64 of n bytes is 4 * ceil(n / 3) characters)."""
    return sum(len(part) if isinstance(part, bytes) else 4 * math.ceil(len(part.data) / 3) for part in body)


async def iter_plan(body: Plan) -> AsyncIterator[bytes]:
    """The body in pieces; base64 is produced SLICE by SLICE with a yield to the event loop in between."""
    for part in body:
        if isinstance(part, bytes):
            yield part
            continue
        view = memoryview(part.data)
        for start in range(0, len(view), SLICE):
            yield base64.b64encode(view[start : start + SLICE])
            await asyncio.sleep(0)


def encode_small(payload: Mapping[str, Any]) -> bytes:
    """Encode at once (for bodies without large files)."""
    return b"".join(
        part if isinstance(part, bytes) else base64.b64encode(part.data) for part in plan(payload)
    )


async def encode(payload: Mapping[str, Any], threshold: int = SLICE) -> bytes:
    """The whole body (e.g. to sign it); large files are encoded slice by slice, yielding in between."""
    if encoded_size(payload) <= threshold:
        return encode_small(payload)
    out = bytearray()
    async for piece in iter_plan(plan(payload)):
        out += piece
    return bytes(out)


# ---- base64 inputs (the other direction) ----------------------------------------------------------------
_URLSAFE = bytes.maketrans(b"-_", b"+/")
_B64_WHITESPACE = b" \t\r\n\x0b\x0c"
DECODE_SLICE_CHARS = SLICE // 3 * 4


def _b64_bytes(text: str) -> bytes:
    """ASCII bytes of base64 text without whitespace, URL-safe letters mapped to the standard ones."""
    return text.encode("ascii").translate(_URLSAFE, _B64_WHITESPACE)


def b64decode_text(text: str) -> bytes:
    """Decode standard or URL-safe base64 with optional whitespace and padding; ValueError if invalid."""
    raw = _b64_bytes(text)
    data = base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
    if not data:
        raise ValueError("empty base64 data")
    return data


async def b64decode_sliced(text: str) -> bytes:
    """`b64decode_text` in slices of DECODE_SLICE_CHARS with a yield to the event loop in between (a 16 MB
    base64 input decoded at once holds the GIL for tens of milliseconds)."""
    if len(text) <= DECODE_SLICE_CHARS:
        return b64decode_text(text)
    out = bytearray()
    carry = b""
    for start in range(0, len(text), DECODE_SLICE_CHARS):
        piece = carry + _b64_bytes(text[start : start + DECODE_SLICE_CHARS])
        cut = len(piece) - len(piece) % 4
        out += base64.b64decode(piece[:cut], validate=True)
        carry = piece[cut:]
        await asyncio.sleep(0)
    if carry:
        out += base64.b64decode(carry + b"=" * (-len(carry) % 4), validate=True)
    if not out:
        raise ValueError("empty base64 data")
    return bytes(out)
