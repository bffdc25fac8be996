"""The one way the sidecar reads a JSON request body (`/prompt`, `/interrupt`, `/download`).

Every refusal is a `BodyError` with a 4xx status and a message a client can act on:
- content type `application/json`, charset absent or UTF-8 (else 415);
- the body read in chunks: Content-Encoding gzip or deflate undone here (other encodings 415, data that is
  not what the header says 400), at most `max_bytes` after decompression (413), no gap longer than
  `idle_timeout_s` and no longer than `total_timeout_s` in all (408); a client that goes away mid-body
  raises `ClientAborted` (counted as 499);
- JSON: UTF-8, at most `max_values` values (counted cheaply before parsing, as commas and colons, so the
  parsed objects stay within a small multiple of the body size), nesting at most `max_depth` levels,
  integers of at most `max_int_digits` digits, finite numbers only, and no lone UTF-16 surrogate (`"\\ud800"`)
  in any string or key — such strings cannot be written to files, logs or UTF-8 bodies later.
"""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int = 100 * 1024 * 1024
    idle_timeout_s: float = 30.0
    total_timeout_s: float = 300.0
    max_depth: int = 64
    max_values: int = 250_000
    max_int_digits: int = 40


BODY_LIMITS_KEY = web.AppKey("body_limits", BodyLimits)

_UTF8 = frozenset({"utf-8", "utf8"})
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class BodyError(Exception):
    """A request body the sidecar refuses; `status` is 400, 408, 413 or 415."""

    def __init__(self, status: int, message: str, location: str = "body") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.location = location


class ClientAborted(Exception):
    """The client closed the connection before its body was read (logged and counted as 499)."""


class _Refused(ValueError):
    """A JSON number or constant the limits refuse (raised from inside the JSON parser)."""


async def read_json(request: web.Request) -> Any:
    """The decoded JSON body of `request` under the app's BodyLimits (defaults when the app has none)."""
    limits = request.app.get(BODY_LIMITS_KEY) or BodyLimits()
    return decode_json(await read_body(request, limits), limits)


async def read_body(request: web.Request, limits: BodyLimits) -> bytearray:
    if request.content_type != "application/json":
        raise BodyError(415, "Unsupported Media Type")  # Fastify's text
    charset = request.charset
    if charset is not None and charset.lower() not in _UTF8:
        raise BodyError(415, f"Unsupported Media Type: charset {charset!r}; send UTF-8 JSON")
    if request.content_length is not None and request.content_length > limits.max_bytes:
        raise _too_large(limits)
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    decoder = _decoder(encoding)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.total_timeout_s
    body = bytearray()
    try:
        while True:
            wait_s = min(limits.idle_timeout_s, deadline - loop.time())
            async with asyncio.timeout(max(0.0, wait_s)):
                chunk = await request.content.readany()
            if not chunk:
                if decoder is not None and not decoder.eof:
                    raise zlib.error("the compressed data ends early")
                return body
            if decoder is not None:
                chunk = decoder.decompress(chunk, limits.max_bytes + 1 - len(body))
            body += chunk
            if len(body) > limits.max_bytes or (decoder is not None and decoder.unconsumed_tail):
                raise _too_large(limits)
    except zlib.error as error:
        raise BodyError(400, f"Bad Request: the body is not valid {encoding} data ({error})") from None
    except TimeoutError:
        raise BodyError(
            408,
            f"Request Timeout: the body did not arrive within {limits.idle_timeout_s:g} s of silence "
            f"or {limits.total_timeout_s:g} s in all",
        ) from None
    except HttpProcessingError as error:
        raise BodyError(400, f"Bad Request: the body could not be read: {error.message}") from None
    except ConnectionError:
        raise ClientAborted from None


_WBITS = {"deflate": zlib.MAX_WBITS, "gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS}


def _decoder(encoding: str) -> Any:
    """A zlib decompressor for the Content-Encoding (the server runs with auto_decompress off, so a bad
    body is refused here, and the size limit applies to the decompressed bytes), None for identity."""
    if encoding in ("", "identity"):
        return None
    if encoding not in _WBITS:
        raise BodyError(415, f"Unsupported Media Type: Content-Encoding {encoding!r} (use gzip or deflate)")
    return zlib.decompressobj(_WBITS[encoding])


def _too_large(limits: BodyLimits) -> BodyError:
    return BodyError(413, "Request body is too large")  # Fastify's text; the limit is MAX_BODY_SIZE_MB


def decode_json(raw: bytes | bytearray, limits: BodyLimits) -> Any:
    """Parse a JSON body under `limits`; BodyError (400/413) with a clear message otherwise."""
    values = raw.count(b",") + raw.count(b":")
    if values > limits.max_values:
        raise BodyError(
            413, f"Request body has too many JSON values (more than {limits.max_values}, MAX_JSON_VALUES)"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        reason = f"{error.reason} at byte {error.start}"
        raise BodyError(400, f"Bad Request: the body is not UTF-8 ({reason})") from None
    try:
        data = json.loads(
            text, parse_int=_int_parser(limits.max_int_digits), parse_float=_finite, parse_constant=_constant
        )
    except RecursionError:
        raise _too_deep(limits, "body") from None
    except _Refused as error:
        raise BodyError(400, f"Bad Request: {error}") from None
    except ValueError as error:
        raise BodyError(400, f"Bad Request: malformed JSON: {error}") from None
    check_shape(data, limits, strings=_SURROGATE_ESCAPE.search(raw) is not None)
    return data


def _int_parser(max_digits: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if len(text.lstrip("-")) > max_digits:
            raise _Refused(f"a JSON integer has {len(text.lstrip('-'))} digits (at most {max_digits})")
        return int(text)

    return parse


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _Refused(f"the JSON number {text[:40]} is too large for a double")
    return value


def _constant(text: str) -> Any:
    raise _Refused(f"{text} is not valid JSON")


def check_shape(data: Any, limits: BodyLimits, *, strings: bool) -> None:
    """Nesting depth of every container; with `strings`, every key and string for lone surrogates."""
    stack: list[tuple[Any, int, tuple[str, ...]]] = [(data, 1, ())]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, dict):
            items: Any = value.items()
        elif isinstance(value, list):
            items = enumerate(value)
        else:
            if strings and isinstance(value, str) and _LONE_SURROGATE.search(value):
                raise _surrogate(path)
            continue
        if depth > limits.max_depth:
            raise _too_deep(limits, _location(path))
        for key, item in items:
            if strings and isinstance(key, str) and _LONE_SURROGATE.search(key):
                raise _surrogate((*path, key.encode("utf-8", "backslashreplace").decode()))
            if isinstance(item, dict | list) or (strings and isinstance(item, str)):
                stack.append((item, depth + 1, (*path, str(key))))


def _location(path: tuple[str, ...]) -> str:
    return ".".join(path) or "body"


def _too_deep(limits: BodyLimits, location: str) -> BodyError:
    return BodyError(400, f"Bad Request: JSON nested deeper than {limits.max_depth} levels", location)


def _surrogate(path: tuple[str, ...]) -> BodyError:
    return BodyError(
        400,
        "Bad Request: a string holds a lone UTF-16 surrogate (e.g. \\ud800), which is not valid Unicode",
        _location(path),
    )
