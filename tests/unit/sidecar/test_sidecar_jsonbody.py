"""Bodies with base64 files: same bytes as plain JSON encoding, exact Content-Length, sliced encoding."""

from __future__ import annotations

import base64
import json
import os

from comfyui_sidecar.jsonbody import (
    SLICE,
    Base64List,
    Base64Str,
    encode,
    encode_small,
    iter_plan,
    plan,
    plan_size,
)


def reference(payload: dict[str, object]) -> bytes:
    plain = {
        key: [base64.b64encode(d).decode() for d in value.files]
        if isinstance(value, Base64List)
        else base64.b64encode(value.data).decode()
        if isinstance(value, Base64Str)
        else value
        for key, value in payload.items()
    }
    return json.dumps(plain, separators=(",", ":"), ensure_ascii=False).encode()


async def test_large_and_small_encodings_match_plain_json() -> None:
    big = os.urandom(SLICE * 2 + 5)
    payload = {"id": "é", "images": Base64List([b"abc", big, b""]), "image": Base64Str(b"x"), "n": 1.0}
    expected = reference({**payload, "n": 1})
    assert encode_small(payload) == expected
    assert await encode(payload) == expected
    parts = plan(payload)
    assert plan_size(parts) == len(expected)
    pieces = [piece async for piece in iter_plan(parts)]
    assert b"".join(pieces) == expected
    assert max(len(piece) for piece in pieces) <= 4 * SLICE // 3


async def test_empty_file_list() -> None:
    assert await encode({"images": Base64List([])}) == b'{"images":[]}'
